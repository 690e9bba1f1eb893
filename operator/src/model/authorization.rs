//! `AuthorizationPolicy`: which policies apply to a workload, as istiod selects them
//! (`ListAuthorizationPolicies`): those of the root namespace (mesh-wide; with a `selector`,
//! for the workloads of any namespace it selects) and those of the workload's namespace
//! (without a `selector`, or selecting it). Policies attached by `targetRef(s)` apply to
//! gateways and waypoints only, never to sidecars (reported, not applied). `CUSTOM` policies
//! name an extension provider of the mesh config (`--mesh-config`).

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::ObjectKey;
use capstan_crds::security::authorization_policy::{Action, AuthorizationPolicySpec};

use super::by_namespace::ByNamespace;

/// One policy as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub key: ObjectKey,
    pub spec: Arc<AuthorizationPolicySpec>,
}

impl Policy {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .selector
            .as_ref()
            .is_none_or(|s| super::service::labels_include(labels, &s.match_labels))
    }

    /// Attached to gateways or waypoints by reference, not to workloads by labels.
    fn targets_references(&self) -> bool {
        self.spec.target_ref.is_some() || !self.spec.target_refs.is_empty()
    }

    pub fn action(&self) -> Action {
        self.spec.action.unwrap_or(Action::Allow)
    }

    /// The extension provider a `CUSTOM` policy names (empty when it names none).
    pub fn provider(&self) -> &str {
        self.spec.provider.as_ref().map_or("", |p| p.name.as_str())
    }
}

/// The policies applying to one workload, per action, each list by namespace and name.
#[derive(Debug, Default, PartialEq)]
pub struct WorkloadPolicies<'a> {
    pub custom: Vec<&'a Policy>,
    pub deny: Vec<&'a Policy>,
    pub allow: Vec<&'a Policy>,
    pub audit: Vec<&'a Policy>,
}

impl WorkloadPolicies<'_> {
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
    }
}

/// Every AuthorizationPolicy, by namespace.
#[derive(Debug, Default, Clone)]
pub struct AuthorizationPolicies {
    by_namespace: ByNamespace<Policy>,
}

impl AuthorizationPolicies {
    pub fn insert(&mut self, key: &ObjectKey, spec: &AuthorizationPolicySpec) {
        let policy = Policy {
            key: key.clone(),
            spec: Arc::new(spec.clone()),
        };
        self.by_namespace.insert(key, policy);
    }

    /// Forgets `key`'s policy, returning it.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Policy> {
        self.by_namespace.remove(key)
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.by_namespace.iter().map(|(_, p)| p)
    }

    /// The policies applying to the sidecar of a workload in `namespace` with `labels`.
    pub fn for_workload(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkloadPolicies<'_> {
        let mut out = WorkloadPolicies::default();
        for policy in self.by_namespace.for_workload_in(root_namespace, namespace) {
            if policy.targets_references() || !policy.selects(labels) {
                continue;
            }
            match policy.action() {
                Action::Allow => out.allow.push(policy),
                Action::Deny => out.deny.push(policy),
                Action::Audit => out.audit.push(policy),
                Action::Custom => out.custom.push(policy),
            }
        }
        out
    }
}

/// The AuthorizationPolicies of `yaml`, which must be valid.
#[cfg(test)]
pub fn parse(yaml: &str) -> AuthorizationPolicies {
    use capstan_crds::IstioObject;
    let mut out = AuthorizationPolicies::default();
    for document in capstan_crds::parse::parse_documents("test.yaml", yaml).expect("valid YAML") {
        let document = document.expect("valid document");
        assert!(document.validate().is_empty(), "{:?}", document.validate());
        let IstioObject::AuthorizationPolicy(ap) = &document.object else {
            panic!("not an AuthorizationPolicy");
        };
        out.insert(&document.object.key(), &ap.spec);
    }
    out
}

#[cfg(test)]
mod tests;
