use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;

use super::*;
use crate::proxy::Selector;
use crate::resource::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::test_support::{apply, apply_for};

fn request(type_url: &str, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: "sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn names(r: &DeltaResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name()).collect()
}

fn removed(r: &DeltaResponse) -> Vec<&str> {
    r.removed_resources.iter().map(|n| n.as_ref()).collect()
}

/// A stream subscribed to every cluster that has received and acknowledged clusters "a" and
/// "b" (both at content "1").
fn wildcard_synced_on_a_and_b(cache: &SnapshotCache) -> DeltaStream {
    let s1 = apply(cache, &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a", "b"]);
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &first[0].nonce), &s1)
            .is_empty()
    );
    stream
}

#[test]
fn wildcard_then_only_what_changed() {
    let cache = SnapshotCache::new();
    let mut stream = wildcard_synced_on_a_and_b(&cache);

    let s2 = apply(
        &cache,
        &[
            (CLUSTER, "a", b"2"),
            (CLUSTER, "c", b"1"),
            (CLUSTER, "b", b""),
        ],
    );
    let pushed = stream.on_state(&s2);
    assert_eq!(pushed.len(), 1);
    assert_eq!(names(&pushed[0]), vec!["a", "c"]);
    assert_eq!(removed(&pushed[0]), vec!["b"]);
}

#[test]
fn changes_while_in_flight_are_merged_into_one_response() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    let _ = apply(&cache, &[(CLUSTER, "b", b"1")]);
    let s3 = apply(&cache, &[(CLUSTER, "c", b"1")]);
    assert!(stream.on_state(&s3).is_empty(), "waits for the ACK");
    let merged = stream.on_request(request(CLUSTER, &[], &first[0].nonce), &s3);
    assert_eq!(merged.len(), 1);
    assert_eq!(names(&merged[0]), vec!["b", "c"]);
}

#[test]
fn explicit_subscriptions_and_unsubscribe() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(ENDPOINT, &["a"], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a"]);
    // b changes: not subscribed, not sent.
    let s2 = apply(&cache, &[(ENDPOINT, "b", b"2")]);
    assert!(
        stream
            .on_request(request(ENDPOINT, &[], &first[0].nonce), &s2)
            .is_empty()
    );
    // Subscribing to b sends just b.
    let more = stream.on_request(request(ENDPOINT, &["b"], ""), &s2);
    assert_eq!(names(&more[0]), vec!["b"]);
    let mut unsub = request(ENDPOINT, &[], &more[0].nonce);
    unsub.resource_names_unsubscribe = vec!["a".into()];
    assert!(stream.on_request(unsub, &s2).is_empty());
    let s3 = apply(&cache, &[(ENDPOINT, "a", b"3")]);
    assert!(stream.on_state(&s3).is_empty());
}

#[test]
fn subscribing_to_a_missing_resource_reports_it_removed_until_it_appears() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(ROUTE, "r", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let out = stream.on_request(request(ROUTE, &["missing"], ""), &s1);
    assert!(out[0].resources.is_empty());
    assert_eq!(removed(&out[0]), vec!["missing"]);
    stream.on_request(request(ROUTE, &[], &out[0].nonce), &s1);
    let s2 = apply(&cache, &[(ROUTE, "missing", b"1")]);
    let pushed = stream.on_state(&s2);
    assert_eq!(names(&pushed[0]), vec!["missing"]);
}

#[test]
fn reconnect_with_initial_versions_sends_only_what_differs() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
    let a = s1
        .snapshot
        .get(0, "a")
        .and_then(|e| e.variants().first())
        .map(|(_, r)| r.clone())
        .expect("a");
    let mut req = request(CLUSTER, &["*"], "");
    req.initial_resource_versions = [
        ("a".to_string(), a.version_string()),
        ("gone".to_string(), "0000000000000000".to_string()),
    ]
    .into();
    let mut stream = DeltaStream::new(cache);
    let out = stream.on_request(req, &s1);
    assert_eq!(names(&out[0]), vec!["b"]);
    assert_eq!(removed(&out[0]), vec!["gone"]);
}

