//! Translation of the config model into Envoy resources, one generator per xDS type.
//!
//! Names follow Istio so that users' tooling and habits carry over: clusters are
//! `outbound|<port>|<subset>|<host>`, EDS load assignments share their cluster's name.

mod cluster;
mod endpoint;
pub(crate) mod gateway;
mod http_filters;
mod incremental;
mod listener;
mod route;
mod sidecar;

pub use incremental::Translator;
pub use sidecar::ListenerMode;

use std::collections::BTreeMap;

use capstan_xds::SnapshotBuilder;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};

use crate::model::service::ExportTo;
use crate::model::sidecar_scope::OutboundMode;
use crate::model::{Mesh, Port, Problem, Service};

/// The name of the outbound HTTP listener and of its route configuration.
pub const OUTBOUND_HTTP: &str = "outbound_http";

/// Settings of the generated proxy config that do not come from Istio objects.
#[derive(Debug, Clone)]
pub struct Options {
    pub outbound_bind: String,
    pub outbound_port: u16,
    pub sidecar_listeners: ListenerMode,
    /// Istio's `meshConfig.rootNamespace`: a `Sidecar` without selector there is every
    /// namespace's default.
    pub root_namespace: String,
    /// Istio's `meshConfig.outboundTrafficPolicy.mode`, for sidecars no `Sidecar` sets one
    /// for (capture mode: the direct listener has no original destination to pass to).
    pub outbound_traffic_policy: OutboundMode,
}

/// Builds every resource for `mesh`. Config that cannot be honoured is reported and left
/// out; everything else is still built.
pub fn build(mesh: &Mesh, options: &Options) -> (SnapshotBuilder, Vec<Problem>) {
    let mut translator = Translator::new(options.clone());
    let snapshot = translator.full(mesh);
    let problems = translator.problems().cloned().collect();
    (snapshot, problems)
}

/// One cluster capstan builds: a service port, whole or restricted to a subset's labels.
pub struct ServiceCluster<'a> {
    pub name: String,
    pub service: &'a Service,
    pub port: &'a Port,
    /// The labels endpoints must carry (none for the whole service).
    pub labels: &'a BTreeMap<String, String>,
}

impl ServiceCluster<'_> {
    /// The subset this cluster is restricted to (none: the whole service).
    pub fn subset(&self) -> Option<&str> {
        self.name.split('|').nth(2).filter(|s| !s.is_empty())
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Every cluster of the mesh: per service port, one for the whole service and one per
/// DestinationRule subset. CDS and EDS build from this same list.
#[cfg(test)]
pub fn service_clusters(mesh: &Mesh) -> impl Iterator<Item = ServiceCluster<'_>> {
    mesh.services
        .values()
        .flat_map(move |service| service_clusters_of(mesh, service))
}

/// Which proxies a host's clusters are built for, and whether with its DestinationRule: one
/// scope for all (the rule applies to all, or there is none), or, for a rule exported to
/// some namespaces only, one without it for all and one with it per such namespace.
pub fn rule_scopes(mesh: &Mesh, host: &str) -> Vec<RuleScope> {
    match mesh.destination_rules.get(host).map(|dr| &dr.export_to) {
        Some(ExportTo::Namespaces(namespaces)) => std::iter::once(RuleScope::default())
            .chain(namespaces.iter().map(|ns| RuleScope {
                namespace: Some(ns.clone()),
                with_rule: true,
            }))
            .collect(),
        _ => vec![RuleScope {
            namespace: None,
            with_rule: true,
        }],
    }
}

/// See [`rule_scopes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleScope {
    /// `None`: every proxy.
    pub namespace: Option<String>,
    pub with_rule: bool,
}

/// The clusters of one service: per port, the whole service and each subset.
pub fn service_clusters_of<'a>(
    mesh: &'a Mesh,
    service: &'a Service,
) -> impl Iterator<Item = ServiceCluster<'a>> {
    service_clusters_in(mesh, service, true)
}

/// [`service_clusters_of`], without the subsets when the rule is left out.
pub fn service_clusters_in<'a>(
    mesh: &'a Mesh,
    service: &'a Service,
    with_rule: bool,
) -> impl Iterator<Item = ServiceCluster<'a>> {
    {
        service.ports.iter().flat_map(move |port| {
            let whole = ServiceCluster {
                name: cluster_name(port.number, "", &service.host),
                service,
                port,
                labels: &NO_LABELS,
            };
            let subsets = if with_rule {
                mesh.subsets(&service.host)
            } else {
                &[]
            };
            let subsets = subsets.iter().map(move |subset| ServiceCluster {
                name: cluster_name(port.number, &subset.name, &service.host),
                service,
                port,
                labels: &subset.labels,
            });
            std::iter::once(whole).chain(subsets)
        })
    }
}

/// `outbound|<port>|<subset>|<host>`, Istio's cluster name.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Config source for resources delivered over the same ADS stream.
fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support;
