//! EDS: load assignments of STATIC services, per port and per subset, and per locality where
//! the cluster's locality load balancing tells proxies in different places apart.

mod locality;

pub use locality::{
    VariantKey, applies as locality_applies, variants as locality_variants, weighs_localities,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};

use capstan_crds::Protocol;

use super::{RuleScope, ServiceCluster, rule_scopes, service_clusters_in};
use crate::index::Health;
use crate::model::gateway::auto_passthrough;
use crate::model::peer_authentication::MtlsMode;
use crate::model::service::Endpoint as ServiceEndpoint;
use crate::model::traffic_policy::{Policy, TlsMode};
use crate::model::{Mesh, Port, Resolution, Service};
use crate::translate::cluster::tls::{TLS_MODE_KEY, TRANSPORT_SOCKET_MATCH, istio_sni};
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
/// Those of its SNI-DNAT clusters (`cluster::sni_dnat`) come with them, for the gateway
/// proxies of the AUTO_PASSTHROUGH servers covering it, with only the endpoints clients
/// speak the mesh's mutual TLS to.
pub fn load_assignments_of(mesh: &Mesh, service: &Service) -> Vec<Assignment> {
    if service.resolution != Resolution::Static {
        return Vec::new();
    }
    let gateways = auto_passthrough::selectors(mesh, service);
    let mut out = Vec::new();
    for scope in rule_scopes(mesh, &service.host) {
        for c in service_clusters_in(service, scope.rule) {
            let sni_dnat =
                (!gateways.is_empty() && c.port.protocol != Some(Protocol::Udp)).then(|| {
                    let (port, subset) = (c.port.number, c.subset());
                    let policy = super::cluster::policy_in(scope.rule, subset, port);
                    (istio_sni(port, subset, &service.host), policy)
                });
            let assignments = eds_assignments(mesh, c, &scope);
            if let Some((name, policy)) = sni_dnat {
                for a in &assignments {
                    let mut assignment = ClusterLoadAssignment {
                        cluster_name: name.clone(),
                        ..a.assignment.clone()
                    };
                    keep_mutual_tls_endpoints(&mut assignment, &policy);
                    out.extend(gateways.iter().filter_map(|labels| {
                        Some(Assignment {
                            name: name.clone(),
                            key: a.key.clone().for_gateways(labels)?,
                            assignment: assignment.clone(),
                        })
                    }));
                }
            }
            out.extend(assignments);
        }
    }
    out
}

/// Keeps the endpoints of `assignment` a client of a cluster with `policy` would speak the
/// mesh's mutual TLS to: every one where the policy's TLS is ISTIO_MUTUAL, none where it is
/// another mode, and without TLS in the policy those auto mTLS reaches (marked `tlsMode:
/// istio`, see `endpoint`). Groups left empty stay, as with istiod.
pub(super) fn keep_mutual_tls_endpoints(assignment: &mut ClusterLoadAssignment, policy: &Policy) {
    let keep: fn(&LbEndpoint) -> bool = match policy.tls.as_ref().map(|t| t.mode) {
        Some(TlsMode::IstioMutual) => return,
        Some(_) => |_| false,
        None => marked_mutual_tls,
    };
    for group in &mut assignment.endpoints {
        group.lb_endpoints.retain(keep);
    }
}

/// Whether the endpoint's metadata says it takes the mesh's mutual TLS.
fn marked_mutual_tls(endpoint: &LbEndpoint) -> bool {
    (endpoint.metadata.as_ref())
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .and_then(|s| s.fields.get(TLS_MODE_KEY))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(mode)) if mode == TLS_MODE_ISTIO))
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
            // A ServiceEntry endpoint may be a Unix socket (`unix:///path`).
            address: Some(crate::translate::address::socket_or_pipe(address, port)),
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
    use crate::translate::test_support::{REVIEWS, endpoint_addresses as addresses, mesh};

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
