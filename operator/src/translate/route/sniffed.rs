//! The route configuration of a service port without a declared protocol, on the service's
//! own address. Its listener (`<address>_<port>`) takes only connections made to that
//! service, so, as istiod's (`<host>:<port>`), it holds that service's virtual host alone,
//! answering to any Host (`*`): a request made to the address with a name the service does
//! not have, or another service's, still reaches this service, by its routes.

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::{Caller, PortRoutes, RouteLayout, destination_ip, empty_config, virtual_host};
use crate::model::{Port, Service};

/// The route configuration of `host`'s `port` on its own address.
fn sniffed_route_name(host: &str, port: u32) -> String {
    format!("{host}:{port}")
}

/// The route configuration of the listener on `address`:`port` that detects HTTP for
/// `host`: the service's own on one of its addresses, the port's on every address (`0.0.0.0`,
/// where other services' requests may arrive too).
pub fn detected_routes(host: &str, port: u32, address: &str) -> String {
    if destination_ip(address).is_some() {
        sniffed_route_name(host, port)
    } else {
        RouteLayout::PerPort.route_name(port).to_string()
    }
}

/// Whether `service`'s `port` has a listener of its own address that detects HTTP: no
/// declared protocol, and an address (not a CIDR range) clients dial.
pub fn is_sniffed(service: &Service, port: &Port) -> bool {
    port.protocol.is_none()
        && service
            .addresses
            .iter()
            .any(|a| destination_ip(a).is_some())
}

/// The sniffed route configuration of `service`'s `port` for every sidecar
/// ([`Caller::anyone`]) and for each caller its routes tell apart.
pub fn sniffed_configs(
    service: &Service,
    port: u32,
    routes: &PortRoutes,
) -> Vec<(Caller, RouteConfiguration)> {
    let name = sniffed_route_name(&service.host, port);
    let config = |routes: &Vec<_>| {
        let mut config = empty_config(&name, RouteLayout::PerPort);
        let host = virtual_host(name.clone(), vec!["*".to_string()], routes.clone());
        config.virtual_hosts.push(host);
        config
    };
    let callers = routes
        .by_caller
        .iter()
        .map(|(caller, routes)| (caller.clone(), config(routes)));
    std::iter::once((Caller::anyone(), config(&routes.rest)))
        .chain(callers)
        .collect()
}
