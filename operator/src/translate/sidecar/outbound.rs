//! The outbound side: `virtualOutbound`, and one listener per service port that its original
//! destination dispatches to; where what no service has goes (the sidecar's
//! `outboundTrafficPolicy`).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration};
use envoy_types::util::pack_any;

use super::subnet_chains::{StreamChains, prefix_ranges};
use super::{BLACKHOLE, OUTBOUND_CAPTURE_PORT, PASSTHROUGH, VIRTUAL_OUTBOUND, socket, tcp_proxy};
use crate::model::sidecar_scope::{EgressProxy, OutboundMode};
use crate::translate::http_filters::http_filters;
use crate::translate::route::RouteLayout;
use crate::translate::{ads_config_source, cluster_name};

/// Catches every outbound connection; one to a port without a listener of its own goes where
/// it was headed (`ALLOW_ANY`), to the egress proxy (`egressProxy`) or is closed
/// (`REGISTRY_ONLY`).
pub fn virtual_outbound(mode: &OutboundMode) -> Listener {
    let cluster = unknown_destinations(mode);
    let cluster = cluster.as_str();
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            name: cluster.to_string(),
            filters: vec![tcp_proxy(cluster, cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn unknown_destinations(mode: &OutboundMode) -> String {
    match mode {
        OutboundMode::AllowAny => PASSTHROUGH.to_string(),
        OutboundMode::EgressProxy(proxy) => egress_proxy_cluster(proxy),
        OutboundMode::RegistryOnly => BLACKHOLE.to_string(),
    }
}

/// Where a connection on a TLS port goes when no service has its name, as istiod's
/// fallthrough chain: an `egressProxy` takes only what reaches `virtualOutbound`.
pub fn fallthrough_cluster(mode: &OutboundMode) -> &'static str {
    match mode {
        OutboundMode::RegistryOnly => BLACKHOLE,
        OutboundMode::AllowAny | OutboundMode::EgressProxy(_) => PASSTHROUGH,
    }
}

/// The cluster of the service port an `egressProxy` names.
fn egress_proxy_cluster(proxy: &EgressProxy) -> String {
    cluster_name(proxy.port, &proxy.subset, &proxy.host)
}

/// A cluster without endpoints: a connection sent to it is closed at once.
pub fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The outbound route configuration's last virtual host, for Host names no service has:
/// Istio's `allow_any` (to where the request was headed, or to the egress proxy, without a
/// timeout: it may be a long stream) or `block_all` (502).
pub fn fallback_virtual_host(mode: &OutboundMode) -> VirtualHost {
    let onwards = |cluster: String| {
        Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(Duration::default()),
            ..Default::default()
        })
    };
    let (name, action) = match mode {
        OutboundMode::AllowAny => ("allow_any", onwards(PASSTHROUGH.to_string())),
        OutboundMode::EgressProxy(proxy) => ("allow_any", onwards(egress_proxy_cluster(proxy))),
        OutboundMode::RegistryOnly => (
            "block_all",
            Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `0.0.0.0_<port>`: HTTP to any service on the port, routed by Host through the port's
/// route configuration (named by the port, as istiod's).
pub fn http_port(port: u32) -> Listener {
    let name = format!("0.0.0.0_{port}");
    bound_by_capture(name, "0.0.0.0", port, vec![one_chain(http_routes(port))])
}

/// `<address>_<port>` on a socket of its own (a `Sidecar` egress listener with
/// `captureMode: NONE`): HTTP an application sends there itself, routed by Host through the
/// port's route configuration as on the port's captured listener.
pub fn bound_http_port(address: &str, port: u32) -> Listener {
    Listener {
        name: format!("{address}_{port}"),
        address: Some(socket(address, port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![one_chain(http_routes(port))],
        ..Default::default()
    }
}

/// `<address>_<port>` for a service without a declared protocol: a connection whose first
/// bytes are HTTP/1.1 or HTTP/2 without TLS (Envoy's `http_inspector`) is routed through
/// route configuration `routes` (the service's own on its address, the port's on 0.0.0.0,
/// as istiod's); any other goes where `tcp` sends it. As istiod's protocol detection, a
/// protocol whose server speaks first waits for the inspector's timeout: declare those.
pub fn detected_port(address: &str, port: u32, routes: &str, tcp: StreamChains) -> Listener {
    let name = format!("{address}_{port}");
    let http = |prefix_ranges| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            prefix_ranges,
            application_protocols: super::DETECTED_HTTP.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![http_routes_by(port, routes)],
        ..Default::default()
    };
    // A destination range is matched before the protocol: each subnet chain of the TCP
    // routes has the HTTP chain beside it, so HTTP to those addresses is still routed.
    let mut chains: Vec<FilterChain> = tcp
        .by_subnets
        .iter()
        .map(|(subnets, _)| http(prefix_ranges(subnets)))
        .collect();
    chains.push(http(Vec::new()));
    chains.extend(tcp.into_chains(&name, FilterChainMatch::default()));
    let mut listener = bound_by_capture(name, address, port, chains);
    listener.listener_filters = vec![super::http_inspector()];
    listener
}

/// The HTTP connection manager of outbound HTTP on `port`: routed by Host through the
/// port's route configuration.
fn http_routes(port: u32) -> Filter {
    http_routes_by(port, &RouteLayout::PerPort.route_name(port).to_string())
}

/// The HTTP connection manager of outbound HTTP on `port`, routed through `routes`.
fn http_routes_by(port: u32, routes: &str) -> Filter {
    let name = format!("0.0.0.0_{port}");
    let manager = HttpConnectionManager {
        stat_prefix: format!("outbound_{name}"),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: routes.to_string(),
        })),
        http_filters: http_filters(),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
    }
}

/// `<address>_<port>`: TCP to one service (its cluster, or where its `tcp` route says).
pub fn tcp_port(address: &str, port: u32, chains: StreamChains) -> Listener {
    let name = format!("{address}_{port}");
    let chains = chains.into_chains(&name, FilterChainMatch::default());
    bound_by_capture(name, address, port, chains)
}

fn one_chain(filter: Filter) -> FilterChain {
    FilterChain {
        filters: vec![filter],
        ..Default::default()
    }
}

/// A listener no socket is opened for: `virtualOutbound` hands it its connections.
pub(super) fn bound_by_capture(
    name: String,
    address: &str,
    port: u32,
    filter_chains: Vec<FilterChain>,
) -> Listener {
    Listener {
        name,
        address: Some(socket(address, port)),
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains,
        ..Default::default()
    }
}
