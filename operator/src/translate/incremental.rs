//! Translation that keeps what it built, so a change rebuilds only what depends on it.
//!
//! Per service host it keeps the encoded clusters and load assignments; per service port the
//! encoded virtual host, in the two forms the per-namespace route variants use. A change to
//! one object rebuilds the resources of the hosts it claimed or claims ([`Affected`]), plus
//! the virtual hosts whose routes read those services' ports; the route configuration is
//! then reassembled from the kept encodings by concatenation (protobuf messages concatenate),
//! without building or encoding the other virtual hosts again.
//!
//! The virtual hosts are grouped by route configuration (one, or one per port:
//! [`route::RouteLayout`]) and namespace, and each group is kept joined ([`Parts`]) in both
//! forms. A route variant is the header plus one joined group per namespace, so a change
//! rejoins only its groups and then assembles each variant from one piece per namespace: it
//! never walks the virtual hosts of other namespaces.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_crds::ObjectKey;
use capstan_xds::{Parts, Resource, Role, Selector, SnapshotBuilder, Update, type_url};

use super::route::{Caller, Labels, RouteName};
use super::sidecar::{CaptureState, ListenerMode};
use super::{Options, listener, route};
use crate::model::service::ExportTo;
use crate::model::sidecar_scope::ScopeViews;
use crate::model::{Affected, Mesh, Problem, hostname};

/// Where a virtual host sits: its route configuration, then the namespace of a cluster-local
/// host (`None` for any other host).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Group {
    route: RouteName,
    namespace: Option<String>,
}

impl Group {
    /// The first group of route configuration `route`.
    fn first_of(route: RouteName) -> Self {
        Self {
            route,
            namespace: None,
        }
    }
}

/// A virtual host's place in the route configuration: by group, then host, then port.
type VirtualHostKey = (Group, String, u32);

/// One group's virtual hosts, joined in the forms the variants read, per label class of the
/// `sourceLabels` selectors of its VirtualServices.
struct Segment {
    selectors: Vec<Labels>,
    /// What sidecars no `sourceLabels` match picks read (the empty class).
    plain: SegmentForms,
    /// Per non-empty label class.
    by_class: BTreeMap<Labels, SegmentForms>,
}

/// One group's virtual hosts joined for one label class: `own` for its namespace's variant,
/// `other` for every other variant.
struct SegmentForms {
    own: Parts,
    other: Parts,
    /// For a namespace some of the group's hosts are exported to by name, or whose sidecars
    /// a VirtualService match names by `sourceNamespace`: what it reads instead of `other`.
    exported: BTreeMap<String, Parts>,
}

impl Segment {
    /// What sidecars whose labels include `labels` read.
    fn forms(&self, labels: &Labels) -> &SegmentForms {
        if self.by_class.is_empty() {
            return &self.plain;
        }
        let class = route::class_of(&self.selectors, labels);
        self.by_class.get(&class).unwrap_or(&self.plain)
    }
}

/// One service port's virtual host.
struct VirtualHostEntry {
    /// A `RouteConfiguration` holding only this virtual host, with the bare name (for its
    /// own namespace's variant) and without (for every other variant), and a hash of each.
    own: Parts,
    other: Parts,
    /// Every domain of the `other` form (in every variant), and those only the `own` form
    /// has (in its namespace's variant only), to find two hosts claiming one name.
    domains: Vec<String>,
    own_only_domains: Vec<String>,
    /// The VirtualService whose routes it carries, and the hosts those routes send to.
    virtual_service: Option<ObjectKey>,
    destinations: Vec<String>,
    /// The namespaces whose proxies see it (the service's `exportTo`).
    visible: ExportTo,
    /// The forms the callers its VirtualService's matches name by source (or it is exported
    /// to by name) read instead, with the bare name (`true`) or without.
    by_caller: BTreeMap<(Caller, bool), Parts>,
    /// Its VirtualService's `sourceLabels` selectors.
    selectors: Vec<Labels>,
}

