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
        if views.is_empty() && self.quiet() && !hosts.iter().any(restricted) {
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
        if views.is_empty() && self.quiet() && !restricted {
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

    /// Whether every sidecar sees every host (nothing hidden to set visible again).
    fn quiet(&self) -> bool {
        self.visibility.is_empty()
            && self.listener_visibility.is_empty()
            && !self
                .capture
                .as_ref()
                .is_some_and(|c| c.hides_shared_chains())
    }

    /// Sets again the visibility of the capture-mode listeners of one service just put (a
    /// port's listeners are rebuilt together, whichever service changed), and puts the
    /// shared listeners whose chains' visibility changed.
    pub(super) fn rescope_listeners(&mut self, update: &mut Update) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        capture.put_scoped_chains(update);
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
        let seen_on = |port: Option<u32>| match (service, port) {
            (Some(s), Some(port)) if by_port => {
                views.visibility_on(s.namespace(), host, &s.export_to, port)
            }
            _ => visibility.clone(),
        };
        // Its chains in the listeners it shares (TLS by SNI, CIDR addresses): a sidecar that
        // does not see it gets the listener without them. Set even when nothing else about
        // it changed: they may have been seen port by port before.
        if let Some(capture) = &mut self.capture {
            for port in capture.shared_chain_ports(host) {
                capture.scope_shared_chain(host, port, seen_on(Some(port)));
            }
        }
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
            let seen = seen_on(listener_port(name));
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
            for group in groups {
                let dirty = self.dirty_groups.entry(group).or_default();
                dirty.insert(host.to_string());
            }
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
        let mut old = std::mem::take(&mut self.scoped_segments);
        let mut kept = HashMap::new();
        for name in self.route_names() {
            let header = self.header(name);
            for selector in &selectors {
                let namespace = selector.namespace.as_deref();
                let labels = &selector.labels;
                let fallback = self.fallback(modes.for_proxies(selector));
                let resource = match views.for_proxies(selector) {
                    Some(view) => {
                        let pieces =
                            self.filtered_routes(mesh, name, selector, &view, &mut old, &mut kept);
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
    /// see what `view` sees: a piece per group, taken from `old` (filtered again only for the
    /// hosts that changed) and kept in `kept`.
    fn filtered_routes(
        &self,
        mesh: &Mesh,
        name: RouteName,
        selector: &Selector,
        view: &ScopeView,
        old: &mut HashMap<(Selector, Group), ScopedPiece>,
        kept: &mut HashMap<(Selector, Group), ScopedPiece>,
    ) -> std::vec::IntoIter<Parts> {
        let mut pieces = Vec::new();
        for (group, _) in self.segments_of(name) {
            let key = (selector.clone(), group.clone());
            let piece = match (old.remove(&key), self.dirty_groups.get(group)) {
                (Some(piece), None) => piece,
                (Some(mut piece), Some(hosts)) => {
                    for host in hosts {
                        self.filter_host(mesh, group, host, selector, view, &mut piece.seen);
                    }
                    piece.joined = Parts::join(piece.seen.values().cloned());
                    piece
                }
                (None, _) => self.filtered_group(mesh, group, selector, view),
            };
            pieces.push(piece.joined.clone());
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
    ) -> ScopedPiece {
        let namespace = selector.namespace.as_deref();
        let seen: BTreeMap<(String, u32), Parts> = self
            .group_entries(group)
            .filter(|((host, port), _)| sees(mesh, view, host, *port))
            .filter_map(|(key, entry)| {
                let form = form(entry, group, namespace, &selector.labels)?;
                Some((key.clone(), form))
            })
            .collect();
        let joined = Parts::join(seen.values().cloned());
        ScopedPiece { seen, joined }
    }

    /// Filters `host`'s virtual hosts in `group` again into `seen`.
    fn filter_host(
        &self,
        mesh: &Mesh,
        group: &Group,
        host: &str,
        selector: &Selector,
        view: &ScopeView,
        seen: &mut BTreeMap<(String, u32), Parts>,
    ) {
        let of_host = (host.to_string(), 0)..=(host.to_string(), u32::MAX);
        let gone: Vec<(String, u32)> = seen
            .range(of_host.clone())
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            seen.remove(&key);
        }
        let Some(entries) = self.virtual_hosts.get(group) else {
            return;
        };
        let namespace = selector.namespace.as_deref();
        for ((host, port), entry) in entries.range(of_host) {
            if !sees(mesh, view, host, *port) {
                continue;
            }
            if let Some(form) = form(entry, group, namespace, &selector.labels) {
                seen.insert((host.clone(), *port), form);
            }
        }
    }
}

/// One scoped route variant's piece of one group: the forms of the virtual hosts its
/// sidecars see, by host and port (the group's order), and those joined.
#[derive(Debug, Clone)]
pub(super) struct ScopedPiece {
    seen: BTreeMap<(String, u32), Parts>,
    joined: Parts,
}

/// Whether the sidecars with `view` see `host`'s virtual host on `port`.
fn sees(mesh: &Mesh, view: &ScopeView, host: &str, port: u32) -> bool {
    mesh.services
        .get(host)
        .is_some_and(|s| view.sees_on(s.namespace(), host, port))
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
