//! The index: every object capstan serves from, keyed by kind and namespaced name, fed by the
//! sources through one interface — [`Index::apply`], [`Index::delete`], [`Index::reset`] — and
//! answering each call with what changed ([`Changes`]), so the caller rebuilds only what
//! depends on it.
//!
//! Sources convert their objects into [`records`] at the edge (off this index); the index
//! never sees Kubernetes API types. A Kubernetes watcher's re-list and a folder rescan are both
//! a `reset` of the kinds they feed: one call, applied at once, so no reader ever sees half a
//! list.

pub mod records;

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::{IstioObject, ObjectKey};

pub use records::{
    CloudMapEndpoint, CloudMapService, Health, IstioRecord, KubeService, KubeServicePort,
    NamespaceRecord, NodeRecord, NsName, PodRecord, Record, RecordKey, SecretRecord, SliceEndpoint,
    SliceRecord, Tag,
};

/// What a call changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Config objects whose content changed (Istio objects, Services, Secrets): the model
    /// re-reads them and translation rebuilds what they claimed or claim.
    pub objects: BTreeSet<RecordKey>,
    /// Services whose endpoints changed; only their load assignments are rebuilt.
    pub endpoints: BTreeSet<NsName>,
    /// Cloud Map services whose instances alone changed.
    pub cloud_map_endpoints: BTreeSet<NsName>,
    /// Istio objects whose status as seen (capstan's condition on them) changed, and nothing
    /// else: nothing to push, but the status writer compares again.
    pub statuses: BTreeSet<ObjectKey>,
}

impl Changes {
    pub fn merge(&mut self, other: Changes) {
        self.objects.extend(other.objects);
        self.endpoints.extend(other.endpoints);
        self.cloud_map_endpoints.extend(other.cloud_map_endpoints);
        self.statuses.extend(other.statuses);
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
            && self.endpoints.is_empty()
            && self.cloud_map_endpoints.is_empty()
            && self.statuses.is_empty()
    }

    /// Whether config (not only endpoints or status) changed.
    pub fn config(&self) -> bool {
        !self.objects.is_empty()
    }

    fn object(key: RecordKey) -> Self {
        Changes {
            objects: BTreeSet::from([key]),
            ..Changes::default()
        }
    }

