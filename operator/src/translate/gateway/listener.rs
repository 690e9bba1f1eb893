//! LDS for gateways: one listener per port, on every address or the one its servers `bind`
//! (an address, or a Unix socket). Plain HTTP servers share one
//! filter chain and one route configuration; each HTTPS server gets a filter chain of its
//! own, chosen by SNI, terminating TLS (see `tls_context`), and so does each TLS server that
//! terminates, forwarding what it decrypted by a `tcp` route; TCP, PASSTHROUGH and
//! AUTO_PASSTHROUGH servers forward connections unread (see `stream`, `auto_passthrough`).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Address;
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
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::{Bound, GatewayConfig, auto_passthrough, stream, tls_context};
use crate::model::gateway::ServerKind;
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

/// istiod's name for a gateway listener on `bind` (empty: every address).
pub fn listener_name(bind: &str, port: u32) -> String {
    let address = if bind.is_empty() { "0.0.0.0" } else { bind };
    format!("{address}_{port}")
}

/// Where a listener on `bind` (empty: every address; `unix://…`: a Unix socket) and `port`
/// listens.
fn bound_address(bind: &str, port: u32) -> Address {
    let address = if bind.is_empty() { "0.0.0.0" } else { bind };
    crate::translate::address::socket_or_pipe(address, port)
}

/// The listener of `port` on `bind` for `servers` (all of one family, see
/// [`ServerKind::family`]), as the gateway proxies of namespace `caller` (`None`: of a
/// namespace no VirtualService's `exportTo` or `sourceNamespace` names) get it.
pub fn listener<'a, 'b>(
    mesh: &Mesh,
    (bind, port): (&str, u32),
    servers: &'b [Bound<'a>],
    caller: Option<&str>,
    out: &mut GatewayConfig,
) -> BuiltListener<'a, 'b> {
    // As istiod: route configurations of a bound server name its address.
    let on_bind = if bind.is_empty() {
        String::new()
    } else {
        format!(".{bind}")
    };
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
                chains.extend(stream::tcp_chain(mesh, port, bound, caller, out));
            }
            ServerKind::Passthrough => {
                chains.extend(stream::passthrough_chains(
                    mesh,
                    port,
                    bound,
                    caller,
                    &mut names_taken,
                    out,
                ));
            }
            ServerKind::AutoPassthrough => {
                chains.extend(auto_passthrough::chains(
                    mesh,
                    port,
                    bound,
                    &mut names_taken,
                    out,
                ));
            }
            ServerKind::Http => {
                if http_route.is_none() {
                    let name = format!("http.{port}{on_bind}");
                    chains.push(FilterChain {
                        filters: vec![manager(&port_stat_prefix(port), &name)],
                        ..Default::default()
                    });
                    http_route = Some(name);
                }
            }
            ServerKind::Https(tls) | ServerKind::TerminatedTcp(tls) => {
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
                            "another TLS server on port {port} already terminates or forwards \
                             TLS for {what}; this server is not served"
                        ),
                    });
                    continue;
                }
                let filter = if let ServerKind::Https(_) = &bound.server.kind {
                    let route = https_route_name(bound, port, &on_bind);
                    served.push((bound, route.clone()));
                    // As istiod, a named HTTPS server's chain counts under its name.
                    let stats = match bound.server.name.as_str() {
                        "" => port_stat_prefix(port),
                        name => name.to_string(),
                    };
                    manager(&stats, &route)
                } else {
                    // Reported when no route applies; the names stay free then.
                    let Some(proxy) = stream::tcp_route_proxy(mesh, port, bound, caller, out)
                    else {
                        continue;
                    };
                    proxy
                };
                names_taken.extend(keys);
                chains.push(FilterChain {
                    filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                        server_names: names,
                        ..Default::default()
                    }),
                    filters: vec![filter],
                    transport_socket: Some(tls_context::downstream_tls(tls)),
                    ..Default::default()
                });
            }
        }
    }
    let tls = servers.iter().any(|b| b.server.kind.family() == "TLS");
    let listener = Listener {
        name: listener_name(bind, port),
        address: Some(bound_address(bind, port)),
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

/// istiod's name for the route configuration of an HTTPS server on `port`.
fn https_route_name(bound: &Bound<'_>, port: u32, on_bind: &str) -> String {
    let origin = &bound.gateway.origin;
    let port_name = if bound.server.port_name.is_empty() {
        format!("server{}", bound.server.index)
    } else {
        bound.server.port_name.clone()
    };
    format!(
        "https.{port}.{port_name}.{}.{}{on_bind}",
        origin.name, origin.namespace
    )
}

/// The SNI names of a terminating server: its hosts without namespaces; none (any name) when one
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

fn port_stat_prefix(port: u32) -> String {
    format!("outbound_0.0.0.0_{port}")
}

fn manager(stat_prefix: &str, route: &str) -> Filter {
    let manager = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
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
