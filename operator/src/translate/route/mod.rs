//! RDS: the outbound route configurations. One virtual host per service host and HTTP port,
//! answering to the names Istio gives it; its routes come from the VirtualService for the
//! host, or a single default route to the service when there is none. Direct-mode sidecars
//! have one route configuration for every port; capture-mode sidecars one per port, as
//! istiod's ([`RouteLayout`]).

mod action;
mod caller;
mod convert;
mod cors;
mod fault;
mod hash;
mod headers;
mod matching;
mod mirror;
mod port_routes;
mod retry;
mod sniffed;

pub(super) use retry::hoist_shared_policy;

pub(super) use action::{Binding, cluster_for, routes_bound};
pub(crate) use caller::{Caller, Labels, class_of, includes, label_classes, union};
pub(super) use port_routes::{PortRoutes, host_port_routes, rule_readers};
pub(crate) use sniffed::{detected_routes, is_sniffed, sniffed_configs};

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use tracing::debug;

use super::OUTBOUND_HTTP;
use crate::model::hostname;
use crate::model::service::{ExportTo, Origin, Resolution};
use crate::model::{Mesh, Port, Problem, Service, VirtualService};

/// How sidecars' outbound HTTP is split into route configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLayout {
    /// One, `outbound_http`, for every port: the direct-mode listener takes every service's
    /// requests, so the Host header's port picks the service port (a name without a port
    /// means the service's first HTTP port).
    Shared,
    /// One per port, named by the port (istiod's RDS names), holding the services of that
    /// port with names only: the listener the connection arrived at is the port, so the
    /// Host header's port is ignored (`ignore_port_in_host_matching`), as with istiod.
    PerPort,
}

impl RouteLayout {
    /// The route configuration the virtual hosts of a service's `port` go into.
    pub fn route_name(self, port: u32) -> RouteName {
        match self {
            Self::Shared => RouteName::Shared,
            Self::PerPort => RouteName::Port(port),
        }
    }

    /// The route configurations a sidecar always has, whatever the services.
    pub fn fixed_routes(self) -> &'static [RouteName] {
        match self {
            Self::Shared => &[RouteName::Shared],
            Self::PerPort => &[],
        }
    }
}

/// One of the sidecars' outbound route configurations: `outbound_http`, or a port's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteName {
    Shared,
    Port(u32),
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shared => f.write_str(OUTBOUND_HTTP),
            Self::Port(port) => write!(f, "{port}"),
        }
    }
}

/// The outbound route configurations as seen by each set of sidecars, by name. Short names
/// resolve in the proxy's namespace, as with Istio: `reviews` means
/// `reviews.<proxy namespace>.svc...`, so a namespace with services of its own gets its own
/// variant; so do the namespaces and label classes VirtualService matches name by source.
/// [`Caller::anyone`] is the variant for every other sidecar, which answers only to
/// qualified names. Configurations `required` are built even where no service has a virtual host (a port
/// only a bound egress listener has): their variants hold none.
pub fn route_configurations(
    mesh: &Mesh,
    layout: RouteLayout,
    required: impl IntoIterator<Item = RouteName>,
) -> (Vec<(Caller, RouteConfiguration)>, Vec<Problem>) {
    let mut problems = Vec::new();
    // Routes are built once per service port (and per caller its matches name by source);
    // only the domains differ between variants.
    let mut entries = Vec::new();
    let mut by_source: BTreeSet<String> = BTreeSet::new();
    let mut selectors: BTreeSet<Labels> = BTreeSet::new();
    for service in mesh.services.values() {
        for (i, port) in http_ports(service).into_iter().enumerate() {
            let routes = host_port_routes(mesh, service, port.number, &mut problems);
            by_source.extend(routes.by_caller.keys().filter_map(|c| c.namespace.clone()));
            selectors.extend(routes.selectors.iter().cloned());
            entries.push(HostPort {
                service,
                namespace: hostname::local_namespace(&service.host, &mesh.domain_suffix),
                route: layout.route_name(port.number),
                port: port.number,
                ports: DomainPorts::of(layout, i == 0),
                routes,
            });
        }
    }
    // Per route configuration, grouped by namespace (hosts outside the cluster first), so
    // that a change touches one group of a configuration (see `Translator`); a stable sort
    // keeps host and port order.
    entries.sort_by(|a, b| (a.route, a.namespace).cmp(&(b.route, b.namespace)));
    let mut names: BTreeSet<RouteName> = layout.fixed_routes().iter().copied().collect();
    names.extend(entries.iter().map(|e| e.route));
    names.extend(required);
    for vs in mesh.virtual_services.values() {
        problems.extend(unbound(mesh, vs));
    }
    let exported_to = entries.iter().flat_map(|e| match &e.service.export_to {
        ExportTo::Namespaces(set) => set.iter().map(|ns| Some(ns.as_str())).collect(),
        ExportTo::All => Vec::new(),
    });
    let namespaces: BTreeSet<Option<&str>> = std::iter::once(None)
        .chain(entries.iter().filter_map(|e| e.namespace.map(Some)))
        .chain(exported_to)
        .chain(by_source.iter().map(|ns| Some(ns.as_str())))
        .collect();
    let classes = label_classes(&selectors);
    let mut configs = Vec::new();
    for name in names {
        let entries: Vec<&HostPort<'_>> = entries.iter().filter(|e| e.route == name).collect();
        for &namespace in &namespaces {
            for labels in &classes {
                let caller = Caller::new(namespace, labels);
                let header = empty_config(&name.to_string(), layout);
                let config = config_for(header, &entries, &caller, &mesh.domain_suffix);
                configs.push((caller, config));
            }
        }
    }
    (configs, problems)
}

