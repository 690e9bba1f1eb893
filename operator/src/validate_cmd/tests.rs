use super::*;

const MIXED: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: 40
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: custom}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
";

#[test]
fn reports_istio_problems_and_skips_other_objects() {
    let mut report = Report::default();
    report.check_text("mixed.yaml", MIXED);
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "mixed.yaml:11: document 2 (VirtualService bookinfo/reviews): spec.http[0].route: weights must sum to 100, got 90",
            "mixed.yaml:18: document 3 (EnvoyFilter custom): kind: unsupported kind `EnvoyFilter` (apiVersion `networking.istio.io/v1alpha3`); supported kinds: ServiceEntry, DestinationRule, VirtualService, Gateway, Sidecar, WorkloadEntry, WorkloadGroup, PeerAuthentication, AuthorizationPolicy, RequestAuthentication",
        ]
    );
    assert_eq!(report.skipped, 1);
    assert_eq!(report.documents, 3);
    assert_eq!(
        report.summary(),
        "invalid: 2 errors in 2 of 3 Istio documents in 1 file; 1 document skipped (not Istio configuration)"
    );
}

#[test]
fn yaml_errors_are_file_problems() {
    let mut report = Report::default();
    report.check_text("broken.yaml", "a: [1, 2\n");
    assert_eq!(report.problems.len(), 1);
    let line = report.problems[0].to_string();
    assert!(line.starts_with("broken.yaml:"), "{line}");
    assert!(line.contains("invalid YAML"), "{line}");
    assert_eq!(report.problems[0].document, None);
}

#[test]
fn unhonoured_config_is_a_warning_not_an_error() {
    let mut report = Report::default();
    report.check_text(
        "mesh.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: web}
spec:
  egress: [{hosts: ['./*']}]
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: proxy.example.com, port: {number: 3128}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: web}
spec:
  host: db
  trafficPolicy: {loadBalancer: {zoneAwareLbSetting: {enabled: true}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: web}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: SIMPLE, credentialName: web-cert}
",
    );
    report.finish();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // `validate` cannot know the listener mode `run` will use: it says where the policy (its
    // egress proxy too) applies.
    assert!(
        lines[0].starts_with("mesh.yaml:6: document 1 (Sidecar web/default): spec.outboundTrafficPolicy: applies to capture-mode sidecars"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "mesh.yaml:15: document 2 (DestinationRule web/db): spec.trafficPolicy.loadBalancer.zoneAwareLbSetting:"
        ),
        "{}",
        lines[1]
    );
    // credentialName is served; its Secret is not among the files.
    assert!(
        lines[2].starts_with(
            "mesh.yaml:25: document 3 (Gateway web/gw): spec.servers[0].tls.credentialName: \
                 Secret web/web-cert not found"
        ) && lines[2].contains("not in the files checked"),
        "{}",
        lines[2]
    );
    assert!(
        report
            .summary()
            .starts_with("valid: 3 Istio documents in 1 file (3 warnings")
    );
}

/// A self-signed certificate for `name` and its key, PEM.
fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![name.into()]).expect("params");
    let cert = params.self_signed(&key).expect("cert").pem();
    (cert, key.serialize_pem())
}

fn tls_secret(name: &str, entries: &[(&str, &str)]) -> String {
    use base64::Engine;
    let data: Vec<String> = entries
        .iter()
        .map(|(k, v)| {
            let value = base64::engine::general_purpose::STANDARD.encode(v);
            format!("  {k}: {value}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: web}}\ndata:\n{}",
        data.concat()
    )
}

#[test]
fn credential_names_are_checked_against_the_secrets_of_every_file() {
    let (cert, key) = self_signed("web.example.com");
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: web}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['web.example.com']
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: ['api.example.com']
    tls: {mode: MUTUAL, credentialName: api-cert}
  - port: {number: 9443, name: https-broken, protocol: HTTPS}
    hosts: ['old.example.com']
    tls: {mode: SIMPLE, credentialName: broken-cert}
";
    let secrets = [
        tls_secret("web-cert", &[("tls.crt", &cert), ("tls.key", &key)]),
        // MUTUAL without ca.crt and without api-cert-cacert: no CA for clients.
        tls_secret("api-cert", &[("cert", &cert), ("key", &key)]),
        tls_secret("broken-cert", &[("tls.crt", "junk"), ("tls.key", &key)]),
    ]
    .join("---\n");
    let mut report = Report::default();
    report.check_text("gateway.yaml", gateway);
    report.check_text("secrets.yaml", &secrets);
    report.finish();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "gateway.yaml:12: document 1 (Gateway web/gw): spec.servers[1].tls.credentialName: \
                 MUTUAL needs a CA"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(
            "spec.servers[2].tls.credentialName: Secret web/broken-cert cannot be used: \
                 tls.crt holds no PEM certificate; this server is not served"
        ),
        "{}",
        lines[1]
    );
    assert_eq!(report.skipped, 3, "Secrets are not Istio documents");

    // The CA in a separate Secret, as Istio names it, settles the MUTUAL server.
    let mut report = Report::default();
    report.check_text("gateway.yaml", gateway);
    report.check_text("secrets.yaml", &secrets);
    report.check_text(
        "ca.yaml",
        &tls_secret("api-cert-cacert", &[("cacert", &cert)]),
    );
    report.finish();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
}

