//! `connectionPool` as istiod's `applyConnectionPool`: circuit-breaker thresholds (each at
//! `u32::MAX` unless set), the connect timeout, TCP keepalive and the HTTP protocol options.
//! Applied to every cluster, with or without a DestinationRule, as istiod does.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as ThresholdRetryBudget;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    KeepaliveSettings, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{proto_duration, set_http2};
use crate::model::traffic_policy::{ConnectionPool, H2Upgrade, RetryBudget};

fn value(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// istiod's `getDefaultCircuitBreakerThresholds`: no limit, remaining capacity tracked.
pub fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: value(u32::MAX),
        max_pending_requests: value(u32::MAX),
        max_requests: value(u32::MAX),
        max_retries: value(u32::MAX),
        track_remaining: true,
        ..Default::default()
    }
}

pub fn apply(
    cluster: &mut Cluster,
    options: &mut HttpProtocolOptions,
    pool: Option<&ConnectionPool>,
) {
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    // h2 upgrade first, so that the HTTP/2 settings below find the HTTP/2 options.
    if let Some(http) = http
        && !http.use_client_protocol
        && http.h2_upgrade == H2Upgrade::Upgrade
    {
        set_http2(options);
    }
    // (The mesh-wide h2UpgradePolicy is istiod's default, DO_NOT_UPGRADE, and DEFAULT
    // follows it; a port that is not HTTP is never upgraded unless asked for.)

    let mut threshold = default_thresholds();
    let mut idle_timeout = None;
    let mut max_requests_per_connection = 0;
    let mut max_concurrent_streams = 0;
    let mut max_connection_duration = None;
    let mut keepalive = None;
    if let Some(http) = http {
        if http.http2_max_requests > 0 {
            threshold.max_requests = value(http.http2_max_requests);
        }
        if http.http1_max_pending_requests > 0 {
            threshold.max_pending_requests = value(http.http1_max_pending_requests);
        }
        if http.max_retries > 0 {
            threshold.max_retries = value(http.max_retries);
        }
        idle_timeout = http.idle_timeout;
        max_requests_per_connection = http.max_requests_per_connection;
        max_concurrent_streams = http.max_concurrent_streams;
        keepalive = http.http2_keepalive;
    }
    if let Some(tcp) = tcp {
        if let Some(timeout) = tcp.connect_timeout {
            cluster.connect_timeout = Some(proto_duration(timeout));
        }
        if tcp.max_connections > 0 {
            threshold.max_connections = value(tcp.max_connections);
        }
        max_connection_duration = tcp.max_connection_duration;
        if idle_timeout.is_none() {
            idle_timeout = tcp.idle_timeout;
        }
        if let Some(k) = &tcp.keepalive {
            // An empty keepalive sets SO_KEEPALIVE with the OS defaults.
            cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: (k.probes > 0).then_some(UInt32Value { value: k.probes }),
                    keepalive_time: k.time.map(|t| UInt32Value {
                        value: u32::try_from(t.as_secs()).unwrap_or(u32::MAX),
                    }),
                    keepalive_interval: k.interval.map(|t| UInt32Value {
                        value: u32::try_from(t.as_secs()).unwrap_or(u32::MAX),
                    }),
                }),
                ..Default::default()
            });
        }
    }
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![threshold],
        ..Default::default()
    });

    if max_connection_duration.is_some()
        || idle_timeout.is_some()
        || max_requests_per_connection > 0
        || max_concurrent_streams > 0
        || keepalive.is_some()
    {
        let common = options
            .common_http_protocol_options
            .get_or_insert_with(CommonHttpProtocolOptions::default);
        if let Some(t) = idle_timeout {
            common.idle_timeout = Some(proto_duration(t));
        }
        if max_requests_per_connection > 0 {
            common.max_requests_per_connection = value(max_requests_per_connection);
        }
        if let Some(t) = max_connection_duration {
            common.max_connection_duration = Some(proto_duration(t));
        }
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
        })) = &mut options.upstream_protocol_options
        {
            if max_concurrent_streams > 0 {
                h2.max_concurrent_streams = value(max_concurrent_streams);
            }
            if let Some((interval, timeout)) = keepalive {
                h2.connection_keepalive = Some(KeepaliveSettings {
                    interval: interval.map(proto_duration),
                    timeout: timeout.map(proto_duration),
                    ..Default::default()
                });
            }
        }
    }
    if http.is_some_and(|h| h.use_client_protocol) {
        // The downstream's protocol, HTTP/1.1 or HTTP/2, is used upstream.
        let http1 = match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(h1)),
            })) => h1.clone(),
            _ => Http1ProtocolOptions::default(),
        };
        options.upstream_protocol_options = Some(
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(http1),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            }),
        );
    }
}

