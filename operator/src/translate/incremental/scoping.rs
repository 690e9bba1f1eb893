//! Istio `Sidecar` egress scoping and a service's `exportTo` in translation: which sidecars
//! receive each host's clusters and load assignments ([`capstan_xds::Visibility`], kept beside their variants), and the
//! route variants of scoped sidecars, which carry only the virtual hosts they see.
//!
//! Without any `Sidecar`, none of this runs: the route variants are assembled from the joined
//! segments as before. With one, a scoped route variant walks every virtual host (a pointer
//! per host, nothing encoded again), so a route change costs time proportional to the number
//! of virtual hosts times the number of scoped variants.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Parts, Resource, Selector, Update, Visibility, type_url};

use super::{Group, HostResources, Translator, VirtualHostEntry};
use crate::model::Mesh;
use crate::model::service::ExportTo;
use crate::model::sidecar_scope::{Covers, ScopeView, ScopeViews};
use crate::translate::OUTBOUND_HTTP;

/// The visibility last set per host, for the hosts some sidecars do not see.
pub(super) type HostVisibility = BTreeMap<String, Visibility>;

impl Translator {
    /// Sets who sees the clusters and load assignments of `hosts`, just put (so set again
    /// even when unchanged: a new entry starts visible to all).
    pub(super) fn scope_rebuilt_hosts(
        &mut self,
        mesh: &Mesh,
        hosts: &BTreeSet<String>,
        update: &mut Update,
    ) {
        let restricted = |host: &String| {
            mesh.services
                .get(host)
                .is_some_and(|s| s.export_to != ExportTo::All)
        };
        if mesh.sidecar_scopes.is_empty()
            && self.visibility.is_empty()
            && !hosts.iter().any(restricted)
        {
            return;
        }
        let views = ScopeViews::new(mesh);
        for host in hosts {
            self.scope_host(mesh, &views, host, true, update);
        }
    }

    /// Works out again who sees every host (a Sidecar or VirtualService changed); only
    /// what changed is set.
    pub(super) fn scope_all_hosts(&mut self, mesh: &Mesh, update: &mut Update) {
        let restricted = mesh.services.values().any(|s| s.export_to != ExportTo::All);
        if mesh.sidecar_scopes.is_empty() && self.visibility.is_empty() && !restricted {
            return;
        }
        let views = ScopeViews::new(mesh);
        let hosts: Vec<String> = self.by_host.keys().cloned().collect();
        for host in hosts {
            self.scope_host(mesh, &views, &host, false, update);
        }
        self.visibility
            .retain(|host, _| self.by_host.contains_key(host));
    }

    /// Sets again the visibility of `host`'s load assignments (they were just replaced).
    pub(super) fn rescope_assignments(&self, host: &str, update: &mut Update) {
        if let (Some(visibility), Some(kept)) = (self.visibility.get(host), self.by_host.get(host))
        {
            for name in names(&kept.assignments) {
                update.set_visibility(type_url::ENDPOINT, name, Some(visibility.clone()));
            }
        }
    }

    fn scope_host(
        &mut self,
        mesh: &Mesh,
        views: &ScopeViews,
        host: &str,
        force: bool,
        update: &mut Update,
    ) {
        let Some(kept) = self.by_host.get(host) else {
            self.visibility.remove(host);
            return;
        };
        let visibility = mesh
            .services
            .get(host)
            .and_then(|s| views.visibility(s.namespace(), host, &s.export_to));
        if !force && self.visibility.get(host) == visibility.as_ref() {
            return;
        }
        set_visibility(kept, visibility.as_ref(), update);
        match visibility {
            Some(v) => self.visibility.insert(host.to_string(), v),
            None => self.visibility.remove(host),
        };
    }

    /// The route variants when some Sidecar scopes what sidecars see: per namespace as
    /// without scoping, plus one per workload scope; each scoped one has only the virtual
    /// hosts its sidecars see.
    pub(super) fn scoped_routes(
        &self,
        mesh: &Mesh,
        views: &ScopeViews,
    ) -> Vec<(Selector, Resource)> {
        let mut namespaces: BTreeSet<Option<&str>> = BTreeSet::from([None]);
        for (group, segment) in &self.segments {
            namespaces.extend(group.as_deref().map(Some));
            namespaces.extend(segment.exported.keys().map(|ns| Some(ns.as_str())));
        }
        namespaces.extend(
            views
                .selectors()
                .filter_map(|s| s.namespace.as_deref().map(Some)),
        );
        let mut out = Vec::new();
        for namespace in namespaces {
            let (selector, covers) = match namespace {
                Some(ns) => (Selector::namespace(ns), Covers::Namespace(ns.to_string())),
                None => (Selector::all(), Covers::Default),
            };
            let resource = match views.for_proxies(&covers.selector()) {
                Some(view) => self.filtered_routes(mesh, namespace, view),
                None => self.assembled_routes(namespace),
            };
            out.push((selector, resource));
        }
        for selector in views.selectors().filter(|s| !s.labels.is_empty()) {
            if let Some(view) = views.for_proxies(selector) {
                let namespace = selector.namespace.as_deref();
                out.push((
                    selector.clone(),
                    self.filtered_routes(mesh, namespace, view),
                ));
            }
        }
        out
    }

    /// The route configuration of the sidecars of `namespace` that see what `view` sees.
    fn filtered_routes(&self, mesh: &Mesh, namespace: Option<&str>, view: &ScopeView) -> Resource {
        let seen = self
            .virtual_hosts
            .iter()
            .filter(|((_, host, _), _)| {
                mesh.services
                    .get(host)
                    .is_some_and(|s| view.sees(s.namespace(), host))
            })
            .filter_map(|((group, _, _), entry)| form(entry, group, namespace));
        let parts = Parts::join(std::iter::once(self.header.clone()).chain(seen));
        Resource::from_parts(type_url::ROUTE, OUTBOUND_HTTP, parts)
    }
}

/// What proxies of `namespace` (`None`: of a namespace no host or match names) read of one
/// virtual host of `group`; nothing when it is not exported to them.
pub(super) fn form(e: &VirtualHostEntry, group: &Group, namespace: Option<&str>) -> Option<Parts> {
    if !e.visible.includes(namespace) {
        return None;
    }
    if let Some(form) = namespace.and_then(|ns| e.by_namespace.get(ns)) {
        return Some(form.clone());
    }
    let own = namespace.is_some() && group.as_deref() == namespace;
    Some(if own { e.own.clone() } else { e.other.clone() })
}

fn names(variants: &[(Selector, Resource)]) -> BTreeSet<&str> {
    variants.iter().map(|(_, r)| r.name()).collect()
}

fn set_visibility(kept: &HostResources, visibility: Option<&Visibility>, update: &mut Update) {
    for name in names(&kept.clusters) {
        update.set_visibility(type_url::CLUSTER, name, visibility.cloned());
    }
    for name in names(&kept.assignments) {
        update.set_visibility(type_url::ENDPOINT, name, visibility.cloned());
    }
}
