//! `virtualInbound` of the sidecars no per-address listener is built for (no service has an
//! endpoint at their address): the passthrough, or their `Sidecar`'s ingress listeners, held
//! — as istiod holds every sidecar's — to the PeerAuthentication mode and the
//! AuthorizationPolicies and RequestAuthentications that select them by namespace and
//! labels. One variant per set of sidecars the policies and `Sidecar`s tell apart; the
//! workloads' own listeners (by address) win over them.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Selector, Update, type_url};
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::super::mtls::InboundMtls;
use super::super::{VIRTUAL_INBOUND, inbound, ingress};
use super::selector_meets::with_meets;
use super::{CaptureState, put, sidecars};
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
        let mut apart = policy_selectors(mesh);
        apart.extend(self.ingress.scoped.iter().map(|(s, _)| s.clone()));
        // Joined again only when the sets apart changed (a policy's rules edited leave them).
        let joined_before = !self.default_inbound.is_empty() && apart == self.default_apart;
        let selectors: BTreeSet<Selector> = if joined_before {
            self.default_inbound.keys().cloned().collect()
        } else {
            let mut joined = with_meets(apart.clone());
            joined.insert(sidecars());
            self.default_apart = apart;
            joined
        };
        let stale = |selector: &Selector| {
            changed.is_none_or(|scopes| {
                let namespace = selector.namespace.as_deref().unwrap_or_default();
                scopes
                    .iter()
                    .any(|s| s.covers(root, namespace, &selector.labels))
            })
        };
        let mut before = std::mem::take(&mut self.default_inbound);
        for selector in selectors {
            let old = before.remove(&selector);
            let listener = match old {
                Some(listener) if !stale(&selector) => listener,
                old => {
                    let listener = default_inbound(mesh, &self.ingress, &selector);
                    if old.as_ref() != Some(&listener) {
                        let name = VIRTUAL_INBOUND;
                        put(
                            update,
                            selector.clone(),
                            type_url::LISTENER,
                            name,
                            &listener,
                        );
                    }
                    listener
                }
            };
            self.default_inbound.insert(selector, listener);
        }
        for gone in before.into_keys() {
            update.remove_for(gone, type_url::LISTENER, VIRTUAL_INBOUND);
        }
    }
}

/// The sets of sidecars a policy selects apart from the rest: a namespace's (with its
/// selector's labels), or — a policy of the root namespace with a selector — the workloads
/// with those labels in every namespace. A root-namespace policy without a selector is every
/// sidecar's; a root-namespace PeerAuthentication with one selects no sidecar, as with
/// istiod.
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
        .filter(|(ns, labels)| *ns != root || !labels.is_empty())
        .map(|(namespace, labels)| {
            let mut selector = sidecars();
            selector.namespace = (namespace != root).then(|| namespace.into());
            selector.labels = labels;
            selector
        })
        .collect()
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
