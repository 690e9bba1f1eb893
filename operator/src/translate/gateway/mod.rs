//! Gateway proxies: for each set of router proxies a Gateway selector picks, one listener per
//! server port and the route configurations of its servers, named as istiod names them
//! (listener `0.0.0.0_<port>`, routes `http.<port>` for plain HTTP servers and
//! `https.<port>.<port name>.<gateway>.<namespace>` for each HTTPS server).
//!
//! Route configurations come once more for gateway proxies of a namespace or with labels a
//! bound VirtualService's `sourceNamespace` or `sourceLabels` match names (as istiod compares
//! them with the gateway proxy's own), beside the listeners' selector.
//!
//! Any change that could touch them (a Gateway, a VirtualService bound to one, a service their
//! routes send to or an AUTO_PASSTHROUGH server covers) rebuilds them all; other changes cost
//! them nothing. A service *added* under an AUTO_PASSTHROUGH server's hosts is not among
//! them: the trigger knows hosts, not host patterns. A rebuild scans the mesh's
//! VirtualServices once per server for those bound to it (no index from Gateway to its
//! VirtualServices yet), so it grows with the mesh's VirtualServices, not with the change.
//!
//! Certificates named by `credentialName` are served as SDS Secret resources to the same
//! proxies as the listener (see `credentials`); a change to a Secret a Gateway reads
//! rebuilds the gateways too.

mod auto_passthrough;
pub mod credentials;
mod listener;
mod routes;
mod security;
mod stream;
mod tls_context;

pub(crate) use tls_context::downstream_tls;

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Role, Selector};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::index::NsName;
use crate::model::Problem;
use crate::model::gateway::{Gateway, Server, ServerKind};
use crate::model::{Mesh, hostname};

/// Everything the gateways of the mesh need, per selector of router proxies.
#[derive(Debug, Default)]
pub struct GatewayConfig {
    pub listeners: Vec<(Selector, Listener)>,
    pub routes: Vec<(Selector, RouteConfiguration)>,
    pub problems: Vec<Problem>,
    /// The service hosts the routes send to: a change to one rebuilds the gateways.
    pub destinations: BTreeSet<String>,
    /// Host patterns whose every service is forwarded to (AUTO_PASSTHROUGH): a service
    /// arriving under one rebuilds the gateways.
    pub destination_patterns: BTreeSet<String>,
    /// The certificates and CAs of `credentialName` servers (SDS).
    pub secrets: Vec<(Selector, Secret)>,
    /// Every Secret looked for, found or not: its arrival or change rebuilds the gateways.
    pub consulted_secrets: BTreeSet<NsName>,
}

/// One server of one Gateway, as a listener on its port sees it.
struct Bound<'a> {
    gateway: &'a Gateway,
    server: &'a Server,
}

/// Servers by the listener they share: (`bind`, empty for every address; port).
type ServersByListener<'a> = BTreeMap<(&'a str, u32), Vec<Bound<'a>>>;

