//! Kubernetes Services as mesh services: `name.namespace.svc.<domain>`, ports with their
//! protocol, endpoints from the EndpointSlices with the labels, service account and locality
//! of the Pods and Nodes behind them.

use crate::index::{Health, Index, KubeService, NodeRecord, NsName, SliceRecord};
use crate::model::service::{Endpoint, ExportTo, Origin, Port, Resolution, Service};

/// The host of a Kubernetes Service.
pub fn host(id: &NsName, domain_suffix: &str) -> String {
    format!("{}.{}.svc.{domain_suffix}", id.name, id.namespace)
}

/// The Kubernetes Service a host would be (`name.namespace.svc.<domain>`).
pub fn id_of_host(host: &str, domain_suffix: &str) -> Option<NsName> {
    let (name, namespace) = super::hostname::split_local(host, domain_suffix)?;
    Some(NsName::new(namespace, name))
}

/// The mesh service of `service`, with its endpoints as the index holds them now.
pub fn service(index: &Index, service: &KubeService, domain_suffix: &str) -> Service {
    let ports = service.ports.iter().map(Port::from).collect();
    let (resolution, endpoints) = match &service.external_name {
        // An alias: proxies resolve the name it points at.
        Some(name) => (
            Resolution::Dns,
            vec![Endpoint {
                address: name.as_str().into(),
                ports: Default::default(),
                labels: Default::default(),
                locality: String::new(),
                weight: 0,
                service_account: "".into(),
                health: Health::Ready,
            }],
        ),
        None => (
            if service.headless {
                Resolution::Passthrough
            } else {
                Resolution::Static
            },
            endpoints_with_entries(index, service),
        ),
    };
    Service {
        host: host(&service.id, domain_suffix),
        origin: Origin::Kubernetes(service.id.clone()),
        addresses: service.cluster_ips.clone(),
        export_to: ExportTo::parse(&service.export_to, &service.id.namespace),
        ports,
        resolution,
        endpoints,
        mesh_external: false,
        subject_alt_names: Vec::new(),
    }
}

/// [`endpoints`], and the WorkloadEntries the Service's selector picks (istiod's Kubernetes
/// Services selecting WorkloadEntries: VMs behind a Service name), after them by name.
fn endpoints_with_entries(index: &Index, service: &KubeService) -> Vec<Endpoint> {
    let mut out = endpoints(index, &service.id);
    if !service.selector.is_empty() {
        let namespace = &service.id.namespace;
        out.extend(super::workloads::selected_entries(
            index,
            namespace,
            &service.selector,
        ));
    }
    out
}

/// Every endpoint of the service's slices that can take traffic, in a stable order (slices
/// overlap while the EndpointSlice controller moves endpoints: an address appears once).
pub fn endpoints(index: &Index, id: &NsName) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in index.slices_of(id) {
        for endpoint in &slice.endpoints {
            if endpoint.health == Health::NotReady {
                continue;
            }
            out.push(endpoint_of(index, slice, endpoint));
        }
    }
    out.sort_by(|a, b| a.address.cmp(&b.address).then(a.health.cmp(&b.health)));
    // A ready copy of an address sorts first and wins over a draining one.
    out.dedup_by(|later, first| later.address == first.address);
    out
}

/// `region/zone` of an endpoint on `node`, its zone as `zone` says when given (the slice's).
pub(super) fn locality(node: Option<&NodeRecord>, zone: Option<&str>) -> String {
    let region = node.map(|n| n.region.as_str()).unwrap_or_default();
    let zone = zone.or(node.map(|n| n.zone.as_str())).unwrap_or_default();
    match (region, zone) {
        ("", "") => String::new(),
        (region, "") => region.to_string(),
        (region, zone) => format!("{region}/{zone}"),
    }
}

