use std::collections::BTreeMap;

use capstan_crds::parse::parse_single;
use capstan_crds::{Kind, ObjectKey};

use super::*;

fn slice(name: &str, service: &str, pods: &[(&str, &str)]) -> Record {
    Record::Slice(SliceRecord {
        id: NsName::new("shop", name),
        service: service.into(),
        ports: std::sync::Arc::new(BTreeMap::from([("http".to_string(), 8080)])),
        endpoints: pods
            .iter()
            .map(|(pod, address)| SliceEndpoint {
                address: (*address).into(),
                health: Health::Ready,
                pod: Some(pod.to_string()),
                node: Some("node-a".into()),
                zone: None,
            })
            .collect(),
    })
}

fn pod(name: &str, version: &str) -> Record {
    Record::Pod(PodRecord {
        id: NsName::new("shop", name),
        labels: std::sync::Arc::new(BTreeMap::from([(
            "version".to_string(),
            version.to_string(),
        )])),
        service_account: "cart".into(),
        node: Some("node-a".into()),
        ip: None,
        ready: true,
    })
}

fn service(name: &str, port: u32) -> Record {
    Record::Service(KubeService {
        id: NsName::new("shop", name),
        ports: vec![KubeServicePort {
            name: "http".into(),
            port,
            protocol: Some(capstan_crds::Protocol::Http),
            target_port: 8080,
        }],
        headless: false,
        cluster_ips: Vec::new(),
        export_to: Vec::new(),
        external_name: None,
        selector: Default::default(),
    })
}

fn istio(yaml: &str, generation: i64) -> Record {
    let document = parse_single("test.yaml", yaml).expect("valid yaml");
    let errors: Vec<String> = document
        .validate()
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    let key = document.object.key();
    Record::Istio(IstioRecord {
        key,
        generation,
        object: errors
            .is_empty()
            .then(|| std::sync::Arc::new(document.object)),
        errors,
        observed: None,
        status: None,
        resource_version: None,
    })
}

const DR_GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: shop}\nspec:\n  host: cart\n  subsets: [{name: v1, labels: {version: v1}}]\n";
const DR_BAD: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: shop}\nspec:\n  host: cart\n  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]\n";

fn cart() -> NsName {
    NsName::new("shop", "cart")
}

#[test]
fn an_endpoint_slice_change_names_only_its_service() {
    let mut index = Index::new();
    assert!(index.apply(service("cart", 80)).config());
    let changes = index.apply(slice("cart-1", "cart", &[("cart-a", "10.0.0.1")]));
    assert_eq!(changes, Changes::endpoints([cart()]));
    // The same slice again changes nothing.
    assert!(
        index
            .apply(slice("cart-1", "cart", &[("cart-a", "10.0.0.1")]))
            .is_empty()
    );
    // A second slice of another service names that service only.
    let changes = index.apply(slice("pay-1", "pay", &[("pay-a", "10.0.0.9")]));
    assert_eq!(changes, Changes::endpoints([NsName::new("shop", "pay")]));
    assert_eq!(index.slices_of(&cart()).count(), 1);
}

#[test]
fn a_pod_relabel_changes_the_services_that_route_to_it() {
    let mut index = Index::new();
    index.apply(slice("cart-1", "cart", &[("cart-a", "10.0.0.1")]));
    // A pod nobody routes to changes nothing.
    assert!(index.apply(pod("idle", "v1")).is_empty());
    assert_eq!(
        index.apply(pod("cart-a", "v1")),
        Changes::endpoints([cart()])
    );
    assert!(index.apply(pod("cart-a", "v1")).is_empty());
    assert_eq!(
        index.apply(pod("cart-a", "v2")),
        Changes::endpoints([cart()])
    );
    // Once the slice no longer names it, the pod is nobody's.
    index.apply(slice("cart-1", "cart", &[("cart-b", "10.0.0.2")]));
    assert!(index.apply(pod("cart-a", "v3")).is_empty());
}

#[test]
fn a_slice_moving_to_another_service_changes_both() {
    let mut index = Index::new();
    index.apply(slice("s", "cart", &[("p", "10.0.0.1")]));
    let changes = index.apply(slice("s", "pay", &[("p", "10.0.0.1")]));
    assert_eq!(
        changes,
        Changes::endpoints([cart(), NsName::new("shop", "pay")])
    );
    assert_eq!(index.slices_of(&cart()).count(), 0);
}

