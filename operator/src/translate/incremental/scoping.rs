//! Istio `Sidecar` egress scoping and a service's `exportTo` in translation: which sidecars
//! receive each host's clusters and load assignments ([`capstan_xds::Visibility`], kept beside their variants), and the
//! route variants of scoped sidecars, which carry only the virtual hosts they see.
//!
//! Without any `Sidecar`, none of this runs: the route variants are assembled from the joined
//! segments as before. With one, each scoped route variant is assembled from a piece per
//! group of virtual hosts (a namespace's), kept per variant; a change filters again only the
//! groups whose virtual hosts, or whose hosts' visibility, changed (a pointer per virtual
//! host, nothing encoded again), and a `Sidecar` change all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_crds::ObjectKey;
use capstan_xds::{Parts, Resource, Selector, Update, Visibility, type_url};

use super::route_variants::variant_selector;
use super::{Caller, Group, HostResources, Labels, Translator, VirtualHostEntry};
use crate::model::Mesh;
use crate::model::VirtualService;
use crate::model::service::ExportTo;
use crate::model::sidecar_scope::{
    OutboundModes, ScopeView, ScopeViews, virtual_service_destinations,
};
use crate::translate::route::{self, RouteName};

/// The visibility last set per host, for the hosts some sidecars do not see.
pub(super) type HostVisibility = BTreeMap<String, Visibility>;

/// Per host, its listeners whose visibility differs from the host's (a `Sidecar` egress
/// listener's port), and what it is.
pub(super) type ListenerVisibility = HashMap<String, BTreeMap<String, Option<Visibility>>>;

/// The port of a capture-mode listener named `<address>_<port>`.
fn listener_port(name: &str) -> Option<u32> {
    name.rsplit_once('_')
        .and_then(|(_, port)| port.parse().ok())
}

impl Translator {
    /// Sets who sees the clusters and load assignments of `hosts`, just put (so set again
    /// even when unchanged: a new entry starts visible to all).
    pub(super) fn scope_rebuilt_hosts(
        &mut self,
        mesh: &Mesh,
        views: &ScopeViews,
        hosts: &BTreeSet<String>,
        update: &mut Update,
    ) {
        let restricted = |host: &String| {
            mesh.services
                .get(host)
                .is_some_and(|s| s.export_to != ExportTo::All)
        };
        let quiet = self.visibility.is_empty() && self.listener_visibility.is_empty();
        if views.is_empty() && quiet && !hosts.iter().any(restricted) {
            return;
        }
        for host in hosts {
            self.scope_host(mesh, views, host, true, update);
        }
    }

    /// Works out again who sees every host (a Sidecar changed, or everything was built);
    /// only what changed is set.
    pub(super) fn scope_all_hosts(&mut self, mesh: &Mesh, views: &ScopeViews, update: &mut Update) {
        self.vs_destinations = if views.is_empty() {
            HashMap::new()
        } else {
            mesh.virtual_services
                .iter()
                .map(|(key, vs)| (key.clone(), destinations(vs)))
                .collect()
        };
        let restricted = mesh.services.values().any(|s| s.export_to != ExportTo::All);
        let quiet = self.visibility.is_empty() && self.listener_visibility.is_empty();
        if views.is_empty() && quiet && !restricted {
            return;
        }
        let hosts: Vec<String> = self.by_host.keys().cloned().collect();
        for host in hosts {
            self.scope_host(mesh, views, &host, false, update);
        }
        self.visibility
            .retain(|host, _| self.by_host.contains_key(host));
        self.listener_visibility
            .retain(|host, _| self.by_host.contains_key(host));
    }

