//! The TCP proxy of a VirtualService `tcp` or `tls` route, for sidecars and gateways alike:
//! the destination's cluster, or weighted clusters for a split; with one destination, the
//! `tunnel` of the DestinationRule the caller reads for it (istiod's tunnelling config): the
//! connection is carried through that host, an HTTP proxy, as an HTTP CONNECT (or POST)
//! tunnel to the rule's `targetHost:targetPort`. From the rule of the (first) destination
//! too, as istiod's `buildOutboundNetworkFiltersWith*`: its `connectionPool.tcp.idleTimeout`
//! and `maxConnectionDuration` (the rule's own, not a port's or a subset's) close idle and
//! old connections, and a `consistentHash.useSourceIp` (the subset's load balancer, if it
//! has one) hashes connections by client address.

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, TunnelingConfig, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::v3::HashPolicy;
use envoy_types::pb::envoy::r#type::v3::hash_policy::{PolicySpecifier, SourceIp};
use envoy_types::util::pack_any;

use crate::model::stream_routes::Destination;
use crate::model::traffic_policy::{HashKey, Tunnel};
use crate::model::{DestinationRule, HostRules, Mesh};
use crate::translate::cluster::{policy_in, proto_duration};
use crate::translate::route::cluster_for;

/// A piece of config and the hosts it sends to (a change to one of them rebuilds it).
pub struct Built<T> {
    pub value: T,
    pub destinations: Vec<String>,
}

/// The TCP proxy to `destinations` on `port` for proxies of namespace `caller` (`None`: of a
/// namespace no rule names), or `None` when a split has no weight above 0.
pub fn route_proxy(
    mesh: &Mesh,
    port: u32,
    destinations: &[Destination],
    caller: Option<&str>,
    stat_prefix: &str,
) -> Option<Built<Filter>> {
    let live: Vec<&Destination> = if destinations.len() > 1 {
        destinations.iter().filter(|d| d.weight > 0).collect()
    } else {
        destinations.iter().collect()
    };
    let proxy = match live.as_slice() {
        [] => return None,
        [only] => one_destination(mesh, port, only, caller, stat_prefix),
        several => split(mesh, port, several, caller, stat_prefix),
    };
    Some(Built {
        value: filter(proxy),
        destinations: live.iter().map(|d| d.host.clone()).collect(),
    })
}

/// The TCP proxy to one destination: its cluster, through its rule's tunnel, with what the
/// rule sets for its subset.
fn one_destination(
    mesh: &Mesh,
    port: u32,
    only: &Destination,
    caller: Option<&str>,
    stat_prefix: &str,
) -> TcpProxy {
    let rule = mesh.rule_for(&only.host, caller);
    let subset = only.subset.as_deref();
    let policy = policy_in(rule, subset, only.port.unwrap_or(port));
    let mut proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_for(
            mesh, &only.host, subset, only.port, port,
        ))),
        tunneling_config: policy.tunnel.map(tunneling),
        ..Default::default()
    };
    apply_rule(&mut proxy, rule, subset);
    proxy
}

/// The TCP proxy splitting connections over `several` destinations by weight: it reads its
/// first destination's rule (istiod's), and is never tunnelled.
fn split(
    mesh: &Mesh,
    port: u32,
    several: &[&Destination],
    caller: Option<&str>,
    stat_prefix: &str,
) -> TcpProxy {
    let clusters = several
        .iter()
        .map(|d| ClusterWeight {
            name: cluster_for(mesh, &d.host, d.subset.as_deref(), d.port, port),
            weight: d.weight,
            ..Default::default()
        })
        .collect();
    let mut proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
        })),
        ..Default::default()
    };
    let rule = several.first().and_then(|d| mesh.rule_for(&d.host, caller));
    apply_rule(&mut proxy, rule, None);
    proxy
}

/// A connection's own TCP proxy to `host` on `port`, where no route says otherwise, as the
/// proxies of namespace `caller` get it: to the host's cluster, with what its rule sets
/// (as [`route_proxy`] with the one destination).
pub fn own_proxy(
    mesh: &Mesh,
    host: &str,
    port: u32,
    caller: Option<&str>,
    stat_prefix: &str,
) -> Filter {
    let own = Destination {
        host: host.to_string(),
        subset: None,
        port: None,
        weight: 100,
    };
    filter(one_destination(mesh, port, &own, caller, stat_prefix))
}