/// One service port's virtual host, before its domains are chosen.
struct HostPort<'a> {
    service: &'a Service,
    /// The namespace of a cluster-local host (`name.ns.svc.<suffix>`).
    namespace: Option<&'a str>,
    /// The route configuration it goes into.
    route: RouteName,
    port: u32,
    ports: DomainPorts,
    routes: PortRoutes,
}

/// Whether a virtual host's domains carry the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DomainPorts {
    /// `name:port` for every name, and `name` too for a service's first HTTP port.
    With { also_bare: bool },
    /// `name` alone: the route configuration is the port's and ignores the Host's port.
    Ignored,
}

impl DomainPorts {
    pub(super) fn of(layout: RouteLayout, first_port: bool) -> Self {
        match layout {
            RouteLayout::Shared => Self::With {
                also_bare: first_port,
            },
            RouteLayout::PerPort => Self::Ignored,
        }
    }
}

/// A service's HTTP ports, lowest first (the first also answers to names without a port).
pub(super) fn http_ports(service: &Service) -> Vec<&Port> {
    let mut ports: Vec<&Port> = service.ports.iter().filter(|p| p.is_http()).collect();
    ports.sort_by_key(|p| p.number);
    ports
}

/// A service port's virtual host, its routes' shared retry policy said once.
pub(super) fn virtual_host(name: String, domains: Vec<String>, routes: Vec<Route>) -> VirtualHost {
    let mut virtual_host = VirtualHost {
        name,
        domains,
        routes,
        ..Default::default()
    };
    hoist_shared_policy(&mut virtual_host);
    virtual_host
}

/// The route configuration `name` without virtual hosts: name and settings.
pub(super) fn empty_config(name: &str, layout: RouteLayout) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        // Routes may name clusters of services that do not exist (yet); Envoy answers those
        // requests with 503 instead of rejecting the whole configuration, as with istiod.
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ignore_port_in_host_matching: layout == RouteLayout::PerPort,
        ..Default::default()
    }
}

