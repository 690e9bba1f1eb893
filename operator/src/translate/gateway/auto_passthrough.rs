//! AUTO_PASSTHROUGH servers, the east-west gateway of a multi-network mesh, as istiod builds
//! them: no VirtualService, but a filter chain per mesh cluster whose host one of the
//! server's hosts covers, chosen by the SNI Istio's sidecars send for that cluster
//! (`outbound_.<port>_.<subset>_.<host>`) together with one of Istio's mTLS ALPNs, forwarding
//! the connection unread to the cluster. A name capstan has no cluster for matches no chain:
//! the connection is closed.
//!
//! istiod forwards to clusters of their own, named after the SNI, that never originate TLS.
//! capstan forwards to the service's own `outbound|<port>|<subset>|<host>` cluster, so a
//! cluster a DestinationRule originates TLS for would wrap the passed-through connection in
//! TLS once more: such clusters get no chain, and are reported.

use std::collections::BTreeSet;

use capstan_crds::Protocol;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::util::pack_any;

use super::{Bound, GatewayConfig};
use crate::model::traffic_policy::TlsMode;
use crate::model::{Mesh, Problem, hostname};
use crate::translate::cluster::policy_of;
use crate::translate::cluster::tls::istio_sni;
use crate::translate::service_clusters_of;

/// The ALPNs of Istio's mTLS (istiod's `allIstioMtlsALPNs`): only a sidecar's mTLS gets
/// through, never a client speaking plain TLS to a mesh service.
const ISTIO_MTLS_ALPNS: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// How many clusters a problem names before counting the rest.
const NAMED: usize = 5;

/// The filter chains of an AUTO_PASSTHROUGH server on `port`, for the SNI names not taken by
/// an earlier chain there.
pub fn chains(
    mesh: &Mesh,
    port: u32,
    bound: &Bound<'_>,
    names_taken: &mut BTreeSet<String>,
    out: &mut GatewayConfig,
) -> Vec<FilterChain> {
    let patterns: Vec<String> = (bound.server.hosts.iter())
        .map(|h| h.host.to_ascii_lowercase())
        .collect();
    out.destination_patterns.extend(patterns.iter().cloned());
    let mut chains = Vec::new();
    let mut originating = Vec::new();
    let mut covered_any = false;
    for service in mesh.services.values() {
        // An SNI names one host: a wildcard ServiceEntry host has none to send. A service
        // outside the mesh (`MESH_EXTERNAL`) is not one east-west traffic reaches, as istiod.
        let covered = patterns.iter().any(|p| hostname::matches(p, &service.host));
        if service.host.contains('*') || !covered || service.mesh_external {
            continue;
        }
        covered_any = true;
        // Its ports, subsets and TLS settings decide its chains: a change to it rebuilds them.
        out.destinations.insert(service.host.clone());
        for cluster in service_clusters_of(mesh, service) {
            if cluster.port.protocol == Some(Protocol::Udp) {
                continue;
            }
            let subset = cluster.subset();
            let number = cluster.port.number;
            let policy = policy_of(mesh, &service.host, subset, number);
            if policy.tls.is_some_and(|t| t.mode != TlsMode::Disable) {
                originating.push(cluster.name);
                continue;
            }
            let sni = istio_sni(number, subset, &service.host);
            if names_taken.insert(sni.clone()) {
                chains.push(chain(sni, cluster.name));
            }
        }
    }
    let field = format!("spec.servers[{}].tls.mode", bound.server.index);
    if !covered_any {
        out.problems.push(Problem {
            object: bound.gateway.origin.clone(),
            field: field.clone(),
            message: format!(
                "AUTO_PASSTHROUGH on port {port}: no service of the mesh is under this server's \
                 hosts; connections are refused"
            ),
        });
    }
    if !originating.is_empty() {
        let more = originating.len().saturating_sub(NAMED);
        originating.truncate(NAMED);
        let mut named = originating.join(", ");
        if more > 0 {
            named.push_str(&format!(" and {more} more"));
        }
        out.problems.push(Problem {
            object: bound.gateway.origin.clone(),
            field,
            message: format!(
                "AUTO_PASSTHROUGH on port {port} does not forward to clusters a DestinationRule \
                 originates TLS for (their TLS would wrap the passed-through connection again): \
                 {named}"
            ),
        });
    }
    chains
}

/// A chain for `sni`, forwarding to `cluster` as is.
fn chain(sni: String, cluster: String) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: cluster.clone(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
        ..Default::default()
    };
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![sni],
            application_protocols: ISTIO_MTLS_ALPNS.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".to_string(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))),
        }],
        ..Default::default()
    }
}
