use capstan_xds::{ProxyInfo, Role};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Message;

use super::*;
use crate::translate::test_support::{REVIEWS, mesh};

const INGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /certs/cert.pem, privateKey: /certs/key.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: bookinfo}
spec:
  hosts: ["shop.example.com"]
  gateways: [edge/ingress]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v2}}]
"#;

fn cluster_of(config: &RouteConfiguration, domain: &str) -> Vec<String> {
    let vh = config
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| panic!("no virtual host for {domain} in {}", config.name));
    vh.routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn router(labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo {
        role: Role::Router,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The `http.8080` route configuration a gateway proxy of `namespace` with `labels` gets, as
/// the snapshot picks its variant (the most specific selector picking it).
fn http_routes_of<'a>(
    config: &'a GatewayConfig,
    namespace: &str,
    labels: &[(&str, &str)],
) -> &'a RouteConfiguration {
    let proxy = ProxyInfo {
        namespace: Some(namespace.into()),
        ..router(labels)
    };
    let (_, route) = config
        .routes
        .iter()
        .filter(|(s, r)| r.name == "http.8080" && s.matches(&proxy))
        .max_by_key(|(s, _)| s.specificity())
        .expect("a route configuration for the proxy");
    route
}

/// Servers on one port bound to other addresses (and a Unix socket) are listeners of their
/// own, their route configurations named with the address as istiod names them.
#[test]
fn bound_servers_get_listeners_of_their_own() {
    let bound = INGRESS.replace(
        "  - port: {number: 8443, name: https, protocol: HTTPS}",
        "  - port: {number: 8080, name: http-internal, protocol: HTTP}
    hosts: [\"internal.example.com\"]
    bind: 127.0.0.2
  - port: {number: 0, name: http-uds, protocol: HTTP}
    hosts: [\"*\"]
    bind: unix:///var/run/gateway.sock
  - port: {number: 8443, name: https, protocol: HTTPS}
    bind: 127.0.0.3",
    );
    let config = build(&mesh(&format!("{REVIEWS}---{bound}")));
    assert_eq!(config.problems, vec![]);
    let listeners: Vec<(&str, String)> = config
        .listeners
        .iter()
        .map(|(_, l)| {
            let address = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(AddressKind::SocketAddress(s)) => {
                    format!("{}:{:?}", s.address, s.port_specifier)
                }
                Some(AddressKind::Pipe(p)) => p.path.clone(),
                other => format!("{other:?}"),
            };
            (l.name.as_str(), address)
        })
        .collect();
    let socket = |ip: &str, port: u32| format!("{ip}:{:?}", Some(PortSpecifier::PortValue(port)));
    assert_eq!(
        listeners,
        [
            ("0.0.0.0_8080", socket("0.0.0.0", 8080)),
            ("127.0.0.2_8080", socket("127.0.0.2", 8080)),
            ("127.0.0.3_8443", socket("127.0.0.3", 8443)),
            (
                "unix:///var/run/gateway.sock_0",
                "/var/run/gateway.sock".to_string()
            ),
        ]
    );
    let routes: Vec<&str> = config.routes.iter().map(|(_, r)| r.name.as_str()).collect();
    assert_eq!(
        routes,
        [
            "http.8080",
            "http.8080.127.0.0.2",
            "https.8443.https.ingress.edge.127.0.0.3",
            "http.0.unix:///var/run/gateway.sock",
        ]
    );
}

#[test]
fn a_gateway_gets_a_listener_per_port_and_routes_named_as_istiod_names_them() {
    let config = build(&mesh(&format!("{REVIEWS}---{INGRESS}")));
    assert_eq!(config.problems, vec![]);
    let names: Vec<&str> = config
        .listeners
        .iter()
        .map(|(_, l)| l.name.as_str())
        .collect();
    assert_eq!(names, ["0.0.0.0_8080", "0.0.0.0_8443"]);
    let routes: Vec<&str> = config.routes.iter().map(|(_, r)| r.name.as_str()).collect();
    assert_eq!(routes, ["http.8080", "https.8443.https.ingress.edge"]);
    let selectors = config
        .listeners
        .iter()
        .map(|(s, _)| s)
        .chain(config.routes.iter().map(|(s, _)| s));
    for selector in selectors {
        assert!(selector.matches(&router(&[("istio", "ingressgateway"), ("app", "x")])));
        assert!(!selector.matches(&router(&[("istio", "egressgateway")])));
        assert!(!selector.matches(&ProxyInfo {
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        }));
    }
    // `*` on the HTTP server meets the VirtualService host: the narrower name is served.
    for (_, route) in &config.routes {
        assert_eq!(
            cluster_of(route, "shop.example.com"),
            ["outbound|9080|v2|reviews.bookinfo.svc.cluster.local"]
        );
    }
    assert!(
        config
            .destinations
            .contains("reviews.bookinfo.svc.cluster.local")
    );
}

#[test]
fn an_https_server_terminates_tls_for_its_hosts_with_its_files() {
    let config = build(&mesh(&format!("{REVIEWS}---{INGRESS}")));
    let (_, listener) = &config.listeners[1];
    assert_eq!(listener.listener_filters.len(), 1, "TLS inspector for SNI");
    let chain = &listener.filter_chains[0];
    assert_eq!(
        chain
            .filter_chain_match
            .as_ref()
            .map(|m| m.server_names.clone()),
        Some(vec!["shop.example.com".to_string()])
    );
    let Some(SocketConfig::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no TLS transport socket");
    };
    let tls = DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
    let common = tls.common_tls_context.expect("common context");
    let cert = &common.tls_certificates[0];
    let filename = |d: &Option<DataSource>| match d.as_ref().and_then(|d| d.specifier.clone()) {
        Some(Specifier::Filename(f)) => f,
        other => panic!("not a file: {other:?}"),
    };
    assert_eq!(filename(&cert.certificate_chain), "/certs/cert.pem");
    assert_eq!(filename(&cert.private_key), "/certs/key.pem");
    assert!(
        common.validation_context_type.is_none(),
        "SIMPLE asks no client certificate"
    );
}

#[test]
fn only_virtual_services_bound_to_the_gateway_and_admitted_by_its_hosts_are_served() {
    let config = build(&mesh(&format!(
        r#"{REVIEWS}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["team/*", "./edge.example.com"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mesh-only, namespace: team}}
spec:
  hosts: ["mesh.example.com"]
  http: [{{route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team, namespace: team}}
spec:
  hosts: ["team.example.com"]
  gateways: [edge/ingress]
  http: [{{route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other, namespace: other}}
spec:
  hosts: ["other.example.com"]
  gateways: [edge/ingress]
  http: [{{route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local}}}}]}}]
"#
    )));
    let (_, routes) = &config.routes[0];
    let domains: Vec<&str> = routes
        .virtual_hosts
        .iter()
        .flat_map(|vh| vh.domains.iter().map(String::as_str))
        .collect();
    assert_eq!(domains, ["team.example.com"]);
    assert_eq!(
        routes.virtual_hosts[0].require_tls,
        TlsRequirementType::All as i32,
        "httpsRedirect"
    );
}

