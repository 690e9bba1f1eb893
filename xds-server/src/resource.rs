//! One xDS resource, encoded once.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{Message, Name};

use crate::parts::Parts;

/// Type URLs of the resource types capstan serves, in the order ADS must deliver them so that
/// nothing references a resource the proxy has not seen yet (clusters before their endpoints,
/// listeners before their routes).
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Push order for ADS: a cluster exists before its load assignment, a listener before
    /// the route configuration it names.
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// Short name for logs and metrics ("cds", "eds", ...).
    pub fn short(type_url: &str) -> &'static str {
        match type_url {
            CLUSTER => "cds",
            ENDPOINT => "eds",
            LISTENER => "lds",
            ROUTE => "rds",
            SECRET => "sds",
            _ => "unknown",
        }
    }

    /// The canonical `'static` form of a type URL capstan serves, if it serves it.
    pub fn known(type_url: &str) -> Option<&'static str> {
        PUSH_ORDER.iter().copied().find(|t| *t == type_url)
    }
}

/// An xDS resource: its name, a content version, and its encoding as a protobuf `Any`.
///
/// The `Any` bytes are what every discovery response carries, so they are produced once here
/// and shared (reference counted) by every response to every proxy. Cloning is cheap.
#[derive(Clone)]
pub struct Resource {
    type_url: &'static str,
    name: Arc<str>,
    version: u64,
    /// `version` in hex, as sent in Delta responses.
    version_hex: [u8; 16],
    /// `google.protobuf.Any { type_url, value }`, encoded; for a resource assembled from
    /// parts, only its head (up to the value's length), the value being `parts`.
    any: Bytes,
    /// Where the message itself (`Any.value`) starts within `any` (its end, with parts).
    body_start: usize,
    /// The message in pieces, kept as they are: a large message assembled from pieces that
    /// other resources share (route configurations) is kept in one buffer only while some
    /// response holds it ([`Self::any_bytes`]).
    parts: Option<Pieces>,
}

/// A message kept in pieces, and the joined copy of its `Any` while any response holds one:
/// every proxy sent the resource in the meantime shares that copy.
#[derive(Clone)]
struct Pieces {
    parts: Parts,
    joined: Arc<Mutex<Weak<Vec<u8>>>>,
}

/// A joined copy, owned by the `Bytes` of the responses that carry it.
struct Joined(Arc<Vec<u8>>);

impl AsRef<[u8]> for Joined {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Resource {
    /// Encodes `message` once. Returns `None` when `M` is not a type capstan serves.
    pub fn encode<M: Message + Name>(name: impl Into<Arc<str>>, message: &M) -> Option<Self> {
        let type_url = type_url::known(&M::type_url())?;
        Some(Self::build(
            type_url,
            name.into(),
            message.encoded_len(),
            |buf| message.encode_raw(buf),
        ))
    }

    /// Wraps the already encoded message `body` of a resource of `type_url`.
    pub fn from_bytes(type_url: &'static str, name: impl Into<Arc<str>>, body: Bytes) -> Self {
        Self::build(type_url, name.into(), body.len(), |buf| {
            buf.put_slice(&body)
        })
    }

    /// Wraps a message given as `parts` (written in order, they are its encoding) without
    /// joining them. The version is the parts' hash: built from the hashes of the pieces, so
    /// no byte is hashed again per assembly.
    pub fn from_parts(type_url: &'static str, name: impl Into<Arc<str>>, parts: Parts) -> Self {
        let parts_len = parts.len();
        let version = parts.hash();
        let mut head = BytesMut::with_capacity(
            2 + encoded_len_varint(type_url.len() as u64)
                + type_url.len()
                + encoded_len_varint(parts_len as u64),
        );
        encode_key(1, WireType::LengthDelimited, &mut head);
        encode_varint(type_url.len() as u64, &mut head);
        head.put_slice(type_url.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(parts_len as u64, &mut head);
        let any = head.freeze();
        Self {
            type_url,
            name: name.into(),
            version,
            version_hex: hex(version),
            body_start: any.len(),
            any,
            parts: Some(Pieces {
                parts,
                joined: Arc::default(),
            }),
        }
    }

    fn build(
        type_url: &'static str,
        name: Arc<str>,
        body_len: usize,
        write_body: impl FnOnce(&mut BytesMut),
    ) -> Self {
        let header_len = 1 + encoded_len_varint(type_url.len() as u64) + type_url.len();
        let value_header = 1 + encoded_len_varint(body_len as u64);
        let mut buf = BytesMut::with_capacity(header_len + value_header + body_len);
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(type_url.len() as u64, &mut buf);
        buf.put_slice(type_url.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(body_len as u64, &mut buf);
        let body_start = buf.len();
        write_body(&mut buf);
        let any = buf.freeze();
        let version = xxhash_rust::xxh3::xxh3_64(&any[body_start..]);
        Self {
            type_url,
            name,
            version,
            version_hex: hex(version),
            any,
            body_start,
            parts: None,
        }
    }

    pub fn type_url(&self) -> &'static str {
        self.type_url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// A hash of the encoded message: equal content, equal version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version as sent on the wire: 16 hex digits.
    pub fn version_hex(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.version_hex).unwrap_or_default()
    }

    pub fn version_string(&self) -> String {
        self.version_hex().to_string()
    }

    /// The encoded message (not wrapped in `Any`): the resource's own bytes, or for one
    /// assembled from parts a joined copy (for tests and tools, not the push path).
    pub fn body(&self) -> Bytes {
        match &self.parts {
            None => self.any.slice(self.body_start..),
            Some(pieces) => pieces.parts.to_bytes(),
        }
    }

    /// Length of the encoded `google.protobuf.Any` carrying the resource.
    pub fn any_len(&self) -> usize {
        self.any.len() + self.parts.as_ref().map_or(0, |p| p.parts.len())
    }

    /// Writes the encoded `google.protobuf.Any` carrying the resource ([`Self::any_len`]
    /// bytes).
    pub fn write_any(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.any);
        if let Some(pieces) = &self.parts {
            pieces.parts.write(buf);
        }
    }

