//! `charts/manifests/validating-webhook.yaml` registers every kind capstan validates,
//! as the admission webhook expects to be called.

use std::collections::BTreeSet;
use std::path::PathBuf;

use capstan_crds::Kind;
use serde_json::Value;

fn manifest(name: &str) -> Value {
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../charts/manifests")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn registers_every_kind_for_create_and_update() {
    let config = manifest("validating-webhook.yaml");
    assert_eq!(config["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(config["kind"], "ValidatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().cloned().unwrap_or_default();
    assert_eq!(webhooks.len(), 1);
    let webhook = &webhooks[0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"]);
    let service = &webhook["clientConfig"]["service"];
    assert_eq!(service["name"], "capstan");
    assert_eq!(service["namespace"], "capstan-system");
    assert_eq!(service["path"], "/validate");
    assert_eq!(service["port"], 443);

    let mut registered = BTreeSet::new();
    for rule in webhook["rules"].as_array().into_iter().flatten() {
        assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| k.group() == group && k.plural() == resource)
                    .unwrap_or_else(|| {
                        panic!("{group}/{resource} is not a kind capstan validates")
                    });
                let mut versions = strings(&rule["apiVersions"]);
                versions.sort();
                let mut served: Vec<String> =
                    kind.versions().iter().map(|v| (*v).to_owned()).collect();
                served.sort();
                assert_eq!(versions, served, "{kind}");
                registered.insert(kind);
            }
        }
    }
    let all: BTreeSet<Kind> = Kind::ALL.into_iter().collect();
    assert_eq!(registered, all);
}

#[test]
fn the_service_forwards_to_the_webhook_port() {
    let service = manifest("webhook-service.yaml");
    assert_eq!(service["metadata"]["name"], "capstan");
    assert_eq!(service["metadata"]["namespace"], "capstan-system");
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], 443);
    assert_eq!(port["targetPort"], 15017);
}
