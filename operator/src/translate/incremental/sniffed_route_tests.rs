//! A port without a declared protocol on a service's own address: its listener routes HTTP
//! through the service's own route configuration (`<host>:<port>`, any Host), as istiod's,
//! kept as a full build keeps it.

use capstan_crds::Kind;
use prost::Message;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;

use super::capture_tests::tcp_entry;
use super::tests::{capture, check_with, delete, istio, served_to, service};
use super::*;
use crate::model::sidecar_scope::fixtures::sidecar_proxy;

const LEGACY: &str = "legacy.bookinfo.svc.cluster.local";

/// `legacy.bookinfo` on port 7070 without a protocol, at `addresses`.
fn legacy(addresses: &str) -> String {
    tcp_entry("legacy", 7070, addresses, &["10.0.0.1"]).replace(", protocol: TCP", "")
}

/// Requests from namespace `front` (`sourceNamespace`) with `x-canary` to subset v2, all
/// others to v1.
fn legacy_routes() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: legacy, namespace: bookinfo}}
spec:
  hosts: [{LEGACY}]
  http:
  - match: [{{sourceNamespace: front, headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: {LEGACY}, subset: v2}}}}]
  - route: [{{destination: {{host: {LEGACY}, subset: v1}}}}]
"
    )
}

fn route_names(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any),
            ) => HttpConnectionManager::decode(any.value.as_slice()).ok(),
            _ => None,
        })
        .filter_map(|m| match m.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

fn clusters_routed(config: &RouteConfiguration) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    let routes = config.virtual_hosts.iter().flat_map(|v| &v.routes);
    routes
        .filter_map(|r| match &r.action {
            Some(Action::Route(action)) => match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_service_address_listener_routes_by_the_services_own_configuration() {
    let yamls = [legacy("240.0.0.9"), legacy_routes()];
    let proxy = sidecar_proxy("bookinfo", &[]);
    let listeners = served_to::<Listener>(capture(), &yamls, type_url::LISTENER, &proxy);
    let address = listeners.iter().find(|l| l.name == "240.0.0.9_7070");
    let address = address.expect("the address listener is served");
    let own = format!("{LEGACY}:7070");
    assert_eq!(route_names(address), std::slice::from_ref(&own));

    let configs = served_to::<RouteConfiguration>(capture(), &yamls, type_url::ROUTE, &proxy);
    let config = configs.iter().find(|c| c.name == own);
    let config = config.expect("the service's route configuration is served");
    assert_eq!(config.virtual_hosts.len(), 1, "{config:?}");
    assert_eq!(config.virtual_hosts[0].domains, ["*"]);
    let v1 = format!("outbound|7070|v1|{LEGACY}");
    let v2 = format!("outbound|7070|v2|{LEGACY}");
    assert_eq!(clusters_routed(config), std::slice::from_ref(&v1));
    // The port's own configuration still has the service by name, for the port's listener.
    let port = configs.iter().find(|c| c.name == "7070");
    let port = port.expect("the port's route configuration is served");
    assert!(port.virtual_hosts[0].domains.contains(&LEGACY.to_string()));

    // The namespace a match names reads its own routes.
    let front = sidecar_proxy("front", &[]);
    let configs = served_to::<RouteConfiguration>(capture(), &yamls, type_url::ROUTE, &front);
    let config = configs.iter().find(|c| c.name == own).expect("served");
    assert_eq!(clusters_routed(config), [v2, v1]);

    // Without an address, the port's listener on every address takes its connections, and
    // routes them through the port's configuration.
    let bare = [legacy("").replace("  addresses: []\n", "")];
    let listeners = served_to::<Listener>(capture(), &bare, type_url::LISTENER, &proxy);
    let wildcard = listeners.iter().find(|l| l.name == "0.0.0.0_7070");
    let wildcard = wildcard.expect("the port's listener is served");
    assert_eq!(route_names(wildcard), ["7070"]);
    let configs = served_to::<RouteConfiguration>(capture(), &bare, type_url::ROUTE, &proxy);
    assert!(!configs.iter().any(|c| c.name == own), "{configs:?}");
}

#[test]
fn a_services_own_route_configuration_follows_its_routes() {
    check_with(
        capture(),
        vec![
            service("reviews", &[("http", 9080)]),
            istio(&legacy("240.0.0.9")),
            istio(&legacy_routes()),
            // A second address; then the port declared HTTP (no configuration of its own).
            istio(&legacy("240.0.0.9, 240.0.0.10")),
            istio(&legacy("240.0.0.9").replace("name: tcp", "name: http, protocol: HTTP")),
            istio(&legacy("240.0.0.9")),
            delete(Kind::VirtualService, "bookinfo", "legacy"),
            delete(Kind::ServiceEntry, "bookinfo", "legacy"),
        ],
    );
}
