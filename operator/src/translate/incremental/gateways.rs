//! The gateways' part of the translator: they are rebuilt whole, when something they were
//! built from changes.

use std::collections::BTreeSet;

use capstan_crds::ObjectKey;
use capstan_xds::{Resource, Selector, Update, type_url};

use super::Translator;
use crate::model::gateway::auto_passthrough;
use crate::model::{Affected, Mesh, Problem};
use crate::translate::gateway;

/// What the gateways were last built from and into: they are rebuilt whole when one of
/// these changes (see `translate::gateway`).
#[derive(Default)]
pub(super) struct GatewayState {
    /// The listeners and route configurations, by selector, type and name.
    pub(super) resources: BTreeSet<(Selector, &'static str, String)>,
    /// The VirtualServices bound to a gateway, and the hosts their routes send to.
    pub(super) bound: BTreeSet<ObjectKey>,
    pub(super) destinations: BTreeSet<String>,
    /// Host patterns under which every service is a destination (AUTO_PASSTHROUGH).
    pub(super) destination_patterns: BTreeSet<String>,
    /// The Secrets the gateways looked for (found or not).
    pub(super) secrets: BTreeSet<crate::index::NsName>,
    pub(super) problems: Vec<Problem>,
    /// The AUTO_PASSTHROUGH servers, by selector and host pattern: the services under them
    /// have SNI-DNAT clusters, built with their other clusters.
    pub(super) passthrough: BTreeSet<(auto_passthrough::Labels, String)>,
}

impl Translator {
    /// Whether a change reaches the gateways: a Gateway, a VirtualService bound to one (before
    /// or after), a service their routes send to, or a Secret they read.
    pub(super) fn gateways_affected(&self, mesh: &Mesh, affected: &Affected) -> bool {
        !affected.gateways.is_empty()
            // Security policies may select gateway proxies.
            || !affected.policy_scopes.is_empty()
            || affected
                .secrets
                .iter()
                .any(|s| self.gateways.secrets.contains(s))
            || affected.virtual_services.iter().any(|key| {
                self.gateways.bound.contains(key)
                    || mesh
                        .virtual_services
                        .get(key)
                        .is_some_and(gateway::binds_gateways)
            })
            || affected.hosts.iter().any(|h| {
                self.gateways.destinations.contains(h)
                    || (self.gateways.destination_patterns.iter())
                        .any(|p| crate::model::hostname::matches(p, h))
            })
    }

    /// Builds every gateway resource, remembering what they were built from.
    pub(super) fn build_gateways(&mut self, mesh: &Mesh) -> Vec<(Selector, Resource)> {
        let built = gateway::build(mesh);
        let mut out = Vec::new();
        let mut resources = BTreeSet::new();
        for (selector, listener) in &built.listeners {
            if let Some(r) = Resource::encode(listener.name.clone(), listener) {
                resources.insert((selector.clone(), type_url::LISTENER, listener.name.clone()));
                out.push((selector.clone(), r));
            }
        }
        for (selector, config) in &built.routes {
            if let Some(r) = Resource::encode(config.name.clone(), config) {
                resources.insert((selector.clone(), type_url::ROUTE, config.name.clone()));
                out.push((selector.clone(), r));
            }
        }
        for (selector, secret) in &built.secrets {
            if let Some(r) = Resource::encode(secret.name.clone(), secret) {
                resources.insert((selector.clone(), type_url::SECRET, secret.name.clone()));
                out.push((selector.clone(), r));
            }
        }
        self.gateways = GatewayState {
            resources,
            bound: mesh
                .virtual_services
                .iter()
                .filter(|(_, vs)| gateway::binds_gateways(vs))
                .map(|(k, _)| k.clone())
                .collect(),
            destinations: built.destinations,
            destination_patterns: built.destination_patterns,
            secrets: built.consulted_secrets,
            problems: built.problems,
            passthrough: auto_passthrough::servers(mesh),
        };
        out
    }

    /// Rebuilds the gateway resources into `update`; returns the hosts whose SNI-DNAT
    /// clusters may have come or gone with them (under an AUTO_PASSTHROUGH server that came
    /// or went), whose clusters and load assignments are to be built again.
    pub(super) fn rebuild_gateways(
        &mut self,
        mesh: &Mesh,
        update: &mut Update,
    ) -> BTreeSet<String> {
        let before = std::mem::take(&mut self.gateways.resources);
        let passthrough = std::mem::take(&mut self.gateways.passthrough);
        for (selector, resource) in self.build_gateways(mesh) {
            update.put_for(selector, resource);
        }
        for (selector, type_url, name) in before.difference(&self.gateways.resources) {
            update.remove_for(selector.clone(), type_url, name);
        }
        let changed = passthrough.symmetric_difference(&self.gateways.passthrough);
        auto_passthrough::hosts_under(mesh, changed)
    }
}
