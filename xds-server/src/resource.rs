//! One xDS resource, encoded once.

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{Message, Name};

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
    /// `google.protobuf.Any { type_url, value }`, encoded.
    any: Bytes,
    /// Where the message itself (`Any.value`) starts within `any`.
    body_start: usize,
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

    /// Wraps a message encoded in pieces: `chunks` concatenated are its body. (Protobuf
    /// messages concatenate: a message built from parts, each encoded on its own, needs no
    /// re-encoding of the parts.)
    pub fn from_chunks<'a>(
        type_url: &'static str,
        name: impl Into<Arc<str>>,
        chunks: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Self {
        let len = chunks.clone().map(<[u8]>::len).sum();
        Self::build(type_url, name.into(), len, |buf| {
            for chunk in chunks {
                buf.put_slice(chunk);
            }
        })
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
        let mut version_hex = [0u8; 16];
        for (i, byte) in version_hex.iter_mut().enumerate() {
            *byte = b"0123456789abcdef"[((version >> (60 - 4 * i)) & 0xf) as usize];
        }
        Self {
            type_url,
            name,
            version,
            version_hex,
            any,
            body_start,
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

    /// The encoded message (not wrapped in `Any`), sharing the resource's bytes.
    pub fn body(&self) -> Bytes {
        self.any.slice(self.body_start..)
    }

    /// The encoded `google.protobuf.Any` carrying the resource.
    pub fn any_bytes(&self) -> &Bytes {
        &self.any
    }

    /// The resource as a generated `Any` (a copy; for tests and tools, not the push path).
    pub fn to_any(&self) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: self.type_url.to_string(),
            value: self.body().to_vec(),
        }
    }

    /// Bytes held by this resource.
    pub fn size(&self) -> usize {
        self.any.len()
    }
}

/// Resources are equal when their type, name and content version are: the version is a
/// 64-bit hash of the content, so comparing it stands in for comparing the bytes.
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
            .field("bytes", &self.any.len())
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
        let any = Any::decode(r.any_bytes().clone()).expect("an Any");
        assert_eq!(any.type_url, type_url::CLUSTER);
        assert_eq!(Cluster::decode(any.value.as_slice()).expect("a Cluster"), c);
        assert_eq!(Cluster::decode(r.body()).expect("a Cluster"), c);
        assert_eq!(r.to_any(), any);
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
