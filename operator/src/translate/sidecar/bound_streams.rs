//! Egress listeners a `Sidecar` binds to a socket of their own (`captureMode: NONE`) on a
//! TLS or TCP port: where an application without an iptables capture connects, itself, to
//! the listener's services on that port. As istiod builds them: a TLS port's connections are
//! routed by SNI to each of those services (a VirtualService's `tls` routes where they
//! apply); a TCP port's all go to one service, the first by name, through its VirtualService's
//! `tcp` routes or to its own cluster.

use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};

use super::stream::{self, sni_chain_name};
use super::subnet_chains::Claimed;
use super::{outbound, socket};
use crate::model::sidecar_scope::{BoundEgress, Streams};
use crate::model::{Mesh, Problem};
use crate::translate::route::Caller;

/// The listener `bound` carrying `streams`, for the sidecars it names; `None` where none of
/// its hosts has a service on its port.
pub fn listener(
    mesh: &Mesh,
    bound: &BoundEgress,
    streams: &Streams,
    problems: &mut Vec<Problem>,
) -> Option<Listener> {
    let caller = match &streams.caller {
        Some((namespace, labels)) => Caller::new(Some(namespace), labels),
        None => Caller::anyone(),
    };
    let hosts = carried_hosts(mesh, bound.port, streams, caller.namespace.as_deref());
    let problem = |message: String| Problem {
        object: streams.origin.clone(),
        field: format!("spec.egress[{}]", streams.index),
        message,
    };
    // The root namespace's default, as read where `./` names nothing: each namespace with a
    // service on the port has a variant of its own.
    let read_anywhere = streams.caller.is_none() && bound.names_own_namespace();
    if hosts.is_empty() && read_anywhere {
        return None;
    }
    if hosts.is_empty() {
        problems.push(problem(format!(
            "no service its hosts name has port {}; nothing listens on {}",
            bound.port,
            bound.name()
        )));
        return None;
    }
    // Route problems are the port's captured listeners' to report; said there once.
    let mut route_problems = Vec::new();
    let mut listener = if streams.tls {
        let (built, _) =
            stream::tls_listener(mesh, bound.port, &hosts, &caller, &mut route_problems);
        built.value
    } else {
        let (host, others) = (hosts[0], &hosts[1..]);
        if !others.is_empty() {
            problems.push(problem(format!(
                "{} services its hosts name have port {}; as istiod, a TCP listener bound \
                 without capture carries one's connections: {host}'s (not {})",
                hosts.len(),
                bound.port,
                others.join(", ")
            )));
        }
        let mut claimed = Claimed::default();
        let built = stream::stream_chains(
            mesh,
            host,
            bound.port,
            false,
            &caller,
            &mut claimed,
            &mut route_problems,
        );
        // As istiod's: a route's `destinationSubnets` match the connection's destination,
        // which here is the listener's own address.
        let chains = (built.value).into_chains(
            &sni_chain_name(bound.port, host),
            FilterChainMatch::default(),
        );
        outbound::bound_by_capture(String::new(), "", bound.port, chains)
    };
    listener.name = bound.name();
    listener.address = Some(socket(&bound.address, bound.port));
    // It listens on its socket itself: no capture hands it connections.
    listener.bind_to_port = None;
    Some(listener)
}

/// The services `streams` names that have `port` and are exported to `namespace`, by name.
fn carried_hosts<'a>(
    mesh: &'a Mesh,
    port: u32,
    streams: &Streams,
    namespace: Option<&str>,
) -> Vec<&'a str> {
    mesh.services
        .values()
        .filter(|service| service.ports.iter().any(|p| p.number == port))
        .filter(|service| service.export_to.includes(namespace))
        .filter(|service| streams.names(service.namespace(), &service.host))
        .map(|service| service.host.as_str())
        .collect()
}