#[test]
fn a_match_naming_another_gateway_is_left_out_and_a_missing_gateway_is_reported() {
    let config = build(&mesh(&format!(
        r#"{REVIEWS}---{INGRESS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: both, namespace: edge}}
spec:
  hosts: ["both.example.com"]
  gateways: [ingress, mesh, nowhere]
  http:
  - match: [{{gateways: [mesh]}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v3}}}}]
  - match: [{{gateways: [ingress]}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]
"#
    )));
    let (_, http) = &config.routes[0];
    assert_eq!(
        cluster_of(http, "both.example.com"),
        ["outbound|9080|v1|reviews.bookinfo.svc.cluster.local"]
    );
    let fields: Vec<String> = config
        .problems
        .iter()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect();
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(fields[0].ends_with("spec.gateways[2]"), "{fields:?}");
}

#[test]
fn two_tls_servers_for_one_name_on_one_port_keep_the_first() {
    let config = build(&mesh(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /a.pem, privateKey: /a.key}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /b.pem, privateKey: /b.key}
  - port: {number: 443, name: http, protocol: HTTP}
    hosts: ["*"]
"#,
    ));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].1.filter_chains.len(), 1);
    let messages: Vec<String> = config.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("Gateway edge/b")
        && m.contains("spec.servers[0].hosts")
        && m.contains("already terminates or forwards TLS")));
    assert!(messages.iter().any(|m| m.contains("spec.servers[1].port")));
}

