//! Istio's `outboundTrafficPolicy`: where a sidecar sends a connection or request for a
//! destination no service of the mesh has — on to where it was headed (`ALLOW_ANY`, the
//! mesh's default unless `capstan run --outbound-traffic-policy` says otherwise), or
//! nowhere (`REGISTRY_ONLY`). A `Sidecar` that sets it decides for the sidecars it scopes;
//! the others follow the mesh's (a translation option, like the rest of mesh config).

use capstan_crds::ObjectKey;
use capstan_crds::networking::sidecar::{OutboundTrafficMode, OutboundTrafficPolicy};
use capstan_xds::Selector;

use super::Scopes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundMode {
    /// Unknown destinations are reached directly (Istio's `PassthroughCluster`).
    #[default]
    AllowAny,
    /// Only the mesh's services are reachable; anything else is refused
    /// (`BlackHoleCluster` for TCP, a 502 for HTTP).
    RegistryOnly,
}

impl OutboundMode {
    /// The mode a `Sidecar`'s policy sets (as in Istio's API, `REGISTRY_ONLY` when the
    /// policy is there without a mode).
    pub fn of(policy: &OutboundTrafficPolicy) -> Self {
        match policy.mode.unwrap_or_default() {
            OutboundTrafficMode::AllowAny => Self::AllowAny,
            OutboundTrafficMode::RegistryOnly => Self::RegistryOnly,
        }
    }
}

impl std::str::FromStr for OutboundMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ALLOW_ANY" => Ok(Self::AllowAny),
            "REGISTRY_ONLY" => Ok(Self::RegistryOnly),
            other => Err(format!(
                "`{other}`: expected `ALLOW_ANY` or `REGISTRY_ONLY`"
            )),
        }
    }
}

/// The mode of every sidecar: one for all, and the sets of sidecars (a `Sidecar` scope's)
/// that read another. Only scopes that differ from what their sidecars would read without
/// them are listed, so a mesh where no `Sidecar` sets a policy has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundModes {
    pub everyone: OutboundMode,
    pub scoped: Vec<(Selector, OutboundMode)>,
}

impl Scopes {
    /// The `Sidecar`s that set a mode.
    pub fn setting_outbound(&self) -> impl Iterator<Item = &ObjectKey> {
        self.by_key
            .values()
            .filter(|s| s.outbound.is_some())
            .map(|s| &s.origin)
    }

    /// Every sidecar's mode, from the scopes in force; `mesh`: the mode of sidecars whose
    /// `Sidecar` sets none (`meshConfig.outboundTrafficPolicy`).
    pub fn outbound_modes(&self, mesh: OutboundMode) -> OutboundModes {
        let (everyone, scoped) =
            self.per_scope(|scope| scope.and_then(|s| s.outbound).unwrap_or(mesh));
        OutboundModes { everyone, scoped }
    }
}

impl OutboundModes {
    /// The mode of the sidecars of `selector`'s namespace and labels: the most specific
    /// listed scope that covers them (the same order the snapshot picks variants in).
    pub fn for_proxies(&self, selector: &Selector) -> OutboundMode {
        let exact = self
            .scoped
            .iter()
            .find(|(s, _)| s.namespace == selector.namespace && s.labels == selector.labels);
        let namespace = || {
            let ns = selector.namespace.as_deref()?;
            self.scoped
                .iter()
                .find(|(s, _)| s.labels.is_empty() && s.namespace.as_deref() == Some(ns))
        };
        exact
            .or_else(namespace)
            .map_or(self.everyone, |(_, mode)| *mode)
    }
}
