//! Kubernetes objects → index records, at the edge: each watcher converts what it receives
//! here, off the index, and the index never sees a Kubernetes type.
//!
//! Everything read here is input from the API server: fields may be missing or out of range,
//! and a value that cannot be used is left out rather than trusted.

use std::collections::BTreeMap;

use capstan_crds::Protocol;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use crate::index::{
    Health, KubeService, KubeServicePort, NamespaceRecord, NodeRecord, NsName, PodRecord, Record,
    RecordKey, SliceEndpoint, SliceRecord,
};

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn id<K: ResourceExt>(object: &K) -> NsName {
    NsName::new(object.namespace().unwrap_or_default(), object.name_any())
}

fn port_number(value: i32) -> Option<u32> {
    u32::try_from(value)
        .ok()
        .filter(|p| (1..=65535).contains(p))
}

pub fn service_key(service: &Service) -> RecordKey {
    RecordKey::Service(id(service))
}

pub fn service(service: &Service) -> Option<Record> {
    let spec = service.spec.as_ref()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            // Istio serves TCP ports only (UDP and SCTP are not proxied).
            let l4 = p.protocol.as_deref().unwrap_or("TCP");
            let protocol = if l4.eq_ignore_ascii_case("TCP") {
                Protocol::of_kubernetes_port(p.app_protocol.as_deref(), &name)
            } else {
                return None;
            };
            Some(KubeServicePort {
                port: port_number(p.port)?,
                protocol,
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => port_number(*n).unwrap_or(0),
                    _ => 0,
                },
                name,
            })
        })
        .collect();
    let external_name = (spec.type_.as_deref() == Some("ExternalName"))
        .then(|| spec.external_name.clone())
        .flatten()
        .filter(|n| !n.is_empty());
    Some(Record::Service(KubeService {
        id: id(service),
        ports,
        headless: spec.cluster_ip.as_deref() == Some("None"),
        cluster_ips: spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .collect(),
        export_to: service
            .annotations()
            .get(EXPORT_TO_ANNOTATION)
            .map(|list| list.split(',').map(|e| e.trim().to_string()).collect())
            .unwrap_or_default(),
        external_name,
        selector: spec.selector.clone().unwrap_or_default(),
    }))
}

/// Istio's annotation limiting which namespaces see a Service.
const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

pub fn slice_key(slice: &EndpointSlice) -> RecordKey {
    RecordKey::Slice(id(slice))
}

/// `None` for a slice that belongs to no Service (no service-name label) or carries
/// addresses the mesh does not route (FQDN slices).
pub fn slice(slice: &EndpointSlice) -> Option<Record> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| {
            p.protocol
                .as_deref()
                .unwrap_or("TCP")
                .eq_ignore_ascii_case("TCP")
        })
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?)))
        .collect::<BTreeMap<_, _>>();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            // Every address of one endpoint is the same pod; the first is enough.
            let address = e.addresses.first()?.as_str().into();
            let conditions = e.conditions.as_ref();
            // Unset conditions mean true, except terminating.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let health = if ready && !terminating {
                Health::Ready
            } else if serving && terminating {
                Health::Draining
            } else {
                Health::NotReady
            };
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            Some(SliceEndpoint {
                address,
                health,
                pod,
                node: e.node_name.clone(),
                zone: e.zone.clone(),
            })
        })
        .collect();
    Some(Record::Slice(SliceRecord {
        id: id(slice),
        service,
        ports: std::sync::Arc::new(ports),
        endpoints,
    }))
}

pub fn pod_key(pod: &Pod) -> RecordKey {
    RecordKey::Pod(id(pod))
}

pub fn pod(pod: &Pod) -> Option<Record> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Some(Record::Pod(PodRecord {
        id: id(pod),
        labels: std::sync::Arc::new(pod.labels().clone()),
        service_account: spec
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default")
            .into(),
        node: spec.and_then(|s| s.node_name.clone()),
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .map(Into::into),
        ready: pod.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
    }))
}

