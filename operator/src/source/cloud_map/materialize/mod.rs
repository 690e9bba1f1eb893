//! The materialised mode: one ServiceEntry per Cloud Map service, written to the mesh
//! namespace with server-side apply and labelled `capstan.io/managed-by: cloudmap`, so users
//! see and audit them with kubectl. Only objects carrying that label are ever changed or
//! deleted: a hand-written ServiceEntry of the same name is left alone and reported.
//!
//! Writes that fail (API server away, conflicts) are retried until they succeed; the latest
//! Cloud Map view is what gets written, not a queue of the views in between. Each object
//! carries a `CloudMapSynced` condition ([`condition`]): `False` while Cloud Map cannot be
//! read and the object is the last good view.

pub mod condition;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use capstan_crds::networking::service_entry::{
    Location, Resolution, ServiceEntry, ServiceEntrySpec, ServicePort,
};
use capstan_crds::networking::workload_entry::WorkloadEntrySpec;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::index::{CloudMapService, Event, NsName, Record, RecordKey};
use condition::SyncState;

pub const MANAGED_BY: &str = "capstan.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "cloudmap";
/// The Cloud Map `namespace/service` an object was made from.
pub const SOURCE_ANNOTATION: &str = "capstan.io/cloud-map-service";
const FIELD_MANAGER: &str = "capstan-cloud-map";
const RETRY: Duration = Duration::from_secs(2);

/// The object name for Cloud Map service `id`: `<service>-<namespace>` as a DNS-1123 label,
/// shortened with a hash of the whole when longer than 63 characters.
pub fn object_name(id: &NsName) -> String {
    let raw = format!("{}-{}", id.name, id.namespace).to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = name.trim_matches('-');
    // Dots become dashes as they are; anything else changed, or a name too long, takes a
    // hash so two services never share an object.
    if trimmed.len() > 63 || trimmed != raw.replace('.', "-") {
        let hash = xxhash_rust::xxh3::xxh3_64(format!("{}/{}", id.namespace, id.name).as_bytes());
        let keep: String = trimmed.chars().take(54).collect();
        name = format!("{}-{:08x}", keep.trim_end_matches('-'), hash as u32);
    }
    name
}

