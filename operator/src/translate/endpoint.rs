//! EDS: load assignments of STATIC services, per port and per subset, and per locality where
//! the cluster's locality load balancing tells proxies in different places apart.

mod locality;

pub use locality::{
    VariantKey, applies as locality_applies, variants as locality_variants, weighs_localities,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};

use super::{RuleScope, ServiceCluster, rule_scopes, service_clusters_in};
use crate::index::Health;
use crate::model::peer_authentication::MtlsMode;
use crate::model::service::Endpoint as ServiceEndpoint;
use crate::model::{Mesh, Port, Resolution, Service};
use crate::translate::cluster::tls::{TLS_MODE_KEY, TRANSPORT_SOCKET_MATCH};
use crate::translate::sidecar::mtls::{TLS_MODE_ISTIO, has_sidecar_label};

/// One load assignment, for the proxies `key` names (the default: every proxy; a more
/// specific variant of the same name wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub name: String,
    pub key: VariantKey,
    pub assignment: ClusterLoadAssignment,
}

/// Every load assignment of the mesh for proxies without a locality.
#[cfg(test)]
pub fn load_assignments(mesh: &Mesh) -> Vec<(String, ClusterLoadAssignment)> {
    mesh.services
        .values()
        .flat_map(|s| load_assignments_of(mesh, s))
        .filter(|a| a.key == VariantKey::default())
        .map(|a| (a.name, a.assignment))
        .collect()
}

/// The load assignments of one service: what an endpoint change of that service rebuilds.
pub fn load_assignments_of(mesh: &Mesh, service: &Service) -> Vec<Assignment> {
    if service.resolution != Resolution::Static {
        return Vec::new();
    }
    let mut out = Vec::new();
    for scope in rule_scopes(mesh, &service.host) {
        for c in service_clusters_in(service, scope.rule) {
            out.extend(eds_assignments(mesh, c, &scope));
        }
    }
    out
}

fn eds_assignments(mesh: &Mesh, c: ServiceCluster<'_>, scope: &RuleScope<'_>) -> Vec<Assignment> {
    let base = load_assignment(mesh, &c.name, c.service, c.port, c.labels);
    let policy = super::cluster::policy_in(scope.rule, c.subset(), c.port.number);
    let outlier = policy.outlier_detection.is_some();
    match policy.locality_lb() {
        Some(rules) if locality::applies(&rules, outlier) => {
            let labels = endpoint_labels(c.service, c.labels);
            locality::variants(&base, Some(&labels), &rules)
                .into_iter()
                .map(|(key, assignment)| Assignment {
                    name: c.name.clone(),
                    key: key.scoped(scope),
                    assignment,
                })
                .collect()
        }
        _ => vec![Assignment {
            name: c.name,
            key: VariantKey::in_scope(scope),
            assignment: base,
        }],
    }
}

/// The labels of the endpoints [`load_assignment`] puts in a STATIC cluster, grouped and
/// ordered as it groups and orders them.
fn endpoint_labels(
    service: &Service,
    labels: &BTreeMap<String, String>,
) -> Vec<Vec<Arc<BTreeMap<String, String>>>> {
    let mut by_locality: BTreeMap<&str, Vec<Arc<BTreeMap<String, String>>>> = BTreeMap::new();
    for endpoint in service.endpoints.iter().filter(|e| e.selected_by(labels)) {
        by_locality
            .entry(endpoint.locality.as_str())
            .or_default()
            .push(endpoint.labels.clone());
    }
    by_locality.into_values().collect()
}

/// Whether the endpoint says it has a sidecar with an identity
/// (`security.istio.io/tlsMode: istio`).
pub fn has_identity(endpoint: &ServiceEndpoint) -> bool {
    has_sidecar_label(&endpoint.labels)
}

/// Whether clients reach the endpoint on `port` (its own) with the mesh's mutual TLS where
/// they choose (istiod's `checkMtlsEnabled` without a DestinationRule, which sets TLS for the
/// whole cluster): it has an identity, and its workload's PeerAuthentication does not
/// DISABLE the port.
pub(crate) fn takes_mutual_tls(
    mesh: &Mesh,
    namespace: &str,
    endpoint: &ServiceEndpoint,
    port: u32,
) -> bool {
    has_identity(endpoint)
        && (mesh.peer_authentications.is_empty()
            || mesh
                .workload_mtls(namespace, &endpoint.labels)
                .for_port(port)
                != MtlsMode::Disable)
}

