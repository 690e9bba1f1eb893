use super::*;

/// reviews (HTTP 9080, a workload with a sidecar running as `reviews`) and db (TCP 5432) in
/// bookinfo, with `policies` in a second file.
fn folder(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let entries = ["reviews:9080:HTTP:10", "db:5432:TCP:20"]
        .iter()
        .map(|e| {
            let parts: Vec<&str> = e.split(':').collect();
            let (name, port, protocol, vip) = (parts[0], parts[1], parts[2], parts[3]);
            format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [240.0.0.{vip}]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: {}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.1, serviceAccount: reviews, labels: {{app: reviews, security.istio.io/tlsMode: istio}}}}
",
                protocol.to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(dir.path().join("services.yaml"), entries).expect("written");
    std::fs::write(dir.path().join("policies.yaml"), policies).expect("written");
    dir
}

fn args(dir: &tempfile::TempDir, from: &[&str], to: &str, path: Option<&str>) -> ExplainArgs {
    let mut argv = vec![
        "explain".to_string(),
        "-f".into(),
        dir.path().display().to_string(),
        "--to".into(),
        to.into(),
    ];
    argv.extend(from.iter().map(|s| s.to_string()));
    if let Some(path) = path {
        argv.extend(["--path".to_string(), path.to_string()]);
    }
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExplainArgs,
    }
    use clap::Parser;
    Cli::try_parse_from(argv).expect("valid arguments").args
}

const SIDECAR: [&str; 2] = ["--from", "bookinfo/productpage"];
const OUTSIDE: [&str; 4] = ["--from-outside", "bookinfo", "--source-ip", "10.9.9.9"];

#[test]
fn without_policies_a_mesh_caller_goes_over_mutual_tls_and_is_allowed() {
    let dir = folder("");
    let (text, allowed) = explain(&args(&dir, &SIDECAR, "reviews:9080", None)).expect("explained");
    assert!(allowed, "{text}");
    assert!(
        text.contains("mutual TLS, peer spiffe://cluster.local/ns/bookinfo/sa/productpage"),
        "{text}"
    );
    assert!(text.contains("auto mTLS"), "{text}");
}

#[test]
fn strict_refuses_a_caller_without_a_sidecar() {
    let dir = folder(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
",
    );
    let (text, allowed) = explain(&args(&dir, &OUTSIDE, "reviews:9080", None)).expect("explained");
    assert!(!allowed, "{text}");
    assert!(
        text.contains("refused: plain text to a port whose PeerAuthentication is STRICT"),
        "{text}"
    );
    let (text, allowed) = explain(&args(&dir, &SIDECAR, "reviews:9080", None)).expect("explained");
    assert!(allowed, "{text}");
}

const DENY_ALL_ALLOW_ONE: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: bookinfo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: bookinfo}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/productpage]}}]
    to: [{operation: {paths: [/api/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: bookinfo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/api/admin*]}}]
";

#[test]
fn the_deciding_rule_is_named_with_its_file_and_line() {
    let dir = folder(DENY_ALL_ALLOW_ONE);
    let api = explain(&args(&dir, &SIDECAR, "reviews:9080", Some("/api/books")));
    let (text, allowed) = api.expect("explained");
    assert!(allowed, "{text}");
    assert!(
        text.contains(
            "decision: ALLOW: an ALLOW rule matches it, ns[bookinfo]-policy[allow-api]-rule[0] ("
        ) && text.contains("policies.yaml:11)"),
        "{text}"
    );
    let (text, allowed) =
        explain(&args(&dir, &SIDECAR, "reviews:9080", Some("/api/admin/x"))).expect("explained");
    assert!(!allowed, "{text}");
    assert!(
        text.contains(
            "decision: DENY: a DENY rule matches it, ns[bookinfo]-policy[no-admin]-rule[0]"
        ),
        "{text}"
    );
    let (text, allowed) =
        explain(&args(&dir, &SIDECAR, "reviews:9080", Some("/other"))).expect("explained");
    assert!(!allowed, "{text}");
    assert!(text.contains("no ALLOW policy matches it"), "{text}");
    // No identity: the principal rule cannot match.
    let (text, allowed) =
        explain(&args(&dir, &OUTSIDE, "reviews:9080", Some("/api/books"))).expect("explained");
    assert!(!allowed, "{text}");
    // TCP: the HTTP-only ALLOW rule is dropped there, the path DENY rule's path too.
    let (text, allowed) = explain(&args(&dir, &SIDECAR, "db:5432", None)).expect("explained");
    assert!(!allowed, "{text}");
    assert!(text.contains("(TCP)"), "{text}");
}

