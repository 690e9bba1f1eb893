//! Translation of the config model into Envoy resources, one generator per xDS type.
//!
//! Names follow Istio so that users' tooling and habits carry over: clusters are
//! `outbound|<port>|<subset>|<host>`, EDS load assignments share their cluster's name.

mod address;
mod authentication;
pub mod authorization;
mod cluster;
mod endpoint;
pub(crate) mod gateway;
mod http_filters;
mod incremental;
mod listener;
mod route;
mod route_tcp_proxy;
mod sidecar;
mod sorted_map;
pub(crate) mod upstream_credentials;

pub use incremental::Translator;
pub use sidecar::ListenerMode;
// What `capstan explain` reads of translation's decisions.
pub(crate) use cluster::auto_mtls;
pub(crate) use cluster::policy_in;
pub(crate) use endpoint::takes_mutual_tls;
pub(crate) use sidecar::mtls::{Accepts, InboundMtls};

use std::collections::BTreeMap;

use capstan_xds::SnapshotBuilder;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};

use crate::model::sidecar_scope::OutboundMode;
use crate::model::{DestinationRule, Mesh, Port, Problem, Service};

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
    /// What translation reads of the mesh config (`--mesh-config`).
    pub mesh_settings: std::sync::Arc<crate::mesh_config::MeshSettings>,
}

impl Options {
    /// How sidecars' outbound HTTP is split into route configurations.
    pub(crate) fn route_layout(&self) -> route::RouteLayout {
        match self.sidecar_listeners {
            ListenerMode::Direct => route::RouteLayout::Shared,
            ListenerMode::Capture => route::RouteLayout::PerPort,
        }
    }
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
#[derive(Clone)]
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

/// Which proxies a host's clusters are built for, with which DestinationRule: one scope for
/// every proxy, with the rule the proxies of a namespace no rule names read, and one per
/// namespace whose proxies read another (or none).
pub fn rule_scopes<'a>(mesh: &'a Mesh, host: &str) -> Vec<RuleScope<'a>> {
    let Some(rules) = mesh.destination_rules.get(host) else {
        return vec![RuleScope::default()];
    };
    let by_namespace = rules.by_namespace.iter().map(|(ns, rule)| RuleScope {
        namespace: Some(ns.clone()),
        rule: rule.as_ref(),
        workload: None,
    });
    let by_workload = rules.by_workload.iter().flat_map(|(ns, list)| {
        list.iter().map(move |rule| RuleScope {
            namespace: Some(ns.clone()),
            rule: Some(rule),
            workload: rule.workload_selector.as_ref(),
        })
    });
    std::iter::once(RuleScope {
        namespace: None,
        rule: rules.everyone.as_ref(),
        workload: None,
    })
    .chain(by_namespace)
    .chain(by_workload)
    .collect()
}

/// See [`rule_scopes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleScope<'a> {
    /// `None`: every proxy.
    pub namespace: Option<String>,
    pub rule: Option<&'a DestinationRule>,
    /// The labels the namespace's proxies must carry (a rule's `workloadSelector`).
    pub workload: Option<&'a BTreeMap<String, String>>,
}

/// The clusters of one service: per port, the whole service and each subset of the rule of
/// proxies of a namespace no rule names.
pub fn service_clusters_of<'a>(
    mesh: &'a Mesh,
    service: &'a Service,
) -> impl Iterator<Item = ServiceCluster<'a>> {
    service_clusters_in(service, mesh.rule_for(&service.host, None))
}

/// The clusters of one service with `rule`'s subsets.
pub fn service_clusters_in<'a>(
    service: &'a Service,
    rule: Option<&'a DestinationRule>,
) -> impl Iterator<Item = ServiceCluster<'a>> {
    {
        service.ports.iter().flat_map(move |port| {
            let whole = ServiceCluster {
                name: cluster_name(port.number, "", &service.host),
                service,
                port,
                labels: &NO_LABELS,
            };
            let subsets = rule.map_or(&[][..], |r| r.subsets.as_slice());
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
    // Built by hand: it is named for every service, chain and route on each rebuild, and
    // `format!` costs several times as much.
    let port = port.to_string();
    let mut name = String::with_capacity(12 + port.len() + subset.len() + host.len());
    for piece in ["outbound|", &port, "|", subset, "|", host] {
        name.push_str(piece);
    }
    name
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
