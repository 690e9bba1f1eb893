//! LDS: the outbound HTTP listener, routing by Host header through RDS.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::util::pack_any;

use super::http_filters::http_filters;
use super::{OUTBOUND_HTTP, Options, ads_config_source};

pub fn listeners(options: &Options) -> Vec<(String, Listener)> {
    let manager = HttpConnectionManager {
        stat_prefix: OUTBOUND_HTTP.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: OUTBOUND_HTTP.to_string(),
        })),
        http_filters: http_filters(),
        ..Default::default()
    };
    let listener = Listener {
        name: OUTBOUND_HTTP.to_string(),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: options.outbound_bind.clone(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(options.outbound_port))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![(OUTBOUND_HTTP.to_string(), listener)]
}
