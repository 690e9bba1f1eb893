//! What the capture-mode listeners were built from, so that a change to some services
//! rebuilds only the listeners of their ports and of their endpoints' workloads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_xds::{Resource, Role, Selector, Update, type_url};

use super::inbound::{self, Served};
use super::mtls::{Accepts, InboundMtls};
use super::{VIRTUAL_INBOUND, inbound_cluster_name, ingress, outbound};
use crate::model::sidecar_scope::{
    BoundEgressVariants, InboundPools, IngressVariants, OutboundModes,
};
use crate::model::traffic_policy::ConnectionPool;
use crate::model::{Mesh, PolicyScope, Problem, Service};
use crate::translate::authorization::InboundAuthz;
use crate::translate::route_tcp_proxy::host_rule_effects;
use capstan_crds::ProtocolClass;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use port_listeners::{PortListeners, port_listeners};
use shared_chains::{ChainScopes, KeptListener, SharedListener};

/// How a host uses one of its ports, outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortUse {
    Http,
    /// TLS (HTTPS included): told apart by SNI.
    Tls,
    /// The addresses clients dial for it (none: only the port tells it apart).
    Tcp(Vec<String>),
    /// No protocol declared: HTTP or TCP, as the first bytes of each connection say (its
    /// addresses as for TCP).
    Detected(Vec<String>),
}

/// What a host was last counted under.
#[derive(Default)]
struct HostUse {
    ports: Vec<(u32, PortUse)>,
    /// What its DestinationRules set on its own TCP proxies, for the rest and per namespace
    /// reading another rule: a change rebuilds its ports' listeners.
    stream_rules: Vec<(Option<String>, TcpProxy)>,
    /// The workload addresses of its endpoints.
    workloads: BTreeSet<String>,
}

#[derive(Default)]
pub struct CaptureState {
    /// Port → the hosts using it, and how.
    ports: BTreeMap<u32, BTreeMap<String, PortUse>>,
    hosts: HashMap<String, HostUse>,
    /// Workload address → the hosts with an endpoint there.
    workloads: BTreeMap<String, BTreeSet<String>>,
    /// The listeners built per port, and each workload's inbound ports.
    port_listeners: BTreeMap<u32, BTreeSet<String>>,
    /// Per port, the hosts its routes send to besides its own (a change to one of them
    /// rebuilds the port).
    port_destinations: BTreeMap<u32, BTreeSet<String>>,
    inbound: BTreeMap<String, BTreeMap<u32, Served>>,
    /// Inbound port → how many workloads serve it (its cluster exists while any does), and
    /// how the first served it.
    inbound_clusters: BTreeMap<u32, (usize, Served)>,
    /// The limits the inbound clusters were last built with, and the workloads' own (from
    /// their services' DestinationRules), by address and port.
    inbound_pools: InboundPools,
    workload_limits: BTreeMap<String, BTreeMap<u32, ConnectionPool>>,
    problems: BTreeMap<u32, Vec<Problem>>,
    /// The listeners of one service's address (TCP, or a port without a protocol), by name,
    /// and their service; by service: who sees it sees them ([`Self::listeners_of`]).
    owners: BTreeMap<String, String>,
    owned: HashMap<String, BTreeSet<String>>,
    /// Such listeners put since [`Self::take_put`] last ran, with their service.
    put_owned: Vec<(String, String)>,
    /// The outbound modes `virtualOutbound` and the TLS ports' fallthrough chains were last
    /// built for.
    outbound_modes: Option<OutboundModes>,
    /// The listeners services share by port (TLS services', CIDR addresses'), open-ended
    /// ones without their fallthrough chain, and who sees their chains.
    shared: BTreeMap<u32, KeptListener>,
    chain_scopes: ChainScopes,
    /// The sets of sidecars (beside everyone) each port listener was last put for.
    variant_selectors: BTreeMap<String, BTreeSet<Selector>>,
    /// The `Sidecar` ingress listeners `virtualInbound` was last built for, and the
    /// clusters they send to.
    ingress: IngressVariants,
    ingress_clusters: BTreeSet<String>,
    /// `virtualInbound` as last put for the sets of sidecars without a listener of their
    /// own ([`default_inbound`]).
    /// (`None`: to be built.)
    default_inbound: BTreeMap<Selector, Option<Resource>>,
    /// Each workload's namespace and labels as its listeners were last built from its
    /// endpoints (see [`sidecar_settings::workload_selector`]): a policy change finds the
    /// workloads it covers from these.
    workload_selectors: HashMap<String, Selector>,
    /// The sets of sidecars the policies and `Sidecar`s set apart, before they were joined.
    default_apart: BTreeSet<Selector>,
    /// The workloads whose ingress listeners are their own (`virtualInbound` per address:
    /// their identity or policies apply).
    ingress_workloads: BTreeSet<String>,
    /// Per such workload, its bound ingress listeners (`captureMode: NONE`) put for its
    /// address.
    workload_bound: BTreeMap<String, BTreeSet<String>>,
    /// The `Sidecar` egress listeners bound to sockets of their own, last put, and the
    /// sets of sidecars each such listener, and each bound ingress listener, was put for.
    bound_egress: BoundEgressVariants,
    bound_egress_put: bound_listeners::PutFor,
    bound_ingress_put: bound_listeners::PutFor,
    /// What of the bound TLS and TCP egress listeners is not served as written.
    bound_problems: Vec<Problem>,
}