/// What a host's rules set on the TCP proxies of its own chains: the rest's, then each
/// namespace reading a rule whose effects differ from it; none when no rule sets any. Its
/// sidecars get the host's chains per namespace listed, and a change to it rebuilds them.
pub fn host_rule_effects(rules: Option<&HostRules>) -> Vec<(Option<&str>, TcpProxy)> {
    let Some(rules) = rules else {
        return Vec::new();
    };
    let everyone = rule_effects(rules.everyone.as_ref());
    let mut out = vec![];
    for (namespace, rule) in &rules.by_namespace {
        let theirs = rule_effects(rule.as_ref());
        if theirs != everyone {
            out.push((Some(namespace.as_str()), theirs));
        }
    }
    if out.is_empty() && everyone == TcpProxy::default() {
        return out;
    }
    out.insert(0, (None, everyone));
    out
}

/// What `rule` sets on a TCP proxy to its host (tunnel, connection limits, hash), with no
/// subset.
fn rule_effects(rule: Option<&DestinationRule>) -> TcpProxy {
    let top = rule
        .and_then(|r| r.traffic_policy.as_deref())
        .and_then(|p| p.top.as_ref());
    let mut proxy = TcpProxy {
        tunneling_config: top.and_then(|t| t.policy.tunnel.clone()).map(tunneling),
        ..Default::default()
    };
    apply_rule(&mut proxy, rule, None);
    proxy
}

fn tunneling(tunnel: Tunnel) -> TunnelingConfig {
    TunnelingConfig {
        hostname: tunnel.authority,
        use_post: tunnel.use_post,
        ..Default::default()
    }
}

fn filter(proxy: TcpProxy) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))),
    }
}

/// The rule's connection limits and source-IP hash on `proxy` (see the module doc).
fn apply_rule(proxy: &mut TcpProxy, rule: Option<&DestinationRule>, subset: Option<&str>) {
    let Some(policies) = rule.and_then(|r| r.traffic_policy.as_deref()) else {
        return;
    };
    let top = policies.top.as_ref().map(|t| &t.policy);
    let tcp = top
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|pool| pool.tcp.as_ref());
    if let Some(tcp) = tcp {
        proxy.idle_timeout = tcp.idle_timeout.map(proto_duration);
        proxy.max_downstream_connection_duration = tcp.max_connection_duration.map(proto_duration);
    }
    let subset_lb = subset
        .and_then(|s| policies.subsets.get(s))
        .and_then(|p| p.policy.load_balancer.as_ref());
    let load_balancer = subset_lb.or(top.and_then(|p| p.load_balancer.as_ref()));
    let by_source_ip = load_balancer
        .and_then(|lb| lb.consistent_hash.as_ref())
        .is_some_and(|hash| hash.key == Some(HashKey::SourceIp));
    if by_source_ip {
        proxy.hash_policy = vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::SourceIp(SourceIp {})),
        }];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::{destination_rule, mesh};
    use prost::Message;

    const PROXY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: proxy, namespace: egress}
spec:
  hosts: [proxy.corp.internal]
  ports: [{number: 3128, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9, labels: {site: b}}]
