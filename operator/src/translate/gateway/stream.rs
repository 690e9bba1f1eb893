//! Gateway filter chains that forward connections without reading them: TCP servers (and TLS
//! servers, once they have terminated TLS) take the first `tcp` route of a bound
//! VirtualService that applies on their port; TLS PASSTHROUGH servers get one filter chain
//! per `tls` route match, chosen by the client hello's SNI.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};

use super::{Bound, GatewayConfig, domain_for};
use crate::model::gateway::names;
use crate::model::stream_routes::{Destination, StreamMatch, StreamRoute};
use crate::model::{Mesh, Problem, VirtualService};
use crate::translate::route_tcp_proxy::route_proxy;

/// The VirtualServices bound to the gateway of `bound`, in namespace and name order.
fn bound_virtual_services<'m>(
    mesh: &'m Mesh,
    bound: &Bound<'_>,
) -> impl Iterator<Item = &'m VirtualService> {
    let origin = bound.gateway.origin.clone();
    mesh.virtual_services.values().filter(move |vs| {
        let gateway = (origin.namespace.as_str(), origin.name.as_str());
        names(&vs.gateways, &vs.origin.namespace, gateway)
    })
}

/// The bound VirtualServices the server admits that the gateway proxies of namespace
/// `caller` (`None`: of a namespace no export or match names) see.
fn serving<'m>(
    mesh: &'m Mesh,
    bound: &Bound<'_>,
    caller: Option<&str>,
) -> impl Iterator<Item = &'m VirtualService> {
    bound_virtual_services(mesh, bound)
        .filter(move |vs| admitted(bound, vs) && vs.export_to.includes(caller))
}

/// Whether `m` holds on `port` of the gateway. As istiod's gateways, a `tcp`/`tls` match's
/// `sourceNamespace`, `sourceLabels` and `destinationSubnets` are not read here: its port and
/// gateways decide.
fn holds(m: &StreamMatch, port: u32, gateway: (&str, &str), vs: &VirtualService) -> bool {
    m.applies_on(port, gateway, &vs.origin.namespace)
}

/// Whether the server admits `vs`: one of its hosts meets a server host open to its namespace.
fn admitted(bound: &Bound<'_>, vs: &VirtualService) -> bool {
    bound.server.hosts.iter().any(|pattern| {
        pattern.admits(&vs.origin.namespace)
            && vs
                .hosts
                .iter()
                .any(|h| domain_for(h, &pattern.host.to_ascii_lowercase()).is_some())
    })
}

/// The filter chain of a TCP server, or `None` (reported) when no `tcp` route applies.
pub fn tcp_chain(
    mesh: &Mesh,
    port: u32,
    bound: &Bound<'_>,
    caller: Option<&str>,
    out: &mut GatewayConfig,
) -> Option<FilterChain> {
    let proxy = tcp_route_proxy(mesh, port, bound, caller, out)?;
    Some(FilterChain {
        filters: vec![proxy],
        ..Default::default()
    })
}

/// The TCP proxy of the first `tcp` route of a bound VirtualService that applies on the
/// server's port (a TCP server's, or what a terminating TLS server decrypted), or `None`
/// (reported) when there is none.
pub fn tcp_route_proxy(
    mesh: &Mesh,
    port: u32,
    bound: &Bound<'_>,
    caller: Option<&str>,
    out: &mut GatewayConfig,
) -> Option<Filter> {
    let origin = &bound.gateway.origin;
    let gateway = (origin.namespace.as_str(), origin.name.as_str());
    for vs in serving(mesh, bound, caller) {
        let applies = |r: &&StreamRoute| {
            r.matches.is_empty() || r.matches.iter().any(|m| holds(m, port, gateway, vs))
        };
        if let Some(route) = vs.tcp.iter().find(applies) {
            return tcp_proxy(mesh, port, (&route.destinations, vs), caller, out);
        }
    }
    out.problems.push(Problem {
        object: origin.clone(),
        field: format!("spec.servers[{}]", bound.server.index),
        message: format!(
            "no tcp route of a VirtualService bound to this gateway applies on port {port}; \
             connections are refused"
        ),
    });
    None
}

/// The filter chains of a TLS PASSTHROUGH server: one per `tls` route match, for its SNI
/// names not taken by an earlier chain on the port.
pub fn passthrough_chains(
    mesh: &Mesh,
    port: u32,
    bound: &Bound<'_>,
    caller: Option<&str>,
    names_taken: &mut BTreeSet<String>,
    out: &mut GatewayConfig,
) -> Vec<FilterChain> {
    let origin = &bound.gateway.origin;
    let gateway = (origin.namespace.as_str(), origin.name.as_str());
    let mut chains = Vec::new();
    for vs in serving(mesh, bound, caller) {
        for route in &vs.tls {
            for m in &route.matches {
                if !holds(m, port, gateway, vs) {
                    continue;
                }
                let names: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .filter(|n| names_taken.insert((*n).clone()))
                    .cloned()
                    .collect();
                if names.is_empty() {
                    continue;
                }
                let Some(proxy) = tcp_proxy(mesh, port, (&route.destinations, vs), caller, out)
                else {
                    continue;
                };
                chains.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: names,
                        ..Default::default()
                    }),
                    filters: vec![proxy],
                    ..Default::default()
                });
            }
        }
    }
    chains
}

/// The route's TCP proxy (see `route_tcp_proxy`) for the gateway proxies of namespace
/// `caller`, or `None` (reported) when every weight is 0.
fn tcp_proxy(
    mesh: &Mesh,
    port: u32,
    route: (&[Destination], &VirtualService),
    caller: Option<&str>,
    out: &mut GatewayConfig,
) -> Option<Filter> {
    let (destinations, vs) = route;
    let stat_prefix = format!("gateway_{port}");
    let Some(built) = route_proxy(mesh, port, destinations, caller, &stat_prefix) else {
        out.problems.push(Problem {
            object: vs.origin.clone(),
            field: "spec.tcp".into(),
            message: "a route has no destination with a weight above 0; it is not served".into(),
        });
        return None;
    };
    out.destinations.extend(built.destinations);
    Some(built.value)
}
