use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;

use super::*;
use crate::ads::request::SotwRequest;
use crate::proxy::Selector;
use crate::resource::type_url::{CLUSTER, ENDPOINT, LISTENER};
use crate::test_support::{apply, apply_for};

fn request(type_url: &str, names: &[&str], nonce: &str) -> SotwRequest {
    SotwRequest::from(&DiscoveryRequest {
        node: Some(Node {
            id: "sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    })
}

fn names(r: &SotwResponse) -> Vec<&str> {
    r.resources.resources().iter().map(|r| r.name()).collect()
}

#[test]
fn wildcard_gets_everything_then_only_changes_after_the_ack() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(first.len(), 1);
    assert_eq!(names(&first[0]), vec!["a", "b"]);
    assert_eq!(
        stream.node_id(),
        "sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local"
    );

    // A change while the first response is unanswered waits for the ACK...
    let s2 = apply(&cache, &[(CLUSTER, "a", b"2")]);
    assert!(stream.on_state(&s2).is_empty());
    // ...and the ACK brings it, merged with anything else that changed meanwhile.
    let s3 = apply(&cache, &[(CLUSTER, "c", b"1")]);
    let next = stream.on_request(request(CLUSTER, &[], &first[0].nonce), &s3);
    assert_eq!(next.len(), 1);
    assert_eq!(names(&next[0]), vec!["a", "b", "c"]);
    assert_ne!(next[0].version_info, first[0].version_info);

    // ACK; a change to another type sends nothing for clusters.
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &next[0].nonce), &s3)
            .is_empty()
    );
    let s4 = apply(&cache, &[(LISTENER, "l", b"1")]);
    assert!(stream.on_state(&s4).is_empty());
}

#[test]
fn named_subscription_sees_only_its_resources() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let first = stream.on_request(request(ENDPOINT, &["a"], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a"]);
    assert!(
        stream
            .on_request(request(ENDPOINT, &["a"], &first[0].nonce), &s1)
            .is_empty()
    );
    // A change to a resource it did not ask for is not pushed.
    let s2 = apply(&cache, &[(ENDPOINT, "b", b"2")]);
    assert!(stream.on_state(&s2).is_empty());
    // Asking for one more name answers with it (load assignments need not come complete).
    let more = stream.on_request(request(ENDPOINT, &["a", "b"], &first[0].nonce), &s2);
    assert_eq!(names(&more[0]), vec!["b"]);
}

#[test]
fn nack_is_recorded_and_the_rejected_content_not_resent() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(LISTENER, "l", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let first = stream.on_request(request(LISTENER, &[], ""), &s1);
    let mut nack = request(LISTENER, &[], &first[0].nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "bad listener".into(),
        ..Default::default()
    });
    assert!(stream.on_request(nack, &s1).is_empty());
    let recorded = cache.nacks();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].message, "bad listener");
    // The next change is sent as usual.
    let s2 = apply(&cache, &[(LISTENER, "l", b"2")]);
    assert_eq!(stream.on_state(&s2).len(), 1);
}

#[test]
fn stale_nonce_is_ignored() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert!(
        stream
            .on_request(request(CLUSTER, &["x"], "stale"), &s1)
            .is_empty()
    );
    assert!(cache.nacks().is_empty());
}

#[test]
fn initial_request_for_an_empty_type_is_answered() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1")]);
    let mut stream = SotwStream::new(cache);
    let out = stream.on_request(request(LISTENER, &[], ""), &s1);
    assert_eq!(out.len(), 1);
    assert!(out[0].resources.is_empty());
}

#[test]
fn a_change_for_another_namespace_is_not_pushed() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(LISTENER, "l", b"all")]);
    let mut stream = SotwStream::new(cache.clone());
    let first = stream.on_request(request(LISTENER, &[], ""), &s1);
    stream.on_request(request(LISTENER, &[], &first[0].nonce), &s1);
    let s2 = apply_for(&cache, Selector::namespace("ns2"), LISTENER, "l", b"ns2");
    assert!(
        stream.on_state(&s2).is_empty(),
        "the ns1 proxy's view did not change"
    );
    let s3 = apply_for(&cache, Selector::namespace("ns1"), LISTENER, "l", b"ns1");
    let pushed = stream.on_state(&s3);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].resources.resources()[0].body().as_ref(), b"ns1");
}

