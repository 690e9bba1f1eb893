use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as PermissionRule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::*;
use crate::mesh_config::TrustDomains;

fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n{body}---\n"
    )
}

/// Every leaf matcher of a permission or principal tree, as text, depth first.
fn permission_leaves(p: &Permission, out: &mut Vec<String>) {
    match p.rule.as_ref().expect("a rule") {
        PermissionRule::AndRules(set) | PermissionRule::OrRules(set) => {
            set.rules.iter().for_each(|r| permission_leaves(r, out))
        }
        PermissionRule::NotRule(inner) => {
            let mut inner_leaves = Vec::new();
            permission_leaves(inner, &mut inner_leaves);
            out.extend(inner_leaves.into_iter().map(|l| format!("not {l}")));
        }
        PermissionRule::Any(_) => out.push("any".into()),
        PermissionRule::Header(h) => {
            out.push(format!("header {} {:?}", h.name, h.header_match_specifier))
        }
        PermissionRule::UrlPath(path) => out.push(format!("path {:?}", path.rule)),
        PermissionRule::DestinationPort(port) => out.push(format!("port {port}")),
        other => out.push(format!("{other:?}")),
    }
}

fn principal_leaves(p: &Principal, out: &mut Vec<String>) {
    match p.identifier.as_ref().expect("an identifier") {
        Identifier::AndIds(set) | Identifier::OrIds(set) => {
            set.ids.iter().for_each(|i| principal_leaves(i, out))
        }
        Identifier::NotId(inner) => {
            let mut inner_leaves = Vec::new();
            principal_leaves(inner, &mut inner_leaves);
            out.extend(inner_leaves.into_iter().map(|l| format!("not {l}")));
        }
        Identifier::Any(_) => out.push("any".into()),
        Identifier::Authenticated(a) => {
            let pattern = a
                .principal_name
                .as_ref()
                .and_then(|m| m.match_pattern.clone());
            out.push(match pattern {
                Some(MatchPattern::Exact(v)) => format!("peer {v}"),
                Some(MatchPattern::SafeRegex(r)) => format!("peer ~{}", r.regex),
                other => format!("peer {other:?}"),
            })
        }
        Identifier::DirectRemoteIp(cidr) => out.push(format!(
            "ip {}/{}",
            cidr.address_prefix,
            cidr.prefix_len.map_or(0, |l| l.value)
        )),
        other => out.push(format!("{other:?}")),
    }
}

fn leaves(policy: &Policy) -> (Vec<String>, Vec<String>) {
    let (mut permissions, mut principals) = (Vec::new(), Vec::new());
    policy
        .permissions
        .iter()
        .for_each(|p| permission_leaves(p, &mut permissions));
    policy
        .principals
        .iter()
        .for_each(|p| principal_leaves(p, &mut principals));
    (permissions, principals)
}

fn named(yaml: &str, for_tcp: bool, if_unusable: IfUnusable) -> BTreeMap<String, Policy> {
    named_in(yaml, (for_tcp, if_unusable), &TrustDomains::default())
}

fn named_in(
    yaml: &str,
    chain: (bool, IfUnusable),
    trust: &TrustDomains,
) -> BTreeMap<String, Policy> {
    let all = crate::model::authorization::parse(yaml);
    let list: Vec<&AuthzPolicy> = all.policies().collect();
    named_policies(&list, chain, trust)
}

