//! AWS Cloud Map services as mesh services (the in-memory mode of the Cloud Map source): a
//! host the source named, its ports, and the instances that may take traffic. A Kubernetes
//! Service or a ServiceEntry claiming the same host wins over it, as hand-written config does.

use std::collections::{BTreeSet, HashMap};

use crate::index::{CloudMapService, Health, Index, NsName};
use crate::model::service::{Endpoint, ExportTo, Origin, Port, Resolution, Service};

/// Which host each Cloud Map service claims, and who claims each host.
#[derive(Debug, Default)]
pub struct CloudMapHosts {
    host_of: HashMap<NsName, String>,
    claimants: HashMap<String, BTreeSet<NsName>>,
}

impl CloudMapHosts {
    /// Re-reads Cloud Map service `id`; returns the hosts it claimed before and claims now.
    pub fn reread(&mut self, index: &Index, id: &NsName) -> Vec<String> {
        let mut hosts = Vec::new();
        if let Some(old) = self.host_of.remove(id) {
            if let Some(ids) = self.claimants.get_mut(&old) {
                ids.remove(id);
                if ids.is_empty() {
                    self.claimants.remove(&old);
                }
            }
            hosts.push(old);
        }
        if let Some(service) = index.cloud_map_service(id) {
            self.host_of.insert(id.clone(), service.host.clone());
            self.claimants
                .entry(service.host.clone())
                .or_default()
                .insert(id.clone());
            hosts.push(service.host.clone());
        }
        hosts
    }

    /// The Cloud Map services claiming `host`, first by namespace and name.
    pub fn claimants<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a NsName> + 'a {
        self.claimants.get(host).into_iter().flatten()
    }

    pub fn host_of(&self, id: &NsName) -> Option<&str> {
        self.host_of.get(id).map(String::as_str)
    }
}

/// The mesh service of a Cloud Map service.
pub fn service(record: &CloudMapService) -> Service {
    Service {
        host: record.host.clone(),
        origin: Origin::CloudMap {
            service: record.id.clone(),
            namespace: record.namespace.clone(),
        },
        addresses: Vec::new(),
        export_to: ExportTo::All,
        ports: record.ports.iter().map(Port::from).collect(),
        resolution: if record.dns {
            Resolution::Dns
        } else {
            Resolution::Static
        },
        endpoints: endpoints(record),
        // A registry's services are the mesh's own, as Istio treats its registries; clients
        // still send plain text to them, having no sidecar to say otherwise.
        mesh_external: false,
        subject_alt_names: Vec::new(),
    }
}

pub fn endpoints(record: &CloudMapService) -> Vec<Endpoint> {
    record
        .endpoints
        .iter()
        .map(|e| Endpoint {
            address: e.address.clone(),
            ports: e.ports.clone(),
            labels: e.labels.clone(),
            locality: e.locality.clone(),
            weight: 0,
            service_account: "".into(),
            health: Health::Ready,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::index::{CloudMapEndpoint, KubeServicePort, Record};

    fn orders(host: &str, addresses: &[&str]) -> CloudMapService {
        CloudMapService {
            id: NsName::new("example.local", "orders"),
            host: host.into(),
            namespace: "cloudmap".into(),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 80,
                protocol: Some(capstan_crds::Protocol::Http),
                target_port: 0,
            }],
            dns: false,
            endpoints: addresses
                .iter()
                .map(|a| CloudMapEndpoint {
                    address: (*a).into(),
                    ports: Arc::new(BTreeMap::from([("http".to_string(), 8080)])),
                    labels: Arc::new(BTreeMap::from([("version".into(), "v1".into())])),
                    locality: "us-east-1/us-east-1a".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_rename_releases_the_old_host_and_claims_the_new() {
        let mut index = Index::new();
        let mut hosts = CloudMapHosts::default();
        let id = NsName::new("example.local", "orders");
        index.apply(Record::CloudMap(orders(
            "orders.example.local",
            &["10.0.0.1"],
        )));
        assert_eq!(hosts.reread(&index, &id), vec!["orders.example.local"]);
        index.apply(Record::CloudMap(orders("orders.internal", &["10.0.0.1"])));
        assert_eq!(
            hosts.reread(&index, &id),
            vec!["orders.example.local", "orders.internal"]
        );
        assert_eq!(hosts.claimants("orders.example.local").count(), 0);
        assert_eq!(
            hosts.claimants("orders.internal").collect::<Vec<_>>(),
            [&id]
        );
        index.delete(&crate::index::RecordKey::CloudMap(id.clone()));
        assert_eq!(hosts.reread(&index, &id), vec!["orders.internal"]);
        assert_eq!(hosts.host_of(&id), None);
    }

    #[test]
    fn instances_become_endpoints_with_their_port_labels_and_locality() {
        let service = service(&orders("orders.example.local", &["10.0.0.1", "10.0.0.2"]));
        assert_eq!(service.namespace(), "cloudmap");
        assert_eq!(service.resolution, Resolution::Static);
        assert_eq!(service.endpoints.len(), 2);
        let first = &service.endpoints[0];
        assert_eq!(first.port_for(&service.ports[0]), 8080);
        assert_eq!(first.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(first.locality, "us-east-1/us-east-1a");
    }
}
