//! WorkloadEntries and Pods as the endpoints of the ServiceEntries that select them
//! (`workloadSelector`), as Istio brings VMs and other non-Kubernetes workloads into the mesh
//! and groups pods under a ServiceEntry.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::{IstioObject, Kind};

use super::service::{Endpoint, labels_include};
use crate::index::{Health, Index};

/// The WorkloadEntries and Pods of `namespace` carrying every label of `selector`, as
/// endpoints, as Istio selects both: entries by name, then pods by name. A pod is an endpoint
/// while it has an address and is ready, as a Service's (istiod sends no unready endpoint).
pub fn selected_endpoints(
    index: &Index,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    let selects = |labels: &BTreeMap<String, String>| labels_include(labels, selector);
    let entries = selected_entries(index, namespace, selector);
    let pods = index
        .pods_in(namespace)
        .filter(|pod| pod.ready && selects(&pod.labels))
        .filter_map(|pod| {
            Some(Endpoint {
                address: pod.ip.clone()?,
                // The entry's ports (their targetPort) are the pod's.
                ports: Arc::default(),
                labels: pod.labels.clone(),
                locality: super::kube::locality(
                    pod.node.as_deref().and_then(|n| index.node(n)),
                    None,
                ),
                weight: 0,
                service_account: pod.service_account.clone(),
                health: Health::Ready,
            })
        });
    entries.into_iter().chain(pods).collect()
}

/// The WorkloadEntries of `namespace` carrying every label of `selector`, by name, as
/// endpoints; one without an address is left out.
pub fn selected_entries(
    index: &Index,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    let selects = |labels: &BTreeMap<String, String>| labels_include(labels, selector);
    index
        .istio_in(Kind::WorkloadEntry, namespace)
        .filter_map(|object| match object {
            IstioObject::WorkloadEntry(we) => Some(&we.spec),
            _ => None,
        })
        .filter(|spec| selects(&spec.labels))
        // An entry without an address has nowhere to send traffic.
        .filter(|spec| !spec.address.is_empty())
        .map(Endpoint::from)
        .collect()
}

/// A ServiceEntry `billing.vms` selecting `app: billing`, HTTP 8080 to the workloads' 18080.
#[cfg(test)]
pub(crate) fn billing_entry() -> String {
    "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: vms}
spec:
  hosts: [billing.vms.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 18080}]
  resolution: STATIC
  workloadSelector: {labels: {app: billing}}
"
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::billing_entry;
    use crate::translate::test_support::mesh;

    #[test]
    fn a_service_entry_selecting_workload_entries_gets_them_as_endpoints() {
        let mesh = mesh(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: vms}
spec:
  hosts: [billing.vms.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: billing}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: vms}
spec: {address: 10.0.5.1, labels: {app: billing, version: v1}, ports: {http: 18080}, locality: us-east-1/us-east-1a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: vms}
spec: {address: 10.0.5.2, labels: {app: payroll}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-3, namespace: elsewhere}
spec: {address: 10.0.5.3, labels: {app: billing}}
"#,
        );
        let service = &mesh.services["billing.vms.svc.cluster.local"];
        let addresses: Vec<&str> = service.endpoints.iter().map(|e| &*e.address).collect();
        assert_eq!(
            addresses,
            ["10.0.5.1"],
            "same namespace, matching labels only"
        );
        let endpoint = &service.endpoints[0];
        assert_eq!(endpoint.port_for(&service.ports[0]), 18080);
        assert_eq!(endpoint.locality, "us-east-1/us-east-1a");
        assert_eq!(endpoint.labels["version"], "v1");
    }

    #[test]
    fn a_service_entry_selecting_pods_gets_the_ready_ones() {
        use std::collections::BTreeMap;
        use std::sync::Arc;

        use crate::index::{Health, Index, NodeRecord, NsName, PodRecord, Record};

        let mut index = Index::new();
        index.handle(crate::index::istio_event(&billing_entry()));
        index.apply(Record::Node(NodeRecord {
            name: "node-a".into(),
            region: "us-east-1".into(),
            zone: "us-east-1b".into(),
        }));
        for (ns, name, app, ip, ready) in [
            ("vms", "ready", "billing", Some("10.0.6.1"), true),
            ("vms", "starting", "billing", Some("10.0.6.2"), false),
            ("vms", "pending", "billing", None, false),
            ("vms", "other", "payroll", Some("10.0.6.4"), true),
            ("elsewhere", "far", "billing", Some("10.0.6.5"), true),
        ] {
            let changes = index.apply(Record::Pod(PodRecord {
                id: NsName::new(ns, name),
                labels: Arc::new(BTreeMap::from([("app".to_string(), app.to_string())])),
                service_account: "billing".into(),
                node: Some("node-a".into()),
                ip: ip.map(Into::into),
                ready,
            }));
            // Only a namespace with a selecting entry makes a pod change rebuild config.
            assert_eq!(!changes.objects.is_empty(), ns == "vms", "{name}");
        }
        let (mesh, _) = crate::model::Mesh::build(&index, "cluster.local");
        let service = &mesh.services["billing.vms.svc.cluster.local"];
        let found: Vec<(&str, Health)> = service
            .endpoints
            .iter()
            .map(|e| (&*e.address, e.health))
            .collect();
        assert_eq!(found, [("10.0.6.1", Health::Ready)]);
        let ready = &service.endpoints[0];
        assert_eq!(
            ready.port_for(&service.ports[0]),
            18080,
            "the entry's targetPort"
        );
        assert_eq!(&*ready.service_account, "billing");
        assert_eq!(ready.locality, "us-east-1/us-east-1b");
    }
}