    fn endpoints(services: impl IntoIterator<Item = NsName>) -> Self {
        Changes {
            endpoints: services.into_iter().collect(),
            ..Changes::default()
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    istio: BTreeMap<ObjectKey, IstioRecord>,
    services: BTreeMap<NsName, KubeService>,
    slices: BTreeMap<NsName, SliceRecord>,
    /// Service → the names of its EndpointSlices.
    slices_of: BTreeMap<NsName, BTreeSet<String>>,
    pods: BTreeMap<NsName, PodRecord>,
    /// Pod → the services whose endpoints name it, with how many endpoints do: a change to
    /// a pod's labels or account changes exactly those services' endpoints.
    pod_users: BTreeMap<NsName, BTreeMap<NsName, usize>>,
    nodes: BTreeMap<String, NodeRecord>,
    namespaces: BTreeMap<String, NamespaceRecord>,
    /// TLS-shaped Secrets only (the sources drop the others).
    secrets: BTreeMap<NsName, SecretRecord>,
    cloud_map: BTreeMap<NsName, CloudMapService>,
}

/// One call on the index, as a value: what sources send to the task that owns the index.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Apply(Record),
    Delete(RecordKey),
    /// The complete set of the kinds in the tags (a list, a re-list, a folder rescan).
    Reset(Vec<Tag>, Vec<Record>),
}

impl Index {
    /// An index of these Istio records alone, as one listing of every Istio kind.
    pub fn of_istio(records: Vec<Record>) -> Self {
        let mut index = Index::new();
        let tags: Vec<Tag> = capstan_crds::Kind::ALL
            .iter()
            .map(|k| Tag::Istio(*k))
            .collect();
        index.reset(&tags, records);
        index
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn handle(&mut self, event: Event) -> Changes {
        match event {
            Event::Apply(record) => self.apply(record),
            Event::Delete(key) => self.delete(&key),
            Event::Reset(tags, records) => self.reset(&tags, records),
        }
    }

    /// Adds or replaces one record.
    pub fn apply(&mut self, record: Record) -> Changes {
        match record {
            Record::Istio(record) => self.apply_istio(record),
            Record::Service(service) => {
                let id = service.id.clone();
                match self.services.insert(id.clone(), service.clone()) {
                    Some(old) if old == service => Changes::default(),
                    _ => Changes::object(RecordKey::Service(id)),
                }
            }
            Record::Slice(slice) => self.apply_slice(slice),
            Record::Pod(pod) => {
                let id = pod.id.clone();
                match self.pods.insert(id.clone(), pod.clone()) {
                    Some(old) if old == pod => Changes::default(),
                    _ => self.pod_changed(&id),
                }
            }
            Record::Node(node) => {
                let name = node.name.clone();
                match self.nodes.insert(name.clone(), node.clone()) {
                    Some(old) if old == node => Changes::default(),
                    _ => Changes::endpoints(self.users_of_node(&name)),
                }
            }
            Record::Namespace(namespace) => {
                // Nothing is derived from namespace labels yet (injection and exportTo will be).
                self.namespaces.insert(namespace.name.clone(), namespace);
                Changes::default()
            }
            Record::Secret(secret) => {
                let id = secret.id.clone();
                match self.secrets.insert(id.clone(), secret.clone()) {
                    Some(old) if old == secret => Changes::default(),
                    _ => Changes::object(RecordKey::Secret(id)),
                }
            }
            Record::CloudMap(service) => {
                let id = service.id.clone();
                match self.cloud_map.insert(id.clone(), service.clone()) {
                    Some(old) if old == service => Changes::default(),
                    Some(old) if old.same_config(&service) => Changes {
                        cloud_map_endpoints: BTreeSet::from([id]),
                        ..Changes::default()
                    },
                    _ => Changes::object(RecordKey::CloudMap(id)),
                }
            }
        }
    }

    /// Removes one record; removing what is not there changes nothing.
    pub fn delete(&mut self, key: &RecordKey) -> Changes {
        match key {
            RecordKey::Istio(_)
            | RecordKey::Service(_)
            | RecordKey::Secret(_)
            | RecordKey::CloudMap(_) => {
                let removed = match key {
                    RecordKey::Istio(k) => self.istio.remove(k).is_some(),
                    RecordKey::Service(id) => self.services.remove(id).is_some(),
                    RecordKey::Secret(id) => self.secrets.remove(id).is_some(),
                    RecordKey::CloudMap(id) => self.cloud_map.remove(id).is_some(),
                    _ => false,
                };
                if removed {
                    Changes::object(key.clone())
                } else {
                    Changes::default()
                }
            }
            RecordKey::Slice(id) => match self.slices.remove(id) {
                Some(old) => {
                    self.forget_slice(&old);
                    Changes::endpoints([service_of(&old)])
                }
                None => Changes::default(),
            },
            RecordKey::Pod(id) => match self.pods.remove(id) {
                Some(_) => self.pod_changed(id),
                None => Changes::default(),
            },
            RecordKey::Node(name) => match self.nodes.remove(name) {
                Some(_) => Changes::endpoints(self.users_of_node(name)),
                None => Changes::default(),
            },
            RecordKey::Namespace(name) => {
                self.namespaces.remove(name);
                Changes::default()
            }
        }
    }

    /// Makes `records` the complete set of the kinds in `tags`: what is held of those kinds
    /// and not listed is deleted, the rest applied. Records of other kinds are ignored.
    pub fn reset(&mut self, tags: &[Tag], records: Vec<Record>) -> Changes {
        let listed: BTreeSet<RecordKey> = records
            .iter()
            .filter(|r| tags.contains(&r.tag()))
            .map(Record::key)
            .collect();
        let gone: Vec<RecordKey> = self
            .keys()
            .filter(|k| tags.contains(&k.tag()) && !listed.contains(k))
            .collect();
        let mut changes = Changes::default();
        for key in &gone {
            changes.merge(self.delete(key));
        }
        for record in records.into_iter().filter(|r| tags.contains(&r.tag())) {
            changes.merge(self.apply(record));
        }
        changes
    }

    fn keys(&self) -> impl Iterator<Item = RecordKey> + '_ {
        let istio = self.istio.keys().cloned().map(RecordKey::Istio);
        let services = self.services.keys().cloned().map(RecordKey::Service);
        let slices = self.slices.keys().cloned().map(RecordKey::Slice);
        let pods = self.pods.keys().cloned().map(RecordKey::Pod);
        let nodes = self.nodes.keys().cloned().map(RecordKey::Node);
        let namespaces = self.namespaces.keys().cloned().map(RecordKey::Namespace);
        let secrets = self.secrets.keys().cloned().map(RecordKey::Secret);
        let cloud_map = self.cloud_map.keys().cloned().map(RecordKey::CloudMap);
        istio
            .chain(services)
            .chain(slices)
            .chain(pods)
            .chain(nodes)
            .chain(namespaces)
            .chain(secrets)
            .chain(cloud_map)
    }