#[test]
fn source_matches_pick_gateway_proxies_by_their_own_namespace_and_labels() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: bookinfo}
spec:
  hosts: ["shop.example.com"]
  gateways: [edge/ingress]
  http:
  - match: [{sourceNamespace: edge-canary, uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{sourceLabels: {version: canary}, uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{sourceLabels: {istio: egressgateway}, uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{sourceLabels: {istio: ingressgateway}, uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v2}}]
"#;
    let gateway = INGRESS.split("---").next().expect("the Gateway");
    let config = build(&mesh(&format!("{REVIEWS}---{gateway}---{vs}")));
    assert_eq!(config.problems, vec![]);
    // The route configuration a gateway proxy gets, as the snapshot picks its variant.
    let clusters = |namespace: &str, labels: &[(&str, &str)]| {
        let route = http_routes_of(&config, namespace, labels);
        cluster_of(route, "shop.example.com")
            .into_iter()
            .map(|c| c.split('|').nth(2).unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let ingress = [("istio", "ingressgateway")];
    assert_eq!(
        clusters("edge", &ingress),
        ["v2"],
        "the selector's labels: every proxy"
    );
    assert_eq!(clusters("edge-canary", &ingress), ["v3", "v2"]);
    let canary = [("istio", "ingressgateway"), ("version", "canary")];
    assert_eq!(clusters("edge", &canary), ["v1", "v2"]);
    assert_eq!(clusters("edge-canary", &canary), ["v3", "v1", "v2"]);
    // Listeners are the same for all of them: the Gateway selector's.
    assert_eq!(config.listeners.len(), 2);
    for (selector, _) in &config.listeners {
        assert_eq!(*selector, router_selector(&router(&ingress).labels));
    }
}

#[test]
fn a_bound_virtual_service_serves_the_gateway_proxies_of_the_namespaces_it_is_exported_to() {
    let gateway = INGRESS.split("---").next().expect("the Gateway");
    let domains = |export_to: &str, namespace: &str| {
        let vs = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: bookinfo}}
spec:
  hosts: ["shop.example.com"]
  gateways: [edge/ingress]
  exportTo: {export_to}
  http:
  - route: [{{destination: {{host: reviews, subset: v2}}}}]
"#
        );
        let config = build(&mesh(&format!("{REVIEWS}---{gateway}---{vs}")));
        assert_eq!(config.problems, vec![]);
        let route = http_routes_of(&config, namespace, &[("istio", "ingressgateway")]);
        route
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.domains.clone())
            .collect::<Vec<_>>()
    };
    let shop = ["shop.example.com".to_string()];
    assert_eq!(domains("[\"*\"]", "edge"), shop);
    assert_eq!(
        domains("[.]", "edge"),
        [] as [String; 0],
        "its own namespace only"
    );
    assert_eq!(
        domains("[.]", "bookinfo"),
        shop,
        "a gateway of its namespace"
    );
    assert_eq!(domains("[edge]", "edge"), shop);
    assert_eq!(domains("[edge]", "istio-system"), [] as [String; 0]);
}