/// `envoy.transport_socket_match: {tlsMode: istio}`: what auto mTLS clusters match on.
fn mutual_tls_metadata() -> Metadata {
    let fields = [(
        TLS_MODE_KEY.to_string(),
        Value {
            kind: Some(Kind::StringValue(TLS_MODE_ISTIO.into())),
        },
    )];
    let mut metadata = Metadata::default();
    metadata.filter_metadata.insert(
        TRANSPORT_SOCKET_MATCH.into(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    metadata
}

/// The endpoints of `service` on `port` carrying `labels`, grouped by locality. A DNS service
/// without endpoints resolves its own host name.
pub fn load_assignment(
    mesh: &Mesh,
    cluster: &str,
    service: &Service,
    port: &Port,
    labels: &BTreeMap<String, String>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    if service.endpoints.is_empty() && service.resolution != Resolution::Static {
        by_locality.entry("").or_default().push(lb_endpoint(
            &service.host,
            port.target_port.max(port.number),
            0,
            Health::Ready,
        ));
    }
    let namespace = service.namespace();
    for endpoint in service.endpoints.iter().filter(|e| e.selected_by(labels)) {
        let endpoint_port = endpoint.port_for(port);
        let mut lb_endpoint = lb_endpoint(
            &endpoint.address,
            endpoint_port,
            endpoint.weight,
            endpoint.health,
        );
        if takes_mutual_tls(mesh, namespace, endpoint, endpoint_port) {
            lb_endpoint.metadata = Some(mutual_tls_metadata());
        }
        by_locality
            .entry(endpoint.locality.as_str())
            .or_default()
            .push(lb_endpoint);
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(locality, lb_endpoints)| LocalityLbEndpoints {
                locality: locality_of(locality),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn lb_endpoint(address: &str, port: u32, weight: u32, health: Health) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address: address.to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        load_balancing_weight: (weight > 0).then_some(UInt32Value { value: weight }),
        // Terminating endpoints finish their requests but get no new ones.
        health_status: match health {
            Health::Ready => HealthStatus::Healthy,
            Health::Draining => HealthStatus::Draining,
            Health::NotReady => HealthStatus::Unhealthy,
        } as i32,
        ..Default::default()
    }
}

/// `region/zone/subzone` as Envoy's locality.
fn locality_of(locality: &str) -> Option<Locality> {
    if locality.is_empty() {
        return None;
    }
    let mut parts = locality.splitn(3, '/');
    Some(Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::{REVIEWS, mesh};

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(Endpoint {
                    address:
                        Some(Address {
                            address: Some(AddressKind::SocketAddress(s)),
                        }),
                    ..
                })) => match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => (s.address.clone(), p),
                    _ => panic!("no port"),
                },
                other => panic!("unexpected endpoint {other:?}"),
            })
            .collect()
    }

    #[test]
    fn subsets_select_endpoints_by_label_with_their_port_mapping() {
        let assignments: BTreeMap<String, ClusterLoadAssignment> =
            load_assignments(&mesh(REVIEWS)).into_iter().collect();
        assert_eq!(assignments.len(), 4);
        let all = &assignments["outbound|9080||reviews.bookinfo.svc.cluster.local"];
        assert_eq!(addresses(all).len(), 3);
        assert_eq!(
            addresses(&assignments["outbound|9080|v2|reviews.bookinfo.svc.cluster.local"]),
            vec![("127.0.0.2".to_string(), 19082)]
        );
        // No port mapping for the endpoint: the service port is used.
        assert_eq!(
            addresses(&assignments["outbound|9080|v3|reviews.bookinfo.svc.cluster.local"]),
            vec![("127.0.0.3".to_string(), 9080)]
        );
    }

    #[test]
    fn localities_group_endpoints() {
        let m = mesh(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east-1/us-east-1a, weight: 3}
  - {address: 10.0.0.2, locality: us-east-1/us-east-1b}
"#,
        );
        let (_, cla) = &load_assignments(&m)[0];
        assert_eq!(cla.endpoints.len(), 2);
        let first = &cla.endpoints[0];
        assert_eq!(
            first.locality.as_ref().map(|l| l.zone.as_str()),
            Some("us-east-1a")
        );
        assert_eq!(
            first.lb_endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 3 })
        );
    }
}