    /// Works out again who sees the destinations, before and after, of the VirtualServices
    /// `changed`: the only hosts whose visibility they decide.
    pub(super) fn scope_destinations(
        &mut self,
        mesh: &Mesh,
        views: &ScopeViews,
        changed: &BTreeSet<ObjectKey>,
        update: &mut Update,
    ) {
        if views.is_empty() {
            self.vs_destinations.clear();
            return;
        }
        let mut hosts = BTreeSet::new();
        for key in changed {
            hosts.extend(self.vs_destinations.remove(key).unwrap_or_default());
            if let Some(vs) = mesh.virtual_services.get(key) {
                let now = destinations(vs);
                hosts.extend(now.iter().cloned());
                self.vs_destinations.insert(key.clone(), now);
            }
        }
        for host in hosts {
            self.scope_host(mesh, views, &host, false, update);
        }
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

    /// Sets again the visibility of the capture-mode listeners of one service just put (a
    /// port's listeners are rebuilt together, whichever service changed).
    pub(super) fn rescope_listeners(&mut self, update: &mut Update) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        // Set even to everyone: a listener keeps its visibility when it is put again, and
        // one name may have belonged to another service.
        for (name, host) in capture.take_put() {
            let by_port = self
                .listener_visibility
                .get(&host)
                .and_then(|l| l.get(&name));
            let visibility = match by_port {
                Some(seen) => seen.clone(),
                None => self.visibility.get(&host).cloned(),
            };
            update.set_visibility(type_url::LISTENER, &name, visibility);
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
            self.listener_visibility.remove(host);
            return;
        };
        let service = mesh.services.get(host);
        let visibility = service.and_then(|s| views.visibility(s.namespace(), host, &s.export_to));
        let unchanged = self.visibility.get(host) == visibility.as_ref();
        let redo = !unchanged || force;
        // Egress listeners with a port scope a host's listeners port by port.
        let by_port = views.have_ports();
        if !redo && !by_port && !self.listener_visibility.contains_key(host) {
            return;
        }
        if redo {
            set_visibility(kept, visibility.as_ref(), update);
        }
        // The listeners of its TCP addresses: a sidecar that does not see the service (on
        // that port) lets a connection to them go where the outbound traffic policy says, as
        // istiod.
        let mut per_port = BTreeMap::new();
        for name in self.capture.iter().flat_map(|c| c.listeners_of(host)) {
            let seen = match (service, listener_port(name)) {
                (Some(s), Some(port)) if by_port => {
                    views.visibility_on(s.namespace(), host, &s.export_to, port)
                }
                _ => visibility.clone(),
            };
            if seen != visibility {
                per_port.insert(name.clone(), seen.clone());
            }
            update.set_visibility(type_url::LISTENER, name, seen);
        }
        if per_port.is_empty() {
            self.listener_visibility.remove(host);
        } else {
            self.listener_visibility.insert(host.to_string(), per_port);
        }
        if !redo {
            return;
        }
        if !unchanged {
            // The scoped route variants read its virtual hosts differently.
            let groups: Vec<Group> = self.groups_of(host).cloned().collect();
            self.dirty_groups.extend(groups);
        }
        match visibility {
            Some(v) => self.visibility.insert(host.to_string(), v),
            None => self.visibility.remove(host),
        };
    }