---
";

    fn to(host: &str, subset: Option<&str>, weight: u32) -> Destination {
        Destination {
            host: host.into(),
            subset: subset.map(Into::into),
            port: Some(3128),
            weight,
        }
    }

    /// The tunnel (authority, POST) of the proxy built for `destinations` and `caller`.
    fn tunnel(
        yaml: &str,
        destinations: &[Destination],
        caller: Option<&str>,
    ) -> Option<(String, bool)> {
        let m = mesh(&format!("{PROXY}{yaml}"));
        let built = route_proxy(&m, 5432, destinations, caller, "stat").expect("a proxy");
        let Some(FilterConfig::TypedConfig(any)) = built.value.config_type else {
            panic!("no typed config");
        };
        let proxy = TcpProxy::decode(any.value.as_slice()).expect("decodes");
        proxy.tunneling_config.map(|t| (t.hostname, t.use_post))
    }

    fn proxy(yaml: &str, destinations: &[Destination]) -> TcpProxy {
        let m = mesh(&format!("{PROXY}{yaml}"));
        let built = route_proxy(&m, 5432, destinations, None, "stat").expect("a proxy");
        let Some(FilterConfig::TypedConfig(any)) = built.value.config_type else {
            panic!("no typed config");
        };
        TcpProxy::decode(any.value.as_slice()).expect("decodes")
    }

    /// As istiod: the rule's own idle timeout and connection lifetime, whatever the subset
    /// (a subset's pool is the cluster's business); a source-IP hash from the subset's load
    /// balancer when it has one, else the rule's; a split takes the first destination's rule.
    #[test]
    fn the_rule_sets_connection_limits_and_a_source_ip_hash() {
        let rule = destination_rule(
            "egress",
            "proxy",
            "proxy.corp.internal",
            "  trafficPolicy:
    connectionPool: {tcp: {idleTimeout: 90s, maxConnectionDuration: 10m}}
    loadBalancer: {consistentHash: {useSourceIp: true}}
  subsets:
  - name: b
    labels: {site: b}
    trafficPolicy:
      connectionPool: {tcp: {idleTimeout: 5s}}
      loadBalancer: {simple: ROUND_ROBIN}
",
        );
        let host = "proxy.corp.internal";
        let whole = proxy(&rule, &[to(host, None, 100)]);
        assert_eq!(whole.idle_timeout.map(|d| d.seconds), Some(90));
        assert_eq!(
            whole.max_downstream_connection_duration.map(|d| d.seconds),
            Some(600)
        );
        assert_eq!(
            whole.hash_policy[0].policy_specifier,
            Some(PolicySpecifier::SourceIp(SourceIp {}))
        );
        let b = proxy(&rule, &[to(host, Some("b"), 100)]);
        assert_eq!(b.idle_timeout.map(|d| d.seconds), Some(90));
        assert!(b.hash_policy.is_empty(), "b balances round robin");
        let split = proxy(&rule, &[to(host, Some("b"), 50), to(host, None, 50)]);
        assert_eq!(split.idle_timeout.map(|d| d.seconds), Some(90));
        assert_eq!(split.hash_policy.len(), 1);
        assert_eq!(
            proxy("", &[to(host, None, 100)]),
            TcpProxy {
                stat_prefix: "stat".into(),
                cluster_specifier: whole.cluster_specifier.clone(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn one_destination_goes_through_its_rules_tunnel() {
        let rule = destination_rule(
            "egress",
            "proxy",
            "proxy.corp.internal",
            "  trafficPolicy: {tunnel: {targetHost: db.example.com, targetPort: 5432}}
  subsets:
  - name: b
    labels: {site: b}
    trafficPolicy: {tunnel: {protocol: POST, targetHost: '2001:db8::1', targetPort: 5432}}
",
        );
        let host = "proxy.corp.internal";
        assert_eq!(
            tunnel(&rule, &[to(host, None, 100)], None),
            Some(("db.example.com:5432".into(), false))
        );
        // A subset's tunnel wins; an IPv6 target is bracketed.
        assert_eq!(
            tunnel(&rule, &[to(host, Some("b"), 100)], None),
            Some(("[2001:db8::1]:5432".into(), true))
        );
        // A split is never tunnelled (as istiod).
        assert_eq!(
            tunnel(&rule, &[to(host, None, 50), to(host, Some("b"), 50)], None),
            None
        );
        // Proxies of a namespace with a rule of their own read theirs.
        let own = destination_rule("shop", "proxy", "proxy.corp.internal", "  exportTo: [.]\n");
        assert_eq!(
            tunnel(
                &format!("{rule}---\n{own}"),
                &[to(host, None, 100)],
                Some("shop")
            ),
            None
        );
        assert!(tunnel("", &[to(host, None, 100)], None).is_none());
    }
}