pub struct Translator {
    options: Options,
    by_host: HashMap<String, HostResources>,
    /// Per group, its virtual hosts by (host, port): their order in the route configuration.
    /// Kept per group so that joining one group's again walks only its own entries.
    virtual_hosts: BTreeMap<Group, BTreeMap<(String, u32), VirtualHostEntry>>,
    /// The places of each service host's virtual hosts.
    host_keys: HashMap<String, Vec<VirtualHostKey>>,
    /// Per group with virtual hosts, all of them joined.
    segments: BTreeMap<Group, Segment>,
    /// Destination host → the service hosts whose routes resolved a port through it.
    routed_through: HashMap<String, BTreeSet<String>>,
    /// VirtualService → the service hosts whose virtual hosts carry its routes. (A host's
    /// virtual hosts are always forgotten and remembered together, so a set suffices.)
    carried_by: HashMap<ObjectKey, BTreeSet<String>>,
    /// How many virtual hosts claim each domain; above one, Envoy would reject the
    /// configuration, and the route variants are built the slow way that drops repeats.
    domain_claims: domain_claims::DomainClaims,
    /// The route variants last built: configuration name and selector.
    route_variants: BTreeSet<route_variants::RouteVariant>,
    /// Capture mode: per service host, the route configurations of its ports without a
    /// declared protocol on its own addresses (rebuilt with its virtual hosts).
    sniffed_routes: HashMap<String, Vec<(Selector, Resource)>>,
    /// How many virtual hosts' VirtualServices have each `sourceLabels` selector: the label
    /// classes of the route variants are their unions.
    source_selectors: BTreeMap<Labels, usize>,
    /// Hosts some sidecars do not see (`Sidecar` egress scoping), and who does.
    visibility: scoping::HostVisibility,
    /// Listeners whose visibility differs from their host's (egress listener ports).
    listener_visibility: scoping::ListenerVisibility,
    /// Scoped route variants' pieces, per variant and group, and per group the hosts whose
    /// virtual hosts must be filtered again (they, or who sees them, changed).
    scoped_segments: HashMap<(Selector, Group), scoping::ScopedPiece>,
    dirty_groups: BTreeMap<Group, BTreeSet<String>>,
    /// With a `Sidecar` in the mesh, each VirtualService's destinations: a change to one
    /// changes who sees those hosts only.
    vs_destinations: HashMap<ObjectKey, BTreeSet<String>>,
    /// Problems found building routes: per VirtualService, per service host; and hosts
    /// that no service has.
    route_problems: BTreeMap<ObjectKey, BTreeMap<String, Vec<Problem>>>,
    unbound: BTreeMap<ObjectKey, Vec<Problem>>,
    gateways: GatewayState,
    /// The Secrets DestinationRules' `credentialName` has gateway proxies read.
    upstream_credentials: upstream_credentials::CredentialState,
    /// Sidecar listeners behind an iptables capture (`ListenerMode::Capture` only).
    capture: Option<CaptureState>,
    /// Capture mode: the last virtual host of the route variants, per outbound mode.
    fallbacks: Option<Fallbacks>,
    /// Direct mode: the `Sidecar`s whose outbound traffic policy has nothing to apply to.
    policy_problems: Vec<Problem>,
    /// RequestAuthentication rules whose `jwksUri` no service serves (read again on every
    /// change: a service may come or go).
    reference_problems: Vec<Problem>,
}

impl Translator {
    pub fn new(options: Options) -> Self {
        let fallbacks = (options.sidecar_listeners == ListenerMode::Capture).then(Fallbacks::new);
        Self {
            options,
            by_host: HashMap::new(),
            virtual_hosts: BTreeMap::new(),
            host_keys: HashMap::new(),
            segments: BTreeMap::new(),
            routed_through: HashMap::new(),
            carried_by: HashMap::new(),
            domain_claims: Default::default(),
            route_variants: BTreeSet::new(),
            sniffed_routes: HashMap::new(),
            source_selectors: BTreeMap::new(),
            visibility: Default::default(),
            listener_visibility: Default::default(),
            scoped_segments: HashMap::new(),
            dirty_groups: BTreeMap::new(),
            vs_destinations: HashMap::new(),
            route_problems: BTreeMap::new(),
            unbound: BTreeMap::new(),
            gateways: GatewayState::default(),
            upstream_credentials: Default::default(),
            capture: None,
            fallbacks,
            policy_problems: Vec::new(),
            reference_problems: Vec::new(),
        }
    }

