//! The SNI-DNAT clusters of AUTO_PASSTHROUGH gateways, as istiod builds them
//! (`buildOutboundSniDnatClusters`): per cluster of a service such a gateway covers (the whole
//! service and each subset, per port but UDP), one named after the SNI Istio's sidecars send
//! for it, `outbound_.<port>_.<subset>_.<host>`, with the DestinationRule's policy of the
//! gateway proxy's namespace but never its TLS or PROXY protocol: the client's own mutual TLS
//! passes through to the endpoint. Only the gateways' proxies get them, and only endpoints
//! clients would speak the mesh's mutual TLS to are in their load assignments (istiod's
//! `EndpointsWithMTLSFilter`): a gateway that cannot check the TLS it passes on never opens a
//! way to a workload that would take plain text.

use capstan_crds::Protocol;

use super::{ClusterVariant, Purpose, cluster_in, locality_variants};
use crate::model::gateway::auto_passthrough;
use crate::model::{Mesh, Service};
use crate::translate::{rule_scopes, service_clusters_in};

/// The SNI-DNAT clusters of `service`, for the gateway proxies whose AUTO_PASSTHROUGH servers
/// cover it (none for most services).
pub(in crate::translate) fn clusters(mesh: &Mesh, service: &Service) -> Vec<ClusterVariant> {
    let gateways = auto_passthrough::selectors(mesh, service);
    if gateways.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for scope in rule_scopes(mesh, &service.host) {
        for c in service_clusters_in(service, scope.rule) {
            if c.port.protocol == Some(Protocol::Udp) {
                continue;
            }
            let port = c.port.number;
            let (name, cluster) = cluster_in(mesh, c, scope.rule, Purpose::SniDnat);
            for variant in locality_variants(port, name, cluster, &scope) {
                out.extend(gateways.iter().filter_map(|labels| {
                    Some(ClusterVariant {
                        key: variant.key.clone().for_gateways(labels)?,
                        ..variant.clone()
                    })
                }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use capstan_xds::{Role, Selector};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;

    use crate::translate::endpoint::load_assignments_of;
    use crate::translate::test_support::{REVIEWS, destination_rule, endpoint_addresses, mesh};

    const HOST: &str = "reviews.bookinfo.svc.cluster.local";

    /// `reviews` with an endpoint that has a sidecar (v1) and one that has not (v2), a rule
    /// in `bookinfo` ending with `tls`, and an east-west gateway covering `*.local`.
    fn east_west(tls: &str) -> crate::model::Mesh {
        let rule = destination_rule(
            "bookinfo",
            "reviews",
            "reviews",
            &format!(
                "  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}{tls}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
"
            ),
        );
        mesh(&format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.1, labels: {{version: v1, security.istio.io/tlsMode: istio}}}}
  - {{address: 10.0.0.2, labels: {{version: v2}}}}
---
{rule}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
"#
        ))
    }

    fn eastwest_gateways() -> Selector {
        Selector {
            role: Some(Role::Router),
            labels: BTreeMap::from([("istio".into(), "eastwestgateway".into())]),
            ..Selector::default()
        }
    }

    /// The SNI-DNAT clusters of `reviews`, by name, with the proxies they are for.
    fn clusters(mesh: &crate::model::Mesh) -> BTreeMap<String, (Selector, Cluster)> {
        super::clusters(mesh, &mesh.services[HOST])
            .into_iter()
            .map(|v| (v.name, (v.key.selector(), v.cluster)))
            .collect()
    }

    /// The addresses of the SNI-DNAT load assignment named `name`.
    fn addresses(mesh: &crate::model::Mesh, name: &str) -> Vec<String> {
        let assignments = load_assignments_of(mesh, &mesh.services[HOST]);
        let found: Vec<_> = assignments.iter().filter(|a| a.name == name).collect();
        assert_eq!(found.len(), 1, "one variant of {name}");
        assert_eq!(found[0].key.selector(), eastwest_gateways());
        assert_eq!(found[0].assignment.cluster_name, name);
        let addresses = endpoint_addresses(&found[0].assignment).into_iter();
        addresses.map(|(address, _)| address).collect()
    }

    #[test]
    fn they_keep_the_rules_policy_but_never_originate_tls() {
        let mesh = east_west(", tls: {mode: ISTIO_MUTUAL}");
        let clusters = clusters(&mesh);
        let names: Vec<&str> = clusters.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
                "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local",
            ]
        );
        for (name, (selector, cluster)) in &clusters {
            assert_eq!(*selector, eastwest_gateways(), "{name}: the gateways' only");
            assert_eq!(cluster.lb_policy, LbPolicy::Random as i32, "{name}");
            assert!(
                cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty(),
                "{name} originates TLS"
            );
            let eds = cluster.eds_cluster_config.as_ref().expect("an EDS cluster");
            assert_eq!(eds.service_name, *name, "its own load assignment");
        }
        // The sidecars' cluster of the same rule does originate it.
        let own = crate::translate::cluster::clusters_of(&mesh, &mesh.services[HOST]);
        let own = own
            .iter()
            .find(|c| c.name == format!("outbound|9080||{HOST}"));
        assert!(own.is_some_and(|c| c.cluster.transport_socket.is_some()));
    }

    #[test]
    fn their_endpoints_are_those_clients_speak_mutual_tls_to() {
        let whole = format!("outbound_.9080_._.{HOST}");
        // The rule's ISTIO_MUTUAL: every endpoint, as clients originate it to all.
        let mesh = east_west(", tls: {mode: ISTIO_MUTUAL}");
        assert_eq!(addresses(&mesh, &whole), ["10.0.0.1", "10.0.0.2"]);
        // No TLS in the rule: auto mTLS, to the endpoint with a sidecar only.
        let mesh = east_west("");
        assert_eq!(addresses(&mesh, &whole), ["10.0.0.1"]);
        assert_eq!(
            addresses(&mesh, &format!("outbound_.9080_.v1_.{HOST}")),
            ["10.0.0.1"]
        );
        // Another mode: to none.
        let mesh = east_west(", tls: {mode: DISABLE}");
        assert_eq!(addresses(&mesh, &whole), Vec::<String>::new());
    }

    #[test]
    fn a_service_no_auto_passthrough_server_covers_has_none() {
        let mesh = east_west("");
        let yaml = format!(
            r#"{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: PASSTHROUGH}}
"#
        );
        assert_eq!(clusters(&mesh).len(), 2);
        let without = crate::translate::test_support::mesh(&yaml);
        assert!(clusters(&without).is_empty());
        let assignments = load_assignments_of(&without, &without.services[HOST]);
        assert!(assignments.iter().all(|a| a.name.starts_with("outbound|")));
    }
}
