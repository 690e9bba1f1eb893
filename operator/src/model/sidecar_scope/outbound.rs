//! Istio's `outboundTrafficPolicy`: where a sidecar sends a connection or request for a
//! destination no service of the mesh has — on to where it was headed (`ALLOW_ANY`, the
//! mesh's default unless `capstan run --outbound-traffic-policy` says otherwise), to an egress
//! proxy (`ALLOW_ANY` with `egressProxy`), or nowhere (`REGISTRY_ONLY`). A `Sidecar` that sets it decides for the sidecars it scopes;
//! the others follow the mesh's (a translation option, like the rest of mesh config).

use super::{PerScope, Scopes};
use crate::model::hostname;
use capstan_crds::ObjectKey;
use capstan_crds::networking::sidecar::{OutboundTrafficMode, OutboundTrafficPolicy};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutboundMode {
    /// Unknown destinations are reached directly (Istio's `PassthroughCluster`).
    #[default]
    AllowAny,
    /// Unknown destinations are sent to this service port (`egressProxy`), as istiod sends
    /// them: HTTP requests routed to its cluster, connections proxied to it.
    EgressProxy(EgressProxy),
    /// Only the mesh's services are reachable; anything else is refused
    /// (`BlackHoleCluster` for TCP, a 502 for HTTP).
    RegistryOnly,
}

/// The service port an `egressProxy` names, its host resolved in the `Sidecar`'s namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    pub host: String,
    pub subset: String,
    pub port: u32,
}

impl OutboundMode {
    /// The mode a `Sidecar` of `namespace` sets with `policy` (as in Istio's API,
    /// `REGISTRY_ONLY` when the policy is there without a mode).
    pub fn of(policy: &OutboundTrafficPolicy, namespace: &str, domain_suffix: &str) -> Self {
        match policy.mode.unwrap_or_default() {
            OutboundTrafficMode::AllowAny => match &policy.egress_proxy {
                // Validation requires the port; without one there is nowhere to send to.
                Some(proxy) => match &proxy.port {
                    Some(port) => Self::EgressProxy(EgressProxy {
                        host: hostname::resolve(&proxy.host, namespace, domain_suffix),
                        subset: proxy.subset.clone(),
                        port: port.number,
                    }),
                    None => Self::AllowAny,
                },
                None => Self::AllowAny,
            },
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
        self.per_scope(|scope| {
            scope
                .and_then(|s| s.outbound.clone())
                .unwrap_or(mesh.clone())
        })
    }
}
