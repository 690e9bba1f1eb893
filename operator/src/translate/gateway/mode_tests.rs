//! OPTIONAL_MUTUAL, ISTIO_MUTUAL and AUTO_PASSTHROUGH servers, as istiod builds them.

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, SdsSecretConfig,
};
use prost::Message;

use super::*;
use crate::translate::test_support::{REVIEWS, mesh, mesh_and_problems};

fn gateway(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
    )
}

fn listener<'c>(config: &'c GatewayConfig, name: &str) -> &'c Listener {
    (config.listeners.iter())
        .map(|(_, l)| l)
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn downstream(chain: &FilterChain) -> DownstreamTlsContext {
    let Some(SocketConfig::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no TLS transport socket");
    };
    DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes")
}

/// The agent's SDS cluster an SDS reference goes through, if it is one.
fn sds_cluster(config: &SdsSecretConfig) -> Option<String> {
    let source = config
        .sds_config
        .as_ref()?
        .config_source_specifier
        .as_ref()?;
    let ConfigSourceSpecifier::ApiConfigSource(api) = source else {
        return None;
    };
    match &api.grpc_services.first()?.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(g)) => Some(g.cluster_name.clone()),
        _ => None,
    }
}

/// (server names, ALPNs, cluster) of each chain of a listener of TCP proxies.
fn forwarded(listener: &Listener) -> Vec<(Vec<String>, Vec<String>, String)> {
    listener
        .filter_chains
        .iter()
        .map(|chain| {
            let matched = chain.filter_chain_match.clone().unwrap_or_default();
            let Some(FilterConfig::TypedConfig(any)) = &chain.filters[0].config_type else {
                panic!("no typed config");
            };
            let proxy = TcpProxy::decode(any.value.as_slice()).expect("a TCP proxy");
            let Some(ClusterSpecifier::Cluster(cluster)) = proxy.cluster_specifier else {
                panic!("not one cluster");
            };
            (matched.server_names, matched.application_protocols, cluster)
        })
        .collect()
}

#[test]
fn optional_mutual_asks_for_a_client_certificate_without_requiring_one() {
    let config = build(&mesh(&gateway(
        r#"  - port: {number: 443, name: https-optional, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: OPTIONAL_MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
"#,
    )));
    assert_eq!(config.problems, vec![]);
    let optional = downstream(&listener(&config, "0.0.0.0_443").filter_chains[0]);
    assert_eq!(
        optional.require_client_certificate.map(|b| b.value),
        Some(false)
    );
    let Some(ValidationContextType::ValidationContext(validation)) = optional
        .common_tls_context
        .and_then(|c| c.validation_context_type)
    else {
        panic!("no validation context: a certificate sent would not be checked");
    };
    let ca = validation.trusted_ca.and_then(|d| d.specifier);
    assert_eq!(ca, Some(Specifier::Filename("/ca.pem".into())));
    let mutual = downstream(&listener(&config, "0.0.0.0_8443").filter_chains[0]);
    assert_eq!(
        mutual.require_client_certificate.map(|b| b.value),
        Some(true)
    );
}

