//! The virtual hosts of one service host, in the forms the route variants read them in, and
//! what keeping them records (who carries which VirtualService, which domains are claimed).

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::ObjectKey;
use capstan_xds::{Parts, Resource, Selector};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use prost::Message;

use super::route_variants::variant_selector;
use super::{Group, Translator, VirtualHostEntry};
use crate::model::{Mesh, Problem, hostname};
use crate::translate::route::{self, DomainPorts, RouteLayout, RouteName};

/// The virtual hosts of one service host, built from the mesh alone (so many can be built
/// at once), with what installing them records.
pub(super) struct BuiltVirtualHosts {
    /// Per HTTP port: its route configuration, the port and the virtual host.
    pub(super) entries: Vec<(RouteName, u32, VirtualHostEntry)>,
    pub(super) virtual_service: Option<ObjectKey>,
    pub(super) problems: Vec<Problem>,
    /// Capture mode: the route configurations of its ports without a declared protocol on
    /// its own addresses ([`route::sniffed_configs`]), each for the proxies its selector picks.
    pub(super) sniffed: Vec<(Selector, Resource)>,
}

pub(super) fn build_virtual_hosts(
    mesh: &Mesh,
    host: &str,
    layout: RouteLayout,
) -> Option<BuiltVirtualHosts> {
    let service = mesh.services.get(host)?;
    let virtual_service = mesh.virtual_service_for(host);
    let destinations: Vec<String> = virtual_service
        .map(|vs| {
            let mut hosts: Vec<String> = vs
                .http
                .iter()
                .flat_map(|h| h.destination_hosts())
                .map(str::to_string)
                .collect();
            hosts.sort();
            hosts.dedup();
            hosts
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut sniffed = Vec::new();
    for (i, port) in route::http_ports(service).into_iter().enumerate() {
        let routes = route::host_port_routes(mesh, service, port.number, &mut problems);
        if layout == RouteLayout::PerPort && route::is_sniffed(service, port) {
            let configs = route::sniffed_configs(service, port.number, &routes);
            sniffed.extend(configs.into_iter().filter_map(|(caller, config)| {
                let selector = variant_selector(caller.namespace.as_deref(), &caller.labels);
                Some((selector, Resource::encode(config.name.clone(), &config)?))
            }));
        }
        let domains = |same_namespace| {
            route::candidate_domains(
                service,
                port.number,
                DomainPorts::of(layout, i == 0),
                same_namespace,
                &mesh.domain_suffix,
            )
        };
        let own_domains = domains(true);
        let encode = |domains: Vec<String>, routes: &Vec<Route>| {
            Parts::leaf(
                RouteConfiguration {
                    virtual_hosts: vec![route::virtual_host(
                        format!("{host}:{}", port.number),
                        domains,
                        routes.clone(),
                    )],
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        };
        let namespace = namespace_of(host, &mesh.domain_suffix);
        let mut by_caller = BTreeMap::new();
        for (caller, routes) in &routes.by_caller {
            // A named namespace reads the bare name if the host is its own; any other
            // namespace reads it in the host's own namespace only.
            let owns = match &caller.namespace {
                Some(ns) => vec![namespace.as_ref() == Some(ns)],
                None => vec![true, false],
            };
            for own in owns {
                by_caller.insert((caller.clone(), own), encode(domains(own), routes));
            }
        }
        let other_domains = domains(false);
        let own_only_domains = own_domains
            .iter()
            .filter(|d| !other_domains.contains(d))
            .cloned()
            .collect();
        let entry = VirtualHostEntry {
            own: encode(own_domains, &routes.rest),
            other: encode(other_domains.clone(), &routes.rest),
            by_caller,
            selectors: routes.selectors.clone(),
            domains: other_domains,
            own_only_domains,
            virtual_service: virtual_service.map(|vs| vs.origin.clone()),
            destinations: destinations.clone(),
            visible: service.export_to.clone(),
        };
        entries.push((layout.route_name(port.number), port.number, entry));
    }
    Some(BuiltVirtualHosts {
        entries,
        virtual_service: virtual_service.map(|vs| vs.origin.clone()),
        problems,
        sniffed,
    })
}

/// The namespace of a cluster-local host, `None` for any other host.
pub(super) fn namespace_of(host: &str, domain_suffix: &str) -> Option<String> {
    hostname::local_namespace(host, domain_suffix).map(str::to_string)
}

impl Translator {
    /// Replaces the virtual hosts of `host` (of `namespace`) by `built` (none: the host is
    /// gone); returns the groups they were and are in.
    pub(super) fn install_virtual_hosts(
        &mut self,
        host: &str,
        namespace: &Option<String>,
        built: Option<BuiltVirtualHosts>,
    ) -> BTreeSet<Group> {
        let mut groups = BTreeSet::new();
        for (group, host_key, port) in self.host_keys.remove(host).unwrap_or_default() {
            let (entry, emptied) = match self.virtual_hosts.get_mut(&group) {
                Some(entries) => (entries.remove(&(host_key, port)), entries.is_empty()),
                None => (None, false),
            };
            if emptied {
                self.virtual_hosts.remove(&group);
            }
            if let Some(entry) = entry {
                self.forget(host, &group, &entry);
            }
            groups.insert(group);
        }
        let Some(built) = built else {
            return groups;
        };
        let mut keys = Vec::new();
        for (route, port, entry) in built.entries {
            let group = Group {
                route,
                namespace: namespace.clone(),
            };
            self.remember(host, &group, &entry);
            self.virtual_hosts
                .entry(group.clone())
                .or_default()
                .insert((host.to_string(), port), entry);
            keys.push((group.clone(), host.to_string(), port));
            groups.insert(group);
        }
        if !keys.is_empty() {
            self.host_keys.insert(host.to_string(), keys);
        }
        if let Some(vs) = built.virtual_service {
            let by_host = self.route_problems.entry(vs).or_default();
            if built.problems.is_empty() {
                by_host.remove(host);
            } else {
                by_host.insert(host.to_string(), built.problems);
            }
        }
        groups
    }

    /// The groups of `host`'s virtual hosts.
    pub(super) fn groups_of<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Group> + 'a {
        self.host_keys.get(host).into_iter().flatten().map(|k| &k.0)
    }

    /// Records what a new virtual host depends on and claims.
    fn remember(&mut self, host: &str, group: &Group, entry: &VirtualHostEntry) {
        if let Some(vs) = &entry.virtual_service {
            self.carried_by
                .entry(vs.clone())
                .or_default()
                .insert(host.to_string());
        }
        for destination in &entry.destinations {
            self.routed_through
                .entry(destination.clone())
                .or_default()
                .insert(host.to_string());
        }
        for domain in &entry.domains {
            self.domain_claims.claim(domain, group, false);
        }
        for domain in &entry.own_only_domains {
            self.domain_claims.claim(domain, group, true);
        }
        for selector in &entry.selectors {
            *self.source_selectors.entry(selector.clone()).or_default() += 1;
        }
    }

    /// Undoes [`Self::remember`] for a virtual host being replaced or removed.
    fn forget(&mut self, host: &str, group: &Group, entry: &VirtualHostEntry) {
        if let Some(vs) = &entry.virtual_service
            && let Some(hosts) = self.carried_by.get_mut(vs)
        {
            hosts.remove(host);
            if hosts.is_empty() {
                self.carried_by.remove(vs);
            }
        }
        for destination in &entry.destinations {
            if let Some(hosts) = self.routed_through.get_mut(destination) {
                hosts.remove(host);
                if hosts.is_empty() {
                    self.routed_through.remove(destination);
                }
            }
        }
        for domain in &entry.domains {
            self.domain_claims.release(domain, group, false);
        }
        for domain in &entry.own_only_domains {
            self.domain_claims.release(domain, group, true);
        }
        for selector in &entry.selectors {
            if let Some(count) = self.source_selectors.get_mut(selector) {
                *count -= 1;
                if *count == 0 {
                    self.source_selectors.remove(selector);
                }
            }
        }
        if let Some(vs) = &entry.virtual_service
            && let Some(by_host) = self.route_problems.get_mut(vs)
        {
            by_host.remove(host);
            if by_host.is_empty() {
                self.route_problems.remove(vs);
            }
        }
    }
}
