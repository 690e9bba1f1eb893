//! The poller against an in-memory Cloud Map (the e2e tests run it against moto).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::source::cloud_map::api::{NamespaceInfo, Paged};

/// A listing of `items` paged 100 at a time, as Cloud Map pages them.
fn paged<T>(items: Vec<T>) -> Paged<Vec<T>> {
    let pages = items.len().div_ceil(100).max(1) as u64;
    Paged { items, pages }
}
use crate::source::cloud_map::config::NamespaceRef;
use crate::source::cloud_map::convert::{IPV4, InstanceHealth, PORT};

#[derive(Default)]
struct Service {
    id: String,
    health_checked: bool,
    revision: i64,
    instances: Vec<Instance>,
}

/// Namespace name → (id, service name → service); `fail` makes calls of that operation fail.
#[derive(Default)]
struct FakeMap {
    namespaces: BTreeMap<String, (String, BTreeMap<String, Service>)>,
    fail: Option<&'static str>,
}

struct Fake(Mutex<FakeMap>);

impl Fake {
    fn with(&self, f: impl FnOnce(&mut FakeMap)) {
        f(&mut self.0.lock().expect("lock"))
    }
}

impl FakeMap {
    fn service(&mut self, ns: &str, name: &str) -> &mut Service {
        let n = self.namespaces.len();
        let (_, services) = self
            .namespaces
            .entry(ns.to_string())
            .or_insert_with(|| (format!("ns-{n}"), BTreeMap::new()));
        let count = services.len();
        services.entry(name.to_string()).or_insert_with(|| Service {
            id: format!("srv-{ns}-{count}"),
            ..Service::default()
        })
    }

    fn register(&mut self, ns: &str, name: &str, id: &str, ip: &str) {
        let service = self.service(ns, name);
        service.instances.retain(|i| i.id != id);
        service.instances.push(Instance {
            id: id.into(),
            attributes: BTreeMap::from([
                (IPV4.to_string(), ip.to_string()),
                (PORT.to_string(), "8080".to_string()),
            ]),
            health: InstanceHealth::Healthy,
        });
        service.revision += 1;
    }

    fn check(&self, op: &'static str) -> Result<(), ApiError> {
        if self.fail == Some(op) {
            return Err(ApiError {
                operation: op,
                code: Some("ThrottlingException".into()),
                message: "Rate exceeded".into(),
                throttled: true,
            });
        }
        Ok(())
    }

    /// A service by its namespace's HttpName.
    fn find(&self, http_name: &str, name: &str) -> Option<&Service> {
        let ns = http_name.strip_suffix("#http")?;
        self.namespaces.get(ns).and_then(|(_, s)| s.get(name))
    }
}

impl CloudMapApi for Fake {
    async fn namespaces(&self) -> Result<Paged<Vec<NamespaceInfo>>, ApiError> {
        let map = self.0.lock().expect("lock");
        map.check("ListNamespaces")?;
        Ok(paged(
            map.namespaces
                .iter()
                .map(|(name, (id, _))| NamespaceInfo {
                    id: id.clone(),
                    name: name.clone(),
                    // Not the name, as AWS makes it for a reused name: the discovery calls must
                    // use this one.
                    http_name: format!("{name}#http"),
                })
                .collect(),
        ))
    }

    async fn services(&self, namespace_id: &str) -> Result<Paged<Vec<ServiceInfo>>, ApiError> {
        let map = self.0.lock().expect("lock");
        map.check("ListServices")?;
        Ok(paged(
            map.namespaces
                .values()
                .filter(|(id, _)| id == namespace_id)
                .flat_map(|(_, services)| services.iter())
                .map(|(name, s)| ServiceInfo {
                    id: s.id.clone(),
                    name: name.clone(),
                    health_checked: s.health_checked,
                })
                .collect(),
        ))
    }

    async fn revision(&self, namespace: &str, service: &str) -> Result<i64, ApiError> {
        let map = self.0.lock().expect("lock");
        map.check("DiscoverInstancesRevision")?;
        Ok(map.find(namespace, service).map_or(0, |s| s.revision))
    }

    async fn instances(&self, namespace: &str, service: &str) -> Result<Vec<Instance>, ApiError> {
        let map = self.0.lock().expect("lock");
        map.check("DiscoverInstances")?;
        Ok(map
            .find(namespace, service)
            .map(|s| s.instances.clone())
            .unwrap_or_default())
    }

