//! What a DestinationRule sets on the TCP proxies to its host in capture mode, as istiod's
//! `buildOutboundNetworkFiltersWithSingleDestination`: `connectionPool.tcp.idleTimeout` and
//! `maxConnectionDuration`, a `consistentHash.useSourceIp` hash, a `tunnel` — on the host's
//! own chains (no VirtualService) too, per namespace when a namespace reads another rule;
//! built incrementally as a full build.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use prost::Message;

use super::capture_tests::tcp_entry;
use super::stream_source_tests::labelled_listener;
use super::tests::{capture, check_with, delete, istio};

/// db's rule, in `namespace`, exported to `export_to`, with `policy` as its traffic policy.
fn db_rule(namespace: &str, export_to: &str, policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: {namespace}}}
spec:
  host: db.bookinfo.svc.cluster.local
  exportTo: {export_to}
  trafficPolicy: {policy}
"
    )
}

const IDLE_1S: &str = "{connectionPool: {tcp: {idleTimeout: 1s, maxConnectionDuration: 1h}}}";

/// The TCP proxy of db's listener's (only) chain, as a sidecar of `namespace` gets it.
fn db_proxy(yamls: &[String], namespace: &str) -> TcpProxy {
    let listener: Listener = labelled_listener(yamls, namespace, &[], "240.0.0.5_5432");
    match &listener.filter_chains[0].filters[0].config_type {
        Some(FilterConfig::TypedConfig(any)) => TcpProxy::decode(any.value.as_slice()),
        other => panic!("{other:?}"),
    }
    .expect("a tcp_proxy")
}

#[test]
fn the_rule_a_namespace_reads_sets_the_own_chains_limits_and_hash() {
    let entry = tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.5"]);
    let plain = db_proxy(std::slice::from_ref(&entry), "bookinfo");
    assert_eq!(
        (plain.idle_timeout, plain.hash_policy.len()),
        (None, 0),
        "no rule: Envoy's defaults"
    );
    let yamls = [
        entry,
        db_rule("bookinfo", "['*']", IDLE_1S),
        db_rule(
            "front",
            "[.]",
            "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
        ),
    ];
    let everyone = db_proxy(&yamls, "bookinfo");
    assert_eq!(everyone.idle_timeout.map(|d| d.seconds), Some(1));
    assert_eq!(
        everyone
            .max_downstream_connection_duration
            .map(|d| d.seconds),
        Some(3600)
    );
    assert!(everyone.hash_policy.is_empty());
    assert_eq!(
        everyone.stat_prefix, "outbound|5432||db.bookinfo.svc.cluster.local",
        "named as before"
    );
    let front = db_proxy(&yamls, "front");
    assert_eq!(front.idle_timeout, None, "front reads its own rule");
    assert_eq!(front.hash_policy.len(), 1, "{front:?}");
}

#[test]
fn tcp_rule_settings_update_as_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.5"])),
            istio(&db_rule("bookinfo", "['*']", IDLE_1S)),
            istio(&db_rule(
                "bookinfo",
                "['*']",
                "{connectionPool: {tcp: {idleTimeout: 30s}}}",
            )),
            istio(&db_rule(
                "front",
                "[.]",
                "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
            )),
            istio(&tcp_entry(
                "db",
                5432,
                "240.0.0.5",
                &["10.0.0.5", "10.0.0.6"],
            )),
            delete(Kind::DestinationRule, "bookinfo", "db"),
            delete(Kind::DestinationRule, "front", "db"),
        ],
    );
}