pub(super) fn sidecars() -> Selector {
    Selector::role(Role::Sidecar)
}

impl CaptureState {
    /// Everything for `mesh`, from nothing.
    pub fn full(mesh: &Mesh, outbound_modes: &OutboundModes) -> (Self, Update) {
        let mut state = Self::default();
        let mut update = Update::new();
        for cluster in inbound::passthrough_clusters() {
            put(
                &mut update,
                sidecars(),
                type_url::CLUSTER,
                &cluster.name.clone(),
                &cluster,
            );
        }
        let blackhole = outbound::blackhole_cluster();
        put(
            &mut update,
            sidecars(),
            type_url::CLUSTER,
            &blackhole.name.clone(),
            &blackhole,
        );
        state.set_outbound_modes(outbound_modes, &mut update);
        // Before the workloads' clusters are built, which read them.
        state.inbound_pools = mesh.sidecar_scopes.inbound_pools();
        state.set_ingress(mesh, &mesh.sidecar_scopes.ingress_variants(), &mut update);
        // A sidecar whose address has no endpoints still gets its inbound passthrough, or
        // the ingress listeners of its Sidecar, under the policies that select it.
        state.put_default_inbound(mesh, None, &mut update);
        state.set_bound_egress(
            mesh,
            &mesh.sidecar_scopes.bound_egress_variants(),
            &mut update,
        );
        let hosts: Vec<&str> = mesh.services.keys().map(String::as_str).collect();
        state.update(mesh, hosts, &mut update);
        state.put_scoped_chains(&mut update);
        (state, update)
    }

    /// The listeners that belong to the service `host` alone (its TCP addresses).
    pub fn listeners_of(&self, host: &str) -> impl Iterator<Item = &String> {
        self.owned.get(host).into_iter().flatten()
    }