#[test]
fn gateway_routes_hash_as_the_destination_rule_of_the_gateways_namespace_says() {
    let gateway = INGRESS.split("---").next().expect("the Gateway");
    let vs = INGRESS.split("---").nth(1).expect("the VirtualService");
    // The root namespace's rule kept to its own proxies: the gateways of istio-system.
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: gateways, namespace: istio-system}
spec:
  host: "*.local"
  exportTo: [.]
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-gw}}}
  subsets: [{name: v2, labels: {version: v2}}]
"#;
    let config = build(&mesh(&format!("{REVIEWS}---{gateway}---{vs}---{rule}")));
    assert_eq!(config.problems, vec![]);
    let headers = |namespace: &str| {
        let route = http_routes_of(&config, namespace, &[("istio", "ingressgateway")]);
        crate::translate::test_support::hash_keys(&route.virtual_hosts[0].routes[0])
    };
    assert_eq!(headers("istio-system"), ["x-gw"]);
    assert_eq!(headers("edge"), [] as [String; 0]);
}

/// A rule of the gateway proxies' namespace selecting some of them by label gives those its
/// hash key, as istiod looks a gateway proxy's rule up (by its labels); the others of the
/// namespace read its rule without a selector.
#[test]
fn gateway_routes_hash_as_a_rule_selecting_the_gateway_proxy_says() {
    let gateway = INGRESS.split("---").next().expect("the Gateway");
    let vs = INGRESS.split("---").nth(1).expect("the VirtualService");
    let rules = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: gateways, namespace: istio-system}
spec:
  host: "*.local"
  exportTo: [.]
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-gw}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: canary-gateways, namespace: istio-system}
spec:
  host: reviews.bookinfo.svc.cluster.local
  workloadSelector: {matchLabels: {istio: ingressgateway, track: canary}}
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-canary}}}
"#;
    let config = build(&mesh(&format!("{REVIEWS}---{gateway}---{vs}---{rules}")));
    assert_eq!(config.problems, vec![]);
    let headers = |namespace: &str, labels: &[(&str, &str)]| {
        let route = http_routes_of(&config, namespace, labels);
        crate::translate::test_support::hash_keys(&route.virtual_hosts[0].routes[0])
    };
    let canary = [("istio", "ingressgateway"), ("track", "canary")];
    assert_eq!(headers("istio-system", &canary), ["x-canary"]);
    assert_eq!(
        headers("istio-system", &[("istio", "ingressgateway")]),
        ["x-gw"]
    );
    // The selecting rule is istio-system's: a canary gateway elsewhere does not read it.
    assert_eq!(headers("edge", &canary), [] as [String; 0]);
}

#[test]
fn a_named_https_server_counts_under_its_name_as_istiod_does() {
    let named = INGRESS.replace(
        "  - port: {number: 8443, name: https, protocol: HTTPS}",
        "  - name: plain\n    port: {number: 9080, name: http-other, protocol: HTTP}\n    \
         hosts: [\"*\"]\n  - name: shop-https\n    port: {number: 8443, name: https, protocol: HTTPS}",
    );
    let prefixes = |config: &GatewayConfig| -> Vec<String> {
        config
            .listeners
            .iter()
            .flat_map(|(_, l)| &l.filter_chains)
            .flat_map(|c| &c.filters)
            .filter_map(|f| match &f.config_type {
                Some(FilterConfig::TypedConfig(any)) => {
                    HttpConnectionManager::decode(any.value.as_slice()).ok()
                }
                _ => None,
            })
            .map(|m| m.stat_prefix)
            .collect()
    };
    assert_eq!(
        prefixes(&build(&mesh(&format!("{REVIEWS}---{INGRESS}")))),
        ["outbound_0.0.0.0_8080", "outbound_0.0.0.0_8443"]
    );
    // A plain HTTP server's name is not its prefix, as with istiod: its chain is the port's.
    assert_eq!(
        prefixes(&build(&mesh(&format!("{REVIEWS}---{named}")))),
        [
            "outbound_0.0.0.0_8080",
            "shop-https",
            "outbound_0.0.0.0_9080"
        ]
    );
}
