//! The manifest corpus under `tests/corpus/`:
//!
//! - `valid/`: Istio's published samples (bookinfo, egress, security tasks, ...), which
//!   must parse and validate without a single problem, and survive a round trip
//!   YAML → types → YAML with every field kept;
//! - `invalid/`: one mistake (or a few) per document, each announced by
//!   `# expect: FIELD: MESSAGE FRAGMENT` comment lines; a document must report exactly
//!   the expected problems, at the expected field paths.
//!
//! Together they cover every kind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capstan_crds::{IstioObject, Kind, parse_documents};
use serde_json::Value;

fn corpus_files(dir: &str) -> Vec<PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files in {}", dir.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a file as separate texts (split at `---` lines).
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else if let Some(current) = documents.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect()
}

#[test]
fn valid_samples_have_no_problems() {
    let mut kinds = BTreeSet::new();
    let mut count = 0;
    let mut failures = Vec::new();
    for path in corpus_files("valid") {
        let name = path.display().to_string();
        let documents = parse_documents(&name, &read(&path)).unwrap_or_else(|e| panic!("{e}"));
        for document in documents {
            count += 1;
            match document {
                Err(err) => failures.push(err.to_string()),
                Ok(doc) => {
                    kinds.insert(doc.object.kind());
                    for error in doc.validate() {
                        failures.push(format!(
                            "{name}:{}: document {} ({}): {error}",
                            doc.line_of(&error.field).unwrap_or(0),
                            doc.index + 1,
                            doc.object.key()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let missing: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(missing.is_empty(), "no valid sample of {missing:?}");
    assert!(count >= 45, "only {count} valid documents");
}

/// `(field, fragment)` pairs from the document's `# expect:` lines.
fn expectations(document: &str) -> Vec<(String, String)> {
    document
        .lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(|spec| match spec.split_once(": ") {
            Some((field, fragment)) => (field.to_owned(), fragment.to_owned()),
            None => panic!("malformed expectation `{spec}`"),
        })
        .collect()
}

#[test]
fn invalid_samples_fail_at_the_expected_fields() {
    let mut kinds = BTreeSet::new();
    let mut count = 0;
    let mut failures = Vec::new();
    for path in corpus_files("invalid") {
        let name = path.display().to_string();
        for (n, document) in split_documents(&read(&path)).iter().enumerate() {
            count += 1;
            let expected = expectations(document);
            assert!(
                !expected.is_empty(),
                "{name} document {}: no `# expect:` line",
                n + 1
            );
            let mut docs = parse_documents(&name, document).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(docs.len(), 1, "{name} document {}", n + 1);
            let problems: Vec<(String, String)> = match docs.remove(0) {
                Err(err) => {
                    if let Some(kind) = err.kind.as_deref().and_then(|k| k.parse().ok()) {
                        kinds.insert(kind);
                    }
                    vec![(err.field.clone().unwrap_or_default(), err.message.clone())]
                }
                Ok(doc) => {
                    kinds.insert(doc.object.kind());
                    doc.validate()
                        .into_iter()
                        .map(|e| (e.field, e.message))
                        .collect()
                }
            };
            let matches = |(field, fragment): &(String, String), (f, m): &(String, String)| {
                field == f && m.contains(fragment.as_str())
            };
            let unmet: Vec<_> = expected
                .iter()
                .filter(|e| !problems.iter().any(|p| matches(e, p)))
                .collect();
            let unexpected: Vec<_> = problems
                .iter()
                .filter(|p| !expected.iter().any(|e| matches(e, p)))
                .collect();
            if !unmet.is_empty() || !unexpected.is_empty() {
                failures.push(format!(
                    "{name} document {}:\n  expected but missing: {unmet:?}\n  reported but not expected: {unexpected:?}",
                    n + 1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let missing: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(missing.is_empty(), "no invalid sample of {missing:?}");
    assert!(count >= 40, "only {count} invalid documents");
}

/// Enum values that mean the same as an absent field, and are not written back.
const DEFAULT_ENUM_VALUES: [(&str, &str); 6] = [
    ("location", "MESH_EXTERNAL"),
    ("resolution", "NONE"),
    ("mode", "DISABLE"),
    ("h2UpgradePolicy", "DEFAULT"),
    ("unmatchedPreflights", "UNSPECIFIED"),
    ("version", "V1"),
];

/// Every leaf of a JSON tree as (path, value), numbers as f64.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                leaves(child, &format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                leaves(child, &format!("{path}[{i}]"), out);
            }
        }
        Value::Number(n) => {
            out.push((path.to_owned(), Value::from(n.as_f64().unwrap_or(f64::NAN))))
        }
        _ => out.push((path.to_owned(), value.clone())),
    }
}

/// Whether a leaf holds a value equivalent to the field being absent.
fn is_zero(path: &str, value: &Value) -> bool {
    let field = path.rsplit('.').next().unwrap_or_default();
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || DEFAULT_ENUM_VALUES.contains(&(field, s.as_str())),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}

#[test]
fn valid_samples_round_trip_with_every_field() {
    let mut failures = Vec::new();
    for path in corpus_files("valid") {
        let name = path.display().to_string();
        for text in split_documents(&read(&path)) {
            let mut docs = parse_documents(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            let Ok(doc) = docs.remove(0) else {
                panic!("{name}: a valid sample failed to parse");
            };
            let yaml = serde_saphyr::to_string(&doc.object).unwrap_or_else(|e| panic!("{e}"));
            let reparsed: Vec<IstioObject> = parse_documents("round-trip", &yaml)
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
                .into_iter()
                .map(|d| d.unwrap_or_else(|e| panic!("{e}\n{yaml}")).object)
                .collect();
            if reparsed != [doc.object.clone()] {
                failures.push(format!(
                    "{}: types changed; YAML was:\n{yaml}",
                    doc.object.key()
                ));
            }

            let original: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            let written: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
            let (mut before, mut after) = (Vec::new(), Vec::new());
            leaves(&original, "", &mut before);
            leaves(&written, "", &mut after);
            for (leaf, value) in before {
                let kept = after.iter().any(|(p, v)| *p == leaf && *v == value);
                if !kept && leaf != ".apiVersion" && !is_zero(&leaf, &value) {
                    failures.push(format!(
                        "{}: {leaf} = {value} was dropped",
                        doc.object.key()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
