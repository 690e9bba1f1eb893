//! A message kept in shared pieces.
//!
//! A large message that changes a piece at a time (a route configuration holding every
//! virtual host) is kept as a tree of encoded pieces. Changing one piece rebuilds only the
//! branches above it; every other branch is shared, not copied, and its hash is not
//! recomputed. Protobuf messages concatenate, so the pieces written in order are the message.

use std::sync::Arc;

use bytes::{BufMut, Bytes};

/// Encoded pieces of one message, with their total length and a hash of their content.
#[derive(Clone)]
pub struct Parts {
    len: usize,
    hash: u64,
    node: Node,
}

#[derive(Clone)]
enum Node {
    Leaf(Bytes),
    Branch(Arc<[Parts]>),
}

impl Parts {
    /// One piece; its bytes are hashed once, here.
    pub fn leaf(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            len: bytes.len(),
            hash: xxhash_rust::xxh3::xxh3_64(&bytes),
            node: Node::Leaf(bytes),
        }
    }

    /// `children` in order. The hash is computed from the children's hashes, not their bytes:
    /// the same children in the same shape give the same hash.
    pub fn join(children: impl IntoIterator<Item = Parts>) -> Self {
        let children: Arc<[Parts]> = children.into_iter().collect();
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        let mut len = 0;
        for child in children.iter() {
            hash.update(&child.hash.to_le_bytes());
            len += child.len;
        }
        Self {
            len,
            hash: hash.digest(),
            node: Node::Branch(children),
        }
    }

    /// Length of the message the pieces make.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A hash of the content, changing whenever any piece does.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Whether `other` is these very pieces (shared), not merely equal ones: what shows that
    /// an assembly reused a piece instead of building it again.
    pub fn ptr_eq(&self, other: &Parts) -> bool {
        match (&self.node, &other.node) {
            (Node::Leaf(a), Node::Leaf(b)) => a.as_ptr() == b.as_ptr() && a.len() == b.len(),
            (Node::Branch(a), Node::Branch(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Writes the pieces in order: the encoded message.
    pub fn write(&self, buf: &mut impl BufMut) {
        match &self.node {
            Node::Leaf(bytes) => buf.put_slice(bytes),
            Node::Branch(children) => {
                for child in children.iter() {
                    child.write(buf);
                }
            }
        }
    }

    /// The message in one buffer (a copy, unless it is a single piece).
    pub fn to_bytes(&self) -> Bytes {
        if let Node::Leaf(bytes) = &self.node {
            return bytes.clone();
        }
        let mut out = Vec::with_capacity(self.len);
        self.write(&mut out);
        out.into()
    }
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("len", &self.len)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(pieces: &[&str]) -> Vec<Parts> {
        pieces
            .iter()
            .map(|p| Parts::leaf(p.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_tree_writes_its_pieces_in_order() {
        let inner = Parts::join(leaves(&["b", "", "cd"]));
        let tree = Parts::join([leaves(&["a"]), vec![inner], leaves(&["efg"])].concat());
        assert_eq!(tree.to_bytes(), Bytes::from_static(b"abcdefg"));
        assert_eq!(tree.len(), 7);
        let mut written = Vec::new();
        tree.write(&mut written);
        assert_eq!(written, b"abcdefg");
    }

    #[test]
    fn the_hash_follows_every_piece_and_only_the_pieces() {
        let one = Parts::join(leaves(&["a", "b"]));
        let same = Parts::join(leaves(&["a", "b"]));
        let changed = Parts::join(leaves(&["a", "c"]));
        let reordered = Parts::join(leaves(&["b", "a"]));
        assert_eq!(one.hash(), same.hash());
        assert_ne!(one.hash(), changed.hash());
        assert_ne!(one.hash(), reordered.hash());
        let deep_a = Parts::join([Parts::join(leaves(&["x"])), one.clone()]);
        let deep_b = Parts::join([Parts::join(leaves(&["x"])), changed]);
        assert_ne!(deep_a.hash(), deep_b.hash());
    }

    #[test]
    fn a_single_leaf_is_not_copied() {
        let bytes = Bytes::from_static(b"shared");
        let leaf = Parts::leaf(bytes.clone());
        assert_eq!(leaf.to_bytes().as_ptr(), bytes.as_ptr());
        assert!(!leaf.is_empty());
        assert!(leaf.ptr_eq(&leaf.clone()));
        assert!(!leaf.ptr_eq(&Parts::leaf(b"shared".to_vec())));
        let joined = Parts::join([leaf.clone()]);
        assert!(joined.ptr_eq(&joined.clone()));
        assert!(!joined.ptr_eq(&Parts::join([leaf])));
        assert!(Parts::join([]).is_empty());
    }
}