#[test]
fn endpoint_changes_send_only_the_changed_load_assignments() {
    let cache = SnapshotCache::new();
    let s1 = apply(
        &cache,
        &[
            (ENDPOINT, "a", b"1"),
            (ENDPOINT, "b", b"1"),
            (ENDPOINT, "z", b"1"),
            (CLUSTER, "a", b"1"),
        ],
    );
    let mut stream = SotwStream::new(cache.clone());
    let eds = stream.on_request(request(ENDPOINT, &["a", "b", "z"], ""), &s1);
    assert_eq!(names(&eds[0]), vec!["a", "b", "z"]);
    stream.on_request(request(ENDPOINT, &["a", "b", "z"], &eds[0].nonce), &s1);
    // Clusters after load assignments (a reconnect): the clusters' assignments are sent
    // again, whatever the proxy held, as they may have changed while it was away.
    let cds = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(cds.len(), 2);
    assert_eq!((cds[1].type_url, names(&cds[1])), (ENDPOINT, vec!["a"]));
    stream.on_request(request(CLUSTER, &[], &cds[0].nonce), &s1);
    stream.on_request(request(ENDPOINT, &["a", "b", "z"], &cds[1].nonce), &s1);

    let s2 = apply(&cache, &[(ENDPOINT, "b", b"2"), (CLUSTER, "a", b"2")]);
    let pushed = stream.on_state(&s2);
    assert_eq!(pushed.len(), 2);
    let by_type = |t: &str| pushed.iter().find(|r| r.type_url == t).expect("pushed");
    assert_eq!(
        names(by_type(ENDPOINT)),
        vec!["a", "b"],
        "only the changed load assignment, and the updated cluster's"
    );
    assert_eq!(
        names(by_type(CLUSTER)),
        vec!["a"],
        "clusters always come complete"
    );

    // Subscribing to one more load assignment sends just that one.
    let eds_nonce = by_type(ENDPOINT).nonce.clone();
    let s3 = apply(&cache, &[(ENDPOINT, "c", b"1")]);
    let more = stream.on_request(request(ENDPOINT, &["a", "b", "c", "z"], &eds_nonce), &s3);
    assert_eq!(names(&more[0]), vec!["c"]);
}

#[test]
fn clusters_always_come_complete() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    stream.on_request(request(CLUSTER, &[], &first[0].nonce), &s1);
    let s2 = apply(&cache, &[(CLUSTER, "c", b"1")]);
    let pushed = stream.on_state(&s2);
    assert_eq!(names(&pushed[0]), vec!["a", "b", "c"]);
}

#[test]
fn proxies_share_one_encoding_of_a_uniform_view() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
    let mut one = SotwStream::new(cache.clone());
    let mut two = SotwStream::new(cache.clone());
    let a = one.on_request(request(CLUSTER, &[], ""), &s1);
    let b = two.on_request(request(CLUSTER, &[], ""), &s1);
    assert!(Arc::ptr_eq(&a[0].resources, &b[0].resources));
    assert!(
        one.on_request(request(CLUSTER, &[], &a[0].nonce), &s1)
            .is_empty()
    );
    let mut ns2 = SotwStream::new(cache.clone());
    let c = ns2.on_request(request_from("ns2", CLUSTER), &s1);
    assert!(Arc::ptr_eq(&a[0].resources, &c[0].resources));
    let mut ack = request_from("ns2", CLUSTER);
    ack.response_nonce = c[0].nonce.clone();
    assert!(ns2.on_request(ack, &s1).is_empty());

    // Once a cluster is scoped to some proxies, views are built per proxy.
    let s2 = apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "a", b"ns2");
    assert!(s2.uniform_view(0).is_none());
    assert!(
        one.on_state(&s2).is_empty(),
        "the ns1 proxy's view did not change"
    );
    let pushed = ns2.on_state(&s2);
    assert_eq!(pushed.len(), 1, "the ns2 proxy's view did change");
    let bodies: Vec<_> = pushed[0]
        .resources
        .resources()
        .iter()
        .map(|r| (r.name().to_string(), r.body()))
        .collect();
    assert_eq!(
        bodies,
        vec![
            ("a".to_string(), "ns2".into()),
            ("b".to_string(), "1".into())
        ]
    );
}

/// A first wildcard request from a sidecar in namespace `ns`.
fn request_from(ns: &str, type_url: &str) -> SotwRequest {
    SotwRequest::from(&DiscoveryRequest {
        node: Some(Node {
            id: format!("sidecar~10.0.0.2~p.{ns}~{ns}.svc.cluster.local"),
            ..Default::default()
        }),
        type_url: type_url.into(),
        ..Default::default()
    })
}

