//! Property tests of the request path with arbitrary input: raw bytes through the deframer and
//! the request parsers, and arbitrary request sequences through both protocols. Nothing may
//! panic, and what a stream keeps stays under its limits.

use std::collections::HashMap;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use proptest::prelude::*;
use prost::Message;

use super::delta::DeltaStream;
use super::framing::{Deframer, PREFIX};
use super::limits::{MAX_LOGGED, MAX_NACK_MESSAGE, MAX_NODE_FIELD, StreamLimits};
use super::request::SotwRequest;
use super::sotw::SotwStream;
use crate::cache::SnapshotCache;
use crate::resource::type_url::{CLUSTER, ENDPOINT, ROUTE};
use crate::test_support::apply;

/// Small limits, so short sequences reach them.
const LIMITS: StreamLimits = StreamLimits {
    max_bad_requests: 3,
    max_subscribed_names: 6,
    max_unknown_name_bytes: 8,
};

/// A string, sometimes repeated far past every limit (cheaply: a short one, repeated).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,6}",
        1 => ("[a-z\n]{1,3}", 1usize..3000).prop_map(|(s, n)| s.repeat(n)),
    ]
}

fn type_url() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![Just(CLUSTER), Just(ENDPOINT), Just(ROUTE)].prop_map(String::from),
        1 => text(),
    ]
}

fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![8 => "[a-e*]{0,2}", 1 => text()], 0..10)
}

fn node() -> impl Strategy<Value = Option<Node>> {
    prop::option::of(text().prop_map(|id| Node {
        id,
        ..Default::default()
    }))
}

fn error_detail() -> impl Strategy<Value = Option<RpcStatus>> {
    prop::option::weighted(
        0.3,
        text().prop_map(|message| RpcStatus {
            code: 3,
            message,
            ..Default::default()
        }),
    )
}

fn nonce() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[0-9]{0,2}", 1 => text()]
}

fn delta_request() -> impl Strategy<Value = DeltaDiscoveryRequest> {
    (
        node(),
        type_url(),
        names(),
        names(),
        prop::collection::hash_map("[a-e]{1,2}", "[0-9a-f]{0,16}", 0..4),
        nonce(),
        error_detail(),
    )
        .prop_map(
            |(node, type_url, subscribe, unsubscribe, initial, response_nonce, error_detail)| {
                DeltaDiscoveryRequest {
                    node,
                    type_url,
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    initial_resource_versions: initial.into_iter().collect::<HashMap<_, _>>(),
                    response_nonce,
                    error_detail,
                    ..Default::default()
                }
            },
        )
}

/// An encoded SotW request, or garbage.
fn sotw_request() -> impl Strategy<Value = Vec<u8>> {
    let request = (node(), type_url(), names(), text(), nonce(), error_detail()).prop_map(
        |(node, type_url, resource_names, version_info, response_nonce, error_detail)| {
            DiscoveryRequest {
                node,
                type_url,
                resource_names,
                version_info,
                response_nonce,
                error_detail,
                ..Default::default()
            }
            .encode_to_vec()
        },
    );
    prop_oneof![6 => request, 1 => prop::collection::vec(any::<u8>(), 0..64)]
}

/// Either a request or a config change (which resource, to which body).
#[derive(Debug, Clone)]
enum Step<R> {
    Request(R),
    Change(u8),
}

fn steps<R: std::fmt::Debug + Clone>(
    request: impl Strategy<Value = R>,
) -> impl Strategy<Value = Vec<Step<R>>> {
    prop::collection::vec(
        prop_oneof![4 => request.prop_map(Step::Request), 1 => any::<u8>().prop_map(Step::Change)],
        1..24,
    )
}

fn change(cache: &SnapshotCache, n: u8) {
    let name = ["a", "b", "c"][usize::from(n % 3)];
    let type_url = [CLUSTER, ENDPOINT, ROUTE][usize::from(n / 3 % 3)];
    let body: &'static [u8] = [&b""[..], b"1", b"2"][usize::from(n / 9 % 3)];
    apply(cache, &[(type_url, name, body)]);
}

/// What the cache and its registry keep of the proxies' input stays within the limits.
fn kept_is_bounded(cache: &SnapshotCache) -> Result<(), TestCaseError> {
    // A cut message keeps its first bytes and says how long it was.
    let slack = 64;
    for nack in cache.nacks() {
        prop_assert!(nack.message.len() <= MAX_NACK_MESSAGE + slack);
        prop_assert!(nack.rejected.len() <= MAX_LOGGED + slack);
        prop_assert!(nack.node_id.len() <= MAX_NODE_FIELD);
    }
    for connection in cache.connections().list() {
        if let Some(proxy) = connection.proxy() {
            prop_assert!(proxy.id.len() <= MAX_NODE_FIELD);
        }
        for index in 0..crate::TYPES {
            if let Some(nack) = connection.type_sync(index).and_then(|s| s.last_nack) {
                prop_assert!(nack.message.len() <= MAX_NACK_MESSAGE + slack);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn raw_bytes_never_panic_and_buffers_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
        limit in 0usize..256,
    ) {
        let mut deframer = Deframer::with_limit(limit);
        let mut messages: Vec<Bytes> = Vec::new();
        for piece in bytes.chunks(chunk) {
            if deframer.push(piece, &mut messages).is_err() {
                break;
            }
            // A partial message is held, never more than one message and a chunk's worth.
            prop_assert!(deframer.capacity() <= 4 * (PREFIX + limit + chunk));
            if !deframer.is_partial() {
                prop_assert_eq!(deframer.capacity(), 0);
            }
        }
        for message in messages {
            prop_assert!(message.len() <= limit);
            if let Ok(request) = SotwRequest::parse(message.clone()) {
                prop_assert!(request.names().count() <= message.len());
            }
            let _ = DeltaDiscoveryRequest::decode(message);
        }
    }

    #[test]
    fn delta_streams_survive_any_requests_within_their_limits(steps in steps(delta_request())) {
        let cache = SnapshotCache::new();
        apply(&cache, &[(CLUSTER, "a", b"1"), (ENDPOINT, "b", b"1")]);
        let mut stream = DeltaStream::with_limits(cache.clone(), LIMITS);
        for step in steps {
            match step {
                Step::Request(request) => {
                    stream.on_request(request, &cache.current());
                }
                Step::Change(n) => {
                    change(&cache, n);
                    stream.on_state(&cache.current());
                }
            }
            if stream.take_failure().is_some() {
                break; // the stream ends here
            }
            prop_assert!(stream.most_names() <= LIMITS.max_subscribed_names);
            kept_is_bounded(&cache)?;
        }
    }

    #[test]
    fn sotw_streams_survive_any_requests_within_their_limits(steps in steps(sotw_request())) {
        let cache = SnapshotCache::new();
        apply(&cache, &[(CLUSTER, "a", b"1"), (ENDPOINT, "b", b"1")]);
        let mut stream = SotwStream::with_limits(cache.clone(), LIMITS);
        for step in steps {
            match step {
                Step::Request(raw) => match SotwRequest::parse(Bytes::from(raw)) {
                    Ok(request) => {
                        stream.on_request(request, &cache.current());
                    }
                    Err(_) => break, // a malformed request ends the stream
                },
                Step::Change(n) => {
                    change(&cache, n);
                    stream.on_state(&cache.current());
                }
            }
            if stream.take_failure().is_some() {
                break;
            }
            prop_assert!(stream.most_names() <= LIMITS.max_subscribed_names);
            kept_is_bounded(&cache)?;
        }
    }
}