    /// The listeners of one service put since the last call, with their service: their
    /// visibility is set again.
    pub fn take_put(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.put_owned)
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten().chain(&self.bound_problems)
    }

    /// Recounts `hosts` (changed, new or gone) and rebuilds the listeners that depend on them:
    /// their ports', their workloads', and those of ports whose routes send to them.
    pub fn update<'a>(
        &mut self,
        mesh: &Mesh,
        hosts: impl IntoIterator<Item = &'a str>,
        update: &mut Update,
    ) {
        let mut ports = BTreeSet::new();
        let mut workloads = BTreeSet::new();
        for host in hosts {
            for (port, destinations) in &self.port_destinations {
                if destinations.contains(host) {
                    ports.insert(*port);
                }
            }
            let old = self.hosts.remove(host).unwrap_or_default();
            let new = (mesh.services.get(host))
                .map(|s| host_use(mesh, s))
                .unwrap_or_default();
            // A port's listeners read only how its hosts use it, what their rules set on
            // their own chains (and their routes, see `routes_changed`): an endpoint change
            // leaves them be.
            if old.ports != new.ports || old.stream_rules != new.stream_rules {
                for (port, _) in &old.ports {
                    if let Some(users) = self.ports.get_mut(port) {
                        users.remove(host);
                    }
                    ports.insert(*port);
                }
                for (port, how) in &new.ports {
                    self.ports
                        .entry(*port)
                        .or_default()
                        .insert(host.to_string(), how.clone());
                    ports.insert(*port);
                }
            }
            for address in &old.workloads {
                if let Some(hosts) = self.workloads.get_mut(address) {
                    hosts.remove(host);
                }
                workloads.insert(address.clone());
            }
            for address in &new.workloads {
                self.workloads
                    .entry(address.clone())
                    .or_default()
                    .insert(host.to_string());
                workloads.insert(address.clone());
            }
            if !new.ports.is_empty() || !new.workloads.is_empty() {
                self.hosts.insert(host.to_string(), new);
            }
        }
        for port in ports {
            self.rebuild_port(mesh, port, update);
        }
        for address in workloads {
            self.rebuild_workload(mesh, &address, update);
        }
    }

    /// Rebuilds the ports of the services `patterns` (the hosts of changed VirtualServices,
    /// wildcards included) name: their `tcp` and `tls` routes may have changed.
    pub fn routes_changed<'a>(
        &mut self,
        mesh: &Mesh,
        patterns: impl IntoIterator<Item = &'a String>,
        update: &mut Update,
    ) {
        let mut ports = BTreeSet::new();
        for pattern in patterns {
            let named = |host: &&String| crate::model::hostname::matches(pattern, host);
            for host in self.hosts.keys().filter(named) {
                ports.extend(self.hosts[host].ports.iter().map(|(p, _)| *p));
            }
        }
        for port in ports {
            self.rebuild_port(mesh, port, update);
        }
    }

    fn rebuild_port(&mut self, mesh: &Mesh, port: u32, update: &mut Update) {
        if self.ports.get(&port).is_some_and(BTreeMap::is_empty) {
            self.ports.remove(&port);
        }
        let mut problems = Vec::new();
        let no_users = BTreeMap::new();
        let users = self.ports.get(&port).unwrap_or(&no_users);
        let PortListeners {
            same,
            open,
            destinations,
            owners,
        } = port_listeners(mesh, port, users, &mut problems);
        if destinations.is_empty() {
            self.port_destinations.remove(&port);
        } else {
            self.port_destinations.insert(port, destinations);
        }
        let names: BTreeSet<String> = same
            .iter()
            .chain(&open)
            .map(|l| l.name().to_string())
            .collect();
        let before = self.port_listeners.remove(&port).unwrap_or_default();
        for gone in before.difference(&names) {
            update.remove(type_url::LISTENER, gone);
            self.variant_selectors.remove(gone);
        }
        let owned_now: BTreeSet<&String> = owners.iter().map(|(name, _)| name).collect();
        for name in &before {
            if let Some(host) = self.owners.remove(name) {
                if let Some(set) = self.owned.get_mut(&host) {
                    set.remove(name);
                    if set.is_empty() {
                        self.owned.remove(&host);
                    }
                }
                // Still there, now shared (an HTTP or TLS port's): seen by every sidecar.
                if names.contains(name) && !owned_now.contains(name) {
                    update.set_visibility(type_url::LISTENER, name, None);
                }
            }
        }
        for (name, host) in owners {
            self.owned
                .entry(host.clone())
                .or_default()
                .insert(name.clone());
            self.owners.insert(name.clone(), host.clone());
            self.put_owned.push((name, host));
        }
        let mut shared = open.map(|listener| SharedListener {
            listener,
            open: true,
        });
        for listener in same {
            if !listener.chain_hosts.is_empty() {
                // The port's HTTP listener, with CIDR addresses' chains.
                shared = Some(SharedListener {
                    listener,
                    open: false,
                });
                continue;
            }
            self.put_port_listener(&listener.everyone, listener.variants(), update);
        }
        self.set_shared(port, shared);
        if !names.is_empty() {
            self.port_listeners.insert(port, names);
        }
        if problems.is_empty() {
            self.problems.remove(&port);
        } else {
            self.problems.insert(port, problems);
        }
        self.rebuild_bound_egress_on(mesh, port, update);
    }

    /// Rebuilds every workload's inbound side (what their ports accept changed).
    pub fn rebuild_workloads(&mut self, mesh: &Mesh, update: &mut Update) {
        let addresses: Vec<String> = self.workloads.keys().cloned().collect();
        for address in addresses {
            self.rebuild_workload(mesh, &address, update);
        }
    }

    /// Rebuilds the inbound side of the workloads `scopes` cover (a security policy there
    /// changed): a check of each workload's namespace and labels, and a rebuild of those
    /// covered only.
    pub fn rebuild_workloads_in(
        &mut self,
        mesh: &Mesh,
        scopes: &[PolicyScope],
        update: &mut Update,
    ) {
        let root = mesh.sidecar_scopes.root_namespace();
        // Read from the namespace and labels kept when each workload was last built: the
        // endpoints of every workload of a namespace need not be walked again.
        let covered: Vec<String> = self
            .workload_selectors
            .iter()
            .filter(|(_, w)| {
                let namespace = w.namespace.as_deref().unwrap_or_default();
                scopes.iter().any(|s| s.covers(root, namespace, &w.labels))
            })
            .map(|(address, _)| address.clone())
            .collect();
        for address in covered {
            self.rebuild_workload(mesh, &address, update);
        }
        self.put_default_inbound(mesh, Some(scopes), update);
    }

    fn rebuild_workload(&mut self, mesh: &Mesh, address: &str, update: &mut Update) {
        let hosts = self.workloads.get(address).cloned().unwrap_or_default();
        if hosts.is_empty() {
            self.workloads.remove(address);
        }
        let workload = sidecar_settings::workload_selector(mesh, address, &hosts);
        // Its Sidecar's ingress listeners, if it lists any, instead of its service ports.
        let ingress = (workload.as_ref())
            .filter(|_| !self.ingress.is_empty())
            .map(|w| self.ingress.for_proxies(w))
            .filter(|ports| !ports.is_empty())
            .cloned();
        let served = if ingress.is_some() {
            BTreeMap::new()
        } else {
            workload_ports(mesh, address, &hosts)
        };
        let (mtls, authz) = match &workload {
            Some(workload) => {
                let namespace = workload.namespace.as_deref().unwrap_or_default();
                (
                    InboundMtls::of(mesh, namespace, &workload.labels),
                    InboundAuthz::for_workload(mesh, namespace, &workload.labels),
                )
            }
            None => (InboundMtls::none(), InboundAuthz::default()),
        };
        // Kept for policy changes to find the workloads they cover (moved, not copied).
        match workload {
            Some(selector) => match self.workload_selectors.get_mut(address) {
                Some(kept) => *kept = selector,
                None => {
                    (self.workload_selectors).insert(address.to_string(), selector);
                }
            },
            None => {
                self.workload_selectors.remove(address);
            }
        }
        let old = self.inbound.remove(address).unwrap_or_default();
        let selector = Selector::workload(address);
        // The ingress listeners as its Sidecar's selector has them, unless the workload's
        // identity or policies make its own differ.
        let own_ingress = ingress.filter(|ports| {
            !authz.is_empty()
                || ports
                    .iter()
                    .any(|p| mtls.for_port(p.port) != Accepts::Anything)
        });
        let had_own_ingress = self.ingress_workloads.remove(address);
        let had_bound: BTreeSet<String> = self.workload_bound.remove(address).unwrap_or_default();
        let mut bound = BTreeSet::new();
        if let Some(ports) = &own_ingress {
            // Its ports bound to sockets of their own, with its identity and policies too.
            for port in ports {
                let Some(at) = port.bound.as_deref() else {
                    continue;
                };
                let listener = ingress::workload_bound_listener(port, at, &mtls, &authz);
                put(
                    update,
                    selector.clone(),
                    type_url::LISTENER,
                    &listener.name,
                    &listener,
                );
                bound.insert(listener.name);
            }
        }
        for gone in had_bound.difference(&bound) {
            update.remove_for(selector.clone(), type_url::LISTENER, gone);
        }
        if !bound.is_empty() {
            self.workload_bound.insert(address.to_string(), bound);
        }
        if let Some(ports) = own_ingress {
            let listener = ingress::workload_virtual_inbound(&ports, &mtls, &authz);
            put(
                update,
                selector,
                type_url::LISTENER,
                VIRTUAL_INBOUND,
                &listener,
            );
            self.ingress_workloads.insert(address.to_string());
        } else if served.is_empty() {
            if !old.is_empty() || had_own_ingress {
                update.remove_for(selector, type_url::LISTENER, VIRTUAL_INBOUND);
            }
        } else {
            let listener = inbound::virtual_inbound(&served, &mtls, &authz);
            put(
                update,
                selector,
                type_url::LISTENER,
                VIRTUAL_INBOUND,
                &listener,
            );
        }
        for port in old.keys().filter(|p| !served.contains_key(p)) {
            if let Some((count, _)) = self.inbound_clusters.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.inbound_clusters.remove(port);
                    update.remove(type_url::CLUSTER, &inbound_cluster_name(*port));
                }
            }
        }
        for (port, how) in &served {
            if !old.contains_key(port) {
                let (count, _) = self.inbound_clusters.entry(*port).or_insert((0, *how));
                *count += 1;
                if *count == 1 {
                    sidecar_settings::put_variants(
                        type_url::CLUSTER,
                        &inbound_cluster_name(*port),
                        None,
                        &self.inbound_pools,
                        update,
                        |pool| inbound::inbound_cluster(*port, *how, pool.as_ref()),
                    );
                }
            }
        }
        if !served.is_empty() {
            self.inbound.insert(address.to_string(), served);
        }
        self.set_workload_limits(mesh, address, &hosts, update);
    }
}

