//! Table-driven validation tests: each case is a small YAML object that must produce
//! an error at the given field whose message contains the given text.

use crate::parse::parse_single;
use crate::validate::{ValidationError, validate};

fn errors_of(yaml: &str) -> Vec<ValidationError> {
    let doc = parse_single("case.yaml", yaml).unwrap_or_else(|e| panic!("parse failed: {e}"));
    validate(&doc.object)
}

fn object(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\nspec:\n{spec}"
    )
}

/// (kind, spec body indented by two spaces, expected field, expected message fragment)
const INVALID: &[(&str, &str, &str, &str)] = &[
    // --- ServiceEntry
    (
        "ServiceEntry",
        "  hosts: [db.example.com]\n  resolution: STATIC\n  ports: [{number: 5432, name: tcp}]\n",
        "spec.endpoints",
        "STATIC requires endpoints",
    ),
    (
        "ServiceEntry",
        "  hosts: [db.example.com]\n  resolution: STATIC\n  ports: [{number: 5432, name: tcp}]\n  endpoints: [{address: db1.example.com}]\n",
        "spec.endpoints[0].address",
        "requires IP addresses",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  ports:\n  - {number: 0, name: http, protocol: HTTP}\n",
        "spec.ports[0].number",
        "out of range",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  - {number: 70000, name: big, protocol: HTTP}\n",
        "spec.ports[1].number",
        "70000 is out of range",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: http}\n  - {number: 81, name: http}\n",
        "spec.ports[1].name",
        "duplicate port name `http`",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: FTP}]\n",
        "spec.ports[0].protocol",
        "unsupported protocol",
    ),
    (
        "ServiceEntry",
        "  hosts: ['*']\n  ports: [{number: 80, name: http}]\n",
        "spec.hosts[0]",
        "`*` alone",
    ),
    (
        "ServiceEntry",
        "  ports: [{number: 80, name: http}]\n",
        "spec.hosts",
        "at least one host",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  endpoints:\n  - address: 10.0.0.1\n    ports: {grpc: 9000}\n",
        "spec.endpoints[0].ports.grpc",
        "not declared",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  endpoints:\n  - address: 10.0.0.1\n    labels: {app: 'bad value'}\n",
        "spec.endpoints[0].labels",
        "not a valid label value",
    ),
    (
        "ServiceEntry",
        "  hosts: ['*.example.com']\n  resolution: DNS\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n",
        "spec.hosts[0]",
        "wildcard hosts need endpoints",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  resolution: NONE\n  endpoints: [{address: 10.0.0.1}]\n",
        "spec.endpoints",
        "resolution NONE",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com, b.example.com]\n  resolution: DNS\n  ports: [{number: 9000, name: tcp, protocol: TCP}]\n",
        "spec.ports[0].protocol",
        "several hosts",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  addresses: [10.0.0.0/33]\n",
        "spec.addresses[0]",
        "CIDR prefix",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  exportTo: ['~', '.']\n",
        "spec.exportTo[0]",
        "cannot be combined",
    ),
    // --- DestinationRule
    (
        "DestinationRule",
        "  subsets: [{name: v1, labels: {version: v1}}]\n",
        "spec.host",
        "host is required",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n",
        "spec.subsets[1].name",
        "duplicate subset name `v1`",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  subsets: [{labels: {version: v1}}]\n",
        "spec.subsets[0].name",
        "subset name is required",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  subsets: [{name: v1}]\n",
        "spec.subsets[0].labels",
        "at least one label",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  subsets: [{name: V1, labels: {version: v1}}]\n",
        "spec.subsets[0].name",
        "DNS-1123 label",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "required with mode MUTUAL",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL, caCertificates: /etc/ca.pem}\n",
        "spec.trafficPolicy.tls.caCertificates",
        "ISTIO_MUTUAL",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}\n",
        "spec.trafficPolicy.loadBalancer",
        "only one of `simple`, `consistentHash`",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    outlierDetection: {interval: 5 seconds}\n",
        "spec.trafficPolicy.outlierDetection.interval",
        "invalid duration",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 150}\n",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "out of range",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n    - port: {number: 80}\n",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "already has settings",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    tunnel: {protocol: GET, targetHost: proxy.example.com, targetPort: 3128}\n",
        "spec.trafficPolicy.tunnel.protocol",
        "CONNECT or POST",
    ),
    (
        "DestinationRule",
        "  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: us-east/*\n          to: {us-east/*: 60, us-west/*: 30}\n",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "sum to 90",
    ),
    // --- VirtualService
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route:\n    - {destination: {host: ratings, subset: v1}, weight: 80}\n    - {destination: {host: ratings, subset: v2}, weight: 10}\n",
        "spec.http[0].route",
        "weights must sum to 100, got 90",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route:\n    - {destination: {host: ratings}, weight: 120}\n",
        "spec.http[0].route[0].weight",
        "out of range",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route:\n    - {destination: {host: ratings}, weight: 100}\n    - {destination: {host: ratings}}\n    - {destination: {host: ratings}, weight: -1}\n",
        "spec.http[0].route[2].weight",
        "out of range",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - match: [{uri: {regex: '/api/(v1'}}]\n    route: [{destination: {host: ratings}}]\n",
        "spec.http[0].match[0].uri",
        "invalid regex",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: ratings}}]\n",
        "spec.http[0].match[0].uri",
        "only one of `exact`, `prefix` or `regex`",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - match: [{uri: {}}]\n    route: [{destination: {host: ratings}}]\n",
        "spec.http[0].match[0].uri",
        "must be set",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - match: [{headers: {x-version: {regex: '[a-'}}}]\n    route: [{destination: {host: ratings}}]\n",
        "spec.http[0].match[0].headers.x-version",
        "invalid regex",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - match: [{headers: {'bad header': {exact: x}}}]\n    route: [{destination: {host: ratings}}]\n",
        "spec.http[0].match[0].headers.bad header",
        "not a valid HTTP header name",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - name: nothing\n",
        "spec.http[0]",
        "one of `route`, `redirect`, `directResponse`, `delegate` must be set",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    redirect: {uri: /elsewhere}\n",
        "spec.http[0]",
        "found route, redirect",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route: [{destination: {subset: v1}}]\n",
        "spec.http[0].route[0].destination.host",
        "host is required",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    timeout: ten seconds\n",
        "spec.http[0].timeout",
        "invalid duration",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - directResponse: {status: 99}\n",
        "spec.http[0].directResponse.status",
        "out of range",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - directResponse: {status: 200, body: {bytes: 'not base64!'}}\n",
        "spec.http[0].directResponse.body.bytes",
        "must be base64",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - redirect: {uri: /x, redirectCode: 200}\n",
        "spec.http[0].redirect.redirectCode",
        "not one of",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    fault: {abort: {percentage: {value: 10}}}\n",
        "spec.http[0].fault.abort",
        "one of `httpStatus`",
    ),
    (
        "VirtualService",
        "  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    headers: {request: {set: {':path': /x}}}\n",
        "spec.http[0].headers.request.set.:path",
        "pseudo-header",
    ),
    (
        "VirtualService",
        "  gateways: [ingress]\n  http:\n  - route: [{destination: {host: r}}]\n",
        "spec.gateways",
        "must not name gateways",
    ),
    (
        "VirtualService",
        "  http:\n  - delegate: {name: other}\n",
        "spec.http[0].delegate",
        "cannot delegate again",
    ),
    (
        "VirtualService",
        "  hosts: ['*']\n  http:\n  - route: [{destination: {host: r}}]\n",
        "spec.hosts[0]",
        "bound to gateways",
    ),
    (
        "VirtualService",
        "  hosts: ['*.example.com', a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: a.example.com}}]}]\n",
        "spec.hosts[1]",
        "overlaps `*.example.com`",
    ),
    (
        "VirtualService",
        "  hosts: [r, R]\n  http: [{route: [{destination: {host: r}}]}]\n",
        "spec.hosts[1]",
        "duplicate host",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n  http:\n  - {name: main, route: [{destination: {host: r}}]}\n  - {name: main, route: [{destination: {host: r}}]}\n",
        "spec.http[1].name",
        "duplicate route name `main`",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n",
        "spec",
        "at least one of `http`, `tls` or `tcp`",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n  tcp:\n  - route:\n    - {destination: {host: a}, weight: 50}\n    - {destination: {host: b}, weight: 40}\n",
        "spec.tcp[0].route",
        "got 90",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n  tls:\n  - route: [{destination: {host: a}}]\n",
        "spec.tls[0].match",
        "at least one match",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n  gateways: [Bad_Gateway]\n  http: [{route: [{destination: {host: r}}]}]\n",
        "spec.gateways[0]",
        "gateway `Bad_Gateway`",
    ),
];

