//! The limits of the clusters to a workload (`inbound|<port>||`), as istiod sets them: a
//! `Sidecar`'s `inboundConnectionPool` for the sidecars it covers, else the `connectionPool`
//! of the DestinationRule of the service the workload serves on that port.
//!
//! The clusters are shared by every sidecar; the `Sidecar`s' limits are variants per set of
//! sidecars ([`InboundPools`]), a DestinationRule's a variant for the workload's own address.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Selector, Update, type_url};

use super::super::{inbound, inbound_cluster_name};
use super::sidecar_settings::{put_variants, workload_selector};
use super::{CaptureState, put};
use crate::model::sidecar_scope::InboundPools;
use crate::model::traffic_policy::ConnectionPool;
use crate::model::{DestinationRule, Mesh};
use crate::translate::cluster::policy_in;

impl CaptureState {
    /// Builds the inbound clusters again for each set of sidecars whose limits changed (a
    /// `Sidecar`'s `inboundConnectionPool`), removing the variants of sets no longer apart,
    /// and the workloads' own variants, which give way to a `Sidecar`'s limits.
    pub fn set_inbound_pools(&mut self, mesh: &Mesh, pools: &InboundPools, update: &mut Update) {
        if self.inbound_pools == *pools {
            return;
        }
        let before = std::mem::replace(&mut self.inbound_pools, pools.clone());
        for (port, (_, served)) in &self.inbound_clusters {
            put_variants(
                type_url::CLUSTER,
                &inbound_cluster_name(*port),
                Some(&before),
                pools,
                update,
                |pool| inbound::inbound_cluster(*port, *served, pool.as_ref()),
            );
        }
        // Every workload with limits of its own is among `workloads` (one losing its last
        // host has them removed as it goes).
        let workloads: Vec<(String, BTreeSet<String>)> = self
            .workloads
            .iter()
            .map(|(address, hosts)| (address.clone(), hosts.clone()))
            .collect();
        for (address, hosts) in workloads {
            self.set_workload_limits(mesh, &address, &hosts, update);
        }
    }

    /// Puts the inbound clusters the workload at `address` (serving `hosts`, on the ports
    /// [`Self::inbound`] holds for it) reads from its services' DestinationRules, and removes
    /// those it no longer does.
    pub(super) fn set_workload_limits(
        &mut self,
        mesh: &Mesh,
        address: &str,
        hosts: &BTreeSet<String>,
        update: &mut Update,
    ) {
        let served = self.inbound.get(address);
        // Most workloads read no limits from a rule: found without looking them up (an
        // endpoint change rebuilds its workloads).
        let pooled = hosts.iter().any(|host| {
            mesh.destination_rules.get(host).is_some_and(|rules| {
                let mut all = rules
                    .everyone
                    .iter()
                    .chain(rules.by_namespace.values().flatten());
                all.any(sets_pool)
            })
        });
        let wanted = match served {
            Some(served) if pooled => self.rule_limits_of(mesh, address, hosts, served),
            _ => BTreeMap::new(),
        };
        let old = self.workload_limits.remove(address).unwrap_or_default();
        let selector = Selector::workload(address);
        for port in old.keys().filter(|p| !wanted.contains_key(p)) {
            update.remove_for(
                selector.clone(),
                type_url::CLUSTER,
                &inbound_cluster_name(*port),
            );
        }
        for (port, pool) in &wanted {
            if old.get(port) == Some(pool) {
                continue;
            }
            let Some(served) = served.and_then(|s| s.get(port)) else {
                continue;
            };
            let cluster = inbound::inbound_cluster(*port, *served, Some(pool));
            put(
                update,
                selector.clone(),
                type_url::CLUSTER,
                &cluster.name.clone(),
                &cluster,
            );
        }
        if !wanted.is_empty() {
            self.workload_limits.insert(address.to_string(), wanted);
        }
    }

    /// The limits the workload at `address` reads from its services' rules on the ports it
    /// serves, unless its `Sidecar` sets limits (its variant applies then).
    fn rule_limits_of(
        &self,
        mesh: &Mesh,
        address: &str,
        hosts: &BTreeSet<String>,
        served: &BTreeMap<u32, inbound::Served>,
    ) -> BTreeMap<u32, ConnectionPool> {
        let Some(workload) = workload_selector(mesh, address, hosts) else {
            return BTreeMap::new();
        };
        if self.inbound_pools.for_proxies(&workload).is_some() {
            return BTreeMap::new();
        }
        let ports: BTreeSet<u32> = served.keys().copied().collect();
        rule_limits(mesh, address, hosts, workload.namespace.as_deref(), &ports)
    }
}

/// Whether `rule` sets a `connectionPool` at its top level or on a port (what the inbound
/// side reads; a subset's is for clients picking the subset).
fn sets_pool(rule: &DestinationRule) -> bool {
    rule.traffic_policy
        .as_ref()
        .and_then(|p| p.top.as_ref())
        .is_some_and(|top| {
            top.policy.connection_pool.is_some()
                || top.ports.values().any(|p| p.connection_pool.is_some())
        })
}

/// For each of `ports` the workload at `address` listens on, the `connectionPool` of the
/// DestinationRule (as the proxies of `namespace` read it) of the first of `hosts` served
/// there, at that service port: as istiod, one service's, when several share the port.
fn rule_limits(
    mesh: &Mesh,
    address: &str,
    hosts: &BTreeSet<String>,
    namespace: Option<&str>,
    ports: &BTreeSet<u32>,
) -> BTreeMap<u32, ConnectionPool> {
    let mut first: BTreeMap<u32, Option<ConnectionPool>> = BTreeMap::new();
    for service in hosts.iter().filter_map(|h| mesh.services.get(h)) {
        let rule = mesh.rule_for(&service.host, namespace);
        for endpoint in service.endpoints.iter().filter(|e| &*e.address == address) {
            for port in &service.ports {
                let target = endpoint.port_for(port);
                if ports.contains(&target) {
                    first
                        .entry(target)
                        .or_insert_with(|| policy_in(rule, None, port.number).connection_pool);
                }
            }
        }
    }
    first
        .into_iter()
        .filter_map(|(port, pool)| Some((port, pool?)))
        .collect()
}
