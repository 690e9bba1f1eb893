//! `PeerAuthentication`: which connections each workload port accepts (mutual TLS, plain text
//! or both), composed as istiod composes it (`ComposePeerAuthentication`): the mesh-wide
//! policy (root namespace, no selector), then the workload's namespace's (no selector), then
//! the one selecting the workload, each overriding what came before unless its mode is
//! UNSET; the selecting policy's `portLevelMtls` last. Where several policies compete for one
//! level, the oldest wins (then the first by name), and a selecting policy in the root
//! namespace applies to no one, as with istiod.

use std::collections::BTreeMap;

use capstan_crds::ObjectKey;
use capstan_crds::security::peer_authentication::{MutualTlsMode, PeerAuthenticationSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::by_namespace::ByNamespace;

/// What a workload port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MtlsMode {
    /// Plain text only.
    Disable,
    /// Mutual TLS from the mesh and plain text alike (Istio's default).
    Permissive,
    /// Mutual TLS from the mesh only.
    Strict,
}

impl MtlsMode {
    /// `None` for UNSET (inherit).
    fn from_spec(mode: Option<MutualTlsMode>) -> Option<Self> {
        match mode? {
            MutualTlsMode::Unset => None,
            MutualTlsMode::Disable => Some(Self::Disable),
            MutualTlsMode::Permissive => Some(Self::Permissive),
            MutualTlsMode::Strict => Some(Self::Strict),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        }
    }
}

/// The modes of one workload: `mode` on every port but those `ports` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadMtls {
    pub mode: MtlsMode,
    pub ports: BTreeMap<u32, MtlsMode>,
}

impl WorkloadMtls {
    pub fn for_port(&self, port: u32) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

impl Default for WorkloadMtls {
    fn default() -> Self {
        Self {
            mode: MtlsMode::Permissive,
            ports: BTreeMap::new(),
        }
    }
}

/// One policy as read.
#[derive(Debug, Clone, PartialEq)]
struct Policy {
    /// Which of a level's competitors wins: the oldest, then the first by name.
    order: (Option<Time>, String),
    /// `None`: UNSET.
    mode: Option<MtlsMode>,
    /// Empty: the whole namespace (or the mesh, in the root namespace).
    selector: BTreeMap<String, String>,
    /// Port → its mode (`None`: the workload's).
    ports: BTreeMap<u32, Option<MtlsMode>>,
}

impl Policy {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        super::service::labels_include(labels, &self.selector)
    }
}

/// Every PeerAuthentication, by namespace.
#[derive(Debug, Default, Clone)]
pub struct PeerAuthentications {
    by_namespace: ByNamespace<Policy>,
}

impl PeerAuthentications {
    /// Keeps `spec` as `key`'s policy (validation has refused ports that are not numbers; such
    /// a port would be left out).
    pub fn insert(
        &mut self,
        key: &ObjectKey,
        spec: &PeerAuthenticationSpec,
        created: Option<&Time>,
    ) {
        let policy = Policy {
            order: (created.cloned(), key.name.clone()),
            mode: MtlsMode::from_spec(spec.mtls.as_ref().and_then(|m| m.mode)),
            selector: spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            ports: spec
                .port_level_mtls
                .iter()
                .filter_map(|(port, mtls)| {
                    let port = port.parse().ok()?;
                    Some((port, MtlsMode::from_spec(mtls.mode)))
                })
                .collect(),
        };
        self.by_namespace.insert(key, policy);
    }

    /// Forgets `key`'s policy, returning its selector (empty: namespace- or mesh-wide).
    pub fn remove(&mut self, key: &ObjectKey) -> Option<BTreeMap<String, String>> {
        self.by_namespace.remove(key).map(|p| p.selector)
    }

    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.by_namespace.iter().map(|(k, _)| k)
    }

    /// Each policy's namespace and selector (empty: the namespace, or the mesh).
    pub fn scopes(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
        (self.by_namespace.iter()).map(|(k, p)| (k.namespace.as_str(), &p.selector))
    }

    /// Whether a policy of `namespace` has the selector `labels`.
    pub fn has_scope(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.by_namespace.in_namespace(namespace)).any(|p| p.selector == *labels)
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    /// The oldest policy of `namespace` without a selector.
    fn namespace_wide(&self, namespace: &str) -> Option<&Policy> {
        oldest(
            self.by_namespace
                .in_namespace(namespace)
                .filter(|p| p.selector.is_empty()),
        )
    }

    /// The mode of `namespace` as a whole: its own policy's, else the mesh's, else
    /// PERMISSIVE. Clients read this to decide whether to originate mutual TLS to a
    /// namespace's services (istiod's `GetNamespaceMutualTLSMode`).
    pub fn namespace_mode(&self, root_namespace: &str, namespace: &str) -> MtlsMode {
        let level = |ns: &str| self.namespace_wide(ns).and_then(|p| p.mode);
        level(namespace)
            .or_else(|| level(root_namespace))
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The modes of a workload in `namespace` carrying `labels`.
    pub fn workload(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkloadMtls {
        let mut out = WorkloadMtls {
            mode: self.namespace_mode(root_namespace, namespace),
            ports: BTreeMap::new(),
        };
        if namespace == root_namespace {
            return out;
        }
        let selecting = oldest(
            self.by_namespace
                .in_namespace(namespace)
                .filter(|p| !p.selector.is_empty() && p.selects(labels)),
        );
        if let Some(policy) = selecting {
            if let Some(mode) = policy.mode {
                out.mode = mode;
            }
            for (port, mode) in &policy.ports {
                out.ports.insert(*port, mode.unwrap_or(out.mode));
            }
        }
        out
    }
}

fn oldest<'a>(policies: impl Iterator<Item = &'a Policy>) -> Option<&'a Policy> {
    policies.min_by(|a, b| a.order.cmp(&b.order))
}

#[cfg(test)]
mod tests;
