//! Where each pod runs, for proxies that do not say: istiod takes a sidecar's locality from
//! its pod's Kubernetes Node when the Envoy node carries none, and so does capstan, through
//! the cache's `ProxyResolver`. Kept from the same Pod and Node events the index gets.

use std::collections::HashMap;
use std::sync::RwLock;

use capstan_xds::{Locality, ProxyInfo, ProxyResolver};

use crate::index::{Event, NsName, Record, RecordKey, Tag};

#[derive(Default)]
pub struct PodLocalities {
    placement: RwLock<Placement>,
}

#[derive(Default)]
struct Placement {
    /// Pod → the Node it runs on.
    pods: HashMap<NsName, String>,
    nodes: HashMap<String, Locality>,
}

impl PodLocalities {
    /// Takes what `event` says of Pods and Nodes.
    pub fn observe(&self, event: &Event) {
        let mut placement = self
            .placement
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Event::Apply(record) => placement.apply(record),
            Event::Delete(RecordKey::Pod(id)) => {
                placement.pods.remove(id);
            }
            Event::Delete(RecordKey::Node(name)) => {
                placement.nodes.remove(name);
            }
            Event::Delete(_) => {}
            Event::Reset(tags, records) => {
                if tags.contains(&Tag::Pod) {
                    placement.pods.clear();
                }
                if tags.contains(&Tag::Node) {
                    placement.nodes.clear();
                }
                for record in records {
                    placement.apply(record);
                }
            }
        }
    }
}

impl Placement {
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Pod(pod) => match &pod.node {
                Some(node) => {
                    self.pods.insert(pod.id.clone(), node.clone());
                }
                None => {
                    self.pods.remove(&pod.id);
                }
            },
            Record::Node(node) => {
                let locality = Locality {
                    region: node.region.clone(),
                    zone: node.zone.clone(),
                    subzone: String::new(),
                };
                self.nodes.insert(node.name.clone(), locality);
            }
            _ => {}
        }
    }
}

impl ProxyResolver for PodLocalities {
    fn resolve(&self, proxy: &mut ProxyInfo) {
        if !proxy.locality.region.is_empty() {
            return;
        }
        let (Some(namespace), Some(pod)) = (proxy.namespace.as_deref(), proxy.pod_name()) else {
            return;
        };
        let placement = self
            .placement
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let locality = placement
            .pods
            .get(&NsName::new(namespace, pod))
            .and_then(|node| placement.nodes.get(node));
        if let Some(locality) = locality {
            proxy.locality = locality.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::index::{NodeRecord, PodRecord};

    fn pod(name: &str, node: Option<&str>) -> Record {
        Record::Pod(PodRecord {
            id: NsName::new("bookinfo", name),
            labels: Arc::default(),
            service_account: "default".into(),
            node: node.map(str::to_string),
            ip: None,
            ready: true,
        })
    }

    fn node(name: &str, zone: &str) -> Record {
        Record::Node(NodeRecord {
            name: name.into(),
            region: "us-east-1".into(),
            zone: zone.into(),
        })
    }

    fn proxy(id: &str) -> ProxyInfo {
        ProxyInfo::from_node(&envoy_types::pb::envoy::config::core::v3::Node {
            id: id.into(),
            ..Default::default()
        })
    }

    fn resolved(localities: &PodLocalities, id: &str) -> Locality {
        let mut p = proxy(id);
        localities.resolve(&mut p);
        p.locality
    }

    const SLEEP: &str = "sidecar~10.0.0.1~sleep-0.bookinfo~bookinfo.svc.cluster.local";

    #[test]
    fn a_proxy_without_a_locality_gets_its_pods_nodes() {
        let localities = PodLocalities::default();
        localities.observe(&Event::Reset(
            vec![Tag::Pod, Tag::Node],
            vec![pod("sleep-0", Some("n-a")), node("n-a", "us-east-1a")],
        ));
        assert_eq!(
            resolved(&localities, SLEEP),
            Locality::parse("us-east-1/us-east-1a")
        );
        // A proxy that says where it is keeps it.
        let mut own = proxy(SLEEP);
        own.locality = Locality::parse("eu-west-1/eu-west-1b");
        localities.resolve(&mut own);
        assert_eq!(own.locality, Locality::parse("eu-west-1/eu-west-1b"));
        // Another pod, or none in the id: nothing is made up.
        let other = "sidecar~10.0.0.2~other-0.bookinfo~bookinfo.svc.cluster.local";
        assert_eq!(resolved(&localities, other), Locality::default());
        assert_eq!(resolved(&localities, "envoy-1"), Locality::default());

        // The pod moves; its node goes.
        localities.observe(&Event::Apply(node("n-b", "us-east-1b")));
        localities.observe(&Event::Apply(pod("sleep-0", Some("n-b"))));
        assert_eq!(resolved(&localities, SLEEP).zone, "us-east-1b");
        localities.observe(&Event::Delete(RecordKey::Node("n-b".into())));
        assert_eq!(resolved(&localities, SLEEP), Locality::default());
        // A re-list of pods replaces them all.
        localities.observe(&Event::Reset(vec![Tag::Pod], vec![]));
        localities.observe(&Event::Apply(node("n-b", "us-east-1b")));
        assert_eq!(resolved(&localities, SLEEP), Locality::default());
    }
}
