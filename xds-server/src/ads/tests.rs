//! Streams driven through [`drive`](super::drive) as a proxy would see them, with hostile and
//! buggy input: what ends a stream, with which status, and what is kept and logged.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::stream;
use tonic::Code;

use super::*;
use crate::resource::type_url::{CLUSTER, ENDPOINT};
use crate::test_support::apply;

const NODE: &str = "sidecar~10.0.0.1~a.ns1~ns1.svc.cluster.local";

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn delta(type_url: &str, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(NODE),
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// Runs a Delta stream on `requests`, after which the proxy stays connected and silent, and
/// returns what capstan sent until it ended the stream. With the clock paused, a stream that
/// never ends trips the timeout at once instead of hanging the test.
async fn run_delta(
    cache: &SnapshotCache,
    requests: Vec<Result<DeltaDiscoveryRequest, Status>>,
) -> Vec<Result<DeltaResponse, Status>> {
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    let inbound = stream::iter(requests).chain(stream::pending());
    tokio::spawn(drive(
        cache.clone(),
        inbound,
        DeltaStream::new(cache.clone()),
        tx,
    ));
    let mut sent = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3600), async {
        while let Some(response) = rx.recv().await {
            sent.push(response);
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end; sent {sent:?}");
    sent
}

/// The status that ended the stream.
fn final_status(sent: &[Result<DeltaResponse, Status>]) -> &Status {
    match sent.last() {
        Some(Err(status)) => status,
        other => panic!("the stream ended without an error status: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_malformed_request_ends_the_stream_with_its_error() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"1")]);
    let sent = run_delta(
        &cache,
        vec![
            Ok(delta(CLUSTER, &[], "")),
            Err(Status::invalid_argument("malformed DeltaDiscoveryRequest")),
        ],
    )
    .await;
    assert!(sent[0].is_ok(), "served before the bad request");
    let status = final_status(&sent);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("malformed"), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_ends_after_too_many_requests_for_unserved_types() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"1")]);
    let requests = (0..10_000)
        .map(|_| Ok(delta("type.googleapis.com/not.Served", &[], "")))
        .collect();
    let sent = run_delta(&cache, requests).await;
    let status = final_status(&sent);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("does not serve"), "{status:?}");
    assert!(status.message().contains("not.Served"), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn an_oversized_node_id_is_refused_with_a_status_naming_it() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"1")]);
    let mut request = delta(CLUSTER, &[], "");
    request.node = node(&"x".repeat(64 * 1024));
    let sent = run_delta(&cache, vec![Ok(request)]).await;
    assert_eq!(sent.len(), 1, "nothing served to it");
    let status = final_status(&sent);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node.id"), "{status:?}");
    assert!(
        status.message().len() < 1024,
        "the status does not echo the id"
    );
}

fn metadata(fields: Vec<(&str, Kind)>) -> Option<Struct> {
    Some(Struct {
        fields: fields
            .into_iter()
            .map(|(k, kind)| (k.to_string(), Value { kind: Some(kind) }))
            .collect(),
    })
}

#[tokio::test(start_paused = true)]
async fn oversized_labels_are_refused_and_unused_metadata_is_not_kept() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"1")]);
    let labels =
        metadata(vec![("app", Kind::StringValue("v".repeat(64 * 1024)))]).expect("a struct");
    let mut request = delta(CLUSTER, &[], "");
    request.node = Some(Node {
        id: NODE.into(),
        metadata: metadata(vec![("LABELS", Kind::StructValue(labels))]),
        ..Default::default()
    });
    let sent = run_delta(&cache, vec![Ok(request)]).await;
    let status = final_status(&sent);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("LABELS"), "{status:?}");

    // Metadata capstan does not read is neither kept nor a reason to refuse the proxy.
    let mut request = delta(CLUSTER, &[], "");
    request.node = Some(Node {
        id: NODE.into(),
        metadata: metadata(vec![(
            "ANNOTATIONS",
            Kind::StringValue("a".repeat(1024 * 1024)),
        )]),
        ..Default::default()
    });
    let mut stream = DeltaStream::new(cache.clone());
    let served = stream.on_request(request, &cache.current());
    assert_eq!(served.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_send_ends_the_stream() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(CLUSTER, "a", b"1")]);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    drop(rx); // the proxy is gone: every send fails
    let inbound = stream::iter(vec![Ok(delta(CLUSTER, &[], ""))]).chain(stream::pending());
    let stream = drive(cache.clone(), inbound, DeltaStream::new(cache.clone()), tx);
    let ended = tokio::time::timeout(Duration::from_secs(3600), stream).await;
    assert!(ended.is_ok(), "the stream went on after its proxy was gone");
    assert!(cache.connections().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_million_name_subscription_is_refused_as_exhausting() {
    let cache = SnapshotCache::new();
    apply(&cache, &[(ENDPOINT, "a", b"1")]);
    let mut request = delta(ENDPOINT, &[], "");
    request.resource_names_subscribe = (0..1_000_000).map(|i| format!("n{i}")).collect();
    let sent = run_delta(&cache, vec![Ok(request)]).await;
    let status = final_status(&sent);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("names"), "{status:?}");
}

/// Logs written while `f` runs, as text.
fn logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_repeated_problem_is_logged_once_per_stream_and_escaped() {
    let cache = SnapshotCache::new();
    let state = apply(&cache, &[(CLUSTER, "a", b"1")]);
    let text = logs(|| {
        let mut stream = DeltaStream::new(cache.clone());
        for _ in 0..20 {
            let mut request = delta("type.googleapis.com/not.Served\nFORGED", &[], "");
            request.node = node("sidecar~1\nFORGED line");
            stream.on_request(request, &state);
        }
    });
    assert_eq!(text.matches("does not serve").count(), 1, "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "a newline sent by the proxy starts a log line: {text}"
    );
}

#[test]
fn a_huge_nack_is_truncated_before_it_is_kept_or_logged() {
    let cache = SnapshotCache::new();
    let state = apply(&cache, &[(CLUSTER, "a", b"1")]);
    let huge = "e".repeat(4 * 1024 * 1024);
    let mut stream = DeltaStream::new(cache.clone());
    let text = logs(|| {
        let sent = stream.on_request(delta(CLUSTER, &[], ""), &state);
        let mut nack = delta(CLUSTER, &[], &sent[0].nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: huge.clone(),
            ..Default::default()
        });
        stream.on_request(nack, &state);
    });
    assert!(text.contains("rejected"), "the NACK is logged: {text}");
    assert!(text.len() < 16 * 1024, "logged {} bytes", text.len());
    let kept = cache.nacks();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].message.len() <= 16 * 1024,
        "{}",
        kept[0].message.len()
    );
    assert!(kept[0].message.starts_with("eee"));
    let connection = &cache.connections().list()[0];
    let last = connection
        .type_sync(0)
        .and_then(|s| s.last_nack)
        .expect("recorded");
    assert!(last.message.len() <= 16 * 1024, "{}", last.message.len());
}