    /// Builds everything for `mesh`, forgetting what was kept.
    pub fn full(&mut self, mesh: &Mesh) -> SnapshotBuilder {
        *self = Translator::new(self.options.clone());
        let everything = Affected {
            hosts: mesh.services.keys().cloned().collect(),
            routes: BTreeSet::new(),
            virtual_services: mesh.virtual_services.keys().cloned().collect(),
            gateways: mesh.gateways.keys().cloned().collect(),
            secrets: BTreeSet::new(),
            sidecars: true,
            peer_authentications: BTreeSet::new(),
            policy_scopes: Vec::new(),
        };
        // Everything is new: what is kept afterwards is the snapshot.
        self.rebuild(mesh, &everything, &mut Update::new());
        let mut out = SnapshotBuilder::new();
        let mut credentials = Update::new();
        self.refresh_upstream_credentials(mesh, &everything, &mut credentials);
        out.apply(credentials);
        for (selector, resource) in self.by_host.values().flat_map(|h| h.clusters.iter()) {
            out.add_for(selector.clone(), resource.clone());
        }
        for (selector, resource) in self.by_host.values().flat_map(|h| h.assignments.iter()) {
            out.add_for(selector.clone(), resource.clone());
        }
        self.refresh_policy_problems(mesh);
        self.reference_problems = outbound_policy::reference_problems(mesh);
        // Listeners first: the capture-mode ones of a service are scoped with it.
        match self.options.sidecar_listeners {
            ListenerMode::Direct => {
                for (name, listener) in listener::listeners(&self.options) {
                    if let Some(resource) = Resource::encode(name, &listener) {
                        // Gateways have listeners of their own.
                        out.add_for(Selector::role(Role::Sidecar), resource);
                    }
                }
            }
            ListenerMode::Capture => {
                let (state, update) = CaptureState::full(mesh, &self.outbound_modes(mesh));
                out.apply(update);
                self.capture = Some(state);
            }
        }
        let views = ScopeViews::new(mesh);
        let mut scoped = Update::new();
        self.scope_all_hosts(mesh, &views, &mut scoped);
        self.rescope_listeners(&mut scoped);
        out.apply(scoped);
        for (selector, resource) in self.build_gateways(mesh) {
            out.add_for(selector, resource);
        }
        let (variants, _) = self.assemble_routes(mesh, &views);
        for (selector, resource) in variants {
            out.add_for(selector, resource);
        }
        for (selector, resource) in self.sniffed_routes.values().flatten() {
            out.add_for(selector.clone(), resource.clone());
        }
        out
    }

    /// Rebuilds what `affected` names; returns the resources to put and remove.
    pub fn update(&mut self, mesh: &Mesh, affected: &Affected) -> Update {
        let mut update = Update::new();
        // Hosts whose clusters are rebuilt for the gateways alone: SNI-DNAT clusters came or
        // went with an AUTO_PASSTHROUGH server.
        let mut for_gateways = BTreeSet::new();
        if self.gateways_affected(mesh, affected) {
            for_gateways = self.rebuild_gateways(mesh, &mut update);
            for_gateways.retain(|h| !affected.hosts.contains(h));
            for (host, new) in build_hosts(mesh, &for_gateways) {
                self.replace_host(host, new, &mut update);
            }
        }
        let modes = affected.sidecars.then(|| self.outbound_modes(mesh));
        if let Some(capture) = &mut self.capture {
            capture.update(mesh, affected.hosts.iter().map(String::as_str), &mut update);
            capture.routes_changed(mesh, &affected.routes, &mut update);
            if !affected.policy_scopes.is_empty() {
                capture.rebuild_workloads_in(mesh, &affected.policy_scopes, &mut update);
            }
            if let Some(modes) = &modes {
                capture.set_outbound_modes(modes, &mut update);
                capture.set_ingress(mesh, &mesh.sidecar_scopes.ingress_variants(), &mut update);
                capture.set_inbound_pools(mesh, &mesh.sidecar_scopes.inbound_pools(), &mut update);
                capture.set_bound_egress(
                    mesh,
                    &mesh.sidecar_scopes.bound_egress_variants(),
                    &mut update,
                );
            }
        }
        let rebuilt = self.rebuild(mesh, affected, &mut update);
        if !mesh.request_authentications.is_empty()
            || !mesh.authorization_policies.is_empty()
            || !self.reference_problems.is_empty()
        {
            self.reference_problems = outbound_policy::reference_problems(mesh);
        }
        self.refresh_upstream_credentials(mesh, affected, &mut update);
        let views = ScopeViews::new(mesh);
        if for_gateways.is_empty() {
            self.scope_rebuilt_hosts(mesh, &views, &affected.hosts, &mut update);
        } else {
            for_gateways.extend(affected.hosts.iter().cloned());
            self.scope_rebuilt_hosts(mesh, &views, &for_gateways, &mut update);
        }
        // Which policies are reported depends on the Sidecars, the policies and the Gateways.
        if affected.sidecars || !affected.policy_scopes.is_empty() || !affected.gateways.is_empty()
        {
            self.refresh_policy_problems(mesh);
        }
        if affected.sidecars {
            self.scoped_segments.clear();
            self.scope_all_hosts(mesh, &views, &mut update);
        } else if !affected.virtual_services.is_empty() {
            // What a scope sees includes the destinations of the VirtualServices it names.
            self.scope_destinations(mesh, &views, &affected.virtual_services, &mut update);
        }
        self.rescope_listeners(&mut update);
        if rebuilt || affected.sidecars || !self.dirty_groups.is_empty() {
            let (variants, gone) = self.assemble_routes(mesh, &views);
            for (selector, resource) in variants {
                update.put_for(selector, resource);
            }
            for (name, selector) in gone {
                update.remove_for(selector, type_url::ROUTE, &name);
            }
        }
        update
    }

