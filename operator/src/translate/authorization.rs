//! AuthorizationPolicy on a workload's inbound side: Envoy RBAC filters in front of its
//! HTTP routes and TCP proxies, as istiod builds them (`authz/builder`): an AUDIT filter
//! (action LOG), a DENY filter, then an ALLOW filter, each present only when some policy of
//! its action applies. A request any DENY policy matches is refused; else, when ALLOW
//! policies apply, one of them must match (none of their rules left: nothing is allowed, as
//! `spec: {}` says). Each rule is one RBAC policy named `ns[<ns>]-policy[<name>]-rule[<i>]`.
//!
//! The RBAC policies are a protobuf map, which prost encodes in hash order: they are encoded
//! here by name instead, so the same policies always give the same bytes (and version).

mod rules;

use std::collections::BTreeMap;

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

use crate::model::Mesh;
use crate::model::authorization::{Policy as AuthzPolicy, WorkloadPolicies};
pub use rules::IfUnusable;

/// The RBAC filters of one workload's inbound side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundAuthz {
    /// Before the router of every HTTP chain.
    pub http: Vec<HttpFilter>,
    /// Before the TCP proxy of every TCP chain.
    pub tcp: Vec<Filter>,
}

impl InboundAuthz {
    /// The filters for the workload in `namespace` with `labels`.
    pub fn for_workload(mesh: &Mesh, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let policies = mesh.authorization_for(namespace, labels);
        if policies.is_empty() {
            return Self::default();
        }
        let WorkloadPolicies { deny, allow, audit } = policies;
        let mut out = Self::default();
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
            let http = rbac_bytes(action, &named_policies(&list, false, if_unusable));
            out.http.push(http_filter(&http));
            let tcp = rbac_bytes(action, &named_policies(&list, true, if_unusable));
            out.tcp.push(network_filter(&tcp));
        }
        out
    }
}

/// Every rule of `policies` that can be checked on the chain, by its RBAC policy name.
fn named_policies(
    policies: &[&AuthzPolicy],
    for_tcp: bool,
    if_unusable: IfUnusable,
) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let key = &policy.key;
        let name = |i: usize| format!("ns[{}]-policy[{}]-rule[{i}]", key.namespace, key.name);
        if policy.spec.rules.is_empty() {
            out.insert(name(0), rules::never());
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            if let Some(generated) = rules::policy(rule, &key.namespace, for_tcp, if_unusable) {
                out.insert(name(i), generated);
            }
        }
    }
    out
}

/// `envoy.config.rbac.v3.RBAC` with its policies in name order.
fn rbac_bytes(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, message, string};
    let mut bytes = Rbac {
        action: action as i32,
        ..Default::default()
    }
    .encode_to_vec();
    for (name, policy) in policies {
        // A map entry is a message: key (1) and value (2).
        let len = string::encoded_len(1, name) + message::encoded_len(2, policy);
        encode_key(2, WireType::LengthDelimited, &mut bytes);
        encode_varint(len as u64, &mut bytes);
        string::encode(1, name, &mut bytes);
        message::encode(2, policy, &mut bytes);
    }
    bytes
}

/// `message` (encoded, without its `rules`) with `rules` set to the encoded RBAC `rules`.
fn with_rules(mut message: Vec<u8>, rules: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(1, WireType::LengthDelimited, &mut message);
    encode_varint(rules.len() as u64, &mut message);
    message.extend_from_slice(rules);
    message
}

fn http_filter(rules: &[u8]) -> HttpFilter {
    let config = with_rules(HttpRbac::default().encode_to_vec(), rules);
    HttpFilter {
        name: "envoy.filters.http.rbac".into(),
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
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value: with_rules(base.encode_to_vec(), rules),
        })),
    }
}

#[cfg(test)]
mod tests;
