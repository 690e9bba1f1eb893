//! `RequestAuthentication`: the JWT rules a workload's sidecar checks, selected as istiod
//! selects them (the root namespace's, mesh-wide, and the workload's namespace's, without a
//! `selector` or selecting it). Rules attached by `targetRef(s)` are for Gateway API gateways
//! and waypoints, which capstan does not serve (reported).

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::ObjectKey;
use capstan_crds::security::request_authentication::{JwtRule, RequestAuthenticationSpec};

use super::by_namespace::ByNamespace;

/// Every RequestAuthentication, by namespace.
#[derive(Debug, Default, Clone)]
pub struct RequestAuthentications {
    by_namespace: ByNamespace<Arc<RequestAuthenticationSpec>>,
}

impl RequestAuthentications {
    pub fn insert(&mut self, key: &ObjectKey, spec: &RequestAuthenticationSpec) {
        self.by_namespace.insert(key, Arc::new(spec.clone()));
    }

    /// Forgets `key`'s rules, returning them.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Arc<RequestAuthenticationSpec>> {
        self.by_namespace.remove(key)
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<RequestAuthenticationSpec>)> {
        self.by_namespace.iter()
    }

    /// Whether a policy of `namespace` applying to workloads by their labels has the
    /// selector `labels`.
    pub fn has_scope(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let in_namespace = self.by_namespace.in_namespace(namespace);
        in_namespace
            .filter(|s| s.target_ref.is_none() && s.target_refs.is_empty())
            .any(|spec| {
                let selector = spec.selector.as_ref().map(|s| &s.match_labels);
                selector.map_or(labels.is_empty(), |s| s == labels)
            })
    }

    /// The namespace and selector (empty: the namespace, or the mesh) of each policy that
    /// applies to workloads by their labels.
    pub fn workload_scopes(&self) -> impl Iterator<Item = (&str, BTreeMap<String, String>)> {
        let by_labels = self.iter();
        let by_labels =
            by_labels.filter(|(_, s)| s.target_ref.is_none() && s.target_refs.is_empty());
        by_labels.map(|(key, spec)| {
            let labels = spec.selector.as_ref().map(|s| s.match_labels.clone());
            (key.namespace.as_str(), labels.unwrap_or_default())
        })
    }

    /// The JWT rules of the policies applying to the sidecar of a workload in `namespace`
    /// with `labels`: the root namespace's first, then by name.
    pub fn for_workload<'a>(
        &'a self,
        root_namespace: &'a str,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a JwtRule> + 'a {
        self.by_namespace
            .for_workload_in(root_namespace, namespace)
            .filter(|spec| spec.target_ref.is_none() && spec.target_refs.is_empty())
            .filter(move |spec| {
                spec.selector
                    .as_ref()
                    .is_none_or(|s| super::service::labels_include(labels, &s.match_labels))
            })
            .flat_map(|spec| spec.jwt_rules.iter())
    }
}
