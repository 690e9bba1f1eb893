//! Istio's `outboundTrafficPolicy`: where a sidecar sends a connection or request for a
//! destination no service of the mesh has — on to where it was headed (`ALLOW_ANY`, the
//! mesh's default unless `capstan run --outbound-traffic-policy` says otherwise), or
//! nowhere (`REGISTRY_ONLY`). A `Sidecar` that sets it decides for the sidecars it scopes;
//! the others follow the mesh's (a translation option, like the rest of mesh config).

use super::{PerScope, Scopes};
use capstan_crds::ObjectKey;
use capstan_crds::networking::sidecar::{OutboundTrafficMode, OutboundTrafficPolicy};

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

/// The mode of every sidecar.
pub type OutboundModes = PerScope<OutboundMode>;

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
        self.per_scope(|scope| scope.and_then(|s| s.outbound).unwrap_or(mesh))
    }
}