    /// The route variants when some Sidecar scopes what sidecars see: per namespace as
    /// without scoping, plus one per workload scope; each scoped one has only the virtual
    /// hosts its sidecars see. Each is assembled from one piece per group of virtual hosts,
    /// kept per variant; only the groups that changed are filtered again.
    pub(super) fn scoped_routes(
        &mut self,
        mesh: &Mesh,
        views: &ScopeViews,
        modes: &OutboundModes,
    ) -> Vec<(Selector, Resource)> {
        let classes = self.label_classes();
        let mut namespaces = self.route_namespaces();
        namespaces.extend(views.selectors().map(|s| s.namespace.as_deref()));
        // Per namespace and label class as without scoping; and per workload scope, with
        // each label class its labels can carry too.
        let mut selectors = BTreeSet::new();
        for namespace in namespaces {
            for labels in &classes {
                selectors.insert(variant_selector(namespace, labels));
            }
        }
        for scope in views.selectors().filter(|s| !s.labels.is_empty()) {
            for labels in &classes {
                if let Some(joined) = route::union(&scope.labels, labels) {
                    let mut selector = scope.clone();
                    selector.labels = joined;
                    selectors.insert(selector);
                }
            }
        }
        let mut out = Vec::new();
        let mut kept = HashMap::new();
        for name in self.route_names() {
            let header = self.header(name);
            for selector in &selectors {
                let namespace = selector.namespace.as_deref();
                let labels = &selector.labels;
                let fallback = self.fallback(modes.for_proxies(selector));
                let resource = match views.for_proxies(selector) {
                    Some(view) => {
                        let pieces = self.filtered_routes(mesh, name, selector, view, &mut kept);
                        let parts = std::iter::once(header.clone())
                            .chain(pieces)
                            .chain(fallback);
                        routes_of(name, parts)
                    }
                    None => self.assembled_routes(name, &header, namespace, labels, fallback),
                };
                out.push((selector.clone(), resource));
            }
        }
        // Pieces of variants or groups that are gone are dropped.
        self.scoped_segments = kept;
        out
    }

    /// The virtual hosts of route configuration `name` the sidecars `selector` picks, which
    /// see what `view` sees: a piece per group, kept in `kept`.
    fn filtered_routes(
        &self,
        mesh: &Mesh,
        name: RouteName,
        selector: &Selector,
        view: &ScopeView,
        kept: &mut HashMap<(Selector, Group), Parts>,
    ) -> std::vec::IntoIter<Parts> {
        let mut pieces = Vec::new();
        for (group, _) in self.segments_of(name) {
            let key = (selector.clone(), group.clone());
            let piece = match self.scoped_segments.get(&key) {
                Some(piece) if !self.dirty_groups.contains(group) => piece.clone(),
                _ => self.filtered_group(mesh, group, selector, view),
            };
            pieces.push(piece.clone());
            kept.insert(key, piece);
        }
        pieces.into_iter()
    }

    /// The virtual hosts of `group` the sidecars `selector` picks, which see what `view`
    /// sees, get, joined.
    fn filtered_group(
        &self,
        mesh: &Mesh,
        group: &Group,
        selector: &Selector,
        view: &ScopeView,
    ) -> Parts {
        let namespace = selector.namespace.as_deref();
        let seen = self
            .group_entries(group)
            .filter(|((host, port), _)| {
                mesh.services
                    .get(host)
                    .is_some_and(|s| view.sees_on(s.namespace(), host, *port))
            })
            .filter_map(|(_, entry)| form(entry, group, namespace, &selector.labels));
        Parts::join(seen)
    }
}

/// What proxies of `namespace` (`None`: of a namespace no host or match names) whose labels
/// include `labels` read of one virtual host of `group`; nothing when it is not exported to
/// them.
pub(super) fn form(
    e: &VirtualHostEntry,
    group: &Group,
    namespace: Option<&str>,
    labels: &Labels,
) -> Option<Parts> {
    if !e.visible.includes(namespace) {
        return None;
    }
    let own = namespace.is_some() && group.namespace.as_deref() == namespace;
    if !e.by_caller.is_empty() {
        let class = route::class_of(&e.selectors, labels);
        let named = namespace.and_then(|ns| e.by_caller.get(&(Caller::new(Some(ns), &class), own)));
        if let Some(form) = named.or_else(|| e.by_caller.get(&(Caller::new(None, &class), own))) {
            return Some(form.clone());
        }
    }
    Some(if own { e.own.clone() } else { e.other.clone() })
}

fn routes_of(name: RouteName, pieces: impl Iterator<Item = Parts>) -> Resource {
    Resource::from_parts(type_url::ROUTE, name.to_string(), Parts::join(pieces))
}

/// The hosts `vs` sends to.
fn destinations(vs: &VirtualService) -> BTreeSet<String> {
    virtual_service_destinations(vs)
        .map(str::to_string)
        .collect()
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
