use std::collections::BTreeMap;

use capstan_crds::IstioObject;
use capstan_crds::parse::parse_documents;

use super::*;

const ROOT: &str = "istio-system";

/// The policies of `yaml` (PeerAuthentications, valid).
fn policies(yaml: &str) -> PeerAuthentications {
    let mut out = PeerAuthentications::default();
    for document in parse_documents("test.yaml", yaml).expect("valid YAML") {
        let document = document.expect("valid document");
        assert!(document.validate().is_empty(), "{:?}", document.validate());
        let IstioObject::PeerAuthentication(pa) = &document.object else {
            panic!("not a PeerAuthentication");
        };
        let key = document.object.key();
        out.insert(&key, &pa.spec, pa.metadata.creation_timestamp.as_ref());
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}---\n"
    )
}

#[test]
fn without_policies_everything_is_permissive() {
    let none = PeerAuthentications::default();
    assert_eq!(none.namespace_mode(ROOT, "bookinfo"), MtlsMode::Permissive);
    let workload = none.workload(ROOT, "bookinfo", &labels(&[("app", "reviews")]));
    assert_eq!(workload.for_port(9080), MtlsMode::Permissive);
}

#[test]
fn the_namespace_overrides_the_mesh_and_the_workload_the_namespace() {
    let yaml = [
        policy(ROOT, "default", "  mtls: {mode: STRICT}\n"),
        policy("legacy", "default", "  mtls: {mode: PERMISSIVE}\n"),
        policy(
            "legacy",
            "reviews",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n",
        ),
    ]
    .concat();
    let all = policies(&yaml);
    assert_eq!(all.namespace_mode(ROOT, "bookinfo"), MtlsMode::Strict);
    assert_eq!(all.namespace_mode(ROOT, "legacy"), MtlsMode::Permissive);
    let reviews = labels(&[("app", "reviews"), ("version", "v1")]);
    assert_eq!(
        all.workload(ROOT, "legacy", &reviews).mode,
        MtlsMode::Disable
    );
    assert_eq!(
        all.workload(ROOT, "legacy", &labels(&[("app", "ratings")]))
            .mode,
        MtlsMode::Permissive
    );
    // The same labels in another namespace are not selected.
    assert_eq!(
        all.workload(ROOT, "bookinfo", &reviews).mode,
        MtlsMode::Strict
    );
}

#[test]
fn unset_inherits_and_port_level_modes_override_the_workload() {
    let yaml = [
        policy("bookinfo", "default", "  mtls: {mode: STRICT}\n"),
        policy(
            "bookinfo",
            "db",
            "  selector: {matchLabels: {app: db}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    \"5432\": {mode: DISABLE}\n    \"9000\": {}\n",
        ),
    ]
    .concat();
    let all = policies(&yaml);
    let db = all.workload(ROOT, "bookinfo", &labels(&[("app", "db")]));
    assert_eq!(db.mode, MtlsMode::Strict, "UNSET inherits the namespace's");
    assert_eq!(db.for_port(5432), MtlsMode::Disable);
    assert_eq!(
        db.for_port(9000),
        MtlsMode::Strict,
        "an unset port inherits"
    );
    assert_eq!(db.for_port(8080), MtlsMode::Strict);
}

#[test]
fn the_oldest_policy_of_a_level_wins_then_the_first_by_name() {
    let yaml = [
        policy("bookinfo", "b-older", "  mtls: {mode: DISABLE}\n").replace(
            "namespace: bookinfo}",
            "namespace: bookinfo, creationTimestamp: \"2026-01-01T00:00:00Z\"}",
        ),
        policy("bookinfo", "a-newer", "  mtls: {mode: STRICT}\n").replace(
            "namespace: bookinfo}",
            "namespace: bookinfo, creationTimestamp: \"2026-06-01T00:00:00Z\"}",
        ),
        policy("other", "b", "  mtls: {mode: DISABLE}\n"),
        policy("other", "a", "  mtls: {mode: STRICT}\n"),
    ]
    .concat();
    let all = policies(&yaml);
    assert_eq!(all.namespace_mode(ROOT, "bookinfo"), MtlsMode::Disable);
    assert_eq!(all.namespace_mode(ROOT, "other"), MtlsMode::Strict);
}

#[test]
fn a_selecting_policy_in_the_root_namespace_applies_to_no_one() {
    let yaml = [
        policy(
            ROOT,
            "gateways",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  mtls: {mode: STRICT}\n",
        ),
        policy(ROOT, "default", "  mtls: {mode: UNSET}\n"),
    ]
    .concat();
    let all = policies(&yaml);
    let gateway = labels(&[("istio", "ingressgateway")]);
    assert_eq!(
        all.workload(ROOT, ROOT, &gateway).mode,
        MtlsMode::Permissive
    );
    assert_eq!(
        all.workload(ROOT, "bookinfo", &gateway).mode,
        MtlsMode::Permissive
    );
}

#[test]
fn removing_a_policy_restores_the_parent_mode() {
    let yaml = [
        policy(ROOT, "default", "  mtls: {mode: STRICT}\n"),
        policy("bookinfo", "default", "  mtls: {mode: DISABLE}\n"),
    ]
    .concat();
    let mut all = policies(&yaml);
    assert_eq!(all.namespace_mode(ROOT, "bookinfo"), MtlsMode::Disable);
    let key = ObjectKey {
        kind: capstan_crds::Kind::PeerAuthentication,
        namespace: "bookinfo".into(),
        name: "default".into(),
    };
    assert!(all.remove(&key).is_some());
    assert!(all.remove(&key).is_none());
    assert_eq!(all.namespace_mode(ROOT, "bookinfo"), MtlsMode::Strict);
}
