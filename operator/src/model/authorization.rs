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
    /// Annotated `istio.io/dry-run: "true"`: evaluated and counted, never enforced.
    pub dry_run: bool,
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

/// The policies applying to one workload, per action, each list by namespace and name. The
/// DENY and ALLOW lists hold the enforced policies; their dry-run ones are apart, as istiod's
/// shadow rules (validation allows dry runs of ALLOW and DENY policies only).
#[derive(Debug, Default, PartialEq)]
pub struct WorkloadPolicies<'a> {
    pub custom: Vec<&'a Policy>,
    pub deny: Vec<&'a Policy>,
    pub allow: Vec<&'a Policy>,
    pub audit: Vec<&'a Policy>,
    pub dry_run: DryRun<'a>,
}

/// The dry-run DENY and ALLOW policies applying to one workload.
#[derive(Debug, Default, PartialEq)]
pub struct DryRun<'a> {
    pub deny: Vec<&'a Policy>,
    pub allow: Vec<&'a Policy>,
}

impl WorkloadPolicies<'_> {
    pub fn is_empty(&self) -> bool {
        let dry_run = &self.dry_run;
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && dry_run.deny.is_empty()
            && dry_run.allow.is_empty()
    }
}

/// Every AuthorizationPolicy, by namespace.
#[derive(Debug, Default, Clone)]
pub struct AuthorizationPolicies {
    by_namespace: ByNamespace<Policy>,
}

impl AuthorizationPolicies {
    pub fn insert(&mut self, key: &ObjectKey, spec: &AuthorizationPolicySpec, dry_run: bool) {
        let policy = Policy {
            key: key.clone(),
            spec: Arc::new(spec.clone()),
            dry_run,
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

    /// Whether a policy of `namespace` applying to workloads by their labels has the
    /// selector `labels`.
    pub fn has_scope(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let by_labels = self.by_namespace.in_namespace(namespace);
        let by_labels = by_labels.filter(|p| !p.targets_references());
        by_labels.into_iter().any(|p| {
            let selector = p.spec.selector.as_ref().map(|s| &s.match_labels);
            selector.map_or(labels.is_empty(), |s| s == labels)
        })
    }

    /// The namespace and selector (empty: the namespace, or the mesh) of each policy that
    /// applies to workloads by their labels.
    pub fn workload_scopes(&self) -> impl Iterator<Item = (&str, BTreeMap<String, String>)> {
        let by_labels = self.policies().filter(|p| !p.targets_references());
        by_labels.map(|p| {
            let labels = p.spec.selector.as_ref().map(|s| s.match_labels.clone());
            (p.key.namespace.as_str(), labels.unwrap_or_default())
        })
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
            let dry_run = policy.dry_run;
            match policy.action() {
                Action::Allow if dry_run => out.dry_run.allow.push(policy),
                Action::Deny if dry_run => out.dry_run.deny.push(policy),
                Action::Allow => out.allow.push(policy),
                Action::Deny => out.deny.push(policy),
                Action::Audit => out.audit.push(policy),
                Action::Custom => out.custom.push(policy),
            }
        }
        out
    }
}

/// The `istio.io/dry-run` annotation of a policy, read as istiod reads it (Go's
/// `strconv.ParseBool`); absent or unreadable: not a dry run.
pub fn dry_run(metadata: &kube::api::ObjectMeta) -> bool {
    let value = metadata.annotations.as_ref().and_then(|a| a.get(DRY_RUN));
    value.and_then(|v| parse_bool(v)).unwrap_or(false)
}

/// The annotation that makes an AuthorizationPolicy a dry run.
const DRY_RUN: &str = "istio.io/dry-run";

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
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
        out.insert(&document.object.key(), &ap.spec, dry_run(&ap.metadata));
    }
    out
}

#[cfg(test)]
mod tests;
