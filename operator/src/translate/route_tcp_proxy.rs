//! The TCP proxy of a VirtualService `tcp` or `tls` route, for sidecars and gateways alike:
//! the destination's cluster, or weighted clusters for a split; with one destination, the
//! `tunnel` of the DestinationRule the caller reads for it (istiod's tunnelling config): the
//! connection is carried through that host, an HTTP proxy, as an HTTP CONNECT (or POST)
//! tunnel to the rule's `targetHost:targetPort`.

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, TunnelingConfig, WeightedCluster,
};
use envoy_types::util::pack_any;

use crate::model::Mesh;
use crate::model::stream_routes::Destination;
use crate::translate::cluster::policy_in;
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
    let cluster = |d: &Destination| cluster_for(mesh, &d.host, d.subset.as_deref(), d.port, port);
    let mut tunneling_config = None;
    let specifier = match live.as_slice() {
        [] => return None,
        [only] => {
            let rule = mesh.rule_for(&only.host, caller);
            let policy = policy_in(rule, only.subset.as_deref(), only.port.unwrap_or(port));
            tunneling_config = policy.tunnel.map(|t| TunnelingConfig {
                hostname: t.authority,
                use_post: t.use_post,
                ..Default::default()
            });
            ClusterSpecifier::Cluster(cluster(only))
        }
        several => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|d| ClusterWeight {
                    name: cluster(d),
                    weight: d.weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(specifier),
        tunneling_config,
        ..Default::default()
    };
    Some(Built {
        value: Filter {
            name: "envoy.filters.network.tcp_proxy".to_string(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))),
        },
        destinations: live.iter().map(|d| d.host.clone()).collect(),
    })
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
