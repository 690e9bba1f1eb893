//! The outbound side: `virtualOutbound`, and one listener per service port that its original
//! destination dispatches to.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::{OUTBOUND_CAPTURE_PORT, PASSTHROUGH, VIRTUAL_OUTBOUND, socket, tcp_proxy};
use crate::translate::http_filters::http_filters;
use crate::translate::{OUTBOUND_HTTP, ads_config_source};

/// Catches every outbound connection; one to a port without a listener of its own goes where
/// it was headed (Istio's `ALLOW_ANY`).
pub fn virtual_outbound() -> Listener {
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            name: PASSTHROUGH.to_string(),
            filters: vec![tcp_proxy(PASSTHROUGH, PASSTHROUGH)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `0.0.0.0_<port>`: HTTP to any service on the port, routed by Host. Every HTTP port shares
/// the outbound route configuration, whose virtual hosts name `host:port`.
pub fn http_port(port: u32) -> Listener {
    let name = format!("0.0.0.0_{port}");
    let manager = HttpConnectionManager {
        stat_prefix: format!("outbound_{name}"),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: OUTBOUND_HTTP.to_string(),
        })),
        http_filters: http_filters(),
        ..Default::default()
    };
    let filter = Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
    };
    bound_by_capture(name, "0.0.0.0", port, vec![one_chain(filter)])
}

/// `<address>_<port>`: TCP to one service (its cluster, or where its `tcp` route says).
pub fn tcp_port(address: &str, port: u32, filter: Filter) -> Listener {
    let name = format!("{address}_{port}");
    bound_by_capture(name, address, port, vec![one_chain(filter)])
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