    async fn health(
        &self,
        service_id: &str,
    ) -> Result<Paged<BTreeMap<String, InstanceHealth>>, ApiError> {
        let map = self.0.lock().expect("lock");
        map.check("GetInstancesHealthStatus")?;
        let service = map
            .namespaces
            .values()
            .flat_map(|(_, s)| s.values())
            .find(|s| s.id == service_id);
        let items = service
            .map(|s| {
                s.instances
                    .iter()
                    .map(|i| (i.id.clone(), i.health))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Paged { items, pages: 1 })
    }
}

fn poller(namespaces: &[&str]) -> Poller<Fake> {
    let config = CloudMapConfig {
        namespaces: namespaces
            .iter()
            .map(|n| NamespaceRef {
                name: Some(n.to_string()),
                id: None,
            })
            .collect(),
        ..CloudMapConfig::default()
    };
    Poller::new(Fake(Mutex::new(FakeMap::default())), config)
}

fn applied(events: &[Event]) -> Vec<(String, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Apply(Record::CloudMap(s)) => Some((
                s.host.clone(),
                s.endpoints.iter().map(|e| e.address.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_instance_change_reads_only_its_service() {
    let mut poller = poller(&["example.local"]);
    poller.api.with(|m| {
        for i in 0..150 {
            m.register("example.local", &format!("svc-{i}"), "i-1", "10.0.0.1");
        }
        // Not a configured namespace: never read past ListServices' filter.
        m.register("other.local", "hidden", "i-1", "10.9.9.9");
    });
    let first = poller.poll().await.expect("first poll");
    let [Event::Reset(tags, records)] = first.events.as_slice() else {
        panic!("{:?}", first.events);
    };
    assert_eq!(tags, &[Tag::CloudMap]);
    assert_eq!(records.len(), 150);
    assert_eq!(first.calls.get("DiscoverInstances"), Some(&150));
    // Every page of the listing is a call.
    assert_eq!(first.calls.get("ListServices"), Some(&2));
    assert_eq!(first.services, 150);

    let quiet = poller.poll().await.expect("quiet poll");
    assert!(quiet.events.is_empty(), "{:?}", quiet.events);
    assert_eq!(quiet.calls.get("DiscoverInstancesRevision"), Some(&150));
    assert_eq!(quiet.calls.get("DiscoverInstances"), None);

    poller
        .api
        .with(|m| m.register("example.local", "svc-7", "i-2", "10.0.0.2"));
    let change = poller.poll().await.expect("poll");
    assert_eq!(change.calls.get("DiscoverInstances"), Some(&1));
    assert_eq!(
        applied(&change.events),
        [(
            "svc-7.example.local".to_string(),
            vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
        )]
    );
}

#[tokio::test]
async fn health_is_read_for_checked_services_without_a_full_read() {
    let mut poller = poller(&["example.local"]);
    poller.api.with(|m| {
        m.register("example.local", "orders", "i-1", "10.0.0.1");
        m.register("example.local", "orders", "i-2", "10.0.0.2");
        m.service("example.local", "orders").health_checked = true;
    });
    poller.poll().await.expect("first poll");
    poller.api.with(|m| {
        let service = m.service("example.local", "orders");
        service.instances[0].health = InstanceHealth::Unhealthy;
    });
    let poll = poller.poll().await.expect("poll");
    assert_eq!(poll.calls.get("DiscoverInstances"), None);
    assert_eq!(poll.calls.get("GetInstancesHealthStatus"), Some(&1));
    assert_eq!(
        applied(&poll.events),
        [(
            "orders.example.local".to_string(),
            vec!["10.0.0.2".to_string()]
        )]
    );
}

#[tokio::test]
async fn a_failed_poll_keeps_the_last_view_and_the_next_catches_up() {
    let mut poller = poller(&["example.local"]);
    poller
        .api
        .with(|m| m.register("example.local", "orders", "i-1", "10.0.0.1"));
    poller.poll().await.expect("first poll");
    poller.api.with(|m| {
        m.register("example.local", "orders", "i-2", "10.0.0.2");
        m.fail = Some("DiscoverInstances");
    });
    let (err, calls) = poller.poll().await.expect_err("throttled");
    assert!(err.throttled, "{err}");
    assert_eq!(calls.get("DiscoverInstancesRevision"), Some(&1));
    poller.api.with(|m| m.fail = None);
    let poll = poller.poll().await.expect("recovered");
    assert_eq!(
        applied(&poll.events),
        [(
            "orders.example.local".to_string(),
            vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
        )]
    );
}

#[tokio::test]
async fn a_deleted_service_is_deleted_and_an_emptied_one_kept_without_endpoints() {
    let mut poller = poller(&["example.local"]);
    poller.api.with(|m| {
        m.register("example.local", "orders", "i-1", "10.0.0.1");
        m.register("example.local", "carts", "i-1", "10.0.0.5");
    });
    poller.poll().await.expect("first poll");
    poller.api.with(|m| {
        let (_, services) = m.namespaces.get_mut("example.local").expect("ns");
        services.remove("carts");
        let orders = services.get_mut("orders").expect("orders");
        orders.instances.clear();
        orders.revision += 1;
    });
    let poll = poller.poll().await.expect("poll");
    assert!(
        poll.events.iter().any(|e| matches!(
            e,
            Event::Delete(RecordKey::CloudMap(id)) if id.name == "carts"
        )),
        "{:?}",
        poll.events
    );
    assert_eq!(
        applied(&poll.events),
        [("orders.example.local".to_string(), vec![])]
    );
}