#[test]
fn usage_errors_name_what_is_wrong() {
    let dir = folder("");
    let err = explain(&args(&dir, &SIDECAR, "ratings:9080", None)).expect_err("no service");
    assert!(
        err.contains("no service has host ratings.bookinfo.svc.cluster.local"),
        "{err}"
    );
    let err = explain(&args(&dir, &SIDECAR, "reviews:1", None)).expect_err("no port");
    assert!(err.contains("has no port 1"), "{err}");
}

/// Istio's "Authorization for HTTP traffic" task on bookinfo, as its steps describe it: an
/// allow-nothing policy for the namespace, then GET on productpage for anyone, and GET on
/// details and reviews for productpage's account only, and on ratings for reviews' only.
#[test]
fn istios_http_authorization_task_decides_as_its_steps_say() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let services: String = [("productpage", 9080, "bookinfo-productpage"), ("details", 9080, "bookinfo-details"), ("reviews", 9080, "bookinfo-reviews"), ("ratings", 9080, "bookinfo-ratings")]
        .iter()
        .enumerate()
        .map(|(i, (name, port, account))| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.1.{}, serviceAccount: {account}, labels: {{app: {name}, security.istio.io/tlsMode: istio}}}}
---
",
                i + 1
            )
        })
        .collect();
    let viewer = |name: &str, from: Option<&str>| {
        let source = from.map_or(String::new(), |sa| {
            format!("  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/{sa}\"]\n    to:\n")
        });
        let to = if source.is_empty() { "  - to:\n" } else { "" };
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: {name}
  action: ALLOW
  rules:
{source}{to}    - operation:
        methods: [\"GET\"]
---
"
        )
    };
    let policies = [
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: default\nspec:\n  {}\n---\n".to_string(),
        viewer("productpage", None),
        viewer("details", Some("bookinfo-productpage")),
        viewer("reviews", Some("bookinfo-productpage")),
        viewer("ratings", Some("bookinfo-reviews")),
    ]
    .concat();
    std::fs::write(dir.path().join("bookinfo.yaml"), services + &policies).expect("written");
    let decide = |from: &[&str], to: &str, method: &str| {
        let mut args = args(&dir, from, to, Some("/"));
        args.method = Some(method.into());
        let (text, allowed) = explain(&args).expect("explained");
        (allowed, text)
    };
    let gateway = [
        "--from",
        "istio-system/istio-ingressgateway-service-account",
    ];
    let productpage = ["--from", "default/bookinfo-productpage"];
    let reviews = ["--from", "default/bookinfo-reviews"];
    for (from, to, method, allowed) in [
        (
            &gateway[..],
            "productpage.default.svc.cluster.local:9080",
            "GET",
            true,
        ),
        (
            &gateway,
            "productpage.default.svc.cluster.local:9080",
            "POST",
            false,
        ),
        (&productpage, "details:9080", "GET", true),
        (&productpage, "reviews:9080", "GET", true),
        (
            &gateway,
            "details.default.svc.cluster.local:9080",
            "GET",
            false,
        ),
        (&productpage, "ratings:9080", "GET", false),
        (&reviews, "ratings:9080", "GET", true),
        (&reviews, "ratings:9080", "DELETE", false),
    ] {
        let (said, text) = decide(from, to, method);
        assert_eq!(said, allowed, "{from:?} {method} {to}:\n{text}");
    }
}