#[test]
fn nack_is_recorded_and_not_resent() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(LISTENER, "l", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let out = stream.on_request(request(LISTENER, &[], ""), &s1);
    let mut nack = request(LISTENER, &[], &out[0].nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "bad listener".into(),
        ..Default::default()
    });
    assert!(stream.on_request(nack, &s1).is_empty());
    assert_eq!(cache.nacks()[0].message, "bad listener");
    assert!(stream.on_state(&s1).is_empty());
    let s2 = apply(&cache, &[(LISTENER, "l", b"2")]);
    assert_eq!(stream.on_state(&s2).len(), 1);
}

#[test]
fn initial_wildcard_request_for_an_empty_type_is_answered() {
    let cache = SnapshotCache::new();
    let mut stream = DeltaStream::new(cache.clone());
    let out = stream.on_request(request(LISTENER, &[], ""), &cache.current());
    assert_eq!(out.len(), 1);
    assert!(out[0].resources.is_empty());
}

/// Lets more versions than the history keeps go by, changing `b` each time and leaving it
/// as `b"last"`, while a stream holds its first response un-ACKed.
fn outrun_the_history(cache: &SnapshotCache) {
    let bodies: [&'static [u8]; 2] = [b"x", b"y"];
    for i in 0..(crate::history::HISTORY + 3) {
        apply(cache, &[(CLUSTER, "b", bodies[i % 2])]);
    }
    apply(cache, &[(CLUSTER, "b", b"last")]);
}

#[test]
fn far_behind_streams_compare_their_whole_view() {
    let cache = SnapshotCache::new();
    let s1 = apply(
        &cache,
        &[
            (CLUSTER, "a", b"1"),
            (CLUSTER, "b", b"1"),
            (CLUSTER, "c", b"1"),
        ],
    );
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a", "b", "c"]);
    // In the gap: c is deleted, d comes, b changes many times, a stays.
    apply(&cache, &[(CLUSTER, "c", b""), (CLUSTER, "d", b"1")]);
    outrun_the_history(&cache);
    let now = cache.current();
    assert_eq!(
        now.history.since(0, s1.snapshot.version()),
        crate::history::Since::Unknown,
        "the stream must be further behind than the history reaches"
    );
    let caught_up = stream.on_request(request(CLUSTER, &[], &first[0].nonce), &now);
    assert_eq!(caught_up.len(), 1);
    assert_eq!(removed(&caught_up[0]), vec!["c"], "deleted during the gap");
    assert_eq!(names(&caught_up[0]), vec!["b", "d"], "a did not change");
    assert_eq!(&caught_up[0].resources[0].body()[..], b"last");
    assert_eq!(&caught_up[0].resources[1].body()[..], b"1");
}

#[test]
fn far_behind_named_subscriptions_get_only_what_changed() {
    let cache = SnapshotCache::new();
    let s1 = apply(
        &cache,
        &[
            (CLUSTER, "a", b"1"),
            (CLUSTER, "b", b"1"),
            (CLUSTER, "c", b"1"),
        ],
    );
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &["a", "b", "c"], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a", "b", "c"]);
    apply(&cache, &[(CLUSTER, "c", b""), (CLUSTER, "d", b"1")]);
    outrun_the_history(&cache);
    let now = cache.current();
    let caught_up = stream.on_request(request(CLUSTER, &[], &first[0].nonce), &now);
    assert_eq!(caught_up.len(), 1);
    assert_eq!(
        names(&caught_up[0]),
        vec!["b"],
        "a did not change, d not asked for"
    );
    assert_eq!(&caught_up[0].resources[0].body()[..], b"last");
    assert_eq!(removed(&caught_up[0]), vec!["c"]);
}

#[test]
fn far_behind_streams_see_another_scopes_variant_change_as_nothing() {
    // ns1's proxy holds the variant for everyone; only ns2's variant changes in the gap.
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"all")]);
    let s1 = apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "a", b"ns2");
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a"]);
    apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "a", b"ns2 v2");
    outrun_the_history(&cache);
    let now = cache.current();
    let caught_up = stream.on_request(request(CLUSTER, &[], &first[0].nonce), &now);
    assert_eq!(caught_up.len(), 1);
    assert_eq!(names(&caught_up[0]), vec!["b"]);
    assert!(removed(&caught_up[0]).is_empty());
}

