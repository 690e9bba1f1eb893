//! The sidecars' outbound traffic policy in translation: the last virtual host of each route
//! variant in capture mode (for Host names no service has), and what direct mode reports of
//! it, of `Sidecar` ingress listeners and of PeerAuthentications (capture mode: that ingress
//! listeners do not terminate the mesh's mutual TLS).

use std::collections::BTreeMap;

use capstan_crds::ObjectKey;
use capstan_xds::Parts;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;

use super::Translator;
use crate::model::sidecar_scope::{OutboundMode, OutboundModes};
use crate::model::unsupported::{self, CaptureOnly, sidecar_capture_only};
use crate::model::{Mesh, Problem};
use crate::translate::authentication;
use crate::translate::sidecar::{ListenerMode, fallback_virtual_host};

/// [`fallback_virtual_host`] of each outbound mode, encoded once.
pub(super) struct Fallbacks {
    allow_any: Parts,
    registry_only: Parts,
}

impl Fallbacks {
    pub(super) fn new() -> Self {
        Self {
            allow_any: encode(&OutboundMode::AllowAny),
            registry_only: encode(&OutboundMode::RegistryOnly),
        }
    }

    /// The two fixed ones kept; one to an egress proxy encoded when asked for (a few
    /// hundred bytes, for the few variants whose `Sidecar` names one).
    fn of(&self, mode: &OutboundMode) -> Parts {
        match mode {
            OutboundMode::AllowAny => self.allow_any.clone(),
            OutboundMode::RegistryOnly => self.registry_only.clone(),
            OutboundMode::EgressProxy(_) => encode(mode),
        }
    }
}

fn encode(mode: &OutboundMode) -> Parts {
    let config = RouteConfiguration {
        virtual_hosts: vec![fallback_virtual_host(mode)],
        ..Default::default()
    };
    Parts::leaf(config.encode_to_vec())
}

impl Translator {
    pub(super) fn outbound_modes(&self, mesh: &Mesh) -> OutboundModes {
        let default = self.options.outbound_traffic_policy.clone();
        mesh.sidecar_scopes.outbound_modes(default)
    }

    /// The virtual host for Host names no service has, in capture mode.
    pub(super) fn fallback(&self, mode: &OutboundMode) -> Option<Parts> {
        Some(self.fallbacks.as_ref()?.of(mode))
    }

    /// In direct mode, reports the `Sidecar`s setting an outbound traffic policy (the
    /// listener applications dial has no original destination to pass a request on to),
    /// ingress listeners or inbound limits (there is no inbound side).
    pub(super) fn refresh_policy_problems(&mut self, mesh: &Mesh) {
        let scopes = &mesh.sidecar_scopes;
        if self.options.sidecar_listeners != ListenerMode::Direct {
            self.policy_problems = Vec::new();
            return;
        }
        let mut sets: BTreeMap<&ObjectKey, CaptureOnly> = BTreeMap::new();
        for key in scopes.setting_outbound() {
            sets.entry(key).or_default().outbound_policy = true;
        }
        for key in scopes.setting_ingress() {
            sets.entry(key).or_default().ingress = true;
        }
        for key in scopes.setting_inbound_pool() {
            sets.entry(key).or_default().inbound_pool = true;
        }
        for key in scopes.binding_egress() {
            sets.entry(key).or_default().bound_egress = true;
        }
        self.policy_problems = sets
            .into_iter()
            .flat_map(|(key, sets)| sidecar_capture_only(key, sets))
            .chain(
                mesh.peer_authentications
                    .keys()
                    .chain(mesh.authorization_policies.policies().map(|p| &p.key))
                    .chain(mesh.request_authentications.iter().map(|(key, _)| key))
                    .map(unsupported::inbound_policy_capture_only),
            )
            .collect();
    }
}

/// What security policies name that the mesh lacks: see [`jwks_problems`] and
/// [`custom_problems`].
pub(super) fn reference_problems(mesh: &Mesh) -> Vec<Problem> {
    let mut out = jwks_problems(mesh);
    out.extend(custom_problems(mesh));
    out
}

/// The CUSTOM AuthorizationPolicies whose extension provider is missing, unusable, or names
/// a service the mesh lacks: they deny what they match instead, as with istiod.
fn custom_problems(mesh: &Mesh) -> Vec<Problem> {
    use capstan_crds::security::authorization_policy::Action;
    mesh.authorization_policies
        .policies()
        .filter(|p| p.action() == Action::Custom)
        .filter_map(|policy| {
            let provider = std::collections::BTreeSet::from([policy.provider()]);
            let reason = crate::translate::authorization::custom_unusable(mesh, &provider)?;
            Some(Problem {
                object: policy.key.clone(),
                field: "spec.provider.name".into(),
                message: format!(
                    "{reason}: the policy's rules deny every request they match instead of \
                     asking the authorizer, as istiod does"
                ),
            })
        })
        .collect()
}

/// The RequestAuthentication rules whose `jwksUri` no service serves: Envoy cannot fetch
/// their keys, and refuses every token they are for (istiod asks for a ServiceEntry too).
fn jwks_problems(mesh: &Mesh) -> Vec<Problem> {
    let mut out = Vec::new();
    for (key, spec) in mesh.request_authentications.iter() {
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            let fetched = rule.jwks.is_empty() && !rule.jwks_uri.is_empty();
            if fetched && !authentication::jwks_service_exists(mesh, &rule.jwks_uri) {
                out.push(Problem {
                    object: key.clone(),
                    field: format!("spec.jwtRules[{i}].jwksUri"),
                    message: format!(
                        "no service has the host and port of {}: Envoy cannot fetch the keys \
                         and refuses every token of this issuer; add a ServiceEntry for it, as \
                         with Istio",
                        rule.jwks_uri
                    ),
                });
            }
        }
    }
    out
}
