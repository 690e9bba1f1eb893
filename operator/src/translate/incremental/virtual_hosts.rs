//! The virtual hosts of one service host, in the forms the route variants read them in.

use std::collections::BTreeMap;

use capstan_crds::ObjectKey;
use capstan_xds::Parts;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use prost::Message;

use super::{Group, VirtualHostEntry};
use crate::model::{Mesh, Problem, hostname};
use crate::translate::route;

/// The virtual hosts of one service host, built from the mesh alone (so many can be built
/// at once), with what installing them records.
pub(super) struct BuiltVirtualHosts {
    pub(super) entries: Vec<(u32, VirtualHostEntry)>,
    pub(super) virtual_service: Option<ObjectKey>,
    pub(super) problems: Vec<Problem>,
}

pub(super) fn build_virtual_hosts(mesh: &Mesh, host: &str) -> Option<BuiltVirtualHosts> {
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
    for (i, port) in route::http_ports(service).into_iter().enumerate() {
        let routes = route::host_port_routes(mesh, service, port.number, &mut problems);
        let domains = |same_namespace| {
            route::candidate_domains(
                host,
                port.number,
                i == 0,
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
        let group = group_of(host, &mesh.domain_suffix);
        let mut by_caller = BTreeMap::new();
        for (caller, routes) in &routes.by_caller {
            // A named namespace reads the bare name if the host is its own; any other
            // namespace reads it in the group's own namespace only.
            let owns = match &caller.namespace {
                Some(ns) => vec![group.as_ref() == Some(ns)],
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
        entries.push((port.number, entry));
    }
    Some(BuiltVirtualHosts {
        entries,
        virtual_service: virtual_service.map(|vs| vs.origin.clone()),
        problems,
    })
}

pub(super) fn group_of(host: &str, domain_suffix: &str) -> Group {
    hostname::local_namespace(host, domain_suffix).map(str::to_string)
}
