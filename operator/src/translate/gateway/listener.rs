//! LDS for gateways: one listener per port on every address. Plain HTTP servers share one
//! filter chain and one route configuration; each HTTPS server gets a filter chain of its
//! own, chosen by SNI, terminating TLS with its certificate (files on the proxy, or Secrets
//! served over SDS).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    RouteSpecifier, StripPortMode,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsCertificate,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::credentials::{ca_sds_name, certificate_sds_name, sds_config};
use super::{Bound, GatewayConfig, stream};
use crate::model::gateway::{ClientCa, ServerCertificate, ServerKind, TlsTermination};
use crate::model::{Mesh, Problem};
use crate::translate::ads_config_source;
use crate::translate::http_filters::http_filters;

/// A gateway listener and the route configurations its filter chains read.
pub struct BuiltListener<'a, 'b> {
    pub listener: Listener,
    /// The HTTPS servers served, each with its route configuration's name.
    pub served: Vec<(&'b Bound<'a>, String)>,
    /// The route configuration shared by the plain HTTP servers, if there are any.
    pub http_route: Option<String>,
}

/// istiod's name for a gateway listener.
pub fn listener_name(port: u32) -> String {
    format!("0.0.0.0_{port}")
}

/// The listener of `port` for `servers` (all of one family, see [`ServerKind::family`]).
pub fn listener<'a, 'b>(
    mesh: &Mesh,
    port: u32,
    servers: &'b [Bound<'a>],
    out: &mut GatewayConfig,
) -> BuiltListener<'a, 'b> {
    let mut chains = Vec::new();
    let mut served = Vec::new();
    let mut http_route = None;
    // SNI names already taken by a filter chain; the empty name stands for "any".
    let mut names_taken: BTreeSet<String> = BTreeSet::new();
    let mut tcp_served = false;
    for bound in servers {
        match &bound.server.kind {
            ServerKind::Tcp if tcp_served => out.problems.push(Problem {
                object: bound.gateway.origin.clone(),
                field: format!("spec.servers[{}].port", bound.server.index),
                message: format!(
                    "port {port} already serves TCP for another server of these proxies; this \
                     server is not served"
                ),
            }),
            ServerKind::Tcp => {
                tcp_served = true;
                chains.extend(stream::tcp_chain(mesh, port, bound, out));
            }
            ServerKind::Passthrough => {
                chains.extend(stream::passthrough_chains(
                    mesh,
                    port,
                    bound,
                    &mut names_taken,
                    out,
                ));
            }
            ServerKind::Http => {
                if http_route.is_none() {
                    let name = format!("http.{port}");
                    chains.push(FilterChain {
                        filters: vec![manager(port, &name)],
                        ..Default::default()
                    });
                    http_route = Some(name);
                }
            }
            ServerKind::Https(tls) => {
                let names = server_names(bound);
                let keys: Vec<String> = if names.is_empty() {
                    vec![String::new()]
                } else {
                    names.clone()
                };
                if let Some(taken) = keys.iter().find(|k| names_taken.contains(*k)) {
                    let what = if taken.is_empty() {
                        "every name".to_string()
                    } else {
                        taken.clone()
                    };
                    out.problems.push(Problem {
                        object: bound.gateway.origin.clone(),
                        field: format!("spec.servers[{}].hosts", bound.server.index),
                        message: format!(
                            "another HTTPS server on port {port} already terminates TLS for \
                             {what}; this server is not served"
                        ),
                    });
                    continue;
                }
                names_taken.extend(keys);
                let origin = &bound.gateway.origin;
                let port_name = if bound.server.port_name.is_empty() {
                    format!("server{}", bound.server.index)
                } else {
                    bound.server.port_name.clone()
                };
                let route = format!(
                    "https.{port}.{port_name}.{}.{}",
                    origin.name, origin.namespace
                );
                chains.push(FilterChain {
                    filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                        server_names: names,
                        ..Default::default()
                    }),
                    filters: vec![manager(port, &route)],
                    transport_socket: Some(downstream_tls(tls)),
                    ..Default::default()
                });
                served.push((bound, route));
            }
        }
    }
    let tls = servers.iter().any(|b| b.server.kind.family() == "TLS");
    let listener = Listener {
        name: listener_name(port),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: "0.0.0.0".to_string(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        filter_chains: chains,
        // SNI is read off the client hello before a filter chain is chosen.
        listener_filters: if tls {
            vec![ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".to_string(),
                config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
                    TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    BuiltListener {
        listener,
        served,
        http_route,
    }
}

/// The SNI names of an HTTPS server: its hosts without namespaces; none (any name) when one
/// of them is `*`.
fn server_names(bound: &Bound<'_>) -> Vec<String> {
    let hosts: BTreeSet<String> = bound
        .server
        .hosts
        .iter()
        .map(|h| h.host.to_ascii_lowercase())
        .collect();
    if hosts.contains("*") {
        return Vec::new();
    }
    hosts.into_iter().collect()
}

fn manager(port: u32, route: &str) -> Filter {
    let manager = HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route.to_string(),
        })),
        http_filters: http_filters(),
        // A gateway is the edge: the client's address is the peer's, and virtual hosts match
        // names without the port clients put in Host, as with istiod.
        use_remote_address: Some(BoolValue { value: true }),
        strip_port_mode: Some(StripPortMode::StripAnyHostPort(true)),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

fn downstream_tls(tls: &TlsTermination) -> TransportSocket {
    let subject_alt_names: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .flat_map(|san| {
            [SanType::Dns, SanType::Uri].map(|san_type| SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(san.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    let validation = tls.client_ca.as_ref().map(|ca| match ca {
        ClientCa::File(path) => {
            ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(file(path)),
                match_typed_subject_alt_names: subject_alt_names,
                ..Default::default()
            })
        }
        // As istiod: the SANs here, the CA from SDS (Envoy merges the two).
        ClientCa::Secret(name) => {
            ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: subject_alt_names,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_config(ca_sds_name(name))),
                ..Default::default()
            })
        }
    });
    let (tls_certificates, tls_certificate_sds_secret_configs) = match &tls.certificate {
        ServerCertificate::Files {
            certificate,
            private_key,
        } => (
            vec![TlsCertificate {
                certificate_chain: Some(file(certificate)),
                private_key: Some(file(private_key)),
                ..Default::default()
            }],
            Vec::new(),
        ),
        ServerCertificate::Secrets(credentials) => (
            Vec::new(),
            credentials
                .iter()
                .map(|c| sds_config(certificate_sds_name(&c.name)))
                .collect(),
        ),
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            tls_certificate_sds_secret_configs,
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate: tls.client_ca.as_ref().map(|_| BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(context))),
    }
}
