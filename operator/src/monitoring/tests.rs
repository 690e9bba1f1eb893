use capstan_xds::ads::delta::DeltaStream;
use capstan_xds::ads::request::SotwRequest;
use capstan_xds::ads::sotw::SotwStream;
use capstan_xds::{Resource, Selector, Update};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body_util::BodyExt;
use serde_json::Value;

use super::syncz::SyncEntry;
use super::*;

const NS1_NODE: &str = "sidecar~10.0.0.1~reviews-v1-abc.ns1~ns1.svc.cluster.local";
const NS2_NODE: &str = "sidecar~10.0.0.2~ratings-v1-xyz.ns2~ns2.svc.cluster.local";

fn monitor(cache: &SnapshotCache) -> (Monitor, watch::Sender<ReadyState>) {
    let (ready_tx, ready) = watch::channel(ReadyState::waiting(vec![
        "the first config".into(),
        "kube sync".into(),
    ]));
    let monitor = Monitor {
        cache: cache.clone(),
        registry: Registry::default(),
        ready,
        instance: "capstan-0".into(),
    };
    (monitor, ready_tx)
}

async fn get(monitor: &Monitor, uri: &str) -> (StatusCode, String) {
    let request = Request::get(uri).body(()).expect("a valid request");
    let response = monitor.handle(&request);
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn cluster(name: &str, body: &'static [u8]) -> Resource {
    Resource::from_bytes(type_url::CLUSTER, name, Bytes::from_static(body))
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn delta_request(id: &str, type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(id),
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn healthz_answers_and_readyz_says_what_it_waits_for() {
    let cache = SnapshotCache::new();
    let (monitor, ready) = monitor(&cache);
    assert_eq!(
        get(&monitor, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    for path in ["/readyz", "/ready"] {
        let (status, body) = get(&monitor, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body, "not ready: waiting for the first config, kube sync\n");
    }
    ready.send_replace(ReadyState::waiting(vec!["kube sync".into()]));
    let (status, body) = get(&monitor, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("kube sync") && !body.contains("first config"));
    ready.send_replace(ReadyState::ready());
    for path in ["/readyz", "/ready"] {
        assert_eq!(
            get(&monitor, path).await,
            (StatusCode::OK, "ready\n".into()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn readyz_names_each_failing_part_until_it_recovers() {
    let cache = SnapshotCache::new();
    let (monitor, ready) = monitor(&cache);
    ready.send_replace(ReadyState::ready());
    ready.send_modify(|s| {
        s.fail(
            "the config folder watch",
            "cannot watch /etc/mesh: No such file or directory".into(),
        );
    });
    let (status, body) = get(&monitor, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "not ready: the config folder watch failing: cannot watch /etc/mesh: No such file or directory\n"
    );
    assert!(ready.send_if_modified(|s| s.recover("the config folder watch")));
    assert!(!ready.send_if_modified(|s| s.recover("the config folder watch")));
    assert_eq!(
        get(&monitor, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );
}

#[tokio::test]
async fn syncz_lists_each_identified_proxy_with_its_per_type_status() {
    let cache = SnapshotCache::new();
    let mut update = Update::new();
    update.put(cluster("a", b"1"));
    cache.apply(update);
    let (monitor, _ready) = monitor(&cache);

    let mut delta = DeltaStream::new(cache.clone());
    let _anonymous = SotwStream::new(cache.clone());
    let sent = delta.on_request(
        delta_request(NS1_NODE, type_url::CLUSTER, ""),
        &cache.current(),
    );
    let (status, body) = get(&monitor, "/debug/syncz").await;
    assert_eq!(status, StatusCode::OK);
    let entries: Vec<SyncEntry> = serde_json::from_str(&body).expect("syncz entries");
    assert_eq!(entries.len(), 1, "a stream without a node is left out");
    let entry = &entries[0];
    assert_eq!(entry.node, NS1_NODE);
    assert_eq!(entry.namespace.as_deref(), Some("ns1"));
    assert_eq!(entry.pod.as_deref(), Some("reviews-v1-abc"));
    assert_eq!(entry.protocol, "delta");
    assert_eq!(entry.control_plane, "capstan-0");
    assert_eq!(entry.snapshot_version, 1);
    assert!(entry.connected_at.ends_with('Z'), "{}", entry.connected_at);
    let cds = &entry.types["cds"];
    assert_eq!(cds.status, "STALE");
    assert_eq!((cds.sent, cds.acked), (Some(1), None));
    assert_eq!(cds.nonce.as_deref(), Some(sent[0].nonce.as_str()));
    assert_eq!(entry.types["lds"].status, "NOT SENT");
    assert_eq!(entry.types["lds"].sent, None);

    delta.on_request(
        delta_request(NS1_NODE, type_url::CLUSTER, &sent[0].nonce),
        &cache.current(),
    );
    let json: Value = serde_json::from_str(&get(&monitor, "/debug/syncz").await.1).expect("json");
    assert_eq!(json[0]["types"]["cds"]["status"], "SYNCED");
    assert_eq!(json[0]["types"]["cds"]["acked"], 1);
    assert_eq!(json[0]["types"]["cds"]["last_nack"], Value::Null);
    for t in ["cds", "eds", "lds", "rds"] {
        assert!(json[0]["types"][t].is_object(), "{t} listed");
    }

    drop(delta);
    let (_, body) = get(&monitor, "/debug/syncz").await;
    assert_eq!(
        body.trim(),
        "[]",
        "a proxy that went away is no longer listed"
    );
}

#[tokio::test]
async fn config_dump_shows_the_proxys_own_variants() {
    let cache = SnapshotCache::new();
    let mut update = Update::new();
    update
        .put(cluster("shared", b"everyone"))
        .put_for(Selector::namespace("ns2"), cluster("ns2-only", b"ns2"))
        .put_for(
            Selector::namespace("ns1"),
            cluster("shared", b"ns1 variant"),
        );
    cache.apply(update);
    let (monitor, _ready) = monitor(&cache);

    assert_eq!(
        get(&monitor, "/debug/config_dump").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = get(&monitor, &format!("/debug/config_dump?proxy={NS1_NODE}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not connected yet: {body}");

    let mut sotw = SotwStream::new(cache.clone());
    sotw.on_request(
        SotwRequest::from(&DiscoveryRequest {
            node: node(NS1_NODE),
            type_url: type_url::CLUSTER.into(),
            ..Default::default()
        }),
        &cache.current(),
    );
    // `~` percent-encoded, as some clients send it.
    let encoded = NS1_NODE.replace('~', "%7E");
    let (status, body) = get(&monitor, &format!("/debug/config_dump?x=1&proxy={encoded}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dump: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(dump["node"], NS1_NODE);
    assert_eq!(dump["namespace"], "ns1");
    assert_eq!(dump["protocol"], "sotw");
    assert_eq!(dump["snapshot_version"], 1);
    let cds = &dump["types"]["cds"];
    assert_eq!(cds["type_url"], type_url::CLUSTER);
    let resources = cds["resources"].as_array().expect("a list");
    assert_eq!(
        resources.len(),
        1,
        "ns2's cluster is not this proxy's: {cds}"
    );
    assert_eq!(resources[0]["name"], "shared");
    let ns1_variant = cluster("shared", b"ns1 variant");
    assert_eq!(resources[0]["version"], ns1_variant.version_hex());
    assert_eq!(resources[0]["size"], ns1_variant.size());
    assert_eq!(dump["types"]["lds"]["resources"], json!([]));

    // A proxy in ns2 gets the shared variant and its own cluster.
    let mut delta = DeltaStream::new(cache.clone());
    delta.on_request(
        delta_request(NS2_NODE, type_url::CLUSTER, ""),
        &cache.current(),
    );
    let (status, body) = get(&monitor, &format!("/debug/config_dump?proxy={NS2_NODE}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dump: Value = serde_json::from_str(&body).expect("json");
    let names: Vec<&str> = dump["types"]["cds"]["resources"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["ns2-only", "shared"]);
    assert_eq!(
        dump["types"]["cds"]["resources"][1]["version"],
        cluster("shared", b"everyone").version_hex()
    );
}

#[test]
fn query_values_are_percent_decoded() {
    assert_eq!(
        query_param(Some("a=1&proxy=x%7Ey%2"), "proxy").as_deref(),
        Some("x~y%2")
    );
    assert_eq!(query_param(Some("proxy="), "proxy"), None);
    assert_eq!(query_param(None, "proxy"), None);
}
