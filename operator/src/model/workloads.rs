//! WorkloadEntries as the endpoints of the ServiceEntries that select them (`workloadSelector`),
//! as Istio brings VMs and other non-Kubernetes workloads into the mesh.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::{IstioObject, Kind};

use super::service::Endpoint;
use crate::index::{Health, Index};

/// The WorkloadEntries of `namespace` carrying every label of `selector`, by name, as
/// endpoints. (Pods a selector would also pick in Istio are not endpoints here yet.)
pub fn selected_endpoints(
    index: &Index,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    index
        .istio_in(Kind::WorkloadEntry, namespace)
        .filter_map(|object| match object {
            IstioObject::WorkloadEntry(we) => Some(&we.spec),
            _ => None,
        })
        .filter(|spec| selector.iter().all(|(k, v)| spec.labels.get(k) == Some(v)))
        // An entry without an address has nowhere to send traffic.
        .filter(|spec| !spec.address.is_empty())
        .map(|spec| Endpoint {
            address: spec.address.as_str().into(),
            ports: Arc::new(spec.ports.clone()),
            labels: Arc::new(spec.labels.clone()),
            locality: spec.locality.clone(),
            weight: spec.weight,
            service_account: spec.service_account.as_str().into(),
            health: Health::Ready,
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
}