#[test]
fn istio_mutual_terminates_with_the_agents_certificate_and_roots() {
    let config = build(&mesh(&format!(
        "{REVIEWS}---\n{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: bookinfo}}
spec:
  hosts: [shop.example.com]
  gateways: [edge/ingress]
  http: [{{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]
",
        gateway(
            r#"  - port: {number: 443, name: https-mesh, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/buyer"]}
"#
        )
    )));
    assert_eq!(config.problems, vec![]);
    assert!(
        config.secrets.is_empty(),
        "the agent serves them, not capstan"
    );
    let routes: Vec<&str> = config.routes.iter().map(|(_, r)| r.name.as_str()).collect();
    assert_eq!(routes, ["https.443.https-mesh.ingress.edge"]);
    let chain = &listener(&config, "0.0.0.0_443").filter_chains[0];
    let tls = downstream(chain);
    assert_eq!(tls.require_client_certificate.map(|b| b.value), Some(true));
    let common = tls.common_tls_context.expect("common context");
    assert!(common.tls_certificates.is_empty());
    let certificates: Vec<(&str, Option<String>)> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|c| (c.name.as_str(), sds_cluster(c)))
        .collect();
    assert_eq!(certificates, [("default", Some("sds-grpc".to_string()))]);
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    let roots = combined
        .validation_context_sds_secret_config
        .expect("roots");
    assert_eq!(
        (roots.name.as_str(), sds_cluster(&roots)),
        ("ROOTCA", Some("sds-grpc".to_string()))
    );
    let sans: Vec<String> = combined
        .default_validation_context
        .expect("SANs")
        .match_typed_subject_alt_names
        .into_iter()
        .filter_map(|m| m.matcher?.match_pattern)
        .map(|p| format!("{p:?}"))
        .collect();
    assert!(
        sans.iter()
            .all(|p| p.contains("spiffe://cluster.local/ns/shop/sa/buyer")),
        "{sans:?}"
    );
    assert!(!sans.is_empty());
}

const ISTIO_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

#[test]
fn auto_passthrough_forwards_each_mesh_cluster_by_its_istio_sni() {
    let config = build(&mesh(&format!(
        r#"{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: bookinfo}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: bookinfo}}
spec:
  hosts: [partner.bookinfo.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: DNS
---
{}"#,
        gateway(
            r#"  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
"#
        )
    )));
    assert_eq!(config.problems, vec![]);
    assert!(config.routes.is_empty(), "no VirtualService, no routes");
    let listener = listener(&config, "0.0.0.0_15443");
    assert_eq!(
        listener.listener_filters.len(),
        1,
        "TLS inspector: SNI, ALPN"
    );
    let alpns: Vec<String> = ISTIO_ALPNS.iter().map(|a| a.to_string()).collect();
    let host = "reviews.bookinfo.svc.cluster.local";
    let expected: Vec<(Vec<String>, Vec<String>, String)> = ["", "v1", "v2", "v3"]
        .iter()
        .map(|subset| {
            (
                vec![format!("outbound_.9080_.{subset}_.{host}")],
                alpns.clone(),
                // The SNI-DNAT cluster of that name (`cluster::sni_dnat`).
                format!("outbound_.9080_.{subset}_.{host}"),
            )
        })
        .collect();
    // api.example.com is not under *.local, and partner, under it, is outside the mesh
    // (`location` defaults to MESH_EXTERNAL): no chain, so their names are refused.
    assert_eq!(forwarded(listener), expected);
    assert!(
        config.destinations.contains(host),
        "a change to it rebuilds"
    );
    assert!(!config.destinations.contains("api.example.com"));
}

#[test]
fn auto_passthrough_forwards_to_clusters_a_destination_rule_originates_tls_for() {
    let config = build(&mesh(&format!(
        r#"{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.4}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  host: ratings
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
{}"#,
        gateway(
            r#"  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: AUTO_PASSTHROUGH}
"#
        )
    )));
    let clusters: Vec<String> = forwarded(listener(&config, "0.0.0.0_15443"))
        .into_iter()
        .map(|(_, _, cluster)| cluster)
        .collect();
    // Its SNI-DNAT cluster never originates TLS (`cluster::sni_dnat`): nothing to leave out.
    assert_eq!(clusters.len(), 5, "{clusters:?}");
    assert!(clusters.contains(&"outbound_.9080_._.ratings.bookinfo.svc.cluster.local".into()));
    assert_eq!(config.problems, vec![]);
}

#[test]
fn two_auto_passthrough_servers_on_one_port_get_each_name_once() {
    let config = build(&mesh(&format!(
        r#"{REVIEWS}---
{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: east, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
"#,
        gateway(
            r#"  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: AUTO_PASSTHROUGH}
"#
        )
    )));
    assert_eq!(config.problems, vec![]);
    assert_eq!(config.listeners.len(), 1);
    let mut names: Vec<String> = forwarded(listener(&config, "0.0.0.0_15443"))
        .into_iter()
        .flat_map(|(names, _, _)| names)
        .collect();
    let all = names.len();
    names.dedup();
    // Envoy refuses a listener with two chains of one match.
    assert_eq!((all, names.len()), (4, 4));
}

#[test]
fn a_port_left_without_filter_chains_gets_no_listener() {
    let config = build(&mesh(&format!(
        "{REVIEWS}---\n{}",
        gateway(
            r#"  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.nowhere.example"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: ["*"]
"#
        )
    )));
    // Envoy would refuse them, and the whole update with them.
    assert!(config.listeners.is_empty(), "{:?}", config.listeners);
    let problems: Vec<String> = config.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        [
            "Gateway edge/ingress: spec.servers[0].tls.mode: AUTO_PASSTHROUGH on port 15443: no \
             service of the mesh is under this server's hosts; connections are refused",
            "Gateway edge/ingress: spec.servers[1]: no tcp route of a VirtualService bound to \
             this gateway applies on port 5432; connections are refused",
        ]
    );
}

/// `tcp` routes on a gateway read the gateway proxy's namespace for `exportTo`, as istiod: it
/// limits a VirtualService to the proxies of the namespaces named, which get the port's
/// listener of their own. A match's `sourceNamespace` is not read on a gateway, as istiod's
/// gateways do not: the match holds for every gateway proxy (and the VirtualService is warned).
#[test]
fn stream_routes_on_a_gateway_read_the_proxys_namespace() {
    let routes = |export_to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [\"*\"]
  gateways: [edge/ingress]
  exportTo: {export_to}
  tcp:
  - match: [{{sourceNamespace: canary}}]
    route: [{{destination: {{host: reviews, subset: v2, port: {{number: 9080}}}}}}]
  - route: [{{destination: {{host: reviews, subset: v1, port: {{number: 9080}}}}}}]
"
        )
    };
    let server = "  - port: {number: 5432, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n";
    let listeners = |export_to: &str| -> Vec<(Option<String>, String)> {
        let (mesh, problems) = mesh_and_problems(&format!(
            "{REVIEWS}---\n{}---\n{}",
            gateway(server),
            routes(export_to)
        ));
        let said: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
        assert_eq!(said, ["spec.tcp[0].match[0].sourceNamespace"]);
        let config = build(&mesh);
        config
            .listeners
            .iter()
            .map(|(selector, listener)| {
                let namespace = selector.namespace.as_deref().map(str::to_string);
                (namespace, forwarded(listener)[0].2.clone())
            })
            .collect()
    };
    let v2 = "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".to_string();
    assert_eq!(listeners("[\"*\"]"), [(None, v2.clone())]);
    // Exported to edge only: the proxies of edge route it, no one else.
    assert_eq!(listeners("[edge]"), [(Some("edge".into()), v2)]);
}

/// A TLS server that terminates: each one a filter chain for its hosts' SNI names with the
/// server's TLS context, forwarding what it decrypted by the first `tcp` route applying on
/// its port (istiod's `createGatewayTCPFilterChainOpts`); one without such a route has no
/// chain, and its names stay free for the next server.
#[test]
fn tls_servers_that_terminate_forward_by_tcp_routes() {
    let config = build(
        &mesh_and_problems(&format!(
            r#"{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-tls, namespace: bookinfo}}
spec:
  hosts: [reviews.example.com]
  gateways: [edge/ingress]
  tcp:
  - match: [{{port: 8443}}]
    route: [{{destination: {{host: reviews, subset: v2, port: {{number: 9080}}}}}}]
  - route: [{{destination: {{host: reviews, subset: v1, port: {{number: 9080}}}}}}]
---
{}"#,
            gateway(
                r#"  - port: {number: 443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, serverCertificate: /db.pem, privateKey: /db-key.pem}
  - port: {number: 443, name: tls-reviews, protocol: TLS}
    hosts: [reviews.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
  - port: {number: 443, name: tls-again, protocol: TLS}
    hosts: [reviews.example.com]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
  - port: {number: 8443, name: tls-mesh, protocol: TLS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
"#
            )
        ))
        .0,
    );
    // db.example.com: no VirtualService binds a host of it.
    let problems: Vec<(&str, &str)> = (config.problems.iter())
        .map(|p| (p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].0, "spec.servers[0]");
    assert!(problems[0].1.contains("no tcp route"), "{problems:?}");
    assert_eq!(problems[1].0, "spec.servers[2].hosts");
    assert!(
        problems[1]
            .1
            .contains("already terminates or forwards TLS for reviews.example.com"),
        "{problems:?}"
    );
    assert!(
        config.routes.is_empty(),
        "no HTTP is routed: {:?}",
        config.routes
    );

    let on_443 = listener(&config, "0.0.0.0_443");
    assert_eq!(
        forwarded(on_443),
        [(
            vec!["reviews.example.com".to_string()],
            vec![],
            "outbound|9080|v1|reviews.bookinfo.svc.cluster.local".to_string()
        )],
        "the route matching port 8443 does not apply on 443"
    );
    let reviews = downstream(&on_443.filter_chains[0]);
    assert_eq!(
        reviews.require_client_certificate.map(|b| b.value),
        Some(true)
    );
    let common = reviews.common_tls_context.expect("common context");
    let certificate = common.tls_certificates[0]
        .certificate_chain
        .clone()
        .and_then(|d| d.specifier);
    assert_eq!(certificate, Some(Specifier::Filename("/c.pem".into())));
    assert!(
        on_443
            .listener_filters
            .iter()
            .any(|f| f.name.contains("tls_inspector")),
        "SNI is read before a chain is chosen"
    );

    let on_8443 = listener(&config, "0.0.0.0_8443");
    assert_eq!(
        forwarded(on_8443),
        [(
            vec![],
            vec![],
            "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".to_string()
        )]
    );
    let mesh_tls = downstream(&on_8443.filter_chains[0])
        .common_tls_context
        .expect("common");
    let certificates: Vec<(&str, Option<String>)> =
        (mesh_tls.tls_certificate_sds_secret_configs.iter())
            .map(|c| (c.name.as_str(), sds_cluster(c)))
            .collect();
    assert_eq!(certificates, [("default", Some("sds-grpc".to_string()))]);
}
