//! Dry-run policies (`istio.io/dry-run: "true"`): shadow rules of their action's filter,
//! evaluated and counted, never enforced, as istiod builds them.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as NetworkConfig;

use super::*;
use crate::translate::test_support::mesh;

fn policy(name: &str, action: &str, dry_run: Option<&str>) -> String {
    let annotations = dry_run
        .map(|v| format!(", annotations: {{istio.io/dry-run: \"{v}\"}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: bookinfo{annotations}}}
spec:
  action: {action}
  rules: [{{from: [{{source: {{namespaces: [attacker]}}}}]}}]
---
"
    )
}

/// An HTTP RBAC filter as read back: its action, its enforced and its shadow policies'
/// names, and the shadow rules' stat prefix.
type Read = (i32, Option<Vec<String>>, Option<Vec<String>>, String);

fn http_filters(yaml: &str) -> Vec<Read> {
    let authz = InboundAuthz::for_workload(&mesh(yaml), "bookinfo", &BTreeMap::new());
    // A decoded protobuf map has no order.
    let names = |rbac: Option<Rbac>| {
        rbac.map(|r| {
            let mut names: Vec<String> = r.policies.into_keys().collect();
            names.sort();
            names
        })
    };
    authz
        .http
        .iter()
        .map(|filter| {
            let Some(HttpFilterConfig::TypedConfig(any)) = &filter.config_type else {
                panic!("typed config");
            };
            let config = HttpRbac::decode(any.value.as_slice()).expect("an RBAC filter");
            let action = (config.rules.as_ref())
                .or(config.shadow_rules.as_ref())
                .map_or(-1, |r| r.action);
            let prefix = config.shadow_rules_stat_prefix;
            (
                action,
                names(config.rules),
                names(config.shadow_rules),
                prefix,
            )
        })
        .collect()
}

fn names(policies: &[&str]) -> Option<Vec<String>> {
    let rule = |p: &&str| format!("ns[bookinfo]-policy[{p}]-rule[0]");
    Some(policies.iter().map(rule).collect())
}

#[test]
fn a_dry_run_policy_is_a_shadow_rule_and_enforces_nothing() {
    let deny = RbacAction::Deny as i32;
    assert_eq!(
        http_filters(&policy("probe", "DENY", Some("true"))),
        [(deny, None, names(&["probe"]), "istio_dry_run_deny_".into())]
    );
    // An ALLOW policy in dry run alone leaves every request allowed: no rules to enforce.
    let allow = RbacAction::Allow as i32;
    let yaml = [
        policy("block", "DENY", None),
        policy("probe", "DENY", Some("true")),
        policy("only", "ALLOW", Some("True")),
    ]
    .concat();
    assert_eq!(
        http_filters(&yaml),
        [
            (
                deny,
                names(&["block"]),
                names(&["probe"]),
                "istio_dry_run_deny_".into()
            ),
            (allow, None, names(&["only"]), "istio_dry_run_allow_".into()),
        ]
    );
    // "false": enforced.
    let yaml = [
        policy("a", "DENY", Some("false")),
        policy("b", "DENY", None),
    ]
    .concat();
    assert_eq!(
        http_filters(&yaml),
        [(deny, names(&["a", "b"]), None, String::new())]
    );
}

#[test]
fn tcp_chains_get_the_shadow_rules_too() {
    let yaml = policy("probe", "DENY", Some("true"));
    let authz = InboundAuthz::for_workload(&mesh(&yaml), "bookinfo", &BTreeMap::new());
    let [filter] = authz.tcp.as_slice() else {
        panic!("one TCP filter: {:?}", authz.tcp);
    };
    let Some(NetworkConfig::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config");
    };
    let config = NetworkRbac::decode(any.value.as_slice()).expect("a network RBAC filter");
    assert!(config.rules.is_none(), "{config:?}");
    assert_eq!(config.stat_prefix, "tcp.");
    assert_eq!(config.shadow_rules_stat_prefix, "istio_dry_run_deny_");
    let shadow = config.shadow_rules.expect("shadow rules");
    assert_eq!(shadow.policies.len(), 1);
}