/// Builds every gateway listener and route configuration of `mesh`.
pub fn build(mesh: &Mesh) -> GatewayConfig {
    let mut out = GatewayConfig::default();
    // Gateways selecting the same proxies share their listeners, address and port by
    // address and port (`bind`, empty: every address).
    let mut by_selector: BTreeMap<&BTreeMap<String, String>, ServersByListener<'_>> =
        BTreeMap::new();
    let mut secrets: BTreeMap<&BTreeMap<String, String>, credentials::SelectorSecrets> =
        BTreeMap::new();
    for gateway in mesh.gateways.values() {
        for server in &gateway.servers {
            // A server whose certificate cannot be served is left out; the others stay.
            let served =
                match credentials::resolve(mesh, gateway, server, &mut out.consulted_secrets) {
                    Ok(served) => served,
                    Err((field, err)) => {
                        out.problems.push(Problem {
                            object: gateway.origin.clone(),
                            field,
                            message: format!("{err}; this server is not served"),
                        });
                        continue;
                    }
                };
            let added = secrets.entry(&gateway.selector).or_default().add(served);
            if let Err((name, from)) = added {
                out.problems.push(Problem {
                    object: gateway.origin.clone(),
                    field: credentials::first_field(server),
                    message: format!(
                        "these proxies already get {name} from Secret {from}, for another \
                         Gateway selecting them; this server is not served"
                    ),
                });
                continue;
            }
            by_selector
                .entry(&gateway.selector)
                .or_default()
                .entry((server.bind.as_str(), server.port))
                .or_default()
                .push(Bound { gateway, server });
        }
    }
    for (labels, served) in secrets {
        let selector = router_selector(labels);
        out.secrets
            .extend(served.into_secrets().map(|s| (selector.clone(), s)));
    }
    for (labels, ports) in by_selector {
        let selector = router_selector(labels);
        let gateways = ports
            .values()
            .flatten()
            .map(|b| &b.gateway.origin)
            .collect();
        // Routes per set of these proxies bound VirtualServices' source matches tell apart.
        let variants = routes::source_variants(mesh, labels, &gateways);
        for ((bind, port), servers) in ports {
            let servers = one_kind_per_port(port, servers, &mut out.problems);
            let built = listener::listener(mesh, (bind, port), &servers, None, &mut out);
            let http_servers: Vec<&Bound<'_>> = servers
                .iter()
                .filter(|b| b.server.kind == ServerKind::Http)
                .collect();
            for proxies in &variants {
                let mut selector = router_selector(&proxies.labels);
                selector.namespace = proxies.namespace.as_deref().map(Into::into);
                for (bound, name) in &built.served {
                    let config =
                        routes::route_configuration(mesh, port, (bound, name), proxies, &mut out);
                    out.routes.push((selector.clone(), config));
                }
                if let Some(http) = &built.http_route {
                    let config = routes::shared_http_configuration(
                        mesh,
                        port,
                        http,
                        &http_servers,
                        proxies,
                        &mut out,
                    );
                    out.routes.push((selector.clone(), config));
                }
            }
            // Envoy refuses a listener without filter chains (the whole update with it);
            // nothing on the port would be served anyway, and why is reported.
            if !built.listener.filter_chains.is_empty() {
                out.listeners
                    .push((selector.clone(), built.listener.clone()));
            }
            // The proxies of a namespace whose `tcp`/`tls` routes differ (`exportTo`,
            // `sourceNamespace`) get the port's listener of their own; said once, above.
            // Other servers' chains read no route.
            let streams = servers.iter().any(|b| {
                matches!(
                    b.server.kind,
                    ServerKind::Tcp | ServerKind::Passthrough | ServerKind::TerminatedTcp(_)
                )
            });
            let namespaces: BTreeSet<&str> = variants
                .iter()
                .filter(|_| streams)
                .filter_map(|p| p.namespace.as_deref())
                .collect();
            for ns in namespaces {
                let mut said = GatewayConfig::default();
                let theirs =
                    listener::listener(mesh, (bind, port), &servers, Some(ns), &mut said).listener;
                if theirs != built.listener && !theirs.filter_chains.is_empty() {
                    let mut selector = selector.clone();
                    selector.namespace = Some(ns.into());
                    out.listeners.push((selector, theirs));
                }
            }
        }
    }
    security::namespace_variants(mesh, &mut out.listeners);
    for (selector, listener) in &mut out.listeners {
        security::secure(mesh, selector, listener);
    }
    unbound_gateways(mesh, &mut out.problems);
    // A VirtualService's routes are read once per server they bind to.
    out.problems
        .sort_by(|a, b| (&a.object, &a.field, &a.message).cmp(&(&b.object, &b.field, &b.message)));
    out.problems.dedup();
    out
}

/// The router proxies a Gateway selector picks.
fn router_selector(labels: &BTreeMap<String, String>) -> Selector {
    Selector {
        role: Some(Role::Router),
        labels: labels.clone(),
        ..Selector::default()
    }
}

/// Whether a VirtualService is bound to some gateway (not only to sidecars).
pub fn binds_gateways(vs: &crate::model::VirtualService) -> bool {
    vs.gateways.iter().any(|g| g != "mesh")
}

/// A port serves one family of servers, plain HTTP, TLS or TCP (as with istiod): the family
/// of the first server (by Gateway namespace and name) wins, the others are reported.
fn one_kind_per_port<'a>(
    port: u32,
    servers: Vec<Bound<'a>>,
    problems: &mut Vec<Problem>,
) -> Vec<Bound<'a>> {
    let Some(first) = servers.first() else {
        return servers;
    };
    let family = first.server.kind.family();
    let (kept, dropped): (Vec<_>, Vec<_>) = servers
        .into_iter()
        .partition(|b| b.server.kind.family() == family);
    for b in dropped {
        problems.push(Problem {
            object: b.gateway.origin.clone(),
            field: format!("spec.servers[{}].port", b.server.index),
            message: format!(
                "port {port} already serves {family} for another server of these proxies; this \
                 server is not served"
            ),
        });
    }
    kept
}

/// The name a virtual host answers to where a VirtualService host (as resolved) meets a
/// server host: the narrower of the two; `None` when they do not overlap.
fn domain_for(vs_host: &str, server_host: &str) -> Option<String> {
    if hostname::matches(server_host, vs_host) {
        Some(vs_host.to_string())
    } else if hostname::matches(vs_host, server_host) {
        Some(server_host.to_string())
    } else {
        None
    }
}

/// VirtualServices naming a Gateway the mesh does not have.
fn unbound_gateways(mesh: &Mesh, problems: &mut Vec<Problem>) {
    for vs in mesh.virtual_services.values() {
        for (i, reference) in vs.gateways.iter().enumerate() {
            let Some((ns, name)) =
                crate::model::gateway::referenced(reference, &vs.origin.namespace)
            else {
                continue;
            };
            let exists = mesh
                .gateways
                .keys()
                .any(|k| k.namespace == ns && k.name == name);
            if !exists {
                problems.push(Problem {
                    object: vs.origin.clone(),
                    field: format!("spec.gateways[{i}]"),
                    message: format!("no Gateway {ns}/{name}; these routes are not served on it"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod credential_tests;

#[cfg(test)]
mod mode_tests;