/// A port without a declared protocol: another pod's plain-text request is inspected as HTTP
/// and matched by a path rule; the mesh's mutual TLS from a sidecar takes the TCP chain, where
/// the HTTP-only ALLOW rule is dropped.
#[test]
fn a_port_without_a_protocol_is_http_in_plain_text_and_tcp_over_mutual_tls() {
    let dir = folder(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: bookinfo}
spec:
  hosts: [web.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: web}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.9, serviceAccount: web, labels: {app: web, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {paths: [/api/*]}}]}]
",
    );
    let (text, allowed) =
        explain(&args(&dir, &OUTSIDE, "web:8000", Some("/api/x"))).expect("explained");
    assert!(allowed && text.contains("GET /api/x"), "{text}");
    let (text, allowed) =
        explain(&args(&dir, &SIDECAR, "web:8000", Some("/api/x"))).expect("explained");
    assert!(!allowed && text.contains("(TCP)"), "{text}");
}

const AUTHZ_AND_CUSTOM: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz, namespace: bookinfo}
spec:
  hosts: [authz.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: authz}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";

fn with_mesh_config(
    mut args: ExplainArgs,
    dir: &tempfile::TempDir,
    providers: &str,
) -> ExplainArgs {
    let path = dir.path().join("mesh.config");
    std::fs::write(&path, providers).expect("written");
    args.mesh_config = Some(path);
    args
}

#[test]
fn a_custom_rule_puts_the_call_to_the_authorizer_whose_answer_is_given() {
    let dir = folder(AUTHZ_AND_CUSTOM);
    let providers = "extensionProviders:\n- name: authz\n  envoyExtAuthzHttp: {service: authz.bookinfo.svc.cluster.local, port: 8000}\n";
    let config = tempfile::tempdir().expect("a temp dir");
    let ask = |path: &str, answer: ExtAuthzAnswer| {
        let mut args = with_mesh_config(
            args(&dir, &SIDECAR, "reviews:9080", Some(path)),
            &config,
            providers,
        );
        args.ext_authz = answer;
        explain(&args).expect("explained")
    };
    let (text, allowed) = ask("/admin", ExtAuthzAnswer::Allow);
    assert!(allowed, "{text}");
    assert!(
        text.contains("CUSTOM filter: istio-ext-authz-authz-ns[bookinfo]-policy[ext]-rule[0] (")
            && text.contains(
                "policies.yaml:18) matches: the call is put to the external authorizer \"authz\""
            ),
        "{text}"
    );
    assert!(
        text.contains("decision: ALLOW: the external authorizer \"authz\" allows it"),
        "{text}"
    );
    let (text, allowed) = ask("/admin", ExtAuthzAnswer::Deny);
    assert!(!allowed, "{text}");
    assert!(
        text.contains("which denies it (as --ext-authz deny says)"),
        "{text}"
    );
    let (text, allowed) = ask("/other", ExtAuthzAnswer::Deny);
    assert!(allowed, "{text}");
    assert!(text.contains("CUSTOM filter: no rule matches"), "{text}");
}

#[test]
fn a_custom_rule_without_a_usable_provider_denies_what_it_matches() {
    let dir = folder(AUTHZ_AND_CUSTOM);
    let config = tempfile::tempdir().expect("a temp dir");
    let args = with_mesh_config(
        args(&dir, &SIDECAR, "reviews:9080", Some("/admin")),
        &config,
        "extensionProviders: []\n",
    );
    let (text, allowed) = explain(&args).expect("explained");
    assert!(!allowed, "{text}");
    assert!(
        text.contains("decision: DENY: a CUSTOM rule matches it and its provider cannot be used (no extension provider \"authz\" in the mesh config"),
        "{text}"
    );
    assert!(text.contains("-deny-due-to-bad-CUSTOM-action ("), "{text}");
}

/// A workload whose Sidecar lists ingress listeners: a listed port is decided as a service
/// port (its PeerAuthentication, its policies), an unlisted one goes to the passthrough,
/// which is held to the same, as istiod's.
#[test]
fn a_sidecars_ingress_ports_decide_and_other_ports_pass_through() {
    let dir = folder(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 9080, name: http, protocol: HTTP}
",
    );
    let (text, allowed) = explain(&args(&dir, &OUTSIDE, "reviews:9080", None)).expect("explained");
    assert!(!allowed, "{text}");
    assert!(text.contains("STRICT"), "{text}");
    let (text, allowed) = explain(&args(&dir, &OUTSIDE, "db:5432", None)).expect("explained");
    assert!(!allowed, "{text}");
    assert!(
        text.contains("mutual TLS only (STRICT), on the passthrough"),
        "{text}"
    );
    let permissive = folder(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 9080, name: http, protocol: HTTP}
",
    );
    let (text, allowed) =
        explain(&args(&permissive, &OUTSIDE, "db:5432", None)).expect("explained");
    assert!(allowed, "{text}");
    assert!(text.contains("on the passthrough"), "{text}");
}

#[test]
fn a_dry_run_policy_is_said_to_match_and_decides_nothing() {
    let dir = folder(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: probe
  namespace: bookinfo
  annotations: {istio.io/dry-run: \"true\"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
",
    );
    let (text, allowed) =
        explain(&args(&dir, &SIDECAR, "reviews:9080", Some("/admin/x"))).expect("explained");
    assert!(allowed, "{text}");
    assert!(
        text.contains("DENY dry run (not enforced): ns[bookinfo]-policy[probe]-rule[0]")
            && text.contains("would match"),
        "{text}"
    );
    let (text, allowed) =
        explain(&args(&dir, &SIDECAR, "reviews:9080", Some("/ok"))).expect("explained");
    assert!(allowed, "{text}");
    assert!(
        text.contains("DENY dry run (not enforced): no rule matches"),
        "{text}"
    );
}
