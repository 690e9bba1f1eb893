//! Builds a model from YAML for translation tests.

use capstan_crds::parse::parse_documents;
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::Endpoint;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use crate::index::{Index, Record};
use crate::model::Mesh;
use crate::model::sidecar_scope::DEFAULT_ROOT_NAMESPACE;
use crate::translate::Options;

/// Options as the tests use them: direct listeners on 127.0.0.1:15001.
pub fn options() -> Options {
    Options {
        outbound_bind: "127.0.0.1".into(),
        outbound_port: 15001,
        sidecar_listeners: Default::default(),
        root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
        outbound_traffic_policy: Default::default(),
        mesh_settings: Default::default(),
    }
}

/// [`options`] with capture-mode sidecar listeners.
pub fn capture_options() -> Options {
    Options {
        sidecar_listeners: crate::translate::ListenerMode::Capture,
        ..options()
    }
}

/// The mesh of `yaml`, which must be valid and raise no problem.
pub fn mesh(yaml: &str) -> Mesh {
    let (mesh, problems) = mesh_and_problems(yaml);
    assert!(problems.is_empty(), "model problems: {problems:?}");
    mesh
}

/// The mesh of `yaml`, which must be valid, and the problems building it raised.
pub fn mesh_and_problems(yaml: &str) -> (Mesh, Vec<crate::model::Problem>) {
    let documents = parse_documents("test.yaml", yaml).expect("valid YAML");
    let records: Vec<Record> = documents
        .into_iter()
        .map(|d| {
            let d = d.expect("valid document");
            assert!(
                d.validate().is_empty(),
                "invalid test object: {:?}",
                d.validate()
            );
            Record::Istio(crate::index::IstioRecord::valid(d.object))
        })
        .collect();
    let index = Index::of_istio(records);
    Mesh::build(&index, "cluster.local")
}

/// A STATIC ServiceEntry for `reviews` in `bookinfo` with three versioned endpoints, and a
/// DestinationRule declaring those versions as subsets.
pub const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 19081}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 19082}, labels: {version: v2}}
  - {address: 127.0.0.3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

/// A DestinationRule `namespace/name` for `host` (quoted: it may be a wildcard) whose spec
/// goes on with `rest` (YAML lines indented by two).
pub fn destination_rule(namespace: &str, name: &str, host: &str, rest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: \"{host}\"
{rest}"
    )
}

/// What a forwarding route's requests are hashed by, one line per hash policy: a header's
/// name, `cookie <name>`, or the policy as debug text; empty for any other action.
pub fn hash_keys(route: &envoy_types::pb::envoy::config::route::v3::Route) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    let Some(Action::Route(action)) = &route.action else {
        return Vec::new();
    };
    action
        .hash_policy
        .iter()
        .map(|h| match &h.policy_specifier {
            Some(PolicySpecifier::Header(h)) => h.header_name.clone(),
            Some(PolicySpecifier::Cookie(c)) => format!("cookie {}", c.name),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The address and port of each endpoint of `cla`, group by group.
pub fn endpoint_addresses(
    cla: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> Vec<(String, u32)> {
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
