//! `loadBalancer` as istiod's `applyLoadBalancer`: the simple policy (LEAST_REQUEST when
//! unset) with its slow start (`warmup`), PASSTHROUGH as an original-destination cluster,
//! and a consistent hash as a ring hash or Maglev cluster (the hash key itself is a route's
//! hash policy, `route/hash.rs`).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig,
    RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
};
use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt64Value;

use super::proto_duration;
use crate::model::traffic_policy::{HashAlgorithm, LoadBalancer, SimpleLb, Warmup};

pub fn apply(cluster: &mut Cluster, lb: Option<&LoadBalancer>) {
    // Original-destination clusters balance themselves.
    if cluster.lb_policy == LbPolicy::ClusterProvided as i32 {
        return;
    }
    // Envoy's ring hash and Maglev have no slow start (validation's report says so).
    let slow_start = lb
        .filter(|l| l.consistent_hash.is_none())
        .and_then(|l| l.warmup.as_ref())
        .map(slow_start);
    match lb.and_then(|l| l.simple) {
        None | Some(SimpleLb::LeastRequest) => {
            cluster.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(slow_start_config) = slow_start.clone() {
                cluster.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(slow_start_config),
                    ..Default::default()
                }));
            }
        }
        Some(SimpleLb::RoundRobin) => {
            cluster.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(slow_start_config) = slow_start.clone() {
                cluster.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(slow_start_config),
                }));
            }
        }
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

/// Envoy's slow start for `warmup`, as istiod sets it (round robin and least request only:
/// Envoy has it for those).
fn slow_start(warmup: &Warmup) -> SlowStartConfig {
    SlowStartConfig {
        slow_start_window: Some(proto_duration(warmup.duration)),
        aggression: warmup.aggression.map(|value| RuntimeDouble {
            default_value: value,
            runtime_key: "upstream.slow_start.aggression".to_string(),
        }),
        min_weight_percent: warmup.minimum_percent.map(|value| Percent { value }),
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

    fn warming(simple: Option<SimpleLb>, hash: bool) -> Cluster {
        let consistent_hash = hash.then_some(ConsistentHash {
            key: Some(HashKey::SourceIp),
            algorithm: HashAlgorithm::Default {
                minimum_ring_size: 1024,
            },
        });
        with(Some(LoadBalancer {
            simple,
            consistent_hash,
            warmup: Some(Warmup {
                duration: std::time::Duration::from_secs(30),
                minimum_percent: Some(5.0),
                aggression: None,
            }),
            ..LoadBalancer::default()
        }))
    }

    #[test]
    fn warmup_is_envoys_slow_start_where_envoy_has_one() {
        let expected = SlowStartConfig {
            slow_start_window: Some(proto_duration(std::time::Duration::from_secs(30))),
            aggression: None,
            min_weight_percent: Some(Percent { value: 5.0 }),
        };
        match warming(None, false).lb_config {
            Some(LbConfig::LeastRequestLbConfig(c)) => {
                assert_eq!(c.slow_start_config, Some(expected.clone()));
            }
            other => panic!("istiod's default, least request: {other:?}"),
        }
        match warming(Some(SimpleLb::RoundRobin), false).lb_config {
            Some(LbConfig::RoundRobinLbConfig(c)) => {
                assert_eq!(c.slow_start_config, Some(expected));
            }
            other => panic!("round robin: {other:?}"),
        }
        assert_eq!(warming(Some(SimpleLb::Random), false).lb_config, None);
        let hashed = warming(None, true);
        assert_eq!(policy(&hashed), LbPolicy::RingHash);
        assert!(
            matches!(hashed.lb_config, Some(LbConfig::RingHashLbConfig(_))),
            "{:?}",
            hashed.lb_config
        );
    }
}
