//! The outbound listeners of one port, from the services using it and how.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};

use super::super::stream::{self, Built};
use super::super::{outbound, tcp_proxy};
use super::PortUse;
use crate::model::service::Origin;
use crate::model::{Mesh, Problem};

/// The outbound listeners of one port.
#[derive(Default)]
pub(super) struct PortListeners {
    /// Those whose filter chains are complete.
    pub same: Vec<PortListener>,
    /// The TLS services' (by SNI), whose last filter chain, for names no service has, each
    /// sidecar's outbound traffic policy decides ([`with_fallthrough`]).
    pub tls: Option<PortListener>,
    /// The hosts their routes send to.
    pub destinations: BTreeSet<String>,
    /// The listeners of one service's address, with their service.
    pub owners: Vec<(String, String)>,
}

/// One listener as every sidecar gets it, and as the sidecars of some namespaces get it
/// instead (their `tcp`/`tls` routes differ: `sourceNamespace`, `exportTo`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PortListener {
    pub everyone: Listener,
    pub by_namespace: BTreeMap<String, Listener>,
}

impl PortListener {
    fn alike(listener: Listener) -> Self {
        Self {
            everyone: listener,
            by_namespace: BTreeMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.everyone.name
    }

    /// `build` for every sidecar, and for each of `namespaces` where it differs; the hosts
    /// the routes of any of them send to go to `destinations`. Problems are said once, for
    /// every sidecar's.
    fn per_namespace(
        namespaces: &BTreeSet<String>,
        destinations: &mut BTreeSet<String>,
        problems: &mut Vec<Problem>,
        build: impl Fn(Option<&str>, &mut Vec<Problem>) -> Built<Listener>,
    ) -> Self {
        let everyone = build(None, problems);
        destinations.extend(everyone.destinations);
        let mut by_namespace = BTreeMap::new();
        for ns in namespaces {
            let built = build(Some(ns), &mut Vec::new());
            destinations.extend(built.destinations);
            if built.value != everyone.value {
                by_namespace.insert(ns.clone(), built.value);
            }
        }
        Self {
            everyone: everyone.value,
            by_namespace,
        }
    }
}

/// The outbound listeners of `port`: one for its HTTP services, one for its TLS services
/// (by SNI), one per address of a TCP service or of one without a declared protocol, and
/// one for such a service without an address when nothing else claims the port.
pub(super) fn port_listeners(
    mesh: &Mesh,
    port: u32,
    users: &BTreeMap<String, PortUse>,
    problems: &mut Vec<Problem>,
) -> PortListeners {
    let mut out = Vec::new();
    let mut owners = Vec::new();
    let mut destinations = BTreeSet::new();
    let mut tls_listener = None;
    let http = users.values().any(|u| *u == PortUse::Http);
    let tls: Vec<&str> = users
        .iter()
        .filter(|(_, u)| **u == PortUse::Tls)
        .map(|(h, _)| h.as_str())
        .collect();
    if http {
        out.push(PortListener::alike(outbound::http_port(port)));
        for host in &tls {
            report(
                mesh,
                host,
                problems,
                format!(
                    "TLS port {port} is also an HTTP port of other services; its connections are \
                 served as HTTP, not by SNI"
                ),
            );
        }
    } else if !tls.is_empty() {
        let namespaces: BTreeSet<String> = tls
            .iter()
            .flat_map(|host| stream::caller_namespaces(mesh, host))
            .collect();
        tls_listener = Some(PortListener::per_namespace(
            &namespaces,
            &mut destinations,
            problems,
            |caller, problems| stream::tls_listener(mesh, port, &tls, caller, problems),
        ));
    }
    let wildcard_taken = http || !tls.is_empty();
    let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
    for (host, how) in users {
        let (addresses, detected) = match how {
            PortUse::Tcp(addresses) => (addresses, false),
            PortUse::Detected(addresses) => (addresses, true),
            PortUse::Http | PortUse::Tls => continue,
        };
        let wildcard = ["0.0.0.0".to_string()];
        let addresses = if addresses.is_empty() {
            &wildcard[..]
        } else {
            &addresses[..]
        };
        for address in addresses {
            if address == "0.0.0.0" && wildcard_taken && detected && http {
                // The port's HTTP listener serves it, as an HTTP port (no TCP then).
                continue;
            }
            if address == "0.0.0.0" && wildcard_taken {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "TCP port {port} has no address to tell it apart from the HTTP or TLS \
                     services on port {port}; give the service an address (ServiceEntry \
                     `addresses`)"
                    ),
                );
                continue;
            }
            if let Some(first) = claimed.get(address) {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "{address}:{port} is already the TCP listener of {first}; this service's \
                     traffic on it is not routed"
                    ),
                );
                continue;
            }
            claimed.insert(address.clone(), host);
            let namespaces = stream::caller_namespaces(mesh, host);
            let listener = PortListener::per_namespace(
                &namespaces,
                &mut destinations,
                problems,
                |caller, problems| {
                    let built = stream::tcp_filter(mesh, host, port, caller, problems);
                    let value = if detected {
                        outbound::detected_port(address, port, built.value)
                    } else {
                        outbound::tcp_port(address, port, built.value)
                    };
                    Built {
                        value,
                        destinations: built.destinations,
                    }
                },
            );
            owners.push((listener.name().to_string(), host.clone()));
            out.push(listener);
        }
    }
    PortListeners {
        same: out,
        tls: tls_listener,
        destinations,
        owners,
    }
}

/// `listener` (a TLS port's) ending with the filter chain for names no service has, to
/// `cluster`.
pub(super) fn with_fallthrough(listener: &Listener, cluster: &str) -> Listener {
    let mut listener = listener.clone();
    listener.filter_chains.push(FilterChain {
        name: cluster.to_string(),
        filters: vec![tcp_proxy(cluster, cluster)],
        ..Default::default()
    });
    listener
}

pub(super) fn report(mesh: &Mesh, host: &str, problems: &mut Vec<Problem>, message: String) {
    match mesh.services.get(host).map(|s| &s.origin) {
        Some(Origin::Istio(object)) => problems.push(Problem {
            object: object.clone(),
            field: "spec.ports".to_string(),
            message,
        }),
        _ => tracing::warn!(%host, "{message}"),
    }
}