/// A DestinationRule's `credentialName` is checked as a Gateway's: against the Secrets of
/// every file, in whichever namespace they are (each gateway proxy reads its own).
#[test]
fn destination_rule_credentials_are_checked_against_the_secrets() {
    let (cert, key) = self_signed("client");
    let rule = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: web}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: api-client}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, credentialName: nowhere}
";
    let mut report = Report::default();
    report.check_text("rule.yaml", rule);
    // A certificate and key, but no CA to verify the server with.
    report.check_text(
        "secrets.yaml",
        &tls_secret("api-client", &[("tls.crt", &cert), ("tls.key", &key)]),
    );
    report.finish();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "rule.yaml:9: document 1 (DestinationRule web/api): \
             spec.trafficPolicy.portLevelSettings[0].tls.credentialName: no CA to verify the \
             server with"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "rule.yaml:14: document 1 (DestinationRule web/api): \
             spec.subsets[0].trafficPolicy.tls.credentialName: no Secret nowhere (or \
             nowhere-cacert) in any namespace"
        ),
        "{}",
        lines[1]
    );

    // The CA in a separate Secret settles the MUTUAL setting.
    let mut report = Report::default();
    report.check_text("rule.yaml", rule);
    report.check_text(
        "secrets.yaml",
        &[
            tls_secret("api-client", &[("tls.crt", &cert), ("tls.key", &key)]),
            tls_secret("api-client-cacert", &[("ca.crt", &cert)]),
        ]
        .join("---\n"),
    );
    report.finish();
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no Secret nowhere"), "{lines:?}");
}

#[test]
fn valid_summary() {
    let mut report = Report::default();
    report.check_text(
            "ok.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r}\n",
        );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.summary(), "valid: 1 Istio document in 1 file");
}

/// A `tcp` match's conditions a gateway does not read are warned by `validate` too, with
/// the line of the match.
#[test]
fn stream_match_conditions_gateways_do_not_read_are_warned() {
    let mut report = Report::default();
    report.check_text(
        "vs.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [\"*\"]
  gateways: [istio-system/edge]
  tcp:
  - match: [{sourceLabels: {app: a}, port: 5432}]
    route: [{destination: {host: db}}]
",
    );
    report.finish();
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "vs.yaml:8: document 1 (VirtualService shop/db): spec.tcp[0].match[0].sourceLabels: \
          sourceLabels is not read by gateways, as istiod's gateways do not read it: on the \
          gateways this match names it holds without it"
        ]
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// What `run` reports as it reads routes and `Sidecar` scopes, `validate` says too.
#[test]
fn route_and_sidecar_problems_run_reports_are_validate_warnings() {
    let mut report = Report::default();
    report.check_text(
        "mesh.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: web}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    fault: {delay: {exponentialDelay: 1s, percentage: {value: 10}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: web}
spec:
  ingress:
  - port: {number: 9443, name: https, protocol: HTTPS}
    defaultEndpoint: 127.0.0.1:8443
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, cipherSuites: [TLS_BOGUS]}
",
    );
    report.finish();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let fields: Vec<String> = (report.warnings.iter())
        .filter_map(|w| w.field.clone())
        .collect();
    assert!(
        fields.iter().any(|f| f.contains("fault.delay")),
        "the fault run leaves out: {fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|f| f.contains("ingress[0].tls.cipherSuites")),
        "the cipher suite Envoy does not know: {fields:?}"
    );
}

/// A Sidecar egress listener declaring TCP on a port where a ServiceEntry of another file
/// (read after it) is HTTP is warned about once every file is read, at the field's line; a
/// service of another namespace its hosts do not name is not.
#[test]
fn an_egress_port_protocol_other_than_a_named_services_is_warned_after_every_file() {
    let mut report = Report::default();
    report.check_text(
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 9080, protocol: TCP, name: tcp}
    hosts: [\"./*\"]
",
    );
    report.check_text(
        "entries.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: elsewhere}
spec:
  hosts: [reviews.elsewhere.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: DNS
",
    );
    assert_eq!(report.problems, vec![]);
    assert_eq!(report.warnings, vec![], "nothing before every file is read");
    report.finish();
    let lines: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "sidecar.yaml:6: document 1 (Sidecar bookinfo/default): spec.egress[0].port.protocol: \
          reviews.bookinfo.svc.cluster.local is HTTP on port 9080, not TCP: capstan handles its \
          traffic as HTTP (istiod would build the port's listener as TCP)"
        ]
    );
}
