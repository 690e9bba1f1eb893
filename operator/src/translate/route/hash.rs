//! The hash policy of a route whose destination balances by consistent hash: what istiod's
//! `ConsistentHashToHashPolicy` makes of the DestinationRule's `consistentHash` key (the
//! cluster side, ring hash or Maglev, is `cluster/lb.rs`).

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::CookieAttribute;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
};

use super::Caller;
use crate::model::Mesh;
use crate::model::traffic_policy::HashKey;
use crate::translate::cluster::proto_duration;

/// The hash policies for requests from the proxies `caller` stands for routed to `subset`
/// (none: the whole service) of `host` on service port `port`: one, when the
/// DestinationRule they read for the host (one selecting their labels first) sets a
/// consistent hash key that applies there (subset port-level, subset, port-level, top
/// level, in that order), else none.
pub fn hash_policies(
    mesh: &Mesh,
    host: &str,
    subset: Option<&str>,
    port: u32,
    caller: &Caller,
) -> Vec<HashPolicy> {
    mesh.rule_for_workload(host, caller.namespace.as_deref(), &caller.labels)
        .and_then(|dr| dr.traffic_policy.as_ref())
        .and_then(|p| p.consistent_hash(subset, port))
        .and_then(|hash| hash.key.as_ref())
        .map(hash_policy)
        .into_iter()
        .collect()
}

/// [`hash_policies`] for the cluster a route sends to, named `outbound|port|subset|host`
/// (none for any other name).
pub fn for_cluster(mesh: &Mesh, cluster: &str, caller: &Caller) -> Vec<HashPolicy> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(port), Some(subset), Some(host)) => match port.parse() {
            Ok(port) => {
                let subset = Some(subset).filter(|s| !s.is_empty());
                hash_policies(mesh, host, subset, port, caller)
            }
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn hash_policy(key: &HashKey) -> HashPolicy {
    let specifier = match key {
        HashKey::Header(name) => PolicySpecifier::Header(Header {
            header_name: name.clone(),
            ..Default::default()
        }),
        HashKey::Cookie {
            name,
            path,
            ttl,
            attributes,
        } => PolicySpecifier::Cookie(Cookie {
            name: name.clone(),
            path: path.clone(),
            ttl: ttl.map(proto_duration),
            attributes: attributes
                .iter()
                .map(|(name, value)| CookieAttribute {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
        HashKey::QueryParameter(name) => {
            PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
        }
    };
    HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::mesh;

    const HOST: &str = "reviews.bookinfo.svc.cluster.local";

    fn with_rule(traffic_policy: &str, subset_policy: &str) -> Mesh {
        mesh(&format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews
  trafficPolicy: {traffic_policy}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy: {subset_policy}
"#
        ))
    }

    fn specifier(m: &Mesh, subset: Option<&str>) -> Option<PolicySpecifier> {
        let mut policies = hash_policies(m, HOST, subset, 9080, &Caller::anyone());
        assert!(policies.len() <= 1);
        policies.pop().and_then(|p| p.policy_specifier)
    }

    #[test]
    fn every_hash_key_becomes_a_hash_policy() {
        let header = with_rule(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            "{}",
        );
        assert_eq!(
            specifier(&header, None),
            Some(PolicySpecifier::Header(Header {
                header_name: "x-user".into(),
                ..Default::default()
            }))
        );
        let cookie = with_rule(
            "{loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 10s, \
             attributes: [{name: SameSite, value: Lax}, {name: Secure}]}}}}",
            "{}",
        );
        let attribute = |name: &str, value: &str| CookieAttribute {
            name: name.into(),
            value: value.into(),
        };
        assert_eq!(
            specifier(&cookie, None),
            Some(PolicySpecifier::Cookie(Cookie {
                name: "session".into(),
                path: "/".into(),
                ttl: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 10,
                    nanos: 0
                }),
                attributes: vec![attribute("SameSite", "Lax"), attribute("Secure", "")],
            }))
        );
        let source = with_rule(
            "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
            "{}",
        );
        assert_eq!(
            specifier(&source, None),
            Some(PolicySpecifier::ConnectionProperties(
                ConnectionProperties { source_ip: true }
            ))
        );
        let query = with_rule(
            "{loadBalancer: {consistentHash: {httpQueryParameterName: user}}}",
            "{}",
        );
        assert_eq!(
            specifier(&query, None),
            Some(PolicySpecifier::QueryParameter(QueryParameter {
                name: "user".into()
            }))
        );
    }

    #[test]
    fn the_subsets_hash_wins_and_no_hash_means_no_policy() {
        let m = with_rule(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-top}}}",
            "{loadBalancer: {consistentHash: {httpHeaderName: x-v1}}}",
        );
        let header = |s: Option<PolicySpecifier>| match s {
            Some(PolicySpecifier::Header(h)) => h.header_name,
            other => panic!("not a header hash: {other:?}"),
        };
        assert_eq!(header(specifier(&m, Some("v1"))), "x-v1");
        assert_eq!(header(specifier(&m, None)), "x-top");
        assert_eq!(
            for_cluster(&m, &format!("outbound|9080|v1|{HOST}"), &Caller::anyone()),
            hash_policies(&m, HOST, Some("v1"), 9080, &Caller::anyone())
        );
        assert_eq!(
            for_cluster(&m, &format!("outbound|9080||{HOST}"), &Caller::anyone()),
            hash_policies(&m, HOST, None, 9080, &Caller::anyone())
        );
        assert!(for_cluster(&m, "inbound|9080||x", &Caller::anyone()).is_empty());
        let plain = with_rule("{loadBalancer: {simple: RANDOM}}", "{}");
        assert!(hash_policies(&plain, HOST, Some("v1"), 9080, &Caller::anyone()).is_empty());
        assert!(hash_policies(&plain, "other.host", None, 9080, &Caller::anyone()).is_empty());
    }
}
