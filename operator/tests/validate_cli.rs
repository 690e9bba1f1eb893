//! `capstan validate` as users run it: the built binary on files, directories and
//! standard input.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const VALID: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{port: 9080, name: http}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

const INVALID: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 140
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    lables: {version: v1}
";

fn capstan(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .env("CAPSTAN_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run capstan: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // The process may exit before reading (usage errors): a broken pipe is fine.
        let _ = input.write_all(stdin.unwrap_or_default().as_bytes());
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

#[test]
fn valid_files_exit_zero() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = write(dir.path(), "valid.yaml", VALID);
    let output = capstan(&["validate", "-f", &file], None);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(
        stdout(&output),
        "valid: 2 Istio documents in 1 file; 1 document skipped (not Istio configuration) \
         (1 warning about config capstan does not apply yet)\n"
    );
    // Valid, but not applied by capstan yet: said on standard error, kind by kind.
    let warnings = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = warnings
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    // The Gateway is applied: only the PeerAuthentication is warned about, as applied by
    // capture-mode sidecars only (validate cannot know the mode `run` will have).
    assert_eq!(lines.len(), 1, "{warnings}");
    assert!(
        lines[0].contains("PeerAuthentication") && lines[0].contains("capture-mode sidecars"),
        "{warnings}"
    );
}

#[test]
fn invalid_files_print_one_line_per_problem_and_exit_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = write(dir.path(), "invalid.yaml", INVALID);
    let output = capstan(&["validate", "-f", &file], None);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{file}:9: document 1 (VirtualService bookinfo/reviews): spec.http[0].route: weights must sum to 100, got 190"
            ),
            format!(
                "{file}:13: document 1 (VirtualService bookinfo/reviews): spec.http[0].route[1].weight: weight 140 is out of range 0..=100"
            ),
            format!(
                "{file}:22: document 2 (DestinationRule reviews): spec.subsets[0].lables: unknown field `lables`, expected one of `name`, `labels`, `trafficPolicy`"
            ),
            "invalid: 3 errors in 2 of 2 Istio documents in 1 file".to_owned(),
        ]
    );
}

#[test]
fn directories_and_stdin() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let nested = dir.path().join("nested");
    std::fs::create_dir(&nested).unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "a.yaml", VALID);
    write(&nested, "b.yml", VALID);
    write(dir.path(), "notes.txt", "not yaml: [");
    let root = dir.path().display().to_string();
    let output = capstan(&["validate", "-f", &root], None);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).starts_with("valid: 4 Istio documents in 2 files"),
        "{}",
        stdout(&output)
    );

    let output = capstan(&["validate", "-f", "-"], Some(INVALID));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).starts_with("<stdin>:9: document 1 (VirtualService bookinfo/reviews): "),
        "{}",
        stdout(&output)
    );
}

#[test]
fn json_output_lists_every_problem() {
    let output = capstan(&["validate", "-o", "json", "-f", "-"], Some(INVALID));
    assert_eq!(output.status.code(), Some(1));
    let problems: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&output)));
    let Some(problems) = problems.as_array() else {
        panic!("expected an array: {problems}");
    };
    assert_eq!(problems.len(), 3);
    assert_eq!(
        problems[0],
        serde_json::json!({
            "file": "<stdin>",
            "document": 1,
            "line": 9,
            "kind": "VirtualService",
            "namespace": "bookinfo",
            "name": "reviews",
            "field": "spec.http[0].route",
            "message": "weights must sum to 100, got 190",
        })
    );
    assert_eq!(problems[2]["namespace"], serde_json::Value::Null);
    assert_eq!(problems[2]["field"], "spec.subsets[0].lables");
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid: 3 errors"));
}

#[test]
fn usage_errors_exit_two() {
    let output = capstan(&["validate", "-f", "/nonexistent/capstan.yaml"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/capstan.yaml"));
    let output = capstan(&["validate"], None);
    assert_eq!(output.status.code(), Some(2), "missing -f");
    let output = capstan(&["validate", "-o", "xml", "-f", "-"], Some(VALID));
    assert_eq!(output.status.code(), Some(2), "unknown format");
}
