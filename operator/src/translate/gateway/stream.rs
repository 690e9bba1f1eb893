//! Gateway filter chains that forward connections without reading them: TCP servers take the
//! first `tcp` route of a bound VirtualService that applies on their port; TLS PASSTHROUGH
//! servers get one filter chain per `tls` route match, chosen by the client hello's SNI.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use envoy_types::util::pack_any;

use super::{Bound, GatewayConfig, domain_for};
use crate::model::gateway::names;
use crate::model::stream_routes::{Destination, StreamMatch, StreamRoute};
use crate::model::{Mesh, Problem, VirtualService};
use crate::translate::route::cluster_for;

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

/// Whether `m` holds on `port` of the gateway for the proxies of namespace `caller`.
fn holds(
    m: &StreamMatch,
    port: u32,
    gateway: (&str, &str),
    vs: &VirtualService,
    caller: Option<&str>,
) -> bool {
    m.applies_on(port, gateway, &vs.origin.namespace) && m.names_caller(caller)
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
    let origin = &bound.gateway.origin;
    let gateway = (origin.namespace.as_str(), origin.name.as_str());
    for vs in serving(mesh, bound, caller) {
        let applies = |r: &&StreamRoute| {
            r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| holds(m, port, gateway, vs, caller))
        };
        if let Some(route) = vs.tcp.iter().find(applies) {
            let proxy = tcp_proxy(mesh, port, &route.destinations, vs, out)?;
            return Some(FilterChain {
                filters: vec![proxy],
                ..Default::default()
            });
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
                if !holds(m, port, gateway, vs, caller) {
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
                let Some(proxy) = tcp_proxy(mesh, port, &route.destinations, vs, out) else {
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

/// A TCP proxy to `destinations` (weighted when several), or `None` (reported) when every
/// weight is 0.
fn tcp_proxy(
    mesh: &Mesh,
    port: u32,
    destinations: &[Destination],
    vs: &VirtualService,
    out: &mut GatewayConfig,
) -> Option<Filter> {
    let live: Vec<&Destination> = if destinations.len() > 1 {
        destinations.iter().filter(|d| d.weight > 0).collect()
    } else {
        destinations.iter().collect()
    };
    out.destinations.extend(live.iter().map(|d| d.host.clone()));
    let cluster = |d: &Destination| cluster_for(mesh, &d.host, d.subset.as_deref(), d.port, port);
    let specifier = match live.as_slice() {
        [] => {
            out.problems.push(Problem {
                object: vs.origin.clone(),
                field: "spec.tcp".into(),
                message: "a route has no destination with a weight above 0; it is not served"
                    .into(),
            });
            return None;
        }
        [only] => ClusterSpecifier::Cluster(cluster(only)),
        several => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|d| ClusterWeight {
                    name: cluster(d),
                    weight: d.weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: format!("gateway_{port}"),
        cluster_specifier: Some(specifier),
        ..Default::default()
    };
    Some(Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))),
    })
}
