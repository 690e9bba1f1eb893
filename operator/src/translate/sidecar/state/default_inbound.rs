//! `virtualInbound` of the sidecars no per-address listener is built for (no service has an
//! endpoint at their address): the passthrough, or their `Sidecar`'s ingress listeners, held
//! — as istiod holds every sidecar's — to the PeerAuthentication mode and the
//! AuthorizationPolicies and RequestAuthentications that select them by namespace and
//! labels. One variant per set of sidecars the policies and `Sidecar`s tell apart; the
//! workloads' own listeners (by address) win over them.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Resource, Selector, Update, type_url};
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::super::mtls::InboundMtls;
use super::super::{VIRTUAL_INBOUND, inbound, ingress};
use super::selector_meets::with_meets;
use super::{CaptureState, sidecars};
use crate::model::sidecar_scope::IngressVariants;
use crate::model::{Mesh, PolicyScope};
use crate::translate::authorization::InboundAuthz;

impl CaptureState {
    /// Puts the `virtualInbound` of every set of sidecars without a listener of their own
    /// that reads it differently, and removes the variants of sets no longer apart. `changed`:
    /// the scopes of the policies that changed (only the sets they cover are built again);
    /// `None`: every set (a `Sidecar` changed, or the first build).
    pub(super) fn put_default_inbound(
        &mut self,
        mesh: &Mesh,
        changed: Option<&[PolicyScope]>,
        update: &mut Update,
    ) {
        let root = mesh.sidecar_scopes.root_namespace();
        // The sets apart are read again only when a changed policy may have added or taken
        // one away; they are joined again only when they changed (a policy's rules edited
        // leave them).
        let same_sets = !self.default_inbound.is_empty()
            && changed.is_some_and(|scopes| {
                scopes.iter().all(|scope| {
                    let selector = selector_for(root, &scope.namespace, &scope.selector);
                    selector.is_none_or(|s| self.default_apart.contains(&s) == in_use(mesh, scope))
                })
            });
        let apart = if same_sets {
            None
        } else {
            let mut apart = policy_selectors(mesh);
            apart.extend(self.ingress.scoped.iter().map(|(s, _)| s.clone()));
            Some(apart)
        };
        if let Some(apart) =
            apart.filter(|a| self.default_inbound.is_empty() || *a != self.default_apart)
        {
            let mut joined = with_meets(apart.clone());
            joined.insert(sidecars());
            self.default_apart = apart;
            let gone = (self.default_inbound.keys()).filter(|s| !joined.contains(*s));
            for selector in gone.cloned().collect::<Vec<_>>() {
                self.default_inbound.remove(&selector);
                update.remove_for(selector, type_url::LISTENER, VIRTUAL_INBOUND);
            }
            for selector in joined {
                self.default_inbound.entry(selector).or_insert(None);
            }
        }
        let stale = |selector: &Selector| {
            changed.is_none_or(|scopes| {
                let namespace = selector.namespace.as_deref().unwrap_or_default();
                scopes
                    .iter()
                    .any(|s| s.covers(root, namespace, &selector.labels))
            })
        };
        for (selector, put) in &mut self.default_inbound {
            if put.is_some() && !stale(selector) {
                continue;
            }
            let listener = default_inbound(mesh, &self.ingress, selector);
            let Some(resource) = Resource::encode(VIRTUAL_INBOUND, &listener) else {
                continue;
            };
            if put.as_ref() != Some(&resource) {
                update.put_for(selector.clone(), resource.clone());
                *put = Some(resource);
            }
        }
    }
}

/// The sets of sidecars a policy selects apart from the rest ([`selector_for`]); a
/// root-namespace PeerAuthentication with a selector selects no sidecar, as with istiod.
fn policy_selectors(mesh: &Mesh) -> BTreeSet<Selector> {
    let root = mesh.sidecar_scopes.root_namespace();
    let peer = mesh.peer_authentications.scopes();
    let peer = peer
        .filter(|(ns, _)| *ns != root)
        .map(|(ns, l)| (ns, l.clone()));
    let authorization = mesh.authorization_policies.workload_scopes();
    let jwt = mesh.request_authentications.workload_scopes();
    let scopes = peer.chain(authorization).chain(jwt);
    scopes
        .filter_map(|(namespace, labels)| selector_for(root, namespace, &labels))
        .collect()
}

/// The sidecars a policy of `namespace` with the selector `labels` sets apart: that
/// namespace's with those labels, or — in the root namespace — those with the labels in
/// every namespace. `None`: a root-namespace policy without a selector, which is every
/// sidecar's.
fn selector_for(
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Selector> {
    if namespace == root && labels.is_empty() {
        return None;
    }
    let mut selector = sidecars();
    selector.namespace = (namespace != root).then(|| namespace.into());
    selector.labels = labels.clone();
    Some(selector)
}

/// Whether some policy has `scope` (and so sets its sidecars apart).
fn in_use(mesh: &Mesh, scope: &PolicyScope) -> bool {
    let (namespace, labels) = (scope.namespace.as_str(), &scope.selector);
    let root = mesh.sidecar_scopes.root_namespace();
    (namespace != root && mesh.peer_authentications.has_scope(namespace, labels))
        || mesh.authorization_policies.has_scope(namespace, labels)
        || mesh.request_authentications.has_scope(namespace, labels)
}

/// `virtualInbound` of the sidecars `selector` picks: their `Sidecar`'s ingress listeners,
/// else the passthrough, with their namespace's and labels' mode and policies. Without a
/// namespace, the mesh's (root namespace) alone. Their identity is not known before they
/// connect: a mode short of STRICT takes connections as they come, since clients originate
/// the mesh's mutual TLS to endpoints only.
fn default_inbound(mesh: &Mesh, ingress: &IngressVariants, selector: &Selector) -> Listener {
    let namespace = selector.namespace.as_deref().unwrap_or_default();
    let labels = &selector.labels;
    let mtls = InboundMtls::of(mesh, namespace, labels);
    let authz = InboundAuthz::for_workload(mesh, namespace, labels);
    let ports = ingress.for_proxies(selector);
    if ports.is_empty() {
        inbound::virtual_inbound(&BTreeMap::new(), &mtls, &authz)
    } else {
        ingress::workload_virtual_inbound(ports, &mtls, &authz)
    }
}
