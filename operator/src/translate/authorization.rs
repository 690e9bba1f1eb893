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
use crate::mesh_config::TrustDomains;
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
        let policies = mesh.authorization_for(namespace, labels);
        let custom = custom::filters(mesh, &policies.custom);
        out.http.extend(custom.http);
        out.tcp.extend(custom.tcp);
        let trust = &mesh.settings.trust_domains;
        for filter in action_filters(&policies, false, trust) {
            out.http.push(http_filter(&filter));
        }
        for filter in action_filters(&policies, true, trust) {
            out.tcp.push(network_filter(&filter));
        }
        out
    }
}

/// What one action's RBAC filter holds: the enforced policies' rules and the dry-run ones'
/// (shadow rules: evaluated and counted under `istio_dry_run_<action>_`, never enforced), each
/// present only when a policy of its kind applies, as istiod builds them.
#[derive(Debug)]
struct ActionFilter {
    action: RbacAction,
    rules: Option<Vec<u8>>,
    shadow: Option<Vec<u8>>,
}

/// The RBAC filters of a workload's HTTP (or TCP) chains, in the order they run: AUDIT (LOG),
/// DENY, ALLOW.
fn action_filters(
    policies: &WorkloadPolicies,
    for_tcp: bool,
    trust: &TrustDomains,
) -> Vec<ActionFilter> {
    let mut filters: Vec<ActionFilter> = [RbacAction::Log, RbacAction::Deny, RbacAction::Allow]
        .into_iter()
        .map(|action| ActionFilter {
            action,
            rules: None,
            shadow: None,
        })
        .collect();
    let enforced = enforced_rbac(policies, for_tcp, trust);
    let shadow = shadow_rbac(policies, for_tcp, trust);
    for filter in &mut filters {
        let of_action = |rules: &[(RbacAction, BTreeMap<String, Policy>)]| {
            let policies = rules.iter().find(|(a, _)| *a == filter.action)?;
            Some(rbac_bytes(filter.action, &policies.1))
        };
        filter.rules = of_action(&enforced);
        filter.shadow = of_action(&shadow);
    }
    filters.retain(|f| f.rules.is_some() || f.shadow.is_some());
    filters
}

/// The rules of the dry-run policies of a workload's HTTP (or TCP) chains, per action, as
/// [`workload_rbac`] gives the enforced ones.
pub fn workload_shadow_rbac(
    mesh: &Mesh,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    for_tcp: bool,
) -> Vec<(RbacAction, BTreeMap<String, Policy>)> {
    shadow_rbac(
        &mesh.authorization_for(namespace, labels),
        for_tcp,
        &mesh.settings.trust_domains,
    )
}

/// The rules of `policies`' dry-run policies, per action.
fn shadow_rbac(
    policies: &WorkloadPolicies,
    for_tcp: bool,
    trust: &TrustDomains,
) -> Vec<(RbacAction, BTreeMap<String, Policy>)> {
    let dry_run = &policies.dry_run;
    rbac_by_action(
        [
            (RbacAction::Deny, &dry_run.deny),
            (RbacAction::Allow, &dry_run.allow),
        ],
        for_tcp,
        trust,
    )
}

/// The shadow rules' stat prefix of `filter` (istiod's; none without shadow rules).
fn shadow_stat_prefix(filter: &ActionFilter) -> String {
    let prefix = match (&filter.shadow, filter.action) {
        (Some(_), RbacAction::Allow) => "istio_dry_run_allow_",
        (Some(_), RbacAction::Deny) => "istio_dry_run_deny_",
        _ => "",
    };
    prefix.to_string()
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
    enforced_rbac(
        &mesh.authorization_for(namespace, labels),
        for_tcp,
        &mesh.settings.trust_domains,
    )
}

/// The rules of `policies`' enforced AUDIT, DENY and ALLOW policies, per action.
fn enforced_rbac(
    policies: &WorkloadPolicies,
    for_tcp: bool,
    trust: &TrustDomains,
) -> Vec<(RbacAction, BTreeMap<String, Policy>)> {
    rbac_by_action(
        [
            (RbacAction::Log, &policies.audit),
            (RbacAction::Deny, &policies.deny),
            (RbacAction::Allow, &policies.allow),
        ],
        for_tcp,
        trust,
    )
}

/// Each action's rules from its policies, for the actions some policy has.
fn rbac_by_action<const N: usize>(
    lists: [(RbacAction, &Vec<&AuthzPolicy>); N],
    for_tcp: bool,
    trust: &TrustDomains,
) -> Vec<(RbacAction, BTreeMap<String, Policy>)> {
    let mut out = Vec::new();
    for (action, list) in lists {
        if list.is_empty() {
            continue;
        }
        let if_unusable = if action == RbacAction::Allow {
            IfUnusable::DropRule
        } else {
            IfUnusable::DropField
        };
        out.push((action, named_policies(list, (for_tcp, if_unusable), trust)));
    }
    out
}

/// Every rule of `policies` that can be checked on the chain, by its RBAC policy name.
fn named_policies(
    policies: &[&AuthzPolicy],
    (for_tcp, if_unusable): (bool, IfUnusable),
    trust: &TrustDomains,
) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let name = |i: usize| rule_name(&policy.key, i);
        if policy.spec.rules.is_empty() {
            out.insert(name(0), rules::never());
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            let chain = rules::Chain {
                for_tcp,
                if_unusable,
                trust,
            };
            if let Some(generated) = rules::policy(rule, &policy.key.namespace, &chain) {
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

/// `message` (encoded, without its `rules` and `shadow_rules`) with them set to `filter`'s
/// encoded RBAC rules (both are fields 1 and 2 of the HTTP and the network RBAC filter).
fn with_rules(mut message: Vec<u8>, filter: &ActionFilter) -> Vec<u8> {
    if let Some(rules) = &filter.rules {
        sorted_map::append_message(1, rules, &mut message);
    }
    if let Some(shadow) = &filter.shadow {
        sorted_map::append_message(2, shadow, &mut message);
    }
    message
}

fn http_filter(filter: &ActionFilter) -> HttpFilter {
    let base = HttpRbac {
        shadow_rules_stat_prefix: shadow_stat_prefix(filter),
        ..Default::default()
    };
    let config = with_rules(base.encode_to_vec(), filter);
    HttpFilter {
        name: HTTP_RBAC.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(Any {
            type_url: HttpRbac::type_url(),
            value: config,
        })),
        ..Default::default()
    }
}

fn network_filter(filter: &ActionFilter) -> Filter {
    let base = NetworkRbac {
        stat_prefix: "tcp.".into(),
        shadow_rules_stat_prefix: shadow_stat_prefix(filter),
        ..Default::default()
    };
    Filter {
        name: NETWORK_RBAC.into(),
        config_type: Some(FilterConfig::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value: with_rules(base.encode_to_vec(), filter),
        })),
    }
}

/// The `action` RBAC filter enforcing `rules` (encoded `envoy.config.rbac.v3.RBAC`) alone.
fn enforcing(action: RbacAction, rules: Vec<u8>) -> ActionFilter {
    ActionFilter {
        action,
        rules: Some(rules),
        shadow: None,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dry_run_tests;