const PRODUCTPAGE_GETS_API: &str = "  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/productpage], namespaces: [front*]}}]
    to: [{operation: {methods: [GET], paths: [/api/*], notPorts: [\"9090\"]}}]
    when: [{key: source.ip, values: [10.0.0.0/8]}]
";

#[test]
fn a_rule_is_its_sources_and_operations_each_or_ed_and_and_ed_together() {
    let policies = named(
        &policy("api", PRODUCTPAGE_GETS_API),
        false,
        IfUnusable::DropRule,
    );
    let rule = &policies["ns[bookinfo]-policy[api]-rule[0]"];
    let (permissions, principals) = leaves(rule);
    assert_eq!(permissions.len(), 3, "{permissions:?}");
    assert!(permissions[0].starts_with("header :method") && permissions[0].contains("\"GET\""));
    assert!(permissions[1].starts_with("path") && permissions[1].contains("Prefix(\"/api/\")"));
    assert_eq!(permissions[2], "not port 9090");
    assert_eq!(
        principals,
        [
            "peer spiffe://cluster.local/ns/bookinfo/sa/productpage",
            "peer ~.*/ns/front.*/.*",
            "ip 10.0.0.0/8",
        ]
    );
}

/// As istiod's `MigrateTrustDomain`: a principal in `cluster.local` ("this mesh") or in one
/// of the mesh's trust domains names the account in each of them; `trustDomains` values of
/// the mesh name its aliases too; another trust domain's stays as written.
#[test]
fn principals_of_this_mesh_name_its_trust_domain_and_aliases() {
    let yaml = policy(
        "api",
        "  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/productpage, other.org/ns/x/sa/y], trustDomains: [old.example]}}]
  - when: [{key: source.principal, notValues: [old.example/ns/bookinfo/sa/legacy]}]
",
    );
    let trust = TrustDomains::new("example.org", &["old.example".into()]);
    let policies = named_in(&yaml, (false, IfUnusable::DropRule), &trust);
    let (_, from) = leaves(&policies["ns[bookinfo]-policy[api]-rule[0]"]);
    assert_eq!(
        from,
        [
            "peer spiffe://example.org/ns/bookinfo/sa/productpage",
            "peer spiffe://old.example/ns/bookinfo/sa/productpage",
            "peer spiffe://other.org/ns/x/sa/y",
            "peer Some(Prefix(\"spiffe://example.org/\"))",
            "peer Some(Prefix(\"spiffe://old.example/\"))",
        ]
    );
    let (_, when) = leaves(&policies["ns[bookinfo]-policy[api]-rule[1]"]);
    assert_eq!(
        when,
        [
            "not peer spiffe://example.org/ns/bookinfo/sa/legacy",
            "not peer spiffe://old.example/ns/bookinfo/sa/legacy",
        ]
    );
    let (_, default) =
        leaves(&named(&yaml, false, IfUnusable::DropRule)["ns[bookinfo]-policy[api]-rule[0]"]);
    assert_eq!(
        default[..2],
        [
            "peer spiffe://cluster.local/ns/bookinfo/sa/productpage",
            "peer spiffe://other.org/ns/x/sa/y"
        ],
        "the default trust domain keeps them as written"
    );
}

#[test]
fn on_tcp_an_http_field_drops_an_allow_rule_but_only_itself_from_a_deny_rule() {
    let yaml = policy("api", PRODUCTPAGE_GETS_API);
    assert!(named(&yaml, true, IfUnusable::DropRule).is_empty());
    let deny = named(&yaml, true, IfUnusable::DropField);
    let (permissions, principals) = leaves(&deny["ns[bookinfo]-policy[api]-rule[0]"]);
    assert_eq!(permissions, ["not port 9090"]);
    assert_eq!(principals.len(), 3);
}

#[test]
fn a_policy_without_rules_matches_nothing_and_one_empty_rule_everything() {
    let yaml = [
        policy("deny-all", "  {}\n"),
        policy("allow-all", "  rules: [{}]\n"),
    ]
    .concat();
    let policies = named(&yaml, false, IfUnusable::DropRule);
    let (permissions, principals) = leaves(&policies["ns[bookinfo]-policy[deny-all]-rule[0]"]);
    assert_eq!(
        (permissions, principals),
        (vec!["not any".into()], vec!["not any".into()])
    );
    let (permissions, principals) = leaves(&policies["ns[bookinfo]-policy[allow-all]-rule[0]"]);
    assert_eq!(
        (permissions, principals),
        (vec!["any".into()], vec!["any".into()])
    );
}

#[test]
fn rbac_policies_encode_in_name_order_whatever_the_map_order() {
    let yaml: String = (0..40)
        .map(|i| {
            policy(
                &format!("p{i:02}"),
                "  rules: [{to: [{operation: {paths: [/x]}}]}]\n",
            )
        })
        .collect();
    let policies = named(&yaml, false, IfUnusable::DropRule);
    let bytes = rbac_bytes(RbacAction::Deny, &policies);
    // prost's own encoding follows the map's hash order: ours must not.
    let decoded = Rbac::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded.action, RbacAction::Deny as i32);
    assert_eq!(decoded.policies.len(), 40);
    let again = Rbac::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(
        rbac_bytes(RbacAction::Deny, &again.policies.into_iter().collect()),
        bytes
    );
    let filter = http_filter(&enforcing(RbacAction::Deny, bytes));
    let Some(HttpFilterConfig::TypedConfig(any)) = filter.config_type else {
        panic!("typed config");
    };
    let config = HttpRbac::decode(any.value.as_slice()).expect("decodes");
    assert_eq!(config.rules.expect("rules").policies.len(), 40);
}