pub fn node_key(node: &PartialObjectMeta<Node>) -> RecordKey {
    RecordKey::Node(node.name_any())
}

pub fn node(node: &PartialObjectMeta<Node>) -> Option<Record> {
    let label = |key: &str| node.labels().get(key).cloned().unwrap_or_default();
    Some(Record::Node(NodeRecord {
        name: node.name_any(),
        region: label(REGION_LABEL),
        zone: label(ZONE_LABEL),
    }))
}

pub fn namespace_key(namespace: &PartialObjectMeta<Namespace>) -> RecordKey {
    RecordKey::Namespace(namespace.name_any())
}

pub fn namespace(namespace: &PartialObjectMeta<Namespace>) -> Option<Record> {
    Some(Record::Namespace(NamespaceRecord {
        name: namespace.name_any(),
        labels: namespace
            .labels()
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("valid object")
    }

    #[test]
    fn service_ports_take_protocol_from_app_protocol_or_name() {
        let svc: Service = from_json(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "bookinfo"},
            "spec": {"ports": [
                {"name": "http-web", "port": 9080, "targetPort": 9081},
                {"name": "api", "port": 7070, "appProtocol": "grpc", "targetPort": "grpc-port"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "bad", "port": 70000}
            ]}
        }));
        let Some(Record::Service(s)) = service(&svc) else {
            panic!("a service record")
        };
        assert_eq!(s.id, NsName::new("bookinfo", "reviews"));
        let ports: Vec<(&str, u32, Option<Protocol>, u32)> = s
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol, p.target_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http-web", 9080, Some(Protocol::Http), 9081),
                ("api", 7070, Some(Protocol::Grpc), 0),
            ]
        );
        assert!(!s.headless);
        assert!(s.cluster_ips.is_empty());
        assert!(s.export_to.is_empty());
    }

    #[test]
    fn service_addresses_and_export_to_are_read() {
        let svc: Service = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "finance",
                         "annotations": {"networking.istio.io/exportTo": ". , shop"}},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                     "ports": [{"name": "tcp", "port": 5432}]}
        }));
        let Some(Record::Service(s)) = service(&svc) else {
            panic!("a service record")
        };
        assert_eq!(s.cluster_ips, vec!["10.96.0.20", "fd00::20"]);
        assert_eq!(s.export_to, vec![".", "shop"]);
        let headless: Service = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "finance"},
            "spec": {"clusterIP": "None", "ports": [{"name": "tcp", "port": 5432}]}
        }));
        let Some(Record::Service(s)) = service(&headless) else {
            panic!("a service record")
        };
        assert!(s.headless);
        assert!(s.cluster_ips.is_empty(), "`None` is no address");
    }

    #[test]
    fn slice_conditions_become_health() {
        let es: EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "reviews-abc", "namespace": "bookinfo",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http-web", "port": 9081}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "targetRef": {"kind": "Pod", "name": "reviews-v1-x"}, "nodeName": "n1"},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
                {"addresses": []}
            ]
        }));
        let Some(Record::Slice(s)) = slice(&es) else {
            panic!("a slice record")
        };
        assert_eq!(s.service, "reviews");
        assert_eq!(s.ports.get("http-web"), Some(&9081));
        let health: Vec<(&str, Health)> = s
            .endpoints
            .iter()
            .map(|e| (&*e.address, e.health))
            .collect();
        assert_eq!(
            health,
            vec![
                ("10.1.0.1", Health::Ready),
                ("10.1.0.2", Health::Draining),
                ("10.1.0.3", Health::NotReady)
            ]
        );
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("reviews-v1-x"));
    }

    #[test]
    fn slices_without_a_service_or_of_fqdns_are_not_routed() {
        let orphan: EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns"}, "addressType": "IPv4"
        }));
        assert!(slice(&orphan).is_none());
        let fqdn: EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns", "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "FQDN"
        }));
        assert!(slice(&fqdn).is_none());
    }
}