/// `retryBudget`: the cluster's retries are limited by a share of its active requests (Envoy
/// then ignores `max_retries`).
pub fn apply_retry_budget(cluster: &mut Cluster, budget: &RetryBudget) {
    let Some(threshold) = cluster
        .circuit_breakers
        .as_mut()
        .and_then(|c| c.thresholds.first_mut())
    else {
        return;
    };
    threshold.retry_budget = Some(ThresholdRetryBudget {
        budget_percent: budget.percent.map(|value| Percent { value }),
        min_retry_concurrency: (budget.min_retry_concurrency > 0).then_some(UInt32Value {
            value: budget.min_retry_concurrency,
        }),
        budget_interval: budget.interval.map(proto_duration),
    });
}

/// `pool` on a cluster to the workload (a sidecar's inbound side), as istiod applies it
/// there: the limits and timeouts, but not the protocol (neither `h2UpgradePolicy` nor
/// `useClientProtocol`: the workload's port decides it).
/// `http2`: the workload speaks HTTP/2 on the port.
pub fn apply_inbound(cluster: &mut Cluster, http2: bool, pool: Option<&ConnectionPool>) {
    let mut options = HttpProtocolOptions::default();
    if http2 {
        set_http2(&mut options);
    }
    let limits = pool.cloned().map(|mut pool| {
        if let Some(http) = &mut pool.http {
            http.h2_upgrade = H2Upgrade::DoNotUpgrade;
            http.use_client_protocol = false;
        }
        pool
    });
    apply(cluster, &mut options, limits.as_ref());
    super::set_protocol_options(cluster, options);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::traffic_policy::{HttpPool, TcpKeepalive as Keepalive, TcpPool};
    use std::time::Duration;

    fn thresholds(c: &Cluster) -> &Thresholds {
        &c.circuit_breakers
            .as_ref()
            .expect("circuit breakers")
            .thresholds[0]
    }

    #[test]
    fn without_settings_every_limit_is_lifted() {
        let mut c = Cluster::default();
        let mut options = HttpProtocolOptions::default();
        apply(&mut c, &mut options, None);
        assert_eq!(thresholds(&c), &default_thresholds());
        assert_eq!(thresholds(&c).max_connections, value(u32::MAX));
        assert!(thresholds(&c).track_remaining);
        assert_eq!(options, HttpProtocolOptions::default());
        assert!(c.upstream_connection_options.is_none());
    }

    #[test]
    fn limits_timeouts_and_keepalive_are_set() {
        let pool = ConnectionPool {
            tcp: Some(TcpPool {
                max_connections: 1,
                connect_timeout: Some(Duration::from_millis(250)),
                keepalive: Some(Keepalive {
                    probes: 3,
                    time: Some(Duration::from_secs(7200)),
                    interval: None,
                }),
                max_connection_duration: Some(Duration::from_secs(600)),
                idle_timeout: Some(Duration::from_secs(5)),
            }),
            http: Some(HttpPool {
                http1_max_pending_requests: 1,
                http2_max_requests: 7,
                max_requests_per_connection: 2,
                max_retries: 4,
                idle_timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            }),
        };
        let mut c = Cluster::default();
        let mut options = HttpProtocolOptions::default();
        apply(&mut c, &mut options, Some(&pool));
        let t = thresholds(&c);
        assert_eq!(
            (
                t.max_connections,
                t.max_pending_requests,
                t.max_requests,
                t.max_retries
            ),
            (value(1), value(1), value(7), value(4))
        );
        assert_eq!(
            c.connect_timeout,
            Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        let keepalive = c
            .upstream_connection_options
            .and_then(|o| o.tcp_keepalive)
            .expect("keepalive");
        assert_eq!(keepalive.keepalive_probes, value(3));
        assert_eq!(keepalive.keepalive_time, value(7200));
        assert_eq!(keepalive.keepalive_interval, None);
        let common = options
            .common_http_protocol_options
            .expect("common options");
        // The HTTP idle timeout wins over the TCP one.
        assert_eq!(
            common.idle_timeout.map(|d| d.seconds),
            Some(30),
            "http idle timeout"
        );
        assert_eq!(common.max_requests_per_connection, value(2));
        assert_eq!(common.max_connection_duration.map(|d| d.seconds), Some(600));
    }

    #[test]
    fn h2_upgrade_policy_upgrades_unless_the_client_protocol_is_kept() {
        let upgrade = |use_client_protocol| {
            let pool = ConnectionPool {
                tcp: None,
                http: Some(HttpPool {
                    h2_upgrade: H2Upgrade::Upgrade,
                    use_client_protocol,
                    max_concurrent_streams: 9,
                    http2_keepalive: Some((Some(Duration::from_secs(30)), None)),
                    ..Default::default()
                }),
            };
            let mut options = HttpProtocolOptions::default();
            apply(&mut Cluster::default(), &mut options, Some(&pool));
            options.upstream_protocol_options
        };
        match upgrade(false) {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
            })) => {
                assert_eq!(h2.max_concurrent_streams, value(9));
                let keepalive = h2.connection_keepalive.expect("h2 keepalive");
                assert_eq!(keepalive.interval.map(|d| d.seconds), Some(30));
                assert_eq!(keepalive.timeout, None);
            }
            other => panic!("not upgraded: {other:?}"),
        }
        assert!(matches!(
            upgrade(true),
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
        ));
    }
}