#[test]
fn another_scopes_variant_changing_sends_nothing() {
    // The stream's proxy is in ns1; "a" has a variant for ns2 beside the one for everyone,
    // and "b" exists only for ns2.
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"all")]);
    let s1 = apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "a", b"ns2");
    let mut stream = DeltaStream::new(cache.clone());
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    assert_eq!(names(&first[0]), vec!["a"]);
    assert_eq!(&first[0].resources[0].body()[..], b"all");
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &first[0].nonce), &s1)
            .is_empty()
    );

    let s2 = apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "a", b"ns2 v2");
    assert!(
        stream.on_state(&s2).is_empty(),
        "ns1's variant did not change"
    );
    let s3 = apply_for(&cache, Selector::namespace("ns2"), CLUSTER, "b", b"ns2");
    assert!(
        stream.on_state(&s3).is_empty(),
        "nothing to remove: ns1 never had b"
    );

    let s4 = apply(&cache, &[(CLUSTER, "a", b"all v2")]);
    let pushed = stream.on_state(&s4);
    assert_eq!(names(&pushed[0]), vec!["a"]);
    assert_eq!(&pushed[0].resources[0].body()[..], b"all v2");
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &pushed[0].nonce), &s4)
            .is_empty()
    );

    // The variant for everyone goes: ns1 has nothing left under "a".
    let mut update = crate::Update::new();
    update.remove_for(Selector::all(), CLUSTER, "a");
    cache.apply(update);
    let pushed = stream.on_state(&cache.current());
    assert!(names(&pushed[0]).is_empty());
    assert_eq!(removed(&pushed[0]), vec!["a"]);
}

/// A resource every proxy had, then hidden from the stream's namespace (a Sidecar scope):
/// removed by name, though it was never sent as a scoped one; shown again, sent again.
#[test]
fn a_resource_hidden_after_it_was_sent_is_removed() {
    let cache = SnapshotCache::new();
    let mut stream = wildcard_synced_on_a_and_b(&cache);

    let hidden =
        |namespace: &str| crate::Visibility::new([(Selector::namespace(namespace), false)]);
    let mut update = crate::Update::new();
    update.set_visibility(CLUSTER, "a", Some(hidden("ns1")));
    update.set_visibility(CLUSTER, "b", Some(hidden("ns2")));
    cache.apply(update);
    let pushed = stream.on_state(&cache.current());
    assert_eq!(pushed.len(), 1);
    assert!(names(&pushed[0]).is_empty(), "b is as it was for ns1");
    assert_eq!(removed(&pushed[0]), vec!["a"]);
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &pushed[0].nonce), &cache.current())
            .is_empty()
    );

    let mut update = crate::Update::new();
    update.set_visibility(CLUSTER, "a", None);
    cache.apply(update);
    let pushed = stream.on_state(&cache.current());
    assert_eq!(names(&pushed[0]), vec!["a"]);
    assert!(removed(&pushed[0]).is_empty());
}

