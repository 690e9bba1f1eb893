//! `loadBalancer` as istiod's `applyLoadBalancer`: the simple policy (LEAST_REQUEST when
//! unset), PASSTHROUGH as an original-destination cluster, and a consistent hash as a ring
//! hash or Maglev cluster (the hash key itself is a route's hash policy, `route/hash.rs`).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::google::protobuf::UInt64Value;

use crate::model::traffic_policy::{HashAlgorithm, LoadBalancer, SimpleLb};

pub fn apply(cluster: &mut Cluster, lb: Option<&LoadBalancer>) {
    // Original-destination clusters balance themselves.
    if cluster.lb_policy == LbPolicy::ClusterProvided as i32 {
        return;
    }
    match lb.and_then(|l| l.simple) {
        None | Some(SimpleLb::LeastRequest) => cluster.lb_policy = LbPolicy::LeastRequest as i32,
        Some(SimpleLb::RoundRobin) => cluster.lb_policy = LbPolicy::RoundRobin as i32,
        Some(SimpleLb::Random) => cluster.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::Passthrough) => {
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            // A STATIC service's endpoints no longer apply: the client's address does.
            cluster.load_assignment = None;
            cluster.eds_cluster_config = None;
        }
    }
    let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return;
    };
    match hash.algorithm {
        HashAlgorithm::Maglev { table_size } => {
            cluster.lb_policy = LbPolicy::Maglev as i32;
            if table_size != 0 {
                cluster.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: table_size }),
                }));
            }
        }
        HashAlgorithm::RingHash { minimum_ring_size } => {
            cluster.lb_policy = LbPolicy::RingHash as i32;
            if minimum_ring_size != 0 {
                cluster.lb_config = Some(ring_hash(minimum_ring_size));
            }
        }
        HashAlgorithm::Default { minimum_ring_size } => {
            cluster.lb_policy = LbPolicy::RingHash as i32;
            cluster.lb_config = Some(ring_hash(minimum_ring_size));
        }
    }
}

fn ring_hash(minimum_ring_size: u64) -> LbConfig {
    LbConfig::RingHashLbConfig(RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value {
            value: minimum_ring_size,
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::traffic_policy::{ConsistentHash, HashKey};

    fn policy(c: &Cluster) -> LbPolicy {
        LbPolicy::try_from(c.lb_policy).expect("known policy")
    }

    fn with(lb: Option<LoadBalancer>) -> Cluster {
        let mut c = Cluster {
            lb_policy: LbPolicy::RoundRobin as i32,
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        apply(&mut c, lb.as_ref());
        c
    }

    fn simple(s: SimpleLb) -> Option<LoadBalancer> {
        Some(LoadBalancer {
            simple: Some(s),
            ..LoadBalancer::default()
        })
    }

    #[test]
    fn simple_policies_and_istiods_default() {
        assert_eq!(policy(&with(None)), LbPolicy::LeastRequest);
        assert_eq!(
            policy(&with(simple(SimpleLb::RoundRobin))),
            LbPolicy::RoundRobin
        );
        assert_eq!(policy(&with(simple(SimpleLb::Random))), LbPolicy::Random);
        assert_eq!(
            policy(&with(simple(SimpleLb::LeastRequest))),
            LbPolicy::LeastRequest
        );
        let passthrough = with(simple(SimpleLb::Passthrough));
        assert_eq!(policy(&passthrough), LbPolicy::ClusterProvided);
        assert_eq!(
            passthrough.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32
            ))
        );
        assert!(passthrough.eds_cluster_config.is_none());
    }

    #[test]
    fn original_destination_clusters_keep_their_policy() {
        let mut c = Cluster {
            lb_policy: LbPolicy::ClusterProvided as i32,
            ..Default::default()
        };
        apply(&mut c, simple(SimpleLb::Random).as_ref());
        assert_eq!(policy(&c), LbPolicy::ClusterProvided);
    }

    #[test]
    fn consistent_hash_picks_ring_hash_or_maglev() {
        let hashed = |algorithm| {
            with(Some(LoadBalancer {
                simple: None,
                consistent_hash: Some(ConsistentHash {
                    key: Some(HashKey::Header("x-user".into())),
                    algorithm,
                }),
                ..LoadBalancer::default()
            }))
        };
        let default = hashed(HashAlgorithm::Default {
            minimum_ring_size: 1024,
        });
        assert_eq!(policy(&default), LbPolicy::RingHash);
        assert_eq!(default.lb_config, Some(ring_hash(1024)));
        let ring = hashed(HashAlgorithm::RingHash {
            minimum_ring_size: 0,
        });
        assert_eq!(policy(&ring), LbPolicy::RingHash);
        assert_eq!(ring.lb_config, None, "Envoy's own default ring size");
        let maglev = hashed(HashAlgorithm::Maglev { table_size: 65537 });
        assert_eq!(policy(&maglev), LbPolicy::Maglev);
        assert_eq!(
            maglev.lb_config,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: 65537 })
            }))
        );
    }
}