pub(super) fn put<M: prost::Message + prost::Name>(
    update: &mut Update,
    selector: Selector,
    type_url: &'static str,
    name: &str,
    message: &M,
) {
    debug_assert!(capstan_xds::type_index(type_url).is_some());
    if let Some(resource) = Resource::encode(name.to_string(), message) {
        update.put_for(selector, resource);
    }
}

fn host_use(mesh: &Mesh, service: &Service) -> HostUse {
    let rules = mesh.destination_rules.get(&service.host);
    let stream_rules = (host_rule_effects(rules).into_iter())
        .map(|(namespace, effects)| (namespace.map(str::to_string), effects))
        .collect();
    HostUse {
        stream_rules,
        ports: service
            .ports
            .iter()
            .map(|p| {
                let tls = p.protocol.is_some_and(|p| p.class() == ProtocolClass::Tls);
                // Addresses and CIDR ranges (`a.b.c.d/n`) clients dial for it.
                let ips = || {
                    service
                        .addresses
                        .iter()
                        .filter(|a| {
                            let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
                            ip.parse::<std::net::IpAddr>().is_ok()
                        })
                        .cloned()
                        .collect()
                };
                let how = if p.protocol.is_none() {
                    PortUse::Detected(ips())
                } else if p.is_http() {
                    PortUse::Http
                } else if tls {
                    PortUse::Tls
                } else {
                    PortUse::Tcp(ips())
                };
                (p.number, how)
            })
            .collect(),
        workloads: service
            .endpoints
            .iter()
            .filter(|e| e.address.parse::<std::net::IpAddr>().is_ok())
            .map(|e| e.address.to_string())
            .collect(),
    }
}

/// The ports the workload at `address` listens on, from the services with endpoints there.
fn workload_ports(mesh: &Mesh, address: &str, hosts: &BTreeSet<String>) -> BTreeMap<u32, Served> {
    let mut out = BTreeMap::new();
    for service in hosts.iter().filter_map(|h| mesh.services.get(h)) {
        for endpoint in service.endpoints.iter().filter(|e| &*e.address == address) {
            for port in &service.ports {
                let served = if port.protocol.is_none() {
                    Served::Detected
                } else if port.is_http() {
                    Served::Http {
                        http2: port.is_http2(),
                    }
                } else {
                    Served::Tcp
                };
                out.entry(endpoint.port_for(port)).or_insert(served);
            }
        }
    }
    out
}

mod bound_listeners;
mod default_inbound;
mod inbound_limits;
mod port_listeners;
mod selector_meets;
mod shared_chains;
mod sidecar_settings;
mod split_listener;