#[test]
fn the_connection_registry_follows_sent_acked_and_nacked_responses() {
    use crate::connections::{SyncStatus, XdsProtocol};
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (ROUTE, "r", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let connections = cache.connections();
    let first = stream.on_request(request(CLUSTER, &[], ""), &s1);
    let conn = connections
        .find("sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local")
        .expect("identified by its first request");
    assert_eq!(conn.protocol(), XdsProtocol::Delta);
    let sync = |i: usize| conn.type_sync(i).expect("a served type");
    assert_eq!(sync(0).status, SyncStatus::Stale);
    assert_eq!(
        sync(0).sent.map(|s| s.nonce.to_string()),
        Some(first[0].nonce.clone())
    );
    stream.on_request(request(CLUSTER, &[], &first[0].nonce), &s1);
    assert_eq!(sync(0).status, SyncStatus::Synced);

    // Routes: subscribed by name, answered, NACKed.
    let rds = stream.on_request(request(ROUTE, &["r"], ""), &s1);
    assert_eq!(sync(3).status, SyncStatus::Stale);
    let mut nack = request(ROUTE, &[], &rds[0].nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "bad route".into(),
        ..Default::default()
    });
    stream.on_request(nack, &s1);
    assert_eq!(sync(3).status, SyncStatus::Nacked);
    assert_eq!(
        sync(3).last_nack.map(|n| n.message),
        Some("bad route".to_string())
    );
    assert_eq!(sync(0).status, SyncStatus::Synced, "clusters unaffected");

    // A change to clusters only: clusters stale until the ACK, routes stay NACKed.
    let s2 = apply(&cache, &[(CLUSTER, "b", b"1")]);
    let pushed = stream.on_state(&s2);
    assert_eq!(pushed.len(), 1);
    assert_eq!(sync(0).status, SyncStatus::Stale);
    assert_eq!(sync(0).sent.map(|s| s.version), Some(s2.snapshot.version()));
    stream.on_request(request(CLUSTER, &[], &pushed[0].nonce), &s2);
    assert_eq!(sync(0).status, SyncStatus::Synced);
    assert_eq!(
        sync(0).acked.map(|s| s.version),
        Some(s2.snapshot.version())
    );
    assert_eq!(sync(3).status, SyncStatus::Nacked);

    drop(stream);
    assert!(
        connections
            .find("sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local")
            .is_none()
    );
}

/// As with SotW: new listeners wait for the new clusters of their change while the proxy has
/// not answered the clusters sent before, then come right after them.
#[test]
fn listeners_wait_for_the_clusters_of_their_change() {
    let cache = SnapshotCache::new();
    let s1 = apply(&cache, &[(CLUSTER, "a", b"1"), (LISTENER, "l", b"1")]);
    let mut stream = DeltaStream::new(cache.clone());
    let clusters = stream.on_request(request(CLUSTER, &[], ""), &s1);
    let listeners = stream.on_request(request(LISTENER, &[], ""), &s1);
    assert_eq!(listeners.len(), 1);
    let acked = stream.on_request(request(LISTENER, &[], &listeners[0].nonce), &s1);
    assert!(acked.is_empty());

    let s2 = apply(&cache, &[(CLUSTER, "b", b"1"), (LISTENER, "l", b"2")]);
    assert!(
        stream.on_state(&s2).is_empty(),
        "the listener went before its cluster"
    );

    let next = stream.on_request(request(CLUSTER, &[], &clusters[0].nonce), &s2);
    let types: Vec<&str> = next.iter().map(|r| r.type_url).collect();
    assert_eq!(types, [CLUSTER, LISTENER]);
    assert_eq!(names(&next[0]), ["b"]);
}

/// An updated cluster is followed by its load assignment, unchanged or not: Envoy warms the
/// new cluster until one arrives and, on Delta, does not ask again for a name it holds. A
/// cluster without an assignment subscribed, and assignments of clusters not sent, are not
/// resent.
#[test]
fn an_updated_cluster_is_followed_by_its_load_assignment() {
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
    let mut stream = DeltaStream::new(cache.clone());
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
            .on_request(request(ENDPOINT, &[], &eds[0].nonce), &s1)
            .is_empty()
    );
    // Cluster a changes (its policy, say), its endpoints do not; so does the static one.
    let s2 = apply(&cache, &[(CLUSTER, "a", b"2"), (CLUSTER, "static", b"2")]);
    let pushed = stream.on_state(&s2);
    let types: Vec<&str> = pushed.iter().map(|r| r.type_url).collect();
    assert_eq!(types, vec![CLUSTER, ENDPOINT]);
    assert_eq!(names(&pushed[0]), vec!["a", "static"]);
    assert_eq!(names(&pushed[1]), vec!["a"]);
    // Acknowledged, nothing more is due.
    assert!(
        stream
            .on_request(request(CLUSTER, &[], &pushed[0].nonce), &s2)
            .is_empty()
    );
    assert!(
        stream
            .on_request(request(ENDPOINT, &[], &pushed[1].nonce), &s2)
            .is_empty()
    );
}
