//! The TCP and TLS ports of a sidecar's outbound side: where a VirtualService's `tcp` or `tls`
//! route takes the mesh's connections (a split by weight, a subset), else straight to the
//! service. TLS is routed by the client hello's SNI, never decrypted.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};

use super::outbound;
use super::subnet_chains::{Claim, Claimed, StreamChains};
use crate::model::service::ExportTo;
use crate::model::stream_routes::StreamMatch;
use crate::model::{Mesh, Problem, VirtualService};
use crate::translate::cluster_name;
use crate::translate::route::{Caller, Labels, includes, label_classes};
use crate::translate::route_tcp_proxy::{host_rule_effects, own_proxy, route_proxy};

pub use crate::translate::route_tcp_proxy::Built;

/// Whether `m` holds, on `port` (for a TLS server name `sni`), for the sidecars `caller`
/// names — all but its destination subnets, which the listener's chains match.
fn holds(m: &StreamMatch, port: u32, sni: Option<&str>, caller: &Caller) -> bool {
    m.port.is_none_or(|p| p == port)
        && m.for_mesh()
        && sni.is_none_or(|name| m.sni_hosts.iter().any(|s| s == name))
        && m.names_caller(caller.namespace.as_deref())
        && includes(&caller.labels, &m.source_labels)
}

/// The VirtualService routing `host` for the sidecars of namespace `caller`: none where it is
/// not exported to (they connect to the service itself, as with HTTP routes).
fn routing<'a>(mesh: &'a Mesh, host: &str, caller: &Caller) -> Option<&'a VirtualService> {
    mesh.virtual_service_for(host)
        .filter(|vs| vs.export_to.includes(caller.namespace.as_deref()))
}

/// Who may route a set of hosts' connections otherwise than the rest: the namespaces their
/// VirtualServices' `tcp`/`tls` matches name by `sourceNamespace` or are exported to by name,
/// and the `sourceLabels` selectors of those matches.
#[derive(Debug, Default)]
pub struct Sources {
    pub namespaces: BTreeSet<String>,
    pub selectors: BTreeSet<Labels>,
}

impl Sources {
    /// Adds what `host`'s VirtualService tells apart.
    pub fn add(&mut self, mesh: &Mesh, host: &str) {
        self.add_rule_namespaces(mesh, host);
        let Some(vs) = mesh.virtual_service_for(host) else {
            return;
        };
        let matches = vs.tcp.iter().chain(&vs.tls).flat_map(|r| &r.matches);
        for m in matches {
            self.namespaces.extend(m.source_namespace.clone());
            if m.for_mesh() && !m.source_labels.is_empty() {
                self.selectors.insert(m.source_labels.clone());
            }
        }
        if let ExportTo::Namespaces(exported) = &vs.export_to {
            self.namespaces.extend(exported.iter().cloned());
        }
    }

    /// Adds the namespaces whose sidecars read a DestinationRule for `host` that sets
    /// another thing than the rest's on its own chains' TCP proxies.
    fn add_rule_namespaces(&mut self, mesh: &Mesh, host: &str) {
        let effects = host_rule_effects(mesh.destination_rules.get(host));
        let namespaces = effects
            .into_iter()
            .filter_map(|(ns, _)| ns.map(str::to_string));
        self.namespaces.extend(namespaces);
    }

    /// What `hosts` tell apart, together.
    pub fn of<'a>(mesh: &Mesh, hosts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut sources = Self::default();
        for host in hosts {
            sources.add(mesh, host);
        }
        sources
    }

    /// Every set of sidecars whose routes may differ, but every sidecar's: each namespace
    /// named (and any other), each with every label class of the selectors.
    pub fn callers(&self) -> Vec<Caller> {
        let classes = label_classes(&self.selectors);
        let namespaces = std::iter::once(None).chain(self.namespaces.iter().map(Some));
        let mut callers = Vec::new();
        for namespace in namespaces {
            for class in &classes {
                if namespace.is_some() || !class.is_empty() {
                    callers.push(Caller::new(namespace.map(String::as_str), class));
                }
            }
        }
        callers
    }

    /// Whether some match tells sidecars apart by their labels.
    pub fn by_labels(&self) -> bool {
        !self.selectors.is_empty()
    }
}

