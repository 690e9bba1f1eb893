//! RDS for gateways: a virtual host per name where a bound VirtualService's host meets a
//! server's host, carrying the routes of every VirtualService bound there (in namespace and
//! name order, as istiod merges them on gateways).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{Bound, GatewayConfig, domain_for};
use crate::model::gateway::names;
use crate::model::{Mesh, VirtualService};
use crate::translate::route::{self, Binding, routes_bound};

/// The route configuration of one HTTPS server.
pub fn route_configuration(
    mesh: &Mesh,
    port: u32,
    (bound, name): (&Bound<'_>, String),
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    configuration(mesh, port, name, &[bound], out)
}

/// The route configuration the plain HTTP servers of one port share.
pub fn shared_http_configuration(
    mesh: &Mesh,
    port: u32,
    name: &str,
    servers: &[&Bound<'_>],
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    configuration(mesh, port, name.to_string(), servers, out)
}

fn configuration(
    mesh: &Mesh,
    port: u32,
    name: String,
    servers: &[&Bound<'_>],
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    // Domain → the first server that claimed it and the VirtualServices bound there.
    let mut by_domain: BTreeMap<String, (&Bound<'_>, Vec<&VirtualService>)> = BTreeMap::new();
    for bound in servers {
        let origin = &bound.gateway.origin;
        for vs in mesh.virtual_services.values() {
            let gateway = (origin.namespace.as_str(), origin.name.as_str());
            let bound_here = names(&vs.gateways, &vs.origin.namespace, gateway);
            if !bound_here {
                continue;
            }
            for vs_host in &vs.hosts {
                for pattern in &bound.server.hosts {
                    if !pattern.admits(&vs.origin.namespace) {
                        continue;
                    }
                    let Some(domain) = domain_for(vs_host, &pattern.host.to_ascii_lowercase())
                    else {
                        continue;
                    };
                    let (claimant, list) = by_domain.entry(domain).or_insert((bound, Vec::new()));
                    let same_gateway = claimant.gateway.origin == *origin;
                    if same_gateway && !list.iter().any(|v| v.origin == vs.origin) {
                        list.push(vs);
                    }
                }
            }
        }
    }
    let mut virtual_hosts = Vec::new();
    for (domain, (bound, virtual_services)) in by_domain {
        let origin = &bound.gateway.origin;
        let binding = Binding::Gateway(&origin.namespace, &origin.name);
        let mut routes = Vec::new();
        for vs in virtual_services {
            routes.extend(routes_bound(mesh, vs, port, binding, &mut out.problems));
            out.destinations.extend(
                vs.http
                    .iter()
                    .flat_map(|h| h.destination_hosts())
                    .map(str::to_string),
            );
        }
        let mut virtual_host = VirtualHost {
            name: format!("{domain}:{port}"),
            domains: vec![domain],
            routes,
            require_tls: if bound.server.https_redirect {
                TlsRequirementType::All as i32
            } else {
                TlsRequirementType::None as i32
            },
            ..Default::default()
        };
        route::hoist_shared_policy(&mut virtual_host);
        virtual_hosts.push(virtual_host);
    }
    RouteConfiguration {
        name,
        virtual_hosts,
        // As for sidecars: a route to a service that does not exist (yet) answers 503.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
