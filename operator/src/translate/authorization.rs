//! AuthorizationPolicy on a workload's inbound side: Envoy RBAC filters in front of its
//! HTTP routes and TCP proxies, as istiod builds them (`authz/builder`): the CUSTOM policies'
//! external authorization (`custom`), an AUDIT filter
//! (action LOG), a DENY filter, then an ALLOW filter, each present only when some policy of
//! its action applies. A request any DENY policy matches is refused; else, when ALLOW
//! policies apply, one of them must match (none of their rules left: nothing is allowed, as
//! `spec: {}` says). Each rule is one RBAC policy named `ns[<ns>]-policy[<name>]-rule[<i>]`.
//!
//! The RBAC policies are a protobuf map, encoded in name order (`sorted_map`), so the same
//! policies always give the same bytes (and version).

mod custom;
pub use custom::{CustomCheck, unusable as custom_unusable};
mod rules;
pub use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Policy, Rbac};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::sorted_map;
use crate::model::Mesh;
use crate::model::authorization::{Policy as AuthzPolicy, WorkloadPolicies};
pub use rules::IfUnusable;

const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// The security filters of one workload's inbound side: RequestAuthentication's JWT filter
/// (HTTP only), the CUSTOM policies' external authorization, then the RBAC filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundAuthz {
    /// Before the router of every HTTP chain.
    pub http: Vec<HttpFilter>,
    /// Before the TCP proxy of every TCP chain.
    pub tcp: Vec<Filter>,
}

impl InboundAuthz {
    /// Whether it has no filter at all.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.tcp.is_empty()
    }

    /// The filters for the workload in `namespace` with `labels`.
    pub fn for_workload(mesh: &Mesh, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let root = mesh.sidecar_scopes.root_namespace();
        let jwt_rules = mesh
            .request_authentications
            .for_workload(root, namespace, labels);
        let mut out = Self {
            // Before RBAC, which reads the payload of the token it accepted.
            http: super::authentication::jwt_filter(jwt_rules)
                .into_iter()
                .collect(),
            tcp: Vec::new(),
        };
        let custom = custom::filters(mesh, &mesh.authorization_for(namespace, labels).custom);
        out.http.extend(custom.http);
        out.tcp.extend(custom.tcp);
        for (action, http) in workload_rbac(mesh, namespace, labels, false) {
            out.http.push(http_filter(&rbac_bytes(action, &http)));
        }
        for (action, tcp) in workload_rbac(mesh, namespace, labels, true) {
            out.tcp.push(network_filter(&rbac_bytes(action, &tcp)));
        }
        out
    }
}

/// The check a workload's CUSTOM policies make on its HTTP (or TCP) chains, before its RBAC
/// filters (none: no check).
pub fn workload_custom(
    mesh: &Mesh,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    for_tcp: bool,
) -> Option<CustomCheck> {
    custom::check(
        mesh,
        &mesh.authorization_for(namespace, labels).custom,
        for_tcp,
    )
}

/// The RBAC rules of a workload's HTTP (or TCP) chains, in the order its filters run: AUDIT
/// (LOG), DENY, ALLOW, each only when a policy of that action applies.
pub fn workload_rbac(
    mesh: &Mesh,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    for_tcp: bool,
) -> Vec<(RbacAction, BTreeMap<String, Policy>)> {
    let WorkloadPolicies {
        deny, allow, audit, ..
    } = mesh.authorization_for(namespace, labels);
    let mut out = Vec::new();
    for (action, list) in [
        (RbacAction::Log, audit),
        (RbacAction::Deny, deny),
        (RbacAction::Allow, allow),
    ] {
        if list.is_empty() {
            continue;
        }
        let if_unusable = if action == RbacAction::Allow {
            IfUnusable::DropRule
        } else {
            IfUnusable::DropField
        };
        out.push((action, named_policies(&list, for_tcp, if_unusable)));
    }
    out
}

/// Every rule of `policies` that can be checked on the chain, by its RBAC policy name.
fn named_policies(
    policies: &[&AuthzPolicy],
    for_tcp: bool,
    if_unusable: IfUnusable,
) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let name = |i: usize| rule_name(&policy.key, i);
        if policy.spec.rules.is_empty() {
            out.insert(name(0), rules::never());
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            if let Some(generated) =
                rules::policy(rule, &policy.key.namespace, for_tcp, if_unusable)
            {
                out.insert(name(i), generated);
            }
        }
    }
    out
}

/// The RBAC policy name of rule `i` of the AuthorizationPolicy `key` (istiod's).
pub fn rule_name(key: &capstan_crds::ObjectKey, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", key.namespace, key.name)
}

/// `envoy.config.rbac.v3.RBAC` with its policies in name order.
fn rbac_bytes(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Vec<u8> {
    let mut bytes = Rbac {
        action: action as i32,
        ..Default::default()
    }
    .encode_to_vec();
    sorted_map::append_map(2, policies, &mut bytes);
    bytes
}

/// `message` (encoded, without its `rules`) with `rules` set to the encoded RBAC `rules`.
fn with_rules(mut message: Vec<u8>, rules: &[u8]) -> Vec<u8> {
    sorted_map::append_message(1, rules, &mut message);
    message
}

fn http_filter(rules: &[u8]) -> HttpFilter {
    let config = with_rules(HttpRbac::default().encode_to_vec(), rules);
    HttpFilter {
        name: HTTP_RBAC.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(Any {
            type_url: HttpRbac::type_url(),
            value: config,
        })),
        ..Default::default()
    }
}

fn network_filter(rules: &[u8]) -> Filter {
    let base = NetworkRbac {
        stat_prefix: "tcp.".into(),
        ..Default::default()
    };
    Filter {
        name: NETWORK_RBAC.into(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value: with_rules(base.encode_to_vec(), rules),
        })),
    }
}

#[cfg(test)]
mod tests;