/// Where `host`'s connections on `port` go for `caller`'s sidecars: its VirtualService's
/// `tcp` (or, for a TLS host, `tls`) routes for the mesh, else its own cluster. A route
/// whose matches all name destination subnets takes the connections to those (each subnet
/// once on the listener: `claimed`); the first route with a match for any destination
/// takes the rest — and, for TCP, ends the list, as with istiod.
pub fn stream_chains(
    mesh: &Mesh,
    host: &str,
    port: u32,
    tls: bool,
    caller: &Caller,
    claimed: &mut Claimed,
    problems: &mut Vec<Problem>,
) -> Built<StreamChains> {
    let own = cluster_name(port, "", host);
    let mut by_subnets = Vec::new();
    let mut destinations = Vec::new();
    let mut rest = None;
    if let Some(vs) = routing(mesh, host, caller) {
        let (routes, list) = if tls {
            (&vs.tls, "spec.tls")
        } else {
            (&vs.tcp, "spec.tcp")
        };
        let sni = tls.then_some(host);
        for route in routes {
            let holding: Vec<&StreamMatch> = route
                .matches
                .iter()
                .filter(|m| holds(m, port, sni, caller))
                .collect();
            let any_destination = route.matches.is_empty()
                || holding.iter().any(|m| m.destination_subnets.is_empty());
            if any_destination && rest.is_some() {
                continue;
            }
            let mut subnets = Vec::new();
            if !any_destination {
                for subnet in holding.iter().flat_map(|m| &m.destination_subnets) {
                    match claimed.claim(subnet, host) {
                        Claim::New => subnets.push(subnet.clone()),
                        Claim::Again => {}
                        Claim::Taken(owner) => {
                            problems.push(subnet_taken(vs, list, subnet, &owner))
                        }
                    }
                }
                if subnets.is_empty() {
                    continue;
                }
            }
            let namespace = caller.namespace.as_deref();
            let built = route_proxy(mesh, port, &route.destinations, namespace, &own);
            let Some(built) = built else {
                problems.push(no_weight(&vs.origin, list));
                if any_destination {
                    break;
                }
                continue;
            };
            destinations.extend(built.destinations);
            if !any_destination {
                by_subnets.push((subnets, built.value));
                continue;
            }
            rest = Some(built.value);
            if !tls {
                break;
            }
        }
    }
    Built {
        value: StreamChains {
            by_subnets,
            rest: rest
                .unwrap_or_else(|| own_proxy(mesh, host, port, caller.namespace.as_deref(), &own)),
        },
        destinations,
    }
}

/// `0.0.0.0_<port>` for TLS services: chains per SNI name — a VirtualService's `tls` routes
/// where they apply (by destination subnet first), else the host itself to its own cluster.
/// The chain for the rest is each sidecar's outbound traffic policy's, added per set of
/// sidecars. Each chain's host goes to `chain_hosts`.
pub fn tls_listener(
    mesh: &Mesh,
    port: u32,
    hosts: &[&str],
    caller: &Caller,
    problems: &mut Vec<Problem>,
) -> (Built<Listener>, Vec<(String, String)>) {
    let mut chains = Vec::new();
    let mut destinations = Vec::new();
    let mut chain_hosts = Vec::new();
    for host in hosts {
        let mut claimed = Claimed::default();
        let built = stream_chains(mesh, host, port, true, caller, &mut claimed, problems);
        destinations.extend(built.destinations);
        let by_sni = FilterChainMatch {
            server_names: vec![host.to_string()],
            ..Default::default()
        };
        let host_chains = built.value.into_chains(&sni_chain_name(port, host), by_sni);
        chain_hosts.extend(
            host_chains
                .iter()
                .map(|c| (c.name.clone(), host.to_string())),
        );
        chains.extend(host_chains);
    }
    let mut listener =
        outbound::bound_by_capture(format!("0.0.0.0_{port}"), "0.0.0.0", port, chains);
    listener.listener_filters = vec![super::tls_inspector()];
    let built = Built {
        value: listener,
        destinations,
    };
    (built, chain_hosts)
}

/// The filter chain of TLS service `host` on `port` (named for its cluster).
pub fn sni_chain_name(port: u32, host: &str) -> String {
    cluster_name(port, "", host)
}

fn subnet_taken(vs: &VirtualService, field: &str, subnet: &str, owner: &str) -> Problem {
    Problem {
        object: vs.origin.clone(),
        field: format!("{field}.match.destinationSubnets"),
        message: format!(
            "{subnet} is matched already on this port by {owner}'s chain; this route does not \
             take connections to it"
        ),
    }
}

fn no_weight(object: &capstan_crds::ObjectKey, field: &str) -> Problem {
    Problem {
        object: object.clone(),
        field: field.to_string(),
        message: "a route has no destination with a weight above 0; the service's own cluster \
                  takes its connections"
            .to_string(),
    }
}
