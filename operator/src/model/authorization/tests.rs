use std::collections::BTreeMap;

use super::*;

const ROOT: &str = "istio-system";

fn policy(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}---\n"
    )
}

fn names(list: &[&Policy]) -> Vec<String> {
    list.iter()
        .map(|p| format!("{}/{}", p.key.namespace, p.key.name))
        .collect()
}

fn app(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), name.to_string())])
}

#[test]
fn root_and_own_namespace_policies_apply_by_selector_and_action() {
    let yaml = [
        policy(ROOT, "deny-all", "  {}\n"),
        policy(
            ROOT,
            "reviews-anywhere",
            "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{}]\n",
        ),
        policy(
            "bookinfo",
            "allow-get",
            "  rules: [{to: [{operation: {methods: [GET]}}]}]\n",
        ),
        policy(
            "bookinfo",
            "ratings-only",
            "  selector: {matchLabels: {app: ratings}}\n  action: AUDIT\n  rules: [{}]\n",
        ),
        policy("other", "elsewhere", "  rules: [{}]\n"),
    ]
    .concat();
    let all = parse(&yaml);
    let reviews = all.for_workload(ROOT, "bookinfo", &app("reviews"));
    assert_eq!(
        names(&reviews.allow),
        ["istio-system/deny-all", "bookinfo/allow-get"]
    );
    assert_eq!(names(&reviews.deny), ["istio-system/reviews-anywhere"]);
    assert!(reviews.audit.is_empty());
    let ratings = all.for_workload(ROOT, "bookinfo", &app("ratings"));
    assert_eq!(names(&ratings.audit), ["bookinfo/ratings-only"]);
    assert!(ratings.deny.is_empty());
    // In the root namespace itself, its own policies once.
    let root = all.for_workload(ROOT, ROOT, &app("reviews"));
    assert_eq!(names(&root.allow), ["istio-system/deny-all"]);
    assert_eq!(names(&root.deny), ["istio-system/reviews-anywhere"]);
}

#[test]
fn referenced_policies_apply_to_no_sidecar_and_custom_ones_are_kept_apart() {
    let yaml = [
        policy(
            "bookinfo",
            "gateway",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: web}]\n  rules: [{}]\n",
        ),
        policy(
            "bookinfo",
            "ext",
            "  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n",
        ),
    ]
    .concat();
    let mut all = parse(&yaml);
    let found = all.for_workload(ROOT, "bookinfo", &app("reviews"));
    let custom: Vec<_> = found
        .custom
        .iter()
        .map(|p| (p.key.name.as_str(), p.provider()))
        .collect();
    assert_eq!(custom, [("ext", "opa")]);
    assert!(found.allow.is_empty() && found.deny.is_empty() && found.audit.is_empty());
    let key = ObjectKey {
        kind: capstan_crds::Kind::AuthorizationPolicy,
        namespace: "bookinfo".into(),
        name: "ext".into(),
    };
    assert!(all.remove(&key).is_some());
    assert!(all.remove(&key).is_none());
    assert_eq!(all.policies().count(), 1);
}
