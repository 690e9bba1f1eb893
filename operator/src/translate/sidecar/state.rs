//! What the capture-mode listeners were built from, so that a change to some services
//! rebuilds only the listeners of their ports and of their endpoints' workloads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capstan_xds::{Resource, Role, Selector, Update, type_url};
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::inbound::{self, Served};
use super::{VIRTUAL_INBOUND, VIRTUAL_OUTBOUND, inbound_cluster_name, outbound};
use crate::model::service::Origin;
use crate::model::{Mesh, Problem, Service};
use crate::translate::cluster_name;

/// How a host uses one of its ports, outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortUse {
    Http,
    /// The addresses clients dial for it (none: only the port tells it apart).
    Tcp(Vec<String>),
}

/// What a host was last counted under.
#[derive(Default)]
struct HostUse {
    ports: Vec<(u32, PortUse)>,
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
    inbound: BTreeMap<String, BTreeMap<u32, Served>>,
    /// Inbound port → how many workloads serve it (its cluster exists while any does).
    inbound_clusters: BTreeMap<u32, usize>,
    problems: BTreeMap<u32, Vec<Problem>>,
}

fn sidecars() -> Selector {
    Selector::role(Role::Sidecar)
}

impl CaptureState {
    /// Everything for `mesh`, from nothing.
    pub fn full(mesh: &Mesh) -> (Self, Update) {
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
        let outbound = outbound::virtual_outbound();
        put(
            &mut update,
            sidecars(),
            type_url::LISTENER,
            VIRTUAL_OUTBOUND,
            &outbound,
        );
        // A sidecar whose address has no endpoints still gets its inbound passthrough.
        let inbound = inbound::virtual_inbound(&BTreeMap::new());
        put(
            &mut update,
            sidecars(),
            type_url::LISTENER,
            VIRTUAL_INBOUND,
            &inbound,
        );
        let hosts: Vec<&str> = mesh.services.keys().map(String::as_str).collect();
        state.update(mesh, hosts, &mut update);
        (state, update)
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }

    /// Recounts `hosts` (changed, new or gone) and rebuilds the listeners that depend on them.
    pub fn update<'a>(
        &mut self,
        mesh: &Mesh,
        hosts: impl IntoIterator<Item = &'a str>,
        update: &mut Update,
    ) {
        let mut ports = BTreeSet::new();
        let mut workloads = BTreeSet::new();
        for host in hosts {
            let old = self.hosts.remove(host).unwrap_or_default();
            let new = mesh.services.get(host).map(host_use).unwrap_or_default();
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

    fn rebuild_port(&mut self, mesh: &Mesh, port: u32, update: &mut Update) {
        let users = self.ports.get(&port).cloned().unwrap_or_default();
        if users.is_empty() {
            self.ports.remove(&port);
        }
        let mut problems = Vec::new();
        let listeners = port_listeners(mesh, port, &users, &mut problems);
        let names: BTreeSet<String> = listeners.iter().map(|l| l.name.clone()).collect();
        for gone in self
            .port_listeners
            .remove(&port)
            .unwrap_or_default()
            .difference(&names)
        {
            update.remove_for(sidecars(), type_url::LISTENER, gone);
        }
        for listener in &listeners {
            put(
                update,
                sidecars(),
                type_url::LISTENER,
                &listener.name,
                listener,
            );
        }
        if !names.is_empty() {
            self.port_listeners.insert(port, names);
        }
        if problems.is_empty() {
            self.problems.remove(&port);
        } else {
            self.problems.insert(port, problems);
        }
    }

    fn rebuild_workload(&mut self, mesh: &Mesh, address: &str, update: &mut Update) {
        let hosts = self.workloads.get(address).cloned().unwrap_or_default();
        if hosts.is_empty() {
            self.workloads.remove(address);
        }
        let served = workload_ports(mesh, address, &hosts);
        let old = self.inbound.remove(address).unwrap_or_default();
        let selector = Selector::workload(address);
        if served.is_empty() {
            if !old.is_empty() {
                update.remove_for(selector, type_url::LISTENER, VIRTUAL_INBOUND);
            }
        } else {
            let listener = inbound::virtual_inbound(&served);
            put(
                update,
                selector,
                type_url::LISTENER,
                VIRTUAL_INBOUND,
                &listener,
            );
        }
        for port in old.keys().filter(|p| !served.contains_key(p)) {
            if let Some(count) = self.inbound_clusters.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.inbound_clusters.remove(port);
                    update.remove_for(sidecars(), type_url::CLUSTER, &inbound_cluster_name(*port));
                }
            }
        }
        for (port, how) in &served {
            if !old.contains_key(port) {
                let count = self.inbound_clusters.entry(*port).or_default();
                *count += 1;
                if *count == 1 {
                    let cluster = inbound::inbound_cluster(*port, *how);
                    put(
                        update,
                        sidecars(),
                        type_url::CLUSTER,
                        &cluster.name.clone(),
                        &cluster,
                    );
                }
            }
        }
        if !served.is_empty() {
            self.inbound.insert(address.to_string(), served);
        }
    }
}

