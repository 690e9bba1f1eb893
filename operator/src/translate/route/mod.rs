//! RDS: the outbound route configuration. One virtual host per service host and HTTP port,
//! answering to the names Istio gives it; its routes come from the VirtualService for the
//! host, or a single default route to the service when there is none.

mod action;
mod matching;

use std::collections::BTreeSet;

use capstan_crds::networking::service_entry::ServicePort;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use tracing::debug;

use super::{OUTBOUND_HTTP, cluster_name, is_http};
use crate::model::hostname;
use crate::model::{Mesh, Problem, Service};

pub fn route_configurations(mesh: &Mesh) -> (Vec<(String, RouteConfiguration)>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut taken = BTreeSet::new();
    let mut virtual_hosts = Vec::new();
    for service in mesh.services.values() {
        let mut ports: Vec<&ServicePort> = service.ports.iter().filter(|p| is_http(p)).collect();
        ports.sort_by_key(|p| p.number);
        for (i, port) in ports.iter().enumerate() {
            // Only the first HTTP port also answers to names without a port.
            let domains = domains(
                service,
                port.number,
                i == 0,
                &mesh.domain_suffix,
                &mut taken,
            );
            if domains.is_empty() {
                continue;
            }
            let routes = match mesh.virtual_service_for(&service.host) {
                Some(vs) => action::routes(mesh, vs, port.number, &mut problems),
                None => vec![default_route(service, port.number)],
            };
            virtual_hosts.push(VirtualHost {
                name: format!("{}:{}", service.host, port.number),
                domains,
                routes,
                ..Default::default()
            });
        }
    }
    report_unbound(mesh, &mut problems);
    let config = RouteConfiguration {
        name: OUTBOUND_HTTP.to_string(),
        virtual_hosts,
        // Routes may name clusters of services that do not exist (yet); Envoy answers those
        // requests with 503 instead of rejecting the whole configuration, as with istiod.
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    };
    (vec![(OUTBOUND_HTTP.to_string(), config)], problems)
}

/// The Host header values that reach this service port. A name already claimed by an earlier
/// virtual host is left out: Envoy rejects a route configuration with duplicate domains.
fn domains(
    service: &Service,
    port: u32,
    with_bare_names: bool,
    domain_suffix: &str,
    taken: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for alias in hostname::aliases(&service.host, domain_suffix) {
        let mut candidates = vec![format!("{alias}:{port}")];
        if with_bare_names {
            candidates.push(alias);
        }
        for domain in candidates {
            if taken.insert(domain.clone()) {
                out.push(domain);
            } else {
                debug!(%domain, host = %service.host, "domain already routed to another service");
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
                        "no ServiceEntry defines host {host}; its routes are not served"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