    fn apply_istio(&mut self, mut record: IstioRecord) -> Changes {
        let previous = self.istio.get(&record.key);
        if !record.errors.is_empty() && record.object.is_none() {
            // An invalid newest version: keep serving the last one that validated.
            record.object = previous.and_then(|p| p.object.clone());
        }
        let changes = match previous {
            Some(p) if p.same_config(&record) => Changes {
                // A new resource version alone also renews what a status patch is
                // conditional on.
                statuses: if p.observed != record.observed
                    || p.resource_version != record.resource_version
                {
                    BTreeSet::from([record.key.clone()])
                } else {
                    BTreeSet::new()
                },
                ..Changes::default()
            },
            _ => Changes::object(RecordKey::Istio(record.key.clone())),
        };
        self.istio.insert(record.key.clone(), record);
        changes
    }

    fn apply_slice(&mut self, slice: SliceRecord) -> Changes {
        let mut affected = BTreeSet::from([service_of(&slice)]);
        match self.slices.get(&slice.id) {
            Some(old) if *old == slice => return Changes::default(),
            Some(old) => {
                affected.insert(service_of(old));
                let old = old.clone();
                self.forget_slice(&old);
            }
            None => {}
        }
        let service = service_of(&slice);
        self.slices_of
            .entry(service.clone())
            .or_default()
            .insert(slice.id.name.clone());
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            *self
                .pod_users
                .entry(NsName::new(&slice.id.namespace, pod))
                .or_default()
                .entry(service.clone())
                .or_default() += 1;
        }
        self.slices.insert(slice.id.clone(), slice);
        Changes::endpoints(affected)
    }

