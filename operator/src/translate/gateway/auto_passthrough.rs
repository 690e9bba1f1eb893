//! AUTO_PASSTHROUGH servers, the east-west gateway of a multi-network mesh, as istiod builds
//! them: no VirtualService, but a filter chain per mesh cluster whose host one of the
//! server's hosts covers, chosen by the SNI Istio's sidecars send for that cluster
//! (`outbound_.<port>_.<subset>_.<host>`) together with one of Istio's mTLS ALPNs, forwarding
//! the connection unread to the SNI-DNAT cluster of the same name (`cluster::sni_dnat`),
//! which never originates TLS. A name capstan has no cluster for matches no chain: the
//! connection is closed.

use std::collections::BTreeSet;

use capstan_crds::Protocol;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::util::pack_any;

use super::{Bound, GatewayConfig};
use crate::model::gateway::auto_passthrough;
use crate::model::{Mesh, Problem};
use crate::translate::cluster::tls::istio_sni;
use crate::translate::{rule_scopes, service_clusters_in};

/// The ALPNs of Istio's mTLS (istiod's `allIstioMtlsALPNs`): only a sidecar's mTLS gets
/// through, never a client speaking plain TLS to a mesh service.
const ISTIO_MTLS_ALPNS: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// The filter chains of an AUTO_PASSTHROUGH server on `port`, for the SNI names not taken by
/// an earlier chain there.
pub fn chains(
    mesh: &Mesh,
    port: u32,
    bound: &Bound<'_>,
    names_taken: &mut BTreeSet<String>,
    out: &mut GatewayConfig,
) -> Vec<FilterChain> {
    let patterns = auto_passthrough::patterns(bound.server).map(str::to_ascii_lowercase);
    out.destination_patterns.extend(patterns);
    let mut chains = Vec::new();
    let mut covered_any = false;
    for service in mesh.services.values() {
        let covered = auto_passthrough::covers(bound.server, &service.host);
        if !covered || !auto_passthrough::reachable(service) {
            continue;
        }
        covered_any = true;
        // Its ports and subsets decide its chains: a change to it rebuilds them.
        out.destinations.insert(service.host.clone());
        // The subsets of every rule some proxies read: one the gateway proxies' namespace
        // does not read has no cluster there, and its connections are closed, as they would
        // be without a chain.
        for scope in rule_scopes(mesh, &service.host) {
            for cluster in service_clusters_in(service, scope.rule) {
                if cluster.port.protocol == Some(Protocol::Udp) {
                    continue;
                }
                let sni = istio_sni(cluster.port.number, cluster.subset(), &service.host);
                if names_taken.insert(sni.clone()) {
                    chains.push(chain(sni));
                }
            }
        }
    }
    if !covered_any {
        out.problems.push(Problem {
            object: bound.gateway.origin.clone(),
            field: format!("spec.servers[{}].tls.mode", bound.server.index),
            message: format!(
                "AUTO_PASSTHROUGH on port {port}: no service of the mesh is under this server's \
                 hosts; connections are refused"
            ),
        });
    }
    chains
}

/// A chain for `sni`, forwarding as is to the SNI-DNAT cluster of that name.
fn chain(sni: String) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: sni.clone(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(sni.clone())),
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