#[test]
fn invalid_objects_report_field_paths() {
    let mut failures = Vec::new();
    for (kind, spec, field, fragment) in INVALID {
        let errors = errors_of(&object(kind, spec));
        let hit = errors
            .iter()
            .any(|e| e.field == *field && e.message.contains(fragment));
        if !hit {
            failures.push(format!(
                "{kind} with\n{spec}expected `{field}: ...{fragment}...`, got {errors:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// (kind, spec) pairs that must validate clean.
const VALID: &[(&str, &str)] = &[
    // A single destination needs no weight.
    (
        "VirtualService",
        "  hosts: [r]\n  http: [{route: [{destination: {host: r}}]}]\n",
    ),
    // A single destination with weight 0 is fine too.
    (
        "VirtualService",
        "  hosts: [r]\n  http: [{route: [{destination: {host: r}, weight: 0}]}]\n",
    ),
    // Header presence match (`{}`) and wildcard host on a gateway.
    (
        "VirtualService",
        "  hosts: ['*']\n  gateways: [istio-system/ingress]\n  http:\n  - match: [{headers: {x-canary: {}}, queryParams: {debug: {exact: '1'}}}]\n    route: [{destination: {host: r.ns.svc.cluster.local, port: {number: 8080}}}]\n",
    ),
    (
        "VirtualService",
        "  hosts: [r]\n  http:\n  - redirect: {uri: /v2, redirectCode: 308}\n  - directResponse: {status: 503, body: {string: down}}\n  - delegate: {name: reviews-routes, namespace: team}\n",
    ),
    (
        "VirtualService",
        "  hosts: [r.example.com]\n  tls:\n  - match: [{sniHosts: [r.example.com], port: 443}]\n    route: [{destination: {host: r.example.com}}]\n  tcp:\n  - match: [{port: 27017, destinationSubnets: [10.0.0.0/8]}]\n    route: [{destination: {host: mongo}}]\n",
    ),
    (
        "ServiceEntry",
        "  hosts: [a.example.com]\n  resolution: DNS\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  endpoints: [{address: a-origin.example.com}, {address: 192.0.2.1}]\n",
    ),
    (
        "ServiceEntry",
        "  hosts: ['*.example.com']\n  resolution: NONE\n",
    ),
    (
        "ServiceEntry",
        "  hosts: [vm.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  workloadSelector: {labels: {app: vm}}\n",
    ),
    (
        "DestinationRule",
        "  host: '*.example.com'\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: client-cert}\n    loadBalancer:\n      consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 1024}}\n      warmup: {duration: 30s}\n",
    ),
];

#[test]
fn valid_objects_have_no_errors() {
    for (kind, spec) in VALID {
        let errors = errors_of(&object(kind, spec));
        assert_eq!(errors, vec![], "{kind} with\n{spec}");
    }
}

#[test]
fn metadata_is_checked() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {namespace: Bad_NS}\nspec: {host: r}\n";
    let fields: Vec<String> = errors_of(yaml).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["metadata.name", "metadata.namespace"]);
}

#[test]
fn display_is_field_then_message() {
    let e = ValidationError {
        field: "spec.host".into(),
        message: "host is required".into(),
    };
    assert_eq!(e.to_string(), "spec.host: host is required");
}
