//! What a `Sidecar` sets for the sidecars it covers, beyond what they see: where unknown
//! destinations go (`virtualOutbound`, per outbound traffic policy) and the inbound ports
//! (`virtualInbound`, per ingress listeners).

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Selector, Update, type_url};

use super::super::{VIRTUAL_INBOUND, VIRTUAL_OUTBOUND, ingress, outbound};
use super::{CaptureState, put, sidecars};
use crate::model::Mesh;
use crate::model::sidecar_scope::{IngressPort, IngressVariants, OutboundModes};

impl CaptureState {
    /// Builds `virtualOutbound` again for each set of sidecars whose outbound mode changed
    /// (a `Sidecar` changed); the variants of sets no longer apart are removed.
    pub fn set_outbound_modes(&mut self, modes: &OutboundModes, update: &mut Update) {
        let before = self.outbound_modes.replace(modes.clone());
        if before.as_ref() == Some(modes) {
            return;
        }
        let mut put_mode = |selector: Selector, mode| {
            let listener = outbound::virtual_outbound(mode);
            put(
                update,
                selector,
                type_url::LISTENER,
                VIRTUAL_OUTBOUND,
                &listener,
            );
        };
        if before.as_ref().map(|b| b.everyone) != Some(modes.everyone) {
            put_mode(sidecars(), modes.everyone);
        }
        let old = before.map(|b| b.scoped).unwrap_or_default();
        for (selector, mode) in &modes.scoped {
            if !old.contains(&(selector.clone(), *mode)) {
                put_mode(selector.clone(), *mode);
            }
        }
        for (selector, _) in old {
            if !modes.scoped.iter().any(|(s, _)| *s == selector) {
                update.remove_for(selector, type_url::LISTENER, VIRTUAL_OUTBOUND);
            }
        }
    }

    /// Builds `virtualInbound` for the sets of sidecars whose `Sidecar` lists ingress
    /// listeners (a `Sidecar` changed); the listeners of their workloads' addresses give way
    /// to it.
    pub fn set_ingress(&mut self, mesh: &Mesh, variants: &IngressVariants, update: &mut Update) {
        if self.ingress == *variants {
            return;
        }
        let before = std::mem::replace(&mut self.ingress, variants.clone());
        let listener = ingress::virtual_inbound(&variants.everyone);
        put(
            update,
            sidecars(),
            type_url::LISTENER,
            VIRTUAL_INBOUND,
            &listener,
        );
        for (selector, ports) in &variants.scoped {
            let listener = ingress::virtual_inbound(ports);
            put(
                update,
                selector.clone(),
                type_url::LISTENER,
                VIRTUAL_INBOUND,
                &listener,
            );
        }
        for (selector, _) in &before.scoped {
            if !variants.scoped.iter().any(|(s, _)| s == selector) {
                update.remove_for(selector.clone(), type_url::LISTENER, VIRTUAL_INBOUND);
            }
        }
        let clusters: BTreeMap<String, &IngressPort> = variants
            .everyone
            .iter()
            .chain(variants.scoped.iter().flat_map(|(_, ports)| ports))
            .map(|p| (ingress::cluster_name(p), p))
            .collect();
        for gone in self
            .ingress_clusters
            .iter()
            .filter(|c| !clusters.contains_key(*c))
        {
            update.remove_for(sidecars(), type_url::CLUSTER, gone);
        }
        for (name, port) in &clusters {
            if !self.ingress_clusters.contains(name) {
                put(
                    update,
                    sidecars(),
                    type_url::CLUSTER,
                    name,
                    &ingress::cluster(port),
                );
            }
        }
        self.ingress_clusters = clusters.into_keys().collect();
        let addresses: Vec<String> = self.workloads.keys().cloned().collect();
        for address in addresses {
            self.rebuild_workload(mesh, &address, update);
        }
    }

    /// Whether the workload at `address` (serving `hosts`) has a `Sidecar` listing ingress
    /// listeners. Its labels and namespace are read from its endpoints: the listener is
    /// built per address, before any proxy says who it is.
    pub(super) fn has_ingress(&self, mesh: &Mesh, address: &str, hosts: &BTreeSet<String>) -> bool {
        if self.ingress.is_empty() {
            return false;
        }
        let mut namespace = None;
        let mut labels = BTreeMap::new();
        for service in hosts.iter().filter_map(|h| mesh.services.get(h)) {
            for endpoint in service.endpoints.iter().filter(|e| &*e.address == address) {
                namespace.get_or_insert(service.namespace());
                labels.extend(endpoint.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        namespace.is_some_and(|ns| !mesh.sidecar_scopes.ingress_of(ns, &labels).is_empty())
    }
}
