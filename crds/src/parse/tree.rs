//! A YAML document as a tree of nodes that remember their line and column.
//!
//! The parser reads every document into this tree first, then deserializes the typed
//! resources from it (see `de.rs`); the tree also maps a field path such as
//! `spec.http[0].route[1].weight` back to a line of the file.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Line and column (both 1-based) of a node in the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn from_spanned<T>(spanned: &Spanned<T>) -> Option<Self> {
        let loc = spanned.referenced;
        (loc.line() > 0).then(|| Position {
            line: loc.line(),
            column: loc.column(),
        })
    }
}

/// A node and where it starts.
#[derive(Clone, Debug)]
pub(crate) struct SpannedNode {
    pub position: Option<Position>,
    pub node: Node,
}

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<SpannedNode>),
    /// Entries in source order: key, key position, value.
    Map(Vec<(String, Option<Position>, SpannedNode)>),
}

impl SpannedNode {
    /// A tree without positions from a JSON value.
    pub fn from_json(value: &serde_json::Value) -> SpannedNode {
        use serde_json::Value;
        let node = match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Node::Int(i),
                (None, Some(u), _) => Node::UInt(u),
                (None, None, Some(f)) => Node::Float(f),
                (None, None, None) => Node::Null,
            },
            Value::String(s) => Node::Str(s.clone()),
            Value::Array(items) => Node::Seq(items.iter().map(SpannedNode::from_json).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), None, SpannedNode::from_json(v)))
                    .collect(),
            ),
        };
        SpannedNode {
            position: None,
            node,
        }
    }

    /// The value under `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&SpannedNode> {
        match &self.node {
            Node::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|e| &e.2),
            _ => None,
        }
    }

    /// The string under `key` when this is a mapping and the value is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match &self.get(key)?.node {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Position of the deepest node reachable along `path` (`a.b[2].c`); a mapping key
    /// resolves to the key's own position. Keys containing dots are matched greedily.
    pub fn locate(&self, path: &str) -> Option<Position> {
        let mut node = self;
        let mut best = self.position;
        let mut rest = path;
        loop {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            if rest.is_empty() {
                return best;
            }
            if let Some(after_bracket) = rest.strip_prefix('[') {
                let Some((index, after)) = after_bracket.split_once(']') else {
                    return best;
                };
                let (Ok(index), Node::Seq(items)) = (index.parse::<usize>(), &node.node) else {
                    return best;
                };
                let Some(item) = items.get(index) else {
                    return best;
                };
                node = item;
                best = item.position.or(best);
                rest = after;
                continue;
            }
            let Node::Map(entries) = &node.node else {
                return best;
            };
            let found = entries
                .iter()
                .filter(|(key, _, _)| {
                    rest.strip_prefix(key.as_str())
                        .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
                })
                .max_by_key(|(key, _, _)| key.len());
            let Some((key, key_position, value)) = found else {
                return best;
            };
            best = key_position.or(value.position).or(best);
            node = value;
            rest = &rest[key.len()..];
        }
    }
}

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Node>::deserialize(deserializer)?;
        Ok(SpannedNode {
            position: Position::from_spanned(&spanned),
            node: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<SpannedNode>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Option<Position>, SpannedNode)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let position = Position::from_spanned(&key);
            let Key(key) = key.value;
            if entries.iter().any(|(k, _, _)| *k == key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value::<SpannedNode>()?;
            entries.push((key, position, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key: any scalar, kept as its string form (JSON objects have string keys).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(Key(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Key, E> {
        Ok(Key(v))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_unit<E>(self) -> Result<Key, E> {
        Ok(Key("null".to_owned()))
    }
}