#[test]
fn the_connection_registry_follows_sent_acked_and_nacked_responses() {
    use crate::connections::{SyncStatus, XdsProtocol};
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (LISTENER, "l", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let connections = cache.connections();
    let listed = connections.list();
    assert_eq!(listed.len(), 1, "registered when the stream opens");
    assert!(listed[0].proxy().is_none(), "no node seen yet");
    assert_eq!(listed[0].protocol(), XdsProtocol::Sotw);

    let cds = stream.on_request(request(CLUSTER, &[], ""), &s1);
    let conn = connections
        .find("sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local")
        .expect("identified by its first request");
    assert_eq!(
        conn.proxy().and_then(|p| p.namespace.as_deref()),
        Some("ns1")
    );
    let sync = |i: usize| conn.type_sync(i).expect("a served type");
    assert_eq!(sync(0).status, SyncStatus::Stale);
    let sent = sync(0).sent.expect("sent");
    assert_eq!(sent.version, s1.snapshot.version());
    assert_eq!(sent.nonce.to_string(), cds[0].nonce);
    assert_eq!(sync(2).status, SyncStatus::NotSent);

    // A stale nonce changes nothing; the ACK of the response in flight syncs the type.
    stream.on_request(request(CLUSTER, &[], "999"), &s1);
    assert_eq!(sync(0).status, SyncStatus::Stale);
    stream.on_request(request(CLUSTER, &[], &cds[0].nonce), &s1);
    assert_eq!(sync(0).status, SyncStatus::Synced);
    assert_eq!(sync(0).acked, sync(0).sent);

    // A change goes out: stale until answered, then NACKed with the proxy's message.
    let s2 = apply(&cache, &[(CLUSTER, "a", b"2")]);
    let pushed = stream.on_state(&s2);
    assert_eq!(sync(0).status, SyncStatus::Stale);
    assert_eq!(sync(0).sent.map(|s| s.version), Some(s2.snapshot.version()));
    assert_eq!(
        sync(0).acked.map(|s| s.version),
        Some(s1.snapshot.version())
    );
    let mut nack = request(CLUSTER, &[], &pushed[0].nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "bad cluster".into(),
        ..Default::default()
    });
    stream.on_request(nack, &s2);
    let nacked = sync(0);
    assert_eq!(nacked.status, SyncStatus::Nacked);
    let last = nacked.last_nack.expect("kept");
    assert_eq!(last.message, "bad cluster");
    assert_eq!(last.version, s2.snapshot.version());

    // The fix is sent and accepted.
    let s3 = apply(&cache, &[(CLUSTER, "a", b"3")]);
    let fixed = stream.on_state(&s3);
    stream.on_request(request(CLUSTER, &[], &fixed[0].nonce), &s3);
    assert_eq!(sync(0).status, SyncStatus::Synced);
    assert_eq!(
        sync(0).acked.map(|s| s.version),
        Some(s3.snapshot.version())
    );

    drop(stream);
    assert!(connections.is_empty(), "removed when the stream ends");
}

/// A listener may name a cluster the same change adds: while the proxy has not answered the
/// clusters sent before, the new listeners wait for the new clusters, and come right after
/// them once it answers — never before them.
#[test]
fn listeners_wait_for_the_clusters_of_their_change() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (LISTENER, "l", b"1")]);
    let mut stream = SotwStream::new(cache.clone());
    let clusters = stream.on_request(request(CLUSTER, &[], ""), &s1);
    let listeners = stream.on_request(request(LISTENER, &[], ""), &s1);
    assert_eq!(listeners.len(), 1);
    let acked = stream.on_request(request(LISTENER, &[], &listeners[0].nonce), &s1);
    assert!(acked.is_empty());

    // A cluster and the listener naming it change while the clusters are unanswered.
    let s2 = apply(&cache, &[(CLUSTER, "b", b"1"), (LISTENER, "l", b"2")]);
    assert!(
        stream.on_state(&s2).is_empty(),
        "the listener went before its cluster"
    );

    // The clusters' answer releases both, clusters first.
    let next = stream.on_request(request(CLUSTER, &[], &clusters[0].nonce), &s2);
    let types: Vec<&str> = next.iter().map(|r| r.type_url).collect();
    assert_eq!(types, [CLUSTER, LISTENER]);
    assert_eq!(names(&next[0]), ["a", "b"]);
}

/// The clusters that changed in a SotW response (which carries them all) are followed by
/// their load assignments, unchanged or not, and only theirs: Envoy warms an updated cluster
/// until one arrives, and the request it sends for a name it holds reads as an ACK.
#[test]
fn updated_clusters_are_followed_by_their_load_assignments() {
    let cache = SnapshotCache::new();
    let s1 = apply(
        &cache,
        &[
            (CLUSTER, "a", b"1"),
            (CLUSTER, "b", b"1"),
            (CLUSTER, "static", b"1"),
            (ENDPOINT, "a", b"1"),
            (ENDPOINT, "b", b"1"),
        ],
    );
    let mut stream = SotwStream::new(cache.clone());
    let cds = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(names(&cds[0]), vec!["a", "b", "static"]);
    let eds = stream.on_request(request(ENDPOINT, &["a", "b"], ""), &s1);
    assert_eq!(names(&eds[0]), vec!["a", "b"]);
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &cds[0].nonce), &s1)
            .is_empty()
    );
    assert!(
        stream
            .on_request(request(ENDPOINT, &["a", "b"], &eds[0].nonce), &s1)
            .is_empty()
    );
    // Cluster a changes, its endpoints do not; so does the static one.
    let s2 = apply(&cache, &[(CLUSTER, "a", b"2"), (CLUSTER, "static", b"2")]);
    let pushed = stream.on_state(&s2);
    let types: Vec<&str> = pushed.iter().map(|r| r.type_url).collect();
    assert_eq!(types, vec![CLUSTER, ENDPOINT]);
    assert_eq!(names(&pushed[0]), vec!["a", "b", "static"]);
    assert_eq!(names(&pushed[1]), vec!["a"]);
    // Envoy's request for the warming cluster's assignment, and the ACKs, ask for nothing more.
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &pushed[0].nonce), &s2)
            .is_empty()
    );
    assert!(
        stream
            .on_request(request(ENDPOINT, &["a", "b"], &pushed[1].nonce), &s2)
            .is_empty()
    );
}
