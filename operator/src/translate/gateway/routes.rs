//! RDS for gateways: a virtual host per name where a bound VirtualService's host meets a
//! server's host, carrying the routes of every VirtualService bound there (in namespace and
//! name order, as istiod merges them on gateways).

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::ObjectKey;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{Bound, GatewayConfig, domain_for};
use crate::model::gateway::names;
use crate::model::service::ExportTo;
use crate::model::{Mesh, VirtualService};
use crate::translate::route::{self, Binding, Caller, Labels, routes_bound};

/// The route configuration of one HTTPS server, as the gateway proxies `proxies` stands for
/// get it.
pub fn route_configuration(
    mesh: &Mesh,
    port: u32,
    (bound, name): (&Bound<'_>, &str),
    proxies: &Caller,
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    configuration(mesh, port, name, &[bound], proxies, out)
}

/// The route configuration the plain HTTP servers of one port share.
pub fn shared_http_configuration(
    mesh: &Mesh,
    port: u32,
    name: &str,
    servers: &[&Bound<'_>],
    proxies: &Caller,
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    configuration(mesh, port, name, servers, proxies, out)
}

/// The gateway proxies a Gateway selector (`labels`) picks that the VirtualServices bound to
/// `gateways` tell apart, as with istiod, which compares their `exportTo` and their HTTP
/// matches' `sourceNamespace` and `sourceLabels` (not their `tcp`/`tls` matches') with the
/// gateway proxy's own namespace and labels, and hashes as the
/// DestinationRule of the proxy's namespace says: per namespace one is exported to, a match
/// names or reads another rule for a destination (and any other), per label class of the matches'
/// `sourceLabels` and of the `workloadSelector`s of the destinations' rules (with the
/// selector's labels, which every proxy it picks has). Without such
/// VirtualServices, one: all of them.
pub fn source_variants(
    mesh: &Mesh,
    labels: &Labels,
    gateways: &BTreeSet<&ObjectKey>,
) -> BTreeSet<Caller> {
    let mut namespaces: BTreeSet<Option<&str>> = BTreeSet::from([None]);
    let mut selectors: BTreeSet<&Labels> = BTreeSet::new();
    for vs in mesh.virtual_services.values() {
        let bound = gateways.iter().any(|g| {
            names(
                &vs.gateways,
                &vs.origin.namespace,
                (g.namespace.as_str(), g.name.as_str()),
            )
        });
        if !bound {
            continue;
        }
        // Gateway proxies of the namespaces it is exported to by name see it; others not.
        if let ExportTo::Namespaces(exported) = &vs.export_to {
            namespaces.extend(exported.iter().map(|ns| Some(ns.as_str())));
        }
        // Those reading another DestinationRule for a destination (their namespace's, or
        // one that can select them) may hash otherwise.
        let destinations = vs.http.iter().flat_map(|h| h.destination_hosts());
        let readers = route::rule_readers(mesh, destinations);
        namespaces.extend(readers.namespaces.into_iter().map(Some));
        for (ns, selector) in readers.selecting {
            if route::union(labels, selector).is_some() {
                namespaces.insert(Some(ns));
                selectors.insert(selector);
            }
        }
        // A match naming its own gateways is not narrowed by source.
        for m in vs.http.iter().flat_map(|h| &h.matches) {
            if m.gateways.is_empty() {
                namespaces.extend(m.source_namespace.as_deref().map(Some));
                if !m.source_labels.is_empty() && route::union(labels, &m.source_labels).is_some() {
                    selectors.insert(&m.source_labels);
                }
            }
        }
    }
    let classes = route::label_classes(selectors);
    let mut out = BTreeSet::new();
    for namespace in namespaces {
        for class in &classes {
            if let Some(joined) = route::union(labels, class) {
                out.insert(Caller::new(namespace, &joined));
            }
        }
    }
    out
}

fn configuration(
    mesh: &Mesh,
    port: u32,
    name: &str,
    servers: &[&Bound<'_>],
    proxies: &Caller,
    out: &mut GatewayConfig,
) -> RouteConfiguration {
    // Domain → the first server that claimed it and the VirtualServices bound there.
    let mut by_domain: BTreeMap<String, (&Bound<'_>, Vec<&VirtualService>)> = BTreeMap::new();
    for bound in servers {
        let origin = &bound.gateway.origin;
        for vs in mesh.virtual_services.values() {
            let gateway = (origin.namespace.as_str(), origin.name.as_str());
            let bound_here = names(&vs.gateways, &vs.origin.namespace, gateway);
            if !bound_here || !vs.export_to.includes(proxies.namespace.as_deref()) {
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
        let binding = Binding::Gateway((&origin.namespace, &origin.name), proxies);
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
        name: name.to_string(),
        virtual_hosts,
        // As for sidecars: a route to a service that does not exist (yet) answers 503.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