fn endpoint_of(
    index: &Index,
    slice: &SliceRecord,
    endpoint: &crate::index::SliceEndpoint,
) -> Endpoint {
    let pod = endpoint
        .pod
        .as_ref()
        .and_then(|name| index.pod(&NsName::new(&slice.id.namespace, name.as_str())));
    let node_name = endpoint
        .node
        .as_deref()
        .or_else(|| pod.and_then(|p| p.node.as_deref()));
    let node = node_name.and_then(|n| index.node(n));
    let locality = locality(node, endpoint.zone.as_deref());
    Endpoint {
        address: endpoint.address.clone(),
        ports: slice.ports.clone(),
        labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
        locality,
        weight: 0,
        service_account: pod.map(|p| p.service_account.clone()).unwrap_or_default(),
        health: endpoint.health,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::index::{KubeServicePort, NodeRecord, PodRecord, Record, SliceEndpoint};

    fn index() -> Index {
        let mut index = Index::new();
        index.apply(Record::Service(KubeService {
            id: NsName::new("shop", "cart"),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 80,
                protocol: None,
                target_port: 0,
            }],
            headless: false,
            cluster_ips: Vec::new(),
            export_to: Vec::new(),
            external_name: None,
            selector: Default::default(),
        }));
        let endpoint = |address: &str, health, pod: Option<&str>| SliceEndpoint {
            address: address.into(),
            health,
            pod: pod.map(str::to_string),
            node: None,
            zone: Some("us-east-1b".into()),
        };
        for (name, endpoints) in [
            (
                "cart-1",
                vec![
                    endpoint("10.0.0.1", Health::Ready, Some("cart-a")),
                    endpoint("10.0.0.2", Health::NotReady, None),
                    endpoint("10.0.0.3", Health::Draining, None),
                ],
            ),
            // The same address in a second slice while it moves: served once, as ready.
            ("cart-2", vec![endpoint("10.0.0.3", Health::Ready, None)]),
        ] {
            index.apply(Record::Slice(SliceRecord {
                id: NsName::new("shop", name),
                service: "cart".into(),
                ports: Arc::new(BTreeMap::from([("http".to_string(), 8080)])),
                endpoints,
            }));
        }
        index.apply(Record::Pod(PodRecord {
            id: NsName::new("shop", "cart-a"),
            labels: Arc::new(BTreeMap::from([("version".to_string(), "v1".to_string())])),
            service_account: "cart".into(),
            node: Some("node-a".into()),
            ip: None,
            ready: true,
        }));
        index.apply(Record::Node(NodeRecord {
            name: "node-a".into(),
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
        }));
        index
    }

    /// istiod's Kubernetes Services selecting WorkloadEntries: the entries of the Service's
    /// namespace its selector picks are endpoints beside the slices', with their own ports,
    /// labels, identity and locality; entries elsewhere or without the labels are not.
    #[test]
    fn a_service_with_a_selector_takes_the_workload_entries_it_picks() {
        let mut index = index();
        let mut cart = index
            .service(&NsName::new("shop", "cart"))
            .expect("indexed")
            .clone();
        cart.selector = BTreeMap::from([("app".to_string(), "cart".to_string())]);
        index.apply(Record::Service(cart.clone()));
        let entry = |name: &str, namespace: &str, app: &str, address: &str| {
            crate::index::istio_event(&format!(
                "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  address: {address}
  ports: {{http: 18080}}
  labels: {{app: {app}, version: vm}}
  serviceAccount: cart-vm
  locality: us-east-1/us-east-1c
"
            ))
        };
        for event in [
            entry("vm-1", "shop", "cart", "10.1.0.1"),
            entry("vm-2", "shop", "other", "10.1.0.2"),
            entry("vm-3", "elsewhere", "cart", "10.1.0.3"),
        ] {
            index.handle(event);
        }
        let service = service(&index, &cart, "cluster.local");
        let addresses: Vec<&str> = service.endpoints.iter().map(|e| &*e.address).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.3", "10.1.0.1"]);
        let vm = &service.endpoints[2];
        assert_eq!(vm.port_for(&service.ports[0]), 18080);
        assert_eq!(&*vm.service_account, "cart-vm");
        assert_eq!(vm.locality, "us-east-1/us-east-1c");
        assert_eq!(vm.labels.get("version").map(String::as_str), Some("vm"));
        cart.selector.clear();
        let without = super::service(&index, &cart, "cluster.local");
        assert_eq!(without.endpoints.len(), 2, "no selector, no entries");
    }

    #[test]
    fn endpoints_carry_pod_labels_identity_and_locality() {
        let index = index();
        let kube = index
            .service(&NsName::new("shop", "cart"))
            .expect("indexed")
            .clone();
        let service = service(&index, &kube, "cluster.local");
        assert_eq!(service.host, "cart.shop.svc.cluster.local");
        assert_eq!(service.resolution, Resolution::Static);
        let addresses: Vec<(&str, Health)> = service
            .endpoints
            .iter()
            .map(|e| (&*e.address, e.health))
            .collect();
        assert_eq!(
            addresses,
            vec![("10.0.0.1", Health::Ready), ("10.0.0.3", Health::Ready)]
        );
        let first = &service.endpoints[0];
        assert_eq!(first.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(&*first.service_account, "cart");
        // The slice's zone wins over the node's; the region comes from the node.
        assert_eq!(first.locality, "us-east-1/us-east-1b");
        assert_eq!(first.port_for(&service.ports[0]), 8080);
    }
}
