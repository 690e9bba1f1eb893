//! AuthorizationPolicy and RequestAuthentication on gateway proxies: the JWT and RBAC filters
//! a workload's sidecar puts before its routes (`translate::authorization`), put before a
//! gateway listener's HTTP routes and TCP proxies, for the policies selecting the gateway's
//! proxies. A gateway listener is built per Gateway selector, before any proxy says who it
//! is: the proxies are taken to carry the selector's labels and to run in the listener's
//! namespace if it has one, else in the root namespace (where Istio installs its gateways).
//! Where a policy of another namespace may select them, the listener gets a variant for the
//! proxies running there ([`namespace_variants`]), which carries that namespace's policies
//! too, as istiod gives a gateway pod its own namespace's.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::util::pack_any;
use prost::Message;

use capstan_xds::Selector;

use crate::model::Mesh;
use crate::translate::authorization::InboundAuthz;

const MANAGER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// For each listener whose selector names no namespace, a copy for the proxies of each
/// namespace (not the root) with an AuthorizationPolicy or RequestAuthentication that may
/// select them, unless the listener already has a variant there.
pub fn namespace_variants(mesh: &Mesh, listeners: &mut Vec<(Selector, Listener)>) {
    let root = mesh.sidecar_scopes.root_namespace();
    let mut extra = Vec::new();
    for (selector, listener) in listeners.iter().filter(|(s, _)| s.namespace.is_none()) {
        for namespace in policy_namespaces(mesh, &selector.labels) {
            let has_one = |(s, l): &(Selector, Listener)| {
                s.namespace.as_deref() == Some(namespace)
                    && s.labels == selector.labels
                    && l.name == listener.name
            };
            if namespace == root || listeners.iter().any(has_one) {
                continue;
            }
            let mut theirs = selector.clone();
            theirs.namespace = Some(namespace.into());
            extra.push((theirs, listener.clone()));
        }
    }
    listeners.extend(extra);
}

/// The namespaces with a policy that may select proxies carrying `labels`: one without a
/// selector, or whose selector's labels they all carry.
fn policy_namespaces<'a>(
    mesh: &'a Mesh,
    labels: &std::collections::BTreeMap<String, String>,
) -> BTreeSet<&'a str> {
    let selects = |selector: Option<&capstan_crds::types::MatchLabelsSelector>| {
        selector.is_none_or(|s| crate::model::service::labels_include(labels, &s.match_labels))
    };
    mesh.authorization_policies
        .policies()
        .filter(|p| selects(p.spec.selector.as_ref()))
        .map(|p| p.key.namespace.as_str())
        .chain(
            mesh.request_authentications
                .iter()
                .filter(|(_, spec)| selects(spec.selector.as_ref()))
                .map(|(key, _)| key.namespace.as_str()),
        )
        .collect()
}

/// Puts the security filters of the proxies `selector` picks into `listener`.
pub fn secure(mesh: &Mesh, selector: &Selector, listener: &mut Listener) {
    let namespace = selector
        .namespace
        .as_deref()
        .unwrap_or(mesh.sidecar_scopes.root_namespace());
    let filters = InboundAuthz::for_workload(mesh, namespace, &selector.labels);
    if filters == InboundAuthz::default() {
        return;
    }
    for chain in &mut listener.filter_chains {
        let mut secured = Vec::with_capacity(chain.filters.len() + filters.tcp.len());
        for filter in chain.filters.drain(..) {
            match (filter.name.as_str(), &filter.config_type) {
                (MANAGER, Some(ConfigType::TypedConfig(any))) => {
                    let Ok(mut manager) = HttpConnectionManager::decode(any.value.as_slice())
                    else {
                        secured.push(filter);
                        continue;
                    };
                    let rest = std::mem::take(&mut manager.http_filters);
                    manager.http_filters = filters.http.iter().cloned().chain(rest).collect();
                    secured.push(envoy_types::pb::envoy::config::listener::v3::Filter {
                        name: filter.name,
                        config_type: Some(ConfigType::TypedConfig(pack_any(manager))),
                    });
                }
                (TCP_PROXY, _) => {
                    secured.extend(filters.tcp.iter().cloned());
                    secured.push(filter);
                }
                _ => secured.push(filter),
            }
        }
        chain.filters = secured;
    }
}