    /// Rebuilds the clusters and load assignments `affected` names into `update`, and the
    /// virtual hosts that depend on it; returns whether any virtual host was rebuilt.
    fn rebuild(&mut self, mesh: &Mesh, affected: &Affected, update: &mut Update) -> bool {
        for (host, new) in build_hosts(mesh, &affected.hosts) {
            self.replace_host(host, new, update);
        }
        // The virtual hosts to rebuild: the changed hosts', those whose routes read a changed
        // host's ports, and those a changed VirtualService covered or covers.
        let mut hosts: BTreeSet<String> = affected.hosts.clone();
        for host in &affected.hosts {
            hosts.extend(self.routed_through.get(host).into_iter().flatten().cloned());
        }
        for pattern in &affected.routes {
            if pattern.starts_with('*') {
                hosts.extend(
                    mesh.services
                        .keys()
                        .filter(|h| hostname::matches(pattern, h))
                        .cloned(),
                );
            } else {
                hosts.insert(pattern.clone());
            }
        }
        // The hosts whose virtual hosts carried a changed VirtualService's routes.
        for key in &affected.virtual_services {
            hosts.extend(self.carried_by.get(key).into_iter().flatten().cloned());
        }
        let mut groups = BTreeSet::new();
        let layout = self.options.route_layout();
        for (host, mut built) in per_host(&hosts, |host| build_virtual_hosts(mesh, host, layout)) {
            let sniffed = built.as_mut().map(|b| std::mem::take(&mut b.sniffed));
            self.replace_sniffed_routes(host, sniffed.unwrap_or_default(), update);
            let namespace = namespace_of(host, &mesh.domain_suffix);
            for group in self.install_virtual_hosts(host, &namespace, built) {
                let dirty = self.dirty_groups.entry(group.clone()).or_default();
                dirty.insert(host.to_string());
                groups.insert(group);
            }
        }
        for group in groups {
            self.rejoin(group);
        }
        self.refresh_unbound(mesh, affected);
        !hosts.is_empty()
    }

    /// Keeps `new` as `host`'s sniffed route configurations, putting them and removing what
    /// of the old ones they no longer have.
    fn replace_sniffed_routes(
        &mut self,
        host: &str,
        new: Vec<(Selector, Resource)>,
        update: &mut Update,
    ) {
        let old = self.sniffed_routes.remove(host).unwrap_or_default();
        hosts::replace_variants(type_url::ROUTE, &old, &new, update);
        if !new.is_empty() {
            self.sniffed_routes.insert(host.to_string(), new);
        }
    }

