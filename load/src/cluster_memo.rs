//! What a SotW proxy reads from a cluster, remembered by the cluster's bytes.
//!
//! A SotW server sends every cluster in every CDS response: with 1,000 proxies and 1,000
//! clusters, one added cluster means a million clusters to read, which took the load
//! generator more CPU than the server under test spent sending them. Envoy skips a cluster
//! whose hash is unchanged; the load generator does the same, with the scan's result kept
//! per worker thread (no lock) and shared by the proxies that thread runs, since the result
//! is a function of the bytes alone. Servers that encode a cluster the same way each time,
//! in whatever order they list them, gain alike.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::name_set::SetKey;
use crate::tracker::Target;
use crate::wire::WireError;
use crate::xds_scan;

/// Clusters remembered per thread before the memo starts over (bounds memory; the benchmark
/// mesh has about a thousand).
const LIMIT: usize = 100_000;

/// What a proxy needs from one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterFacts {
    /// [`SetKey::hash`] of its EDS service name, if it is an EDS cluster.
    pub eds_service: Option<u64>,
    /// `n` if it is marker cluster `n` ([`Target::marker_number`]).
    pub marker: Option<u64>,
}

type Memo = HashMap<u128, ClusterFacts, xxhash_rust::xxh3::Xxh3DefaultBuilder>;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// Runs `f` with this thread's memo.
pub fn with<R>(f: impl FnOnce(&mut Clusters<'_>) -> R) -> R {
    MEMO.with_borrow_mut(|memo| f(&mut Clusters { memo }))
}

/// A thread's remembered clusters, borrowed for the length of one response.
pub struct Clusters<'m> {
    memo: &'m mut Memo,
}

impl Clusters<'_> {
    /// The facts of a cluster sent as the encoded `google.protobuf.Any` `any`. The whole
    /// `Any` is the key, so a remembered cluster is not even unwrapped.
    pub fn cluster(&mut self, any: &[u8]) -> Result<ClusterFacts, WireError> {
        let key = xxhash_rust::xxh3::xxh3_128(any);
        if let Some(facts) = self.memo.get(&key) {
            return Ok(*facts);
        }
        let scan = xds_scan::cluster(xds_scan::any_value(any)?)?;
        let facts = ClusterFacts {
            eds_service: scan.eds_service.map(SetKey::hash),
            marker: Target::marker_number(scan.name),
        };
        if self.memo.len() >= LIMIT {
            self.memo.clear();
        }
        self.memo.insert(key, facts);
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use prost::Message;

    fn any(cluster: Cluster) -> Vec<u8> {
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: cluster.encode_to_vec(),
        }
        .encode_to_vec()
    }

    fn cluster(any: &[u8]) -> Result<ClusterFacts, WireError> {
        with(|clusters| clusters.cluster(any))
    }

    fn eds_cluster(name: &str, service: &str) -> Vec<u8> {
        any(Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn facts_match_a_fresh_scan_each_time() {
        let body = eds_cluster("marker-17", "svc-a");
        let expected = ClusterFacts {
            eds_service: Some(SetKey::hash("svc-a")),
            marker: Some(17),
        };
        assert_eq!(cluster(&body).expect("scan"), expected);
        assert_eq!(cluster(&body).expect("remembered"), expected);
        let other = eds_cluster("svc-b", "");
        assert_eq!(
            cluster(&other).expect("scan"),
            ClusterFacts {
                eds_service: Some(SetKey::hash("svc-b")),
                marker: None,
            },
            "a different cluster is scanned, not mistaken for a remembered one"
        );
        let plain = any(Cluster {
            name: "static".into(),
            ..Default::default()
        });
        assert_eq!(cluster(&plain).expect("scan").eds_service, None);
    }

    #[test]
    fn malformed_bytes_are_an_error_not_remembered() {
        // An Any whose value is a cluster with a truncated name.
        let bad = [0x12, 3, 0x0a, 0x10, b'x'];
        assert!(cluster(&bad).is_err());
        assert!(cluster(&bad).is_err());
    }
}
