//! The clusters and load assignments of one service host, and how a new set replaces the
//! old one.

use std::collections::BTreeSet;

use capstan_xds::{Resource, Selector, Update};

use super::per_host;
use crate::model::{Mesh, Service};
use crate::translate::{cluster, endpoint};

/// The encoded resources of one service host.
#[derive(Default)]
pub(super) struct HostResources {
    /// Each for the proxies its selector picks (locality variants; most are for all).
    pub(super) clusters: Vec<(Selector, Resource)>,
    pub(super) assignments: Vec<(Selector, Resource)>,
    /// Whether its clusters were built with auto mTLS (an endpoint change can change that).
    pub(super) auto_mtls: bool,
}

/// The resources of each of `hosts` (empty for a host no service has any more).
pub(super) fn build_hosts<'a>(
    mesh: &Mesh,
    hosts: &'a BTreeSet<String>,
) -> Vec<(&'a str, HostResources)> {
    per_host(hosts, |host| {
        mesh.services
            .get(host)
            .map(|service| host_resources(mesh, service))
            .unwrap_or_default()
    })
}

pub(super) fn host_resources(mesh: &Mesh, service: &Service) -> HostResources {
    HostResources {
        clusters: cluster::clusters_of(mesh, service)
            .into_iter()
            .filter_map(|c| {
                let resource = Resource::encode(c.name, &c.cluster)?;
                Some((c.key.selector(), resource))
            })
            .collect(),
        assignments: encoded_assignments(mesh, service),
        auto_mtls: cluster::auto_mtls(mesh, service),
    }
}

pub(super) fn encoded_assignments(mesh: &Mesh, service: &Service) -> Vec<(Selector, Resource)> {
    endpoint::load_assignments_of(mesh, service)
        .into_iter()
        .filter_map(|a| {
            let resource = Resource::encode(a.name, &a.assignment)?;
            Some((a.key.selector(), resource))
        })
        .collect()
}

/// Puts `new`; removes what of `old` it no longer has: a name gone altogether, or one of its
/// locality variants.
pub(super) fn replace_variants(
    type_url: &str,
    old: &[(Selector, Resource)],
    new: &[(Selector, Resource)],
    update: &mut Update,
) {
    for (selector, gone) in old {
        let same_name = |(_, n): &&(Selector, Resource)| n.name() == gone.name();
        if !new.iter().any(|n| same_name(&n)) {
            update.remove(type_url, gone.name());
        } else if !new.iter().filter(same_name).any(|(s, _)| s == selector) {
            update.remove_for(selector.clone(), type_url, gone.name());
        }
    }
    for (selector, resource) in new {
        update.put_for(selector.clone(), resource.clone());
    }
}