#[test]
fn an_invalid_version_keeps_the_last_good_object_and_reports() {
    let mut index = Index::new();
    let key = ObjectKey {
        kind: Kind::DestinationRule,
        namespace: "shop".into(),
        name: "cart".into(),
    };
    assert!(index.apply(istio(DR_GOOD, 1)).config());
    let changes = index.apply(istio(DR_BAD, 2));
    assert!(
        changes.config(),
        "the errors are news even if nothing else is"
    );
    let record = index
        .istio_records()
        .find(|r| r.key == key)
        .expect("still held");
    assert_eq!(record.generation, 2);
    assert!(!record.errors.is_empty());
    assert!(record.object.is_some(), "the last good version is served");
    assert_eq!(index.istio_objects().count(), 1);
}

#[test]
fn a_status_only_change_is_not_config() {
    let mut index = Index::new();
    index.apply(istio(DR_GOOD, 1));
    let Record::Istio(mut record) = istio(DR_GOOD, 1) else {
        unreachable!()
    };
    record.observed = Some(crate::status::Observed {
        observed_generation: Some(1),
        status: "True".into(),
        reason: "Accepted".into(),
        message: String::new(),
    });
    let changes = index.apply(Record::Istio(record.clone()));
    assert_eq!(
        changes,
        Changes {
            statuses: [record.key.clone()].into(),
            ..Changes::default()
        }
    );
    assert!(index.apply(Record::Istio(record.clone())).is_empty());
    // A new resource version alone (someone else's status write) renews what status
    // patches are conditional on: a status change, not config.
    record.resource_version = Some("7".into());
    let changes = index.apply(Record::Istio(record.clone()));
    assert!(!changes.config());
    assert_eq!(changes.statuses, [record.key.clone()].into());
}

#[test]
fn reset_deletes_what_the_list_lacks_and_leaves_other_kinds() {
    let mut index = Index::new();
    index.apply(service("cart", 80));
    index.apply(service("pay", 80));
    index.apply(slice("cart-1", "cart", &[("cart-a", "10.0.0.1")]));
    index.apply(istio(DR_GOOD, 1));
    // The same list again: nothing changed (a re-list after an API server outage).
    let changes = index.reset(
        &[Tag::Service],
        vec![service("cart", 80), service("pay", 80)],
    );
    assert!(changes.is_empty());
    // `pay` is gone from the list; the slice and the DestinationRule are other kinds.
    let changes = index.reset(&[Tag::Service], vec![service("cart", 80)]);
    assert!(changes.config());
    assert_eq!(index.services().count(), 1);
    assert_eq!(index.slices_of(&cart()).count(), 1);
    assert_eq!(index.istio_objects().count(), 1);
    // Reset of the Istio kinds, as a folder rescan does.
    let tags: Vec<Tag> = Kind::ALL.iter().map(|k| Tag::Istio(*k)).collect();
    assert!(index.reset(&tags, vec![]).config());
    assert_eq!(index.istio_objects().count(), 0);
}

#[test]
fn deleting_a_node_or_pod_names_the_services_on_it() {
    let mut index = Index::new();
    index.apply(slice("cart-1", "cart", &[("cart-a", "10.0.0.1")]));
    index.apply(pod("cart-a", "v1"));
    index.apply(Record::Node(NodeRecord {
        name: "node-a".into(),
        region: "us-east-1".into(),
        zone: "us-east-1a".into(),
    }));
    assert_eq!(
        index.delete(&RecordKey::Node("node-a".into())),
        Changes::endpoints([cart()])
    );
    assert_eq!(
        index.delete(&RecordKey::Pod(NsName::new("shop", "cart-a"))),
        Changes::endpoints([cart()])
    );
    assert!(
        index
            .delete(&RecordKey::Pod(NsName::new("shop", "cart-a")))
            .is_empty()
    );
}

#[test]
fn secrets_are_config_objects() {
    let secret = |key: &[u8]| {
        Record::Secret(SecretRecord {
            id: NsName::new("edge", "shop-cert"),
            secret_type: "kubernetes.io/tls".into(),
            data: BTreeMap::from([
                ("tls.crt".to_string(), std::sync::Arc::from(&b"cert"[..])),
                ("tls.key".to_string(), std::sync::Arc::from(key)),
            ]),
        })
    };
    let key = RecordKey::Secret(NsName::new("edge", "shop-cert"));
    let mut index = Index::new();
    let changed = index.apply(secret(b"key"));
    assert_eq!(changed.objects, BTreeSet::from([key.clone()]));
    assert!(index.apply(secret(b"key")).is_empty(), "same content");
    assert_eq!(index.apply(secret(b"new")).objects.len(), 1);
    assert_eq!(
        index
            .secret(&NsName::new("edge", "shop-cert"))
            .map(|s| &*s.data["tls.key"]),
        Some(&b"new"[..])
    );
    // A re-list without it deletes it.
    let changed = index.reset(&[Tag::Secret], vec![]);
    assert_eq!(changed.objects, BTreeSet::from([key]));
    assert_eq!(index.secrets().count(), 0);
    assert_eq!(index.counts()["Secret"], 0);
}
