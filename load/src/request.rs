//! Discovery requests as a simulated proxy sends them: its `Node` (on the first request of a
//! stream only, as Istio's Envoys do), ACKs, and subscriptions, encoded straight to protobuf
//! bytes from pre-encoded pieces.

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::{Node, node};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use prost::Message;

use crate::wire;

/// `DiscoveryRequest.resource_names` and `DeltaDiscoveryRequest.resource_names_subscribe`
/// share field number 3, so one pre-encoded list of names serves both.
pub const NAMES_FIELD: u32 = 3;
const DELTA_UNSUBSCRIBE_FIELD: u32 = 4;

/// The node id of simulated proxy `k`, shaped like an Istio sidecar's.
pub fn node_id(k: usize) -> String {
    let ns = k % 10;
    format!(
        "sidecar~10.{}.{}.{}~load-{k}.ns-{ns}~ns-{ns}.svc.cluster.local",
        (k >> 16) & 0xff,
        (k >> 8) & 0xff,
        k & 0xff
    )
}

fn string_value(s: String) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s)),
    }
}

/// Simulated proxy `k`'s `Node`: a distinct id and Istio-like metadata.
pub fn node(k: usize) -> Node {
    let ns = format!("ns-{}", k % 10);
    let labels = Struct {
        fields: [
            ("app".to_string(), string_value(format!("load-{}", k % 100))),
            ("version".to_string(), string_value("v1".into())),
        ]
        .into_iter()
        .collect(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE".to_string(), string_value(ns.clone())),
            (
                "LABELS".to_string(),
                Value {
                    kind: Some(value::Kind::StructValue(labels)),
                },
            ),
            ("CLUSTER_ID".to_string(), string_value("Kubernetes".into())),
            ("NAME".to_string(), string_value(format!("load-{k}.{ns}"))),
        ]
        .into_iter()
        .collect(),
    };
    Node {
        id: node_id(k),
        cluster: format!("load-{}.{ns}", k % 100),
        metadata: Some(metadata),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
            "capstan-load".into(),
        )),
        ..Default::default()
    }
}

/// Names encoded as repeated field [`NAMES_FIELD`], ready to be spliced into a request.
pub fn encode_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Bytes {
    let mut buf = BytesMut::new();
    for name in names {
        wire::put_bytes(&mut buf, NAMES_FIELD, name.as_bytes());
    }
    buf.freeze()
}

/// A state-of-the-world `DiscoveryRequest`; `names` comes from [`encode_names`] (empty for a
/// wildcard subscription), `node` is an encoded `Node` or empty.
pub fn sotw(type_url: &str, version: &str, nonce: &str, names: &[u8], node: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(type_url.len() + names.len() + node.len() + 64);
    wire::put_string(&mut buf, 1, version);
    if !node.is_empty() {
        wire::put_bytes(&mut buf, 2, node);
    }
    buf.extend_from_slice(names);
    wire::put_string(&mut buf, 4, type_url);
    wire::put_string(&mut buf, 5, nonce);
    buf.freeze()
}

/// A `DeltaDiscoveryRequest`: `subscribe` comes from [`encode_names`], `node` is an encoded
/// `Node` or empty. With no nonce and nothing subscribed it is a legacy wildcard request.
pub fn delta(
    type_url: &str,
    nonce: &str,
    subscribe: &[u8],
    unsubscribe: &[&str],
    node: &[u8],
) -> Bytes {
    let mut buf = BytesMut::with_capacity(type_url.len() + subscribe.len() + node.len() + 64);
    if !node.is_empty() {
        wire::put_bytes(&mut buf, 1, node);
    }
    wire::put_string(&mut buf, 2, type_url);
    buf.extend_from_slice(subscribe);
    for name in unsubscribe {
        wire::put_bytes(&mut buf, DELTA_UNSUBSCRIBE_FIELD, name.as_bytes());
    }
    wire::put_string(&mut buf, 6, nonce);
    buf.freeze()
}

/// Encodes proxy `k`'s node once, for its first request.
pub fn encode_node(k: usize) -> Bytes {
    Bytes::from(node(k).encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

    #[test]
    fn node_ids_are_distinct_and_istio_shaped() {
        assert_eq!(
            node_id(258),
            "sidecar~10.0.1.2~load-258.ns-8~ns-8.svc.cluster.local"
        );
        assert_ne!(node_id(1), node_id(65537));
        let n = node(13);
        let metadata = n.metadata.expect("metadata");
        assert_eq!(
            metadata.fields["NAMESPACE"].kind,
            Some(value::Kind::StringValue("ns-3".into()))
        );
        assert!(matches!(
            metadata.fields["LABELS"].kind,
            Some(value::Kind::StructValue(_))
        ));
    }

    #[test]
    fn sotw_request_decodes_with_prost() {
        let names = encode_names(["svc-0", "svc-1"]);
        let node = encode_node(5);
        let bytes = sotw("type/eds", "v1", "n1", &names, &node);
        let request = DiscoveryRequest::decode(bytes).expect("decodes");
        assert_eq!(request.version_info, "v1");
        assert_eq!(request.response_nonce, "n1");
        assert_eq!(request.type_url, "type/eds");
        assert_eq!(request.resource_names, ["svc-0", "svc-1"]);
        assert_eq!(request.node.expect("node").id, node_id(5));

        let ack = DiscoveryRequest::decode(sotw("type/cds", "", "", &[], &[])).expect("decodes");
        assert!(ack.node.is_none() && ack.resource_names.is_empty());
    }

    #[test]
    fn delta_request_decodes_with_prost() {
        let subscribe = encode_names(["a", "b"]);
        let bytes = delta("type/eds", "7", &subscribe, &["c"], &encode_node(1));
        let request = DeltaDiscoveryRequest::decode(bytes).expect("decodes");
        assert_eq!(request.type_url, "type/eds");
        assert_eq!(request.response_nonce, "7");
        assert_eq!(request.resource_names_subscribe, ["a", "b"]);
        assert_eq!(request.resource_names_unsubscribe, ["c"]);
        assert_eq!(request.node.expect("node").id, node_id(1));
    }
}
