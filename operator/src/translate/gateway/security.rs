//! AuthorizationPolicy and RequestAuthentication on gateway proxies: the JWT and RBAC filters
//! a workload's sidecar puts before its routes (`translate::authorization`), put before a
//! gateway listener's HTTP routes and TCP proxies, for the policies selecting the gateway's
//! proxies. A gateway listener is built per Gateway selector, before any proxy says who it
//! is: the proxies are taken to carry the selector's labels and to run in the listener's
//! namespace if it has one, else in the root namespace (where Istio installs its gateways).
//! Policies elsewhere that may select gateway proxies are reported.

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
