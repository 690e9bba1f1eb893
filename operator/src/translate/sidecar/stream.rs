//! The TCP and TLS ports of a sidecar's outbound side: where a VirtualService's `tcp` or `tls`
//! route takes the mesh's connections (a split by weight, a subset), else straight to the
//! service. TLS is routed by the client hello's SNI, never decrypted.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};

use super::outbound;
use super::tcp_proxy;
use crate::model::service::ExportTo;
use crate::model::stream_routes::StreamRoute;
use crate::model::{Mesh, Problem, VirtualService};
use crate::translate::cluster_name;
use crate::translate::route::{Caller, Labels, includes, label_classes};
use crate::translate::route_tcp_proxy::route_proxy;

pub use crate::translate::route_tcp_proxy::Built;

/// The first route of `routes` that takes the connections on `port` of the sidecars
/// `caller` names.
fn mesh_route<'a>(
    routes: &'a [StreamRoute],
    port: u32,
    sni: Option<&str>,
    caller: &Caller,
) -> Option<&'a StreamRoute> {
    routes.iter().find(|route| {
        route.matches.is_empty()
            || route.matches.iter().any(|m| {
                m.port.is_none_or(|p| p == port)
                    && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                    && sni.is_none_or(|name| m.sni_hosts.iter().any(|s| s == name))
                    && m.names_caller(caller.namespace.as_deref())
                    && includes(&caller.labels, &m.source_labels)
            })
    })
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
        let Some(vs) = mesh.virtual_service_for(host) else {
            return;
        };
        let matches = vs.tcp.iter().chain(&vs.tls).flat_map(|r| &r.matches);
        for m in matches {
            self.namespaces.extend(m.source_namespace.clone());
            let for_sidecars = m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh");
            if for_sidecars && !m.source_labels.is_empty() {
                self.selectors.insert(m.source_labels.clone());
            }
        }
        if let ExportTo::Namespaces(exported) = &vs.export_to {
            self.namespaces.extend(exported.iter().cloned());
        }
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

/// The filter for `host`'s TCP port: its VirtualService's `tcp` route for the mesh, else its
/// own cluster.
pub fn tcp_filter(
    mesh: &Mesh,
    host: &str,
    port: u32,
    caller: &Caller,
    problems: &mut Vec<Problem>,
) -> Built<Filter> {
    let own = cluster_name(port, "", host);
    if let Some(vs) = routing(mesh, host, caller)
        && let Some(route) = mesh_route(&vs.tcp, port, None, caller)
    {
        let namespace = caller.namespace.as_deref();
        match route_proxy(mesh, port, &route.destinations, namespace, &own) {
            Some(built) => return built,
            None => problems.push(no_weight(&vs.origin, "spec.tcp")),
        }
    }
    Built {
        value: tcp_proxy(&own, &own),
        destinations: Vec::new(),
    }
}

/// `0.0.0.0_<port>` for TLS services: a chain per SNI name — a VirtualService's `tls` route
/// where one applies, else the host itself to its own cluster. The chain for the rest is
/// each sidecar's outbound traffic policy's, added per set of sidecars.
pub fn tls_listener(
    mesh: &Mesh,
    port: u32,
    hosts: &[&str],
    caller: &Caller,
    problems: &mut Vec<Problem>,
) -> Built<Listener> {
    let mut chains = Vec::new();
    let mut destinations = Vec::new();
    for host in hosts {
        let own = cluster_name(port, "", host);
        let routed = routing(mesh, host, caller).and_then(|vs| {
            let route = mesh_route(&vs.tls, port, Some(host), caller)?;
            let namespace = caller.namespace.as_deref();
            let built = route_proxy(mesh, port, &route.destinations, namespace, &own);
            if built.is_none() {
                problems.push(no_weight(&vs.origin, "spec.tls"));
            }
            built
        });
        let filter = match routed {
            Some(built) => {
                destinations.extend(built.destinations);
                built.value
            }
            None => tcp_proxy(&own, &own),
        };
        chains.push(FilterChain {
            name: sni_chain_name(port, host),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![host.to_string()],
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        });
    }
    let mut listener =
        outbound::bound_by_capture(format!("0.0.0.0_{port}"), "0.0.0.0", port, chains);
    listener.listener_filters = vec![super::tls_inspector()];
    Built {
        value: listener,
        destinations,
    }
}

/// The filter chain of TLS service `host` on `port` (named for its cluster).
pub fn sni_chain_name(port: u32, host: &str) -> String {
    cluster_name(port, "", host)
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