    /// The encoded `google.protobuf.Any` in one buffer shared with every response that
    /// carries it: the resource's own bytes, or for one assembled from parts a joined copy,
    /// made by the first response that needs it and shared by all the others (to every proxy
    /// the resource goes to) while any of them is held. Writing a large resource's pieces
    /// once per proxy would copy it, from pieces scattered over memory, once per proxy.
    pub fn any_bytes(&self) -> Bytes {
        let Some(pieces) = &self.parts else {
            return self.any.clone();
        };
        let mut joined = pieces.joined.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(copy) = joined.upgrade() {
            return Bytes::from_owner(Joined(copy));
        }
        let mut copy = Vec::with_capacity(self.any_len());
        self.write_any(&mut copy);
        let copy = Arc::new(copy);
        *joined = Arc::downgrade(&copy);
        Bytes::from_owner(Joined(copy))
    }

    /// The resource as a generated `Any` (a copy; for tests and tools, not the push path).
    pub fn to_any(&self) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: self.type_url.to_string(),
            value: self.body().to_vec(),
        }
    }

    /// Bytes held by this resource (parts shared with other resources included).
    pub fn size(&self) -> usize {
        self.any_len()
    }
}

/// Resources are equal when their type, name and content version are: the version is a
/// 64-bit hash of the content, so comparing it stands in for comparing the bytes.
/// `version` as 16 hex digits.
fn hex(version: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = b"0123456789abcdef"[((version >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.type_url == other.type_url && self.name == other.name
    }
}

impl Eq for Resource {}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("type", &type_url::short(self.type_url))
            .field("name", &self.name)
            .field("version", &format_args!("{:016x}", self.version))
            .field("bytes", &self.any_len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Any;

    fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn version_follows_content() {
        let a = Resource::encode("a", &cluster("a")).expect("served");
        let a2 = Resource::encode("a", &cluster("a")).expect("served");
        let b = Resource::encode("a", &cluster("b")).expect("served");
        assert_eq!(a.version(), a2.version());
        assert_ne!(a.version(), b.version());
        assert_eq!(a.type_url(), type_url::CLUSTER);
        assert_eq!(a.version_hex(), format!("{:016x}", a.version()));
    }

    #[test]
    fn any_bytes_are_a_valid_any_holding_the_message() {
        let c = cluster("reviews");
        let r = Resource::encode("reviews", &c).expect("served");
        let mut encoded = Vec::new();
        r.write_any(&mut encoded);
        assert_eq!(encoded.len(), r.any_len());
        let any = Any::decode(encoded.as_slice()).expect("an Any");
        assert_eq!(any.type_url, type_url::CLUSTER);
        assert_eq!(Cluster::decode(any.value.as_slice()).expect("a Cluster"), c);
        assert_eq!(Cluster::decode(r.body()).expect("a Cluster"), c);
        assert_eq!(r.to_any(), any);
    }

    /// Cluster `split` encoded whole, and in two pieces (with an empty branch between).
    fn split_cluster() -> (Resource, Resource) {
        let c = cluster("split");
        let whole = Resource::encode("split", &c).expect("served");
        let bytes = c.encode_to_vec();
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let parts = Resource::from_parts(
            type_url::CLUSTER,
            "split",
            Parts::join([
                Parts::leaf(Bytes::copy_from_slice(a)),
                Parts::join([Parts::leaf(Bytes::new())]),
                Parts::leaf(Bytes::copy_from_slice(b)),
            ]),
        );
        (whole, parts)
    }

    #[test]
    fn parts_write_the_same_any_as_the_whole() {
        let (whole, parts) = split_cluster();
        let written = |r: &Resource| {
            let mut out = Vec::new();
            r.write_any(&mut out);
            out
        };
        assert_eq!(written(&parts), written(&whole));
        assert_eq!(parts.any_len(), whole.any_len());
        assert_eq!(parts.body(), whole.body());
        assert_eq!(parts.to_any(), whole.to_any());
    }

    #[test]
    fn a_resource_from_parts_is_joined_once_while_a_response_holds_it() {
        let (whole, parts) = split_cluster();
        let first = parts.any_bytes();
        assert_eq!(first, whole.any_bytes());
        // A clone (the snapshot's, another proxy's view) shares the one copy.
        let second = parts.clone().any_bytes();
        assert_eq!(first.as_ptr(), second.as_ptr());
        drop((first, second));
        // None held: the next response joins the pieces again, the same bytes.
        assert_eq!(parts.any_bytes(), whole.any_bytes());
        // A resource encoded whole is its own buffer.
        assert_eq!(whole.any_bytes().as_ptr(), whole.any_bytes().as_ptr());
    }

    #[test]
    fn from_bytes_matches_encode() {
        let c = cluster("x");
        let encoded = Resource::encode("x", &c).expect("served");
        let wrapped = Resource::from_bytes(type_url::CLUSTER, "x", Bytes::from(c.encode_to_vec()));
        assert_eq!(encoded, wrapped);
    }

    #[test]
    fn unknown_types_are_refused() {
        let node = envoy_types::pb::envoy::config::core::v3::Node::default();
        assert!(Resource::encode("n", &node).is_none());
    }
}
