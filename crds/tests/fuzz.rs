//! Property tests: reading and validating never panics, whatever the input, and an object
//! has the same problems whether it comes as YAML (a file) or as JSON (an admission review).
//!
//! Three sources of input: YAML-ish token soup (mostly syntax errors and odd
//! scalars), arbitrary JSON trees under a valid `apiVersion`/`kind` header (type
//! errors at every depth), and the valid corpus samples with random subtrees replaced
//! (deep into the validators). Case counts stay modest so the suite stays fast.

use std::path::PathBuf;
use std::sync::OnceLock;

use capstan_crds::{DocumentErrorReason, Kind, parse_documents, parse_json, validate};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Parses and validates `text`; panics are what the properties look for.
fn exercise(text: &str) {
    if let Ok(documents) = parse_documents("fuzz.yaml", text) {
        for document in documents.into_iter().flatten() {
            for error in document.validate() {
                let _ = document.line_of(&error.field);
            }
        }
    }
}

/// What reading and validating one object finds, less line numbers (JSON has none).
#[derive(Debug, PartialEq)]
enum Problems {
    Unreadable {
        reason: DocumentErrorReason,
        field: Option<String>,
        message: String,
    },
    /// Each validation error as `field: message`.
    Invalid(Vec<String>),
}

fn problems_of(read: Result<capstan_crds::Document, capstan_crds::DocumentError>) -> Problems {
    match read {
        Ok(document) => Problems::Invalid(
            validate(&document.object)
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        Err(e) => Problems::Unreadable {
            reason: e.reason,
            field: e.field,
            message: e.message,
        },
    }
}

/// Reads `value` as JSON and, written out, as YAML: the two must find the same problems.
fn exercise_value(value: &Value) -> Result<(), TestCaseError> {
    let from_json = problems_of(parse_json("fuzz.json", value));
    let yaml = serde_saphyr::to_string(value)
        .map_err(|e| TestCaseError::fail(format!("{value} has no YAML form: {e}")))?;
    exercise(&yaml);
    if value.is_null() {
        // As YAML, `null` is an empty file: no document to compare.
        return Ok(());
    }
    let documents = parse_documents("fuzz.yaml", &yaml).map_err(|e| {
        TestCaseError::fail(format!(
            "YAML written for {value} is unreadable: {e}\n{yaml}"
        ))
    })?;
    let [document] = <[_; 1]>::try_from(documents)
        .map_err(|d| TestCaseError::fail(format!("{} documents in\n{yaml}", d.len())))?;
    let from_yaml = problems_of(document);
    prop_assert_eq!(from_json, from_yaml, "as YAML:\n{}", yaml);
    Ok(())
}

const TOKENS: &[&str] = &[
    "apiVersion: networking.istio.io/v1\n",
    "apiVersion: security.istio.io/v1beta1\n",
    "kind: VirtualService\n",
    "kind: Gateway\n",
    "kind: AuthorizationPolicy\n",
    "metadata:\n  name: x\n",
    "spec:\n",
    "  hosts: [",
    "  http:\n  - route:\n    - destination:\n        host: ",
    "      weight: ",
    "  servers:\n  - port: {number: ",
    "  rules:\n  - from:\n    - source: {ipBlocks: [",
    "  subsets:\n  - name: ",
    "---\n",
    "...\n",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "\n",
    "  ",
    "\t",
    "'",
    "\"",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "# c\n",
    "|\n  ",
    ">-\n  ",
    "null",
    "~",
    "true",
    "-1",
    "0",
    "4294967296",
    "1e400",
    ".nan",
    "0x1F",
    "*.example.com",
    "*",
    "ünïcödé",
    "reviews",
    "/api/{**}",
    "10.0.0.0/8",
    "unix://",
    "? ",
    "<<: *a\n",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|tokens| tokens.concat())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(TOKENS).prop_map(|t| Value::from(t.trim())),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mapping keys: mostly real field names, so typed parsing gets past the first level.
fn key() -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "hosts",
        "http",
        "route",
        "destination",
        "host",
        "weight",
        "match",
        "uri",
        "exact",
        "prefix",
        "regex",
        "headers",
        "servers",
        "port",
        "number",
        "name",
        "protocol",
        "tls",
        "mode",
        "subsets",
        "labels",
        "trafficPolicy",
        "rules",
        "from",
        "to",
        "source",
        "operation",
        "when",
        "key",
        "values",
        "selector",
        "matchLabels",
        "jwtRules",
        "issuer",
        "egress",
        "ingress",
        "template",
        "probe",
        "httpGet",
        "portLevelMtls",
        "mtls",
        "endpoints",
        "address",
        "ports",
        "resolution",
        "targetRef",
        "action",
    ];
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z*.~/-]{0,10}",
    ]
}

fn object() -> impl Strategy<Value = Value> {
    (prop::sample::select(&Kind::ALL[..]), json()).prop_map(|(kind, spec)| {
        let mut map = Map::new();
        map.insert(
            "apiVersion".into(),
            Value::from(format!("{}/v1", kind.group())),
        );
        map.insert("kind".into(), Value::from(kind.as_str()));
        map.insert("metadata".into(), serde_json::json!({"name": "fuzz"}));
        map.insert("spec".into(), spec);
        Value::Object(map)
    })
}

/// The valid corpus samples as JSON values (read once).
fn samples() -> &'static [Value] {
    static SAMPLES: OnceLock<Vec<Value>> = OnceLock::new();
    SAMPLES.get_or_init(read_samples)
}

fn read_samples() -> Vec<Value> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/corpus/valid");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for part in text.split("\n---\n") {
            if let Ok(value) = serde_saphyr::from_str::<Value>(part)
                && value.is_object()
            {
                out.push(value);
            }
        }
    }
    assert!(
        out.len() > 20,
        "corpus samples not found in {}",
        dir.display()
    );
    out
}

/// Every node of a tree, as a path of keys/indices.
fn node_paths(value: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Value::from(k.as_str()));
                node_paths(v, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Value::from(i));
                node_paths(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(mut value: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    for segment in path {
        value = match segment {
            Value::String(k) => value.get_mut(k.as_str())?,
            Value::Number(i) => value.get_mut(usize::try_from(i.as_u64()?).ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn yamlish_text_never_panics(text in yamlish()) {
        exercise(&text);
    }

    #[test]
    fn arbitrary_specs_read_alike_as_json_and_yaml(value in object()) {
        exercise_value(&value)?;
    }

    #[test]
    fn mutated_samples_read_alike_as_json_and_yaml(
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), json()), 1..4)
    ) {
        let samples = samples();
        for (sample, node, replacement) in picks {
            let mut value = sample.get(samples).clone();
            let mut paths = Vec::new();
            node_paths(&value, &mut Vec::new(), &mut paths);
            let path = node.get(&paths).clone();
            if let Some(target) = node_mut(&mut value, &path) {
                *target = replacement;
            }
            exercise_value(&value)?;
        }
    }
}
