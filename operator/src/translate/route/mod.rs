//! RDS: the outbound route configuration. One virtual host per service host and HTTP port,
//! answering to the names Istio gives it; its routes come from the VirtualService for the
//! host, or a single default route to the service when there is none.

mod action;
mod matching;

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use tracing::debug;

use super::{OUTBOUND_HTTP, cluster_name};
use crate::model::hostname;
use crate::model::{Mesh, Port, Problem, Service};

/// The outbound route configuration as seen from each namespace. Short names resolve in the
/// proxy's namespace, as with Istio: `reviews` means `reviews.<proxy namespace>.svc...`, so a
/// namespace with services of its own gets its own variant (`Some(ns)`); `None` is the
/// variant for every other proxy, which answers only to qualified names.
pub fn route_configurations(
    mesh: &Mesh,
) -> (Vec<(Option<String>, RouteConfiguration)>, Vec<Problem>) {
    let mut problems = Vec::new();
    // Routes are built once per service port; only the domains differ between variants.
    let mut entries = Vec::new();
    for service in mesh.services.values() {
        let mut ports: Vec<&Port> = service.ports.iter().filter(|p| p.is_http()).collect();
        ports.sort_by_key(|p| p.number);
        for (i, port) in ports.iter().enumerate() {
            let routes = match mesh.virtual_service_for(&service.host) {
                Some(vs) => action::routes(mesh, vs, port.number, &mut problems),
                None => vec![default_route(service, port.number)],
            };
            entries.push(HostPort {
                service,
                namespace: hostname::local_namespace(&service.host, &mesh.domain_suffix),
                port: port.number,
                // Only the first HTTP port also answers to names without a port.
                first_port: i == 0,
                routes,
            });
        }
    }
    report_unbound(mesh, &mut problems);
    let namespaces: BTreeSet<Option<&str>> = std::iter::once(None)
        .chain(entries.iter().filter_map(|e| e.namespace.map(Some)))
        .collect();
    let configs = namespaces
        .into_iter()
        .map(|namespace| {
            let config = config_for(&entries, namespace, &mesh.domain_suffix);
            (namespace.map(str::to_string), config)
        })
        .collect();
    (configs, problems)
}

/// One service port's virtual host, before its domains are chosen.
struct HostPort<'a> {
    service: &'a Service,
    /// The namespace of a cluster-local host (`name.ns.svc.<suffix>`).
    namespace: Option<&'a str>,
    port: u32,
    first_port: bool,
    routes: Vec<Route>,
}

fn config_for(
    entries: &[HostPort<'_>],
    namespace: Option<&str>,
    domain_suffix: &str,
) -> RouteConfiguration {
    let mut taken = BTreeSet::new();
    let virtual_hosts = entries
        .iter()
        .filter_map(|entry| {
            let same_namespace = entry.namespace.is_some() && entry.namespace == namespace;
            let domains = domains(entry, same_namespace, domain_suffix, &mut taken);
            (!domains.is_empty()).then(|| VirtualHost {
                name: format!("{}:{}", entry.service.host, entry.port),
                domains,
                routes: entry.routes.clone(),
                ..Default::default()
            })
        })
        .collect();
    RouteConfiguration {
        name: OUTBOUND_HTTP.to_string(),
        virtual_hosts,
        // Routes may name clusters of services that do not exist (yet); Envoy answers those
        // requests with 503 instead of rejecting the whole configuration, as with istiod.
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

/// The Host header values that reach this service port: every alias with the port, and for
/// the first HTTP port also without it; the bare service name only from its own namespace. A
/// name already claimed by an earlier virtual host is left out: Envoy rejects a route
/// configuration with duplicate domains.
fn domains(
    entry: &HostPort<'_>,
    same_namespace: bool,
    domain_suffix: &str,
    taken: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let aliases = hostname::aliases(&entry.service.host, domain_suffix);
    let visible = if entry.namespace.is_some() && !same_namespace {
        // `name` alone is the last alias of a cluster-local host.
        &aliases[..aliases.len() - 1]
    } else {
        &aliases[..]
    };
    for alias in visible {
        let mut candidates = vec![format!("{alias}:{}", entry.port)];
        if entry.first_port {
            candidates.push(alias.clone());
        }
        for domain in candidates {
            if taken.insert(domain.clone()) {
                out.push(domain);
            } else {
                debug!(%domain, host = %entry.service.host, "domain already routed to another service");
            }
        }
    }
    out
}

fn default_route(service: &Service, port: u32) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
                port,
                "",
                &service.host,
            ))),
            timeout: Some(action::NO_TIMEOUT),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// VirtualServices for hosts no service has: reported, since no proxy can route them yet.
fn report_unbound(mesh: &Mesh, problems: &mut Vec<Problem>) {
    for vs in mesh
        .virtual_services
        .iter()
        .filter(|vs| vs.applies_to_sidecars())
    {
        for (i, host) in vs.hosts.iter().enumerate() {
            if !mesh.services.keys().any(|s| hostname::matches(host, s)) {
                problems.push(Problem {
                    object: vs.origin.clone(),
                    field: format!("spec.hosts[{i}]"),
                    message: format!(
                        "no ServiceEntry or Kubernetes Service defines host {host}; its routes are not served"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