    /// The load assignments of `host` again (its endpoints changed): kept, and what to put
    /// and remove returned.
    pub fn endpoints(&mut self, mesh: &Mesh, host: &str) -> Update {
        let mut update = Update::new();
        let Some(service) = mesh.services.get(host) else {
            return update;
        };
        if let Some(capture) = &mut self.capture {
            capture.update(mesh, [host], &mut update);
        }
        // Its first endpoint with a sidecar, or its last one gone: clients' TLS changes.
        let auto_mtls = super::cluster::auto_mtls(mesh, service);
        if self
            .by_host
            .get(host)
            .is_some_and(|kept| kept.auto_mtls != auto_mtls)
        {
            self.replace_host(host, hosts::host_resources(mesh, service), &mut update);
            self.rescope_assignments(host, &mut update);
            self.rescope_listeners(&mut update);
            return update;
        }
        let assignments = encoded_assignments(mesh, service);
        match self.by_host.get_mut(host) {
            Some(kept) => {
                let old = std::mem::replace(&mut kept.assignments, assignments);
                replace_variants(type_url::ENDPOINT, &old, &kept.assignments, &mut update);
            }
            None => replace_variants(type_url::ENDPOINT, &[], &assignments, &mut update),
        }
        self.rescope_assignments(host, &mut update);
        self.rescope_listeners(&mut update);
        update
    }

    /// Every problem translation found, per object.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.route_problems
            .values()
            .flat_map(|by_host| by_host.values().flatten())
            .chain(self.unbound.values().flatten())
            .chain(&self.gateways.problems)
            .chain(&self.upstream_credentials.problems)
            .chain(self.capture.iter().flat_map(CaptureState::problems))
            .chain(&self.policy_problems)
            .chain(&self.reference_problems)
    }

    /// Keeps `new` as the resources of `host`; what it no longer has is removed.
    fn replace_host(&mut self, host: &str, new: HostResources, update: &mut Update) {
        let old = self.by_host.remove(host).unwrap_or_default();
        replace_variants(type_url::CLUSTER, &old.clusters, &new.clusters, update);
        replace_variants(
            type_url::ENDPOINT,
            &old.assignments,
            &new.assignments,
            update,
        );
        if !new.clusters.is_empty() {
            self.by_host.insert(host.to_string(), new);
        }
    }

    /// Hosts no service has, for the VirtualServices that changed and those covering a host
    /// that came or went.
    fn refresh_unbound(&mut self, mesh: &Mesh, affected: &Affected) {
        let mut keys: BTreeSet<&ObjectKey> = affected.virtual_services.iter().collect();
        for host in &affected.hosts {
            keys.extend(mesh.virtual_services_covering(host));
        }
        for key in keys {
            self.unbound.remove(key);
            if let Some(vs) = mesh.virtual_services.get(key) {
                let mut problems = route::unbound(mesh, vs);
                if self.options.sidecar_listeners == ListenerMode::Direct {
                    problems.extend(crate::model::unsupported::sidecar_stream_routes(
                        &vs.origin,
                        vs.applies_to_sidecars(),
                        !vs.tcp.is_empty(),
                        !vs.tls.is_empty(),
                    ));
                }
                if !problems.is_empty() {
                    self.unbound.insert(key.clone(), problems);
                }
            }
        }
    }
}

mod domain_claims;
mod gateways;
mod hosts;
mod outbound_policy;
mod per_host;
mod route_variants;
mod scoping;
mod upstream_credentials;
mod virtual_hosts;

use gateways::GatewayState;
#[cfg(test)]
use hosts::host_resources;
use hosts::{HostResources, build_hosts, encoded_assignments, replace_variants};
use outbound_policy::Fallbacks;
#[cfg(test)]
use per_host::PARALLEL_HOSTS;
use per_host::per_host;
use scoping::form;
use virtual_hosts::{build_virtual_hosts, namespace_of};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod locality_tests;

#[cfg(test)]
mod capture_tests;

#[cfg(test)]
mod export_tests;

#[cfg(test)]
mod scoping_tests;

#[cfg(test)]
mod outbound_policy_tests;

#[cfg(test)]
mod wildcard_rule_tests;

#[cfg(test)]
mod sidecar_ingress_tests;

#[cfg(test)]
mod source_labels_tests;

#[cfg(test)]
mod selecting_hash_tests;

#[cfg(test)]
mod stream_rule_tests;
#[cfg(test)]
mod stream_source_tests;

#[cfg(test)]
mod subnet_route_tests;

#[cfg(test)]
mod default_inbound_tests;

#[cfg(test)]
mod upstream_credential_tests;

#[cfg(test)]
mod peer_authentication_tests;

#[cfg(test)]
mod authorization_tests;

#[cfg(test)]
mod cloud_map_tests;

#[cfg(test)]
mod per_port_route_tests;

#[cfg(test)]
mod bound_listener_tests;
#[cfg(test)]
mod bound_stream_tests;

#[cfg(test)]
mod sniffed_route_tests;