/// `header` with the virtual hosts of `entries` the sidecars of `caller` read.
fn config_for(
    header: RouteConfiguration,
    entries: &[&HostPort<'_>],
    caller: &Caller,
    domain_suffix: &str,
) -> RouteConfiguration {
    let namespace = caller.namespace.as_deref();
    let mut taken = BTreeSet::new();
    let virtual_hosts = entries
        .iter()
        .filter(|entry| entry.service.export_to.includes(namespace))
        .filter_map(|entry| {
            let same_namespace = entry.namespace.is_some() && entry.namespace == namespace;
            let domains = domains(entry, same_namespace, domain_suffix, &mut taken);
            let routes = entry.routes.for_caller(namespace, &caller.labels);
            (!domains.is_empty()).then(|| {
                let name = format!("{}:{}", entry.service.host, entry.port);
                virtual_host(name, domains, routes.clone())
            })
        })
        .collect();
    RouteConfiguration {
        virtual_hosts,
        ..header
    }
}

/// The Host header values that reach a service port: every alias, with the port as `ports`
/// says; the bare service name only from its own namespace; as istiod, every name under each
/// alias for a headless Kubernetes Service (`pod-0.db.shop.svc.cluster.local`, a StatefulSet
/// pod's name: its cluster sends to where the client connected); and each of the service's
/// addresses (a Kubernetes Service's cluster IP, a ServiceEntry's `addresses`), so a client
/// calling it by address is routed as by name (IPv6 in brackets, as a Host carries it).
pub(super) fn candidate_domains(
    service: &Service,
    port: u32,
    ports: DomainPorts,
    same_namespace: bool,
    domain_suffix: &str,
) -> Vec<String> {
    let host = &service.host;
    let aliases = hostname::aliases(host, domain_suffix);
    let local = hostname::local_namespace(host, domain_suffix).is_some();
    let visible = if local && !same_namespace {
        // `name` alone is the last alias of a cluster-local host.
        &aliases[..aliases.len() - 1]
    } else {
        &aliases[..]
    };
    let headless = service.resolution == Resolution::Passthrough
        && matches!(service.origin, Origin::Kubernetes(_));
    let under = visible
        .iter()
        .filter(|_| headless)
        .map(|alias| format!("*.{alias}"));
    let addresses = service.addresses.iter().filter_map(|a| host_address(a));
    let mut out = Vec::new();
    for name in visible.iter().cloned().chain(under).chain(addresses) {
        match ports {
            DomainPorts::With { also_bare } => {
                out.push(format!("{name}:{port}"));
                if also_bare {
                    out.push(name);
                }
            }
            DomainPorts::Ignored => out.push(name),
        }
    }
    out
}

/// A service address as a Host header carries it: an IP (IPv6 in brackets); `None` for what
/// names no one destination ([`destination_ip`]).
fn host_address(address: &str) -> Option<String> {
    match destination_ip(address)? {
        std::net::IpAddr::V4(ip) => Some(ip.to_string()),
        std::net::IpAddr::V6(ip) => Some(format!("[{ip}]")),
    }
}

/// A service address that names one destination: an IP, not a CIDR range nor the
/// unspecified address.
fn destination_ip(address: &str) -> Option<std::net::IpAddr> {
    let ip = address.parse::<std::net::IpAddr>().ok()?;
    (!ip.is_unspecified()).then_some(ip)
}

/// [`candidate_domains`] less those an earlier virtual host claimed: Envoy rejects a route
/// configuration with duplicate domains.
fn domains(
    entry: &HostPort<'_>,
    same_namespace: bool,
    domain_suffix: &str,
    taken: &mut BTreeSet<String>,
) -> Vec<String> {
    let candidates = candidate_domains(
        entry.service,
        entry.port,
        entry.ports,
        same_namespace,
        domain_suffix,
    );
    candidates
        .into_iter()
        .filter(|domain| {
            let new = taken.insert(domain.clone());
            if !new {
                debug!(%domain, host = %entry.service.host, "domain already routed to another service");
            }
            new
        })
        .collect()
}

/// A sidecar VirtualService's hosts that no service has: reported, since no proxy can route
/// them yet.
pub(super) fn unbound(mesh: &Mesh, vs: &VirtualService) -> Vec<Problem> {
    if !vs.applies_to_sidecars() {
        return Vec::new();
    }
    vs.hosts
        .iter()
        .enumerate()
        .filter(|(_, host)| !covers_any(mesh, host))
        .map(|(i, host)| Problem {
            object: vs.origin.clone(),
            field: format!("spec.hosts[{i}]"),
            message: format!(
                "no ServiceEntry or Kubernetes Service defines host {host}; its routes are not served"
            ),
        })
        .collect()
}

/// Whether `pattern` covers some service host. An exact host is a lookup; a wildcard scans.
fn covers_any(mesh: &Mesh, pattern: &str) -> bool {
    if !pattern.starts_with('*') {
        return mesh.services.contains_key(pattern);
    }
    mesh.services.keys().any(|s| hostname::matches(pattern, s))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod field_tests;
