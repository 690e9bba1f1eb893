//! The outbound listeners of one port, from the services using it and how.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};

use super::super::{outbound, stream, tcp_proxy};
use super::PortUse;
use crate::model::service::Origin;
use crate::model::{Mesh, Problem};

/// The outbound listeners of one port.
#[derive(Default)]
pub(super) struct PortListeners {
    /// Those every sidecar gets alike.
    pub same: Vec<Listener>,
    /// The TLS services' (by SNI), whose last filter chain, for names no service has, each
    /// sidecar's outbound traffic policy decides ([`with_fallthrough`]).
    pub tls: Option<Listener>,
    /// The hosts their routes send to.
    pub destinations: BTreeSet<String>,
    /// The listeners of one service's address, with their service.
    pub owners: Vec<(String, String)>,
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
        out.push(outbound::http_port(port));
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
        let built = stream::tls_listener(mesh, port, &tls, problems);
        destinations.extend(built.destinations);
        tls_listener = Some(built.value);
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
            let built = stream::tcp_filter(mesh, host, port, problems);
            destinations.extend(built.destinations);
            let listener = if detected {
                outbound::detected_port(address, port, built.value)
            } else {
                outbound::tcp_port(address, port, built.value)
            };
            owners.push((listener.name.clone(), host.clone()));
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