fn put<M: prost::Message + prost::Name>(
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

fn host_use(service: &Service) -> HostUse {
    HostUse {
        ports: service
            .ports
            .iter()
            .map(|p| {
                let how = if p.is_http() {
                    PortUse::Http
                } else {
                    let ips = service
                        .addresses
                        .iter()
                        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                        .cloned()
                        .collect();
                    PortUse::Tcp(ips)
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

/// The outbound listeners of `port`: one for its HTTP services, one per TCP service address,
/// and one for a TCP service without an address when nothing else claims the port.
fn port_listeners(
    mesh: &Mesh,
    port: u32,
    users: &BTreeMap<String, PortUse>,
    problems: &mut Vec<Problem>,
) -> Vec<Listener> {
    let mut out = Vec::new();
    let http = users.values().any(|u| *u == PortUse::Http);
    if http {
        out.push(outbound::http_port(port));
    }
    let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
    for (host, how) in users {
        let PortUse::Tcp(addresses) = how else {
            continue;
        };
        let cluster = cluster_name(port, "", host);
        let wildcard = ["0.0.0.0".to_string()];
        let addresses = if addresses.is_empty() {
            &wildcard[..]
        } else {
            &addresses[..]
        };
        for address in addresses {
            if address == "0.0.0.0" && http {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "TCP port {port} has no address to tell it apart from the HTTP services on \
                     port {port}; give the service an address (ServiceEntry `addresses`)"
                    ),
                );
                continue;
            }
            if let Some(first) = claimed.get(address) {
                report(
                    mesh,
                    host,
                    problems,
                    format!(
                        "{address}:{port} is already the TCP listener of {first}; this service's \
                     traffic on it is not routed"
                    ),
                );
                continue;
            }
            claimed.insert(address.clone(), host);
            out.push(outbound::tcp_port(address, port, &cluster));
        }
    }
    out
}

fn report(mesh: &Mesh, host: &str, problems: &mut Vec<Problem>, message: String) {
    match mesh.services.get(host).map(|s| &s.origin) {
        Some(Origin::Istio(object)) => problems.push(Problem {
            object: object.clone(),
            field: "spec.ports".to_string(),
            message,
        }),
        _ => tracing::warn!(%host, "{message}"),
    }
}

/// The ports the workload at `address` listens on, from the services with endpoints there.
fn workload_ports(mesh: &Mesh, address: &str, hosts: &BTreeSet<String>) -> BTreeMap<u32, Served> {
    let mut out = BTreeMap::new();
    for service in hosts.iter().filter_map(|h| mesh.services.get(h)) {
        for endpoint in service.endpoints.iter().filter(|e| &*e.address == address) {
            for port in &service.ports {
                let served = if port.is_http() {
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
