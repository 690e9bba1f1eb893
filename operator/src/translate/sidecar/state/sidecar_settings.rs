//! What a `Sidecar` sets for the sidecars it covers, beyond what they see: where unknown
//! destinations go (`virtualOutbound`, per outbound traffic policy) and the inbound ports
//! (`virtualInbound`, per ingress listeners).

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Selector, Update, type_url};

use super::super::{VIRTUAL_OUTBOUND, ingress, outbound};
use super::{CaptureState, put, sidecars};
use crate::model::Mesh;
use crate::model::sidecar_scope::{IngressPort, IngressVariants, OutboundModes, PerScope};

impl CaptureState {
    /// Builds `virtualOutbound` again for each set of sidecars whose outbound mode changed
    /// (a `Sidecar` changed); the variants of sets no longer apart are removed.
    pub fn set_outbound_modes(&mut self, modes: &OutboundModes, update: &mut Update) {
        let before = self.outbound_modes.replace(modes.clone());
        put_variants(
            type_url::LISTENER,
            VIRTUAL_OUTBOUND,
            before.as_ref(),
            modes,
            update,
            outbound::virtual_outbound,
        );
        if before.as_ref().map(fallthroughs) != Some(fallthroughs(modes)) {
            self.rescope_open_listeners();
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
        self.put_default_inbound(mesh, None, update);
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
        self.set_bound_ingress(variants, update);
        if before.everyone != variants.everyone {
            self.rebuild_workloads(mesh, update);
            return;
        }
        // Only the workloads of the sets whose listeners changed (appeared, went or differ):
        // a Sidecar edit does not rebuild the inbound side of the whole mesh.
        let changed: Vec<&Selector> = changed_sets(&before, variants).collect();
        let covered: Vec<String> = self
            .workload_selectors
            .iter()
            .filter(|(_, workload)| changed.iter().any(|set| covers(set, workload)))
            .map(|(address, _)| address.clone())
            .collect();
        for address in covered {
            self.rebuild_workload(mesh, &address, update);
        }
    }
}

/// The selectors of the sets of sidecars whose ingress listeners differ between `before` and
/// `now`.
fn changed_sets<'a>(
    before: &'a IngressVariants,
    now: &'a IngressVariants,
) -> impl Iterator<Item = &'a Selector> {
    let differs = |from: &'a IngressVariants, to: &'a IngressVariants| {
        from.scoped.iter().filter_map(move |(selector, ports)| {
            let same = to.scoped.iter().any(|(s, p)| s == selector && p == ports);
            (!same).then_some(selector)
        })
    };
    differs(before, now).chain(differs(now, before))
}

/// Whether the set of sidecars `set` selects takes in the workload `workload` (its namespace
/// and labels).
fn covers(set: &Selector, workload: &Selector) -> bool {
    set.namespace
        .as_ref()
        .is_none_or(|ns| workload.namespace.as_ref() == Some(ns))
        && crate::model::service::labels_include(&workload.labels, &set.labels)
}

/// The namespace and labels of the workload at `address` (serving `hosts`), as a selector of
/// its sidecar, read from its endpoints: the listeners and clusters of an address are built
/// before any proxy says who it is. `None`: no endpoint there.
pub(super) fn workload_selector(
    mesh: &Mesh,
    address: &str,
    hosts: &BTreeSet<String>,
) -> Option<Selector> {
    let mut workload = Selector::default();
    for service in hosts.iter().filter_map(|h| mesh.services.get(h)) {
        for endpoint in service.endpoints.iter().filter(|e| &*e.address == address) {
            workload
                .namespace
                .get_or_insert_with(|| service.namespace().into());
            let labels = endpoint.labels.iter().map(|(k, v)| (k.clone(), v.clone()));
            workload.labels.extend(labels);
        }
    }
    workload.namespace.is_some().then_some(workload)
}

/// Where each set of sidecars sends a TLS port's names no service has. Every set apart in
/// `modes` stays apart, even when its cluster is everyone's: a set inside it may not be.
pub(super) fn fallthroughs(modes: &OutboundModes) -> PerScope<&'static str> {
    PerScope {
        everyone: outbound::fallthrough_cluster(&modes.everyone),
        scoped: modes
            .scoped
            .iter()
            .map(|(selector, mode)| (selector.clone(), outbound::fallthrough_cluster(mode)))
            .collect(),
    }
}

/// Puts the variants of resource `name` that `now` has and `before` (none: nothing was put)
/// had otherwise, and removes those of sets of sidecars no longer apart.
pub(super) fn put_variants<T: PartialEq, M: prost::Message + prost::Name>(
    type_url: &'static str,
    name: &str,
    before: Option<&PerScope<T>>,
    now: &PerScope<T>,
    update: &mut Update,
    build: impl Fn(&T) -> M,
) {
    if before == Some(now) {
        return;
    }
    if before.is_none_or(|b| b.everyone != now.everyone) {
        put(update, sidecars(), type_url, name, &build(&now.everyone));
    }
    let old: &[(Selector, T)] = before.map_or(&[], |b| &b.scoped);
    for (selector, setting) in &now.scoped {
        if !old.iter().any(|(s, t)| s == selector && t == setting) {
            put(update, selector.clone(), type_url, name, &build(setting));
        }
    }
    for (selector, _) in old {
        if !now.scoped.iter().any(|(s, _)| s == selector) {
            update.remove_for(selector.clone(), type_url, name);
        }
    }
}