    /// Drops the reverse entries of a slice that is being replaced or removed.
    fn forget_slice(&mut self, slice: &SliceRecord) {
        let service = service_of(slice);
        if let Some(names) = self.slices_of.get_mut(&service) {
            names.remove(&slice.id.name);
            if names.is_empty() {
                self.slices_of.remove(&service);
            }
        }
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            let pod = NsName::new(&slice.id.namespace, pod);
            if let Some(users) = self.pod_users.get_mut(&pod) {
                if let Some(count) = users.get_mut(&service) {
                    *count -= 1;
                    if *count == 0 {
                        users.remove(&service);
                    }
                }
                if users.is_empty() {
                    self.pod_users.remove(&pod);
                }
            }
        }
    }

    /// What a change to Pod `id` changes: the endpoints of the Services whose slices name
    /// it, and, when a ServiceEntry of its namespace selects workloads, the pod as an object
    /// (the model reads it as that entry's endpoint).
    fn pod_changed(&self, id: &NsName) -> Changes {
        let mut changes = Changes::endpoints(self.users_of_pod(id));
        let selecting = self
            .istio_in(capstan_crds::Kind::ServiceEntry, &id.namespace)
            .any(|object| {
                matches!(object, IstioObject::ServiceEntry(se) if se.spec.workload_selector.is_some())
            });
        if selecting {
            changes.objects.insert(RecordKey::Pod(id.clone()));
        }
        changes
    }

    fn users_of_pod(&self, pod: &NsName) -> Vec<NsName> {
        self.pod_users
            .get(pod)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Services with an endpoint on `node`. Nodes change rarely; a scan is fine.
    fn users_of_node(&self, node: &str) -> Vec<NsName> {
        let mut out = BTreeSet::new();
        for slice in self.slices.values() {
            let on_node = slice.endpoints.iter().any(|e| {
                e.node.as_deref() == Some(node)
                    || e.pod.as_ref().is_some_and(|p| {
                        self.pods
                            .get(&NsName::new(&slice.id.namespace, p))
                            .is_some_and(|pod| pod.node.as_deref() == Some(node))
                    })
            });
            if on_node {
                out.insert(service_of(slice));
            }
        }
        out.into_iter().collect()
    }

    // Readers, for the model.

    pub fn istio(&self, key: &ObjectKey) -> Option<&IstioRecord> {
        self.istio.get(key)
    }

    pub fn istio_records(&self) -> impl Iterator<Item = &IstioRecord> {
        self.istio.values()
    }

    /// The Pods of `namespace`.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PodRecord> + 'a {
        let first = NsName::new(namespace, "");
        let namespace = namespace.to_string();
        self.pods
            .range(first..)
            .take_while(move |(id, _)| id.namespace == namespace)
            .map(|(_, pod)| pod)
    }

    /// The served objects of one kind in one namespace, by name.
    pub fn istio_in<'a>(
        &'a self,
        kind: capstan_crds::Kind,
        namespace: &str,
    ) -> impl Iterator<Item = &'a IstioObject> + 'a {
        let first = ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: String::new(),
        };
        let namespace = namespace.to_string();
        self.istio
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind && k.namespace == namespace)
            .filter_map(|(_, r)| r.object.as_deref())
    }

    /// The served (last valid) version of every Istio object.
    pub fn istio_objects(&self) -> impl Iterator<Item = &IstioObject> {
        self.istio.values().filter_map(|r| r.object.as_deref())
    }

    pub fn services(&self) -> impl Iterator<Item = &KubeService> {
        self.services.values()
    }

    /// The Services of `namespace`, by name.
    pub fn services_in<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a KubeService> + 'a {
        let first = NsName::new(namespace, "");
        let namespace = namespace.to_string();
        self.services
            .range(first..)
            .take_while(move |(id, _)| id.namespace == namespace)
            .map(|(_, service)| service)
    }

    pub fn service(&self, id: &NsName) -> Option<&KubeService> {
        self.services.get(id)
    }

    /// The EndpointSlices of a service, by name.
    pub fn slices_of<'a>(&'a self, service: &'a NsName) -> impl Iterator<Item = &'a SliceRecord> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |name| {
                self.slices
                    .get(&NsName::new(&service.namespace, name.as_str()))
            })
    }

    pub fn pod(&self, id: &NsName) -> Option<&PodRecord> {
        self.pods.get(id)
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    pub fn secret(&self, id: &NsName) -> Option<&SecretRecord> {
        self.secrets.get(id)
    }

    pub fn secrets(&self) -> impl Iterator<Item = &SecretRecord> {
        self.secrets.values()
    }

    pub fn cloud_map_services(&self) -> impl Iterator<Item = &CloudMapService> {
        self.cloud_map.values()
    }

    pub fn cloud_map_service(&self, id: &NsName) -> Option<&CloudMapService> {
        self.cloud_map.get(id)
    }

    /// How many records of each kind are held, for logs and metrics.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for record in self.istio.values() {
            *out.entry(record.key.kind.to_string()).or_default() += 1;
        }
        for (tag, n) in [
            (Tag::Service, self.services.len()),
            (Tag::Slice, self.slices.len()),
            (Tag::Pod, self.pods.len()),
            (Tag::Node, self.nodes.len()),
            (Tag::Namespace, self.namespaces.len()),
            (Tag::Secret, self.secrets.len()),
            (Tag::CloudMap, self.cloud_map.len()),
        ] {
            out.insert(tag.to_string(), n);
        }
        out
    }
}

fn service_of(slice: &SliceRecord) -> NsName {
    NsName::new(&slice.id.namespace, &slice.service)
}

/// Applying the one Istio object in `yaml`, which must be valid (for tests).
#[cfg(test)]
pub(crate) fn istio_event(yaml: &str) -> Event {
    let document = capstan_crds::parse_single("t.yaml", yaml).expect("valid yaml");
    assert!(document.validate().is_empty(), "{:?}", document.validate());
    Event::Apply(Record::Istio(IstioRecord::valid(document.object)))
}

#[cfg(test)]
mod tests;