/// The ServiceEntry of a Cloud Map service.
pub fn service_entry(record: &CloudMapService) -> ServiceEntry {
    let spec = ServiceEntrySpec {
        hosts: vec![record.host.clone()],
        ports: record
            .ports
            .iter()
            .map(|p| ServicePort {
                number: p.port,
                protocol: p.protocol.map(|p| p.name().to_string()).unwrap_or_default(),
                name: p.name.clone(),
                target_port: p.target_port,
            })
            .collect(),
        location: Location::MeshInternal,
        resolution: if record.dns {
            Resolution::Dns
        } else {
            Resolution::Static
        },
        endpoints: record
            .endpoints
            .iter()
            .map(|e| WorkloadEntrySpec {
                address: e.address.to_string(),
                ports: (*e.ports).clone(),
                labels: (*e.labels).clone(),
                locality: e.locality.clone(),
                ..WorkloadEntrySpec::default()
            })
            .collect(),
        ..ServiceEntrySpec::default()
    };
    let mut entry = ServiceEntry::new(&object_name(&record.id), spec);
    entry.metadata = ObjectMeta {
        name: Some(object_name(&record.id)),
        namespace: Some(record.namespace.clone()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY.to_string(),
            MANAGED_BY_VALUE.to_string(),
        )])),
        annotations: Some(BTreeMap::from([(
            SOURCE_ANNOTATION.to_string(),
            record.id.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    entry
}

/// Writes what the poller sends until it stops; `sync` says whether its polls succeed. Only
/// while `leader` says so: of several replicas, the elected one writes, and one that becomes
/// leader writes everything it holds.
pub async fn run(
    client: kube::Client,
    namespace: String,
    mut events: mpsc::Receiver<Event>,
    mut sync: watch::Receiver<SyncState>,
    mut leader: watch::Receiver<bool>,
) {
    let api: Api<ServiceEntry> = Api::namespaced(client, &namespace);
    let mut writer = Writer {
        api,
        desired: BTreeMap::new(),
        pending: BTreeSet::new(),
        sweep: false,
        state: sync.borrow_and_update().clone(),
        unstated: BTreeSet::new(),
    };
    let mut leading = *leader.borrow_and_update();
    loop {
        let idle =
            !leading || (writer.pending.is_empty() && !writer.sweep && writer.unstated.is_empty());
        let retry = async {
            if idle {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(RETRY).await
            }
        };
        let event = tokio::select! {
            event = events.recv() => event,
            Ok(()) = sync.changed() => {
                writer.state = sync.borrow_and_update().clone();
                writer.unstated = writer.desired.keys().cloned().collect();
                if leading {
                    writer.flush().await;
                }
                continue;
            }
            Ok(()) = leader.changed() => {
                let now = *leader.borrow_and_update();
                if now && !leading {
                    // What the last leader wrote may be older than what this replica holds.
                    writer.pending = writer.desired.keys().cloned().collect();
                    writer.unstated = writer.pending.clone();
                    writer.sweep = true;
                    info!("leading: writing the Cloud Map ServiceEntries");
                }
                leading = now;
                if leading {
                    writer.flush().await;
                }
                continue;
            }
            () = retry => {
                writer.flush().await;
                continue;
            }
        };
        let Some(event) = event else { return };
        writer.take(event);
        while let Ok(event) = events.try_recv() {
            writer.take(event);
        }
        if leading {
            writer.flush().await;
        }
    }
}

struct Writer {
    api: Api<ServiceEntry>,
    desired: BTreeMap<NsName, CloudMapService>,
    /// Services whose object is not yet as desired.
    pending: BTreeSet<NsName>,
    /// Managed objects of services no longer listed are still to be deleted.
    sweep: bool,
    /// Whether Cloud Map is being read; and the objects whose condition does not say so yet.
    state: SyncState,
    unstated: BTreeSet<NsName>,
}

impl Writer {
    fn take(&mut self, event: Event) {
        match event {
            Event::Reset(_, records) => {
                self.pending.extend(self.desired.keys().cloned());
                self.desired.clear();
                for record in records {
                    if let Record::CloudMap(service) = record {
                        self.pending.insert(service.id.clone());
                        self.desired.insert(service.id.clone(), service);
                    }
                }
                self.sweep = true;
            }
            Event::Apply(Record::CloudMap(service)) => {
                self.pending.insert(service.id.clone());
                self.desired.insert(service.id.clone(), service);
            }
            Event::Delete(RecordKey::CloudMap(id)) => {
                self.desired.remove(&id);
                self.pending.insert(id);
            }
            _ => {}
        }
    }

    async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for id in pending {
            let result = match self.desired.get(&id) {
                Some(service) => self.write(service).await,
                None => self.remove(&object_name(&id)).await.map(|()| None),
            };
            match result {
                // The object as written carries its version and status: its condition is
                // set from it, not from another read.
                Ok(Some(entry)) => {
                    if let Err(e) = self.set_condition(&entry).await {
                        warn!(service = %id, "writing the {} condition: {e}; retrying", condition::CONDITION);
                        self.unstated.insert(id);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(service = %id, "writing the ServiceEntry of a Cloud Map service: {e}; retrying");
                    self.pending.insert(id);
                }
            }
        }
        let unstated = std::mem::take(&mut self.unstated);
        for id in unstated {
            if !self.desired.contains_key(&id) {
                continue;
            }
            if let Err(e) = self.state_condition(&object_name(&id)).await {
                warn!(service = %id, "writing the {} condition: {e}; retrying", condition::CONDITION);
                self.unstated.insert(id);
            }
        }
        if self.sweep {
            match self.sweep_orphans().await {
                Ok(()) => self.sweep = false,
                Err(e) => {
                    warn!("listing the ServiceEntries capstan made for Cloud Map: {e}; retrying")
                }
            }
        }
    }

    /// Writes the object of `service`; returns it as written (`None`: a hand-written object
    /// holds the name).
    async fn write(&self, service: &CloudMapService) -> Result<Option<ServiceEntry>, kube::Error> {
        let entry = service_entry(service);
        let name = object_name(&service.id);
        if let Some(existing) = self.api.get_opt(&name).await?
            && !is_managed(&existing.metadata)
        {
            warn!(
                service = %service.id,
                object = %name,
                "a ServiceEntry of this name exists and was not made by capstan for Cloud Map; it is left alone and the Cloud Map service is not materialised"
            );
            return Ok(None);
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .api
            .patch(&name, &params, &Patch::Apply(&entry))
            .await?;
        Ok(Some(written))
    }

    /// Sets the object's `CloudMapSynced` condition to the current state (read afresh).
    async fn state_condition(&self, name: &str) -> Result<(), kube::Error> {
        match self.api.get_opt(name).await? {
            Some(entry) => self.set_condition(&entry).await,
            None => Ok(()),
        }
    }

    /// Sets `entry`'s `CloudMapSynced` condition to the current state, conditional on the
    /// version given (a 409 is retried with the next).
    async fn set_condition(&self, entry: &ServiceEntry) -> Result<(), kube::Error> {
        let Some(name) = entry.metadata.name.as_deref() else {
            return Ok(());
        };
        if !is_managed(&entry.metadata) {
            return Ok(());
        }
        let status = entry
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        let now = crate::monitoring::syncz::rfc3339(std::time::SystemTime::now());
        let Some(conditions) = condition::conditions(status.as_ref(), &self.state, &now) else {
            return Ok(());
        };
        let body = json!({
            "metadata": {"resourceVersion": entry.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        self.api
            .patch_status(name, &params, &Patch::Merge(&body))
            .await?;
        Ok(())
    }

    /// Deletes object `name` if capstan made it.
    async fn remove(&self, name: &str) -> Result<(), kube::Error> {
        match self.api.get_opt(name).await? {
            Some(existing) if is_managed(&existing.metadata) => self.delete(name).await,
            _ => Ok(()),
        }
    }

    /// Deletes object `name`, known to be one capstan made.
    async fn delete(&self, name: &str) -> Result<(), kube::Error> {
        self.api.delete(name, &DeleteParams::default()).await?;
        info!(object = %name, "deleted the ServiceEntry of a Cloud Map service that is gone");
        Ok(())
    }

    /// Deletes managed objects no service asks for (left by an earlier run).
    async fn sweep_orphans(&self) -> Result<(), kube::Error> {
        let wanted: BTreeSet<String> = self.desired.keys().map(object_name).collect();
        let selector = format!("{MANAGED_BY}={MANAGED_BY_VALUE}");
        let listed = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        for entry in listed {
            let Some(name) = entry.metadata.name.as_deref() else {
                continue;
            };
            // Listed by the managed label: capstan's, without reading it again.
            if !wanted.contains(name) {
                self.delete(name).await?;
            }
        }
        Ok(())
    }
}

fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::index::{CloudMapEndpoint, KubeServicePort};

    #[test]
    fn names_are_dns_labels_and_distinct() {
        assert_eq!(
            object_name(&NsName::new("example.local", "orders")),
            "orders-example-local"
        );
        let long = object_name(&NsName::new(
            "a-very-long-namespace-name.example.internal",
            "orders-service-with-long-name",
        ));
        assert!(long.len() <= 63, "{long}");
        let odd_a = object_name(&NsName::new("ns", "Orders_V2"));
        let odd_b = object_name(&NsName::new("ns", "orders.v2"));
        assert_ne!(odd_a, odd_b);
        for name in [&long, &odd_a, &odd_b] {
            assert!(
                capstan_crds::validate::names::dns1123_label(name).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_entry_carries_ports_endpoints_and_the_managed_label() {
        let record = CloudMapService {
            id: NsName::new("example.local", "orders"),
            host: "orders.example.local".into(),
            namespace: "cloud-map".into(),
            ports: vec![KubeServicePort {
                name: "http-8080".into(),
                port: 8080,
                protocol: Some(capstan_crds::Protocol::Http),
                target_port: 0,
            }],
            dns: false,
            endpoints: vec![CloudMapEndpoint {
                address: "10.0.0.1".into(),
                ports: Arc::new(BTreeMap::from([("http-8080".into(), 8080)])),
                labels: Arc::new(BTreeMap::from([("version".into(), "v1".into())])),
                locality: "us-east-1/us-east-1a".into(),
            }],
        };
        let entry = service_entry(&record);
        assert!(is_managed(&entry.metadata));
        assert_eq!(entry.metadata.namespace.as_deref(), Some("cloud-map"));
        // What capstan writes is what its own validation (and the webhook) accepts.
        let value = serde_json::to_value(&entry).expect("json");
        let yaml = serde_json::to_string(&value).expect("text");
        let document = capstan_crds::parse_single("se.yaml", &yaml).expect("parses");
        assert!(document.validate().is_empty(), "{:?}", document.validate());
        assert_eq!(entry.spec.ports[0].protocol, "HTTP");
        assert_eq!(entry.spec.endpoints[0].locality, "us-east-1/us-east-1a");
        assert_eq!(entry.spec.location, Location::MeshInternal);
    }
}
