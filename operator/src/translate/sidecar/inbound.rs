//! The inbound side: a workload's `virtualInbound`, and the clusters it sends to.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::mtls::{self, Accepts, InboundMtls, chain_options};
use super::{
    INBOUND_CAPTURE_PORT, INBOUND_PASSTHROUGH, INBOUND_SOURCE, PASSTHROUGH, VIRTUAL_INBOUND,
    http_inspector, inbound_cluster_name, socket, tcp_proxy,
};
use crate::model::traffic_policy::ConnectionPool;
use crate::translate::authorization::InboundAuthz;
use crate::translate::cluster::apply_inbound;
use crate::translate::http_filters::http_filters;

/// How a workload serves one of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Http {
        http2: bool,
    },
    Tcp,
    /// No protocol declared: HTTP when the connection's first bytes are, else TCP.
    Detected,
}

/// The workload's ports (the port it listens on → how it serves it) as filter chains keyed
/// by the original destination port, each accepting what `mtls` says; anything else passes
/// through to where it was headed.
pub fn virtual_inbound(
    ports: &BTreeMap<u32, Served>,
    mtls: &InboundMtls,
    authz: &InboundAuthz,
) -> Listener {
    let passthrough = mtls.passthrough(|port| ports.contains_key(&port));
    let ports = ports.iter().map(|(port, served)| InboundPort {
        port: *port,
        served: *served,
        cluster: inbound_cluster_name(*port),
        accepts: mtls.for_port(*port),
    });
    virtual_inbound_to(ports, &passthrough, authz, mtls.peer_domains())
}

/// One port of `virtualInbound`.
pub struct InboundPort {
    pub port: u32,
    pub served: Served,
    /// Where its connections go.
    pub cluster: String,
    pub accepts: Accepts,
}

/// [`virtual_inbound`] with a cluster named for each port, and `authz`'s filters on every
/// chain to the workload. What no port claims passes through, accepting what `passthrough`
/// says (see [`InboundMtls::passthrough`]) behind the same filters, as istiod's passthrough
/// chains.
pub fn virtual_inbound_to(
    ports: impl Iterator<Item = InboundPort>,
    passthrough: &[(Option<u32>, Accepts)],
    authz: &InboundAuthz,
    peer_domains: &[String],
) -> Listener {
    let mut detecting = false;
    let mut inspecting_tls = false;
    let mut chains = Vec::new();
    for InboundPort {
        port,
        served,
        cluster,
        accepts,
    } in ports
    {
        detecting |= served == Served::Detected;
        inspecting_tls |= accepts != Accepts::Anything;
        let name = |suffix: &str| format!("{cluster}{suffix}");
        chains.extend(port_chains(
            Some(port),
            (served, accepts),
            &cluster,
            name,
            (authz, peer_domains),
        ));
    }
    for (port, accepts) in passthrough {
        if *accepts == Accepts::Anything && authz.is_empty() && port.is_none() {
            // Nothing to terminate or enforce: every connection as it comes.
            chains.push(FilterChain {
                name: INBOUND_PASSTHROUGH.to_string(),
                filters: vec![tcp_proxy(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH)],
                ..Default::default()
            });
            continue;
        }
        detecting = true;
        inspecting_tls |= *accepts != Accepts::Anything;
        let name = |suffix: &str| passthrough_chain_name(*port, suffix);
        let served = Served::Detected;
        let cluster = INBOUND_PASSTHROUGH;
        let security = (authz, peer_domains);
        chains.extend(port_chains(
            *port,
            (served, *accepts),
            cluster,
            name,
            security,
        ));
    }
    Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(socket("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        // Chains match the port the connection was headed for, not 15006.
        // The TLS inspector first: the HTTP inspector leaves TLS connections alone.
        listener_filters: std::iter::once(ListenerFilter {
            name: "envoy.filters.listener.original_dst".to_string(),
            config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
                OriginalDst::default(),
            ))),
            ..Default::default()
        })
        .chain(inspecting_tls.then(super::tls_inspector))
        .chain(detecting.then(http_inspector))
        .collect(),
        filter_chains: chains,
        ..Default::default()
    }
}

/// The chains of one port (`None`: any port) served as `served`, accepting `accepts`, to
/// `cluster`, each named by `name` from its option's suffix.
fn port_chains(
    port: Option<u32>,
    (served, accepts): (Served, Accepts),
    cluster: &str,
    name: impl Fn(&str) -> String,
    (authz, peer_domains): (&InboundAuthz, &[String]),
) -> Vec<FilterChain> {
    let options = chain_options(served, accepts).into_iter();
    let chains = options.map(|option| {
        let filters = if option.http {
            vec![http_filter(port.unwrap_or(0), cluster, &authz.http)]
        } else {
            let proxy = tcp_proxy(cluster, cluster);
            authz.tcp.iter().cloned().chain([proxy]).collect()
        };
        FilterChain {
            // Chain names are unique in a listener.
            name: name(option.suffix),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: port.map(|value| UInt32Value { value }),
                transport_protocol: option.transport.to_string(),
                application_protocols: option
                    .application_protocols
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                ..Default::default()
            }),
            filters,
            transport_socket: (option.mtls).then(|| mtls::server_socket(option.http, peer_domains)),
            ..Default::default()
        }
    });
    chains.collect()
}

/// A passthrough chain's name: `InboundPassthroughCluster`, with the port it is for (if any)
/// and its option's suffix.
fn passthrough_chain_name(port: Option<u32>, suffix: &str) -> String {
    match port {
        Some(port) => format!("{INBOUND_PASSTHROUGH}|{port}{suffix}"),
        None => format!("{INBOUND_PASSTHROUGH}{suffix}"),
    }
}

/// Every request on the port to the workload, whatever its host, past `authz` first.
fn http_filter(port: u32, cluster: &str, authz: &[HttpFilter]) -> Filter {
    let cluster = cluster.to_string();
    let routes = RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                    // The caller's sidecar keeps time; the workload's side does not cut in.
                    timeout: Some(Duration::default()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: cluster,
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        http_filters: authz.iter().cloned().chain(http_filters()).collect(),
        // As istiod's inbound: the workload learns its caller's identity from
        // `x-forwarded-client-cert` (`By` itself, `URI` the peer's SPIFFE id).
        forward_client_cert_details: ForwardClientCertDetails::AppendForward as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            uri: true,
            dns: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
    }
}

/// `inbound|<port>||`: to the address the connection was headed for (the workload's own),
/// from 127.0.0.6 so that the capture lets it through; limited as `pool` says (none: no
/// limits but Envoy's, istiod's defaults).
pub fn inbound_cluster(port: u32, served: Served, pool: Option<&ConnectionPool>) -> Cluster {
    let mut cluster = original_destination(&inbound_cluster_name(port));
    cluster.upstream_bind_config = Some(BindConfig {
        source_address: Some(SocketAddress {
            address: INBOUND_SOURCE.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let http2 = matches!(served, Served::Http { http2: true });
    apply_inbound(&mut cluster, http2, pool);
    cluster
}

/// `PassthroughCluster` and `InboundPassthroughCluster`: where connections no service or
/// workload port claims go, as they were addressed.
pub fn passthrough_clusters() -> Vec<Cluster> {
    let mut inbound = original_destination(INBOUND_PASSTHROUGH);
    inbound.upstream_bind_config = inbound_cluster(0, Served::Tcp, None).upstream_bind_config;
    vec![original_destination(PASSTHROUGH), inbound]
}

fn original_destination(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}
