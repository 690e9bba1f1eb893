//! What a workload's change rebuilds: the hosts whose selectors (a ServiceEntry's
//! `workloadSelector`, a Kubernetes Service's `selector`) pick it.

use std::collections::BTreeMap;

use capstan_crds::{IstioObject, ObjectKey};

use super::{Affected, Mesh, kube, service};
use crate::index::Index;

impl Mesh {
    /// The hosts of the ServiceEntries of `namespace` whose `workloadSelector` `picks`: a
    /// workload there (WorkloadEntry, Pod) those labels describe may be their endpoint.
    pub(super) fn selecting_entry_hosts(
        &self,
        index: &Index,
        namespace: &str,
        picks: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Vec<String> {
        let entries = self.selecting.get(namespace).into_iter().flatten();
        entries
            .filter(
                |entry| match index.istio(entry).and_then(|r| r.object.as_deref()) {
                    Some(IstioObject::ServiceEntry(se)) => se
                        .spec
                        .workload_selector
                        .as_ref()
                        .is_some_and(|s| picks(&s.labels)),
                    _ => false,
                },
            )
            .flat_map(|entry| self.claims.get(entry).into_iter().flatten().cloned())
            .collect()
    }

    /// A WorkloadEntry changed (or went): the hosts whose selector (a ServiceEntry's
    /// `workloadSelector`, a Kubernetes Service's `selector`) its labels met before or meet
    /// now are rebuilt, and no other.
    pub(super) fn reread_workload_entry(
        &mut self,
        index: &Index,
        key: &ObjectKey,
        affected: &mut Affected,
    ) {
        let before = self.entry_labels.remove(key);
        let now = match index.istio(key).and_then(|r| r.object.as_deref()) {
            Some(IstioObject::WorkloadEntry(we)) => Some(we.spec.labels.clone()),
            _ => None,
        };
        let labels: Vec<&BTreeMap<String, String>> = before.iter().chain(&now).collect();
        let picks = |selector: &BTreeMap<String, String>| {
            labels.iter().any(|l| service::labels_include(l, selector))
        };
        affected
            .hosts
            .extend(self.selecting_entry_hosts(index, &key.namespace, picks));
        // Kubernetes Services with a selector take the entries it picks.
        let services = index.services_in(&key.namespace);
        let selecting = services.filter(|s| !s.selector.is_empty() && picks(&s.selector));
        affected
            .hosts
            .extend(selecting.map(|s| kube::host(&s.id, &self.domain_suffix)));
        if let Some(now) = now {
            self.entry_labels.insert(key.clone(), now);
        }
    }
}
