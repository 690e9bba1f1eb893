//! A `Sidecar`'s ingress listeners: the `virtualInbound` of the sidecars it covers, with a
//! filter chain per listed port instead of per service port, each to a cluster that goes
//! where the listener's `defaultEndpoint` says.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, Pipe};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::inbound::{self, Served};
use super::mtls::{Accepts, InboundMtls};
use super::socket;
use crate::model::sidecar_scope::{IngressEndpoint, IngressPort, IngressProtocol};
use crate::translate::authorization::InboundAuthz;
use crate::translate::gateway::downstream_tls;

/// The name of the cluster an ingress listener's connections go to: what it does, so that
/// Sidecars listing the same port and endpoint share one.
pub fn cluster_name(ingress: &IngressPort) -> String {
    let protocol = match ingress.served {
        IngressProtocol::Http { http2: false } => "http",
        IngressProtocol::Http { http2: true } => "http2",
        IngressProtocol::Tcp => "tcp",
        IngressProtocol::Detected => "detected",
    };
    let to = match &ingress.to {
        IngressEndpoint::Passthrough => "passthrough".to_string(),
        IngressEndpoint::Loopback { address, port } => format!("{address}_{port}"),
        IngressEndpoint::Instance { port } => format!("instance_{port}"),
        IngressEndpoint::Unix(path) => format!("unix_{path}"),
    };
    match &ingress.pool {
        None => format!("inbound|{}|{protocol}|{to}", ingress.port),
        // Two Sidecars may list the same port and endpoint with other limits.
        Some(pool) => format!(
            "inbound|{}|{protocol}|{to}|{}.{}",
            ingress.port, pool.sidecar.name, pool.sidecar.namespace
        ),
    }
}

fn served(ingress: &IngressPort) -> Served {
    match ingress.served {
        IngressProtocol::Http { http2 } => Served::Http { http2 },
        IngressProtocol::Tcp => Served::Tcp,
        IngressProtocol::Detected => Served::Detected,
    }
}

/// `virtualInbound` for sidecars with these ingress listeners (none: every port passes
/// through, as for a workload without services): each port accepts what `mtls` says (a port
/// with `tls` terminates that instead), and `authz` applies to every port's chains, as on a
/// workload's service ports. A port bound to a socket of its own (`captureMode: NONE`) is
/// not among them.
pub fn workload_virtual_inbound(
    ports: &[IngressPort],
    mtls: &InboundMtls,
    authz: &InboundAuthz,
) -> Listener {
    let captured: Vec<&IngressPort> = ports.iter().filter(|p| p.bound.is_none()).collect();
    let declared: Vec<u32> = captured.iter().map(|p| p.port).collect();
    let passthrough = mtls.passthrough(|port| declared.contains(&port));
    with_ports(&captured, &passthrough, mtls, authz)
}

/// `<address>_<port>` on a socket of its own, for an ingress listener with `captureMode:
/// NONE` bound to `address`: the port's filter chains as `virtualInbound` would have them,
/// without an original destination to match on.
pub fn bound_listener(port: &IngressPort, address: &str) -> Listener {
    let anything = InboundMtls::none();
    workload_bound_listener(port, address, &anything, &InboundAuthz::default())
}

/// [`bound_listener`] for one workload with an identity or policies, as
/// [`workload_virtual_inbound`] has the port.
pub fn workload_bound_listener(
    port: &IngressPort,
    address: &str,
    mtls: &InboundMtls,
    authz: &InboundAuthz,
) -> Listener {
    // Its own socket: no passthrough, every connection there is the port's.
    let mut listener = with_ports(&[port], &[], mtls, authz);
    listener.name = format!("{address}_{}", port.port);
    listener.address = Some(socket(address, port.port));
    (listener.listener_filters).retain(|f| f.name != "envoy.filters.listener.original_dst");
    for chain in &mut listener.filter_chains {
        if let Some(on) = &mut chain.filter_chain_match {
            on.destination_port = None;
        }
    }
    listener
}

fn with_ports(
    ports: &[&IngressPort],
    passthrough: &[(Option<u32>, Accepts)],
    mtls: &InboundMtls,
    authz: &InboundAuthz,
) -> Listener {
    let inbound_ports = ports.iter().map(|p| inbound::InboundPort {
        port: p.port,
        served: served(p),
        cluster: cluster_name(p),
        // A port's own `tls` is what it terminates.
        accepts: match p.tls {
            Some(_) => Accepts::Anything,
            None => mtls.for_port(p.port),
        },
    });
    let peer_domains = mtls.peer_domains();
    let mut listener = inbound::virtual_inbound_to(inbound_ports, passthrough, authz, peer_domains);
    for port in ports {
        let Some(tls) = &port.tls else { continue };
        let socket = downstream_tls(tls);
        for chain in &mut listener.filter_chains {
            let on_port = chain
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .is_some_and(|p| p.value == port.port);
            if on_port {
                chain.transport_socket = Some(socket.clone());
            }
        }
    }
    listener
}

/// The cluster behind one ingress listener.
pub fn cluster(ingress: &IngressPort) -> Cluster {
    let served = served(ingress);
    // The workload's own address, as for a service port: connections were headed there.
    let pool = ingress.pool.as_ref().map(|p| &p.limits);
    let mut cluster = inbound::inbound_cluster(ingress.port, served, pool);
    cluster.name = cluster_name(ingress);
    match &ingress.to {
        IngressEndpoint::Passthrough => {}
        IngressEndpoint::Instance { port } => {
            cluster.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                upstream_port_override: Some(UInt32Value { value: *port }),
                ..Default::default()
            }));
        }
        IngressEndpoint::Loopback { address, port } => {
            // The capture lets the sidecar's connections to loopback through: no 127.0.0.6.
            cluster.upstream_bind_config = None;
            static_endpoint(&mut cluster, socket(address, *port));
        }
        IngressEndpoint::Unix(path) => {
            cluster.upstream_bind_config = None;
            let pipe = Address {
                address: Some(AddressKind::Pipe(Pipe {
                    path: path.clone(),
                    mode: 0,
                })),
            };
            static_endpoint(&mut cluster, pipe);
        }
    }
    cluster
}

/// Makes `cluster` a STATIC one with `address` its one endpoint.
fn static_endpoint(cluster: &mut Cluster, address: Address) {
    cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    cluster.lb_policy = 0;
    cluster.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: cluster.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(address),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
}
