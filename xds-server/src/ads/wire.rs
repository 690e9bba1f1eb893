//! Discovery responses as capstan sends them: built from shared, pre-encoded resources and
//! written to the wire without re-encoding a single resource.
//!
//! These encode exactly as `DiscoveryResponse` and `DeltaDiscoveryResponse` would (the tests
//! decode them with the generated types), but the resources are copied from the bytes each
//! [`Resource`] encoded once instead of being re-encoded per proxy.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use xxhash_rust::xxh3::Xxh3;

use crate::resource::Resource;

/// The resources of a state-of-the-world response, with their `repeated Any resources` field
/// encoded once. Where every proxy sees the same set (a wildcard subscription to a type no
/// resource of which is scoped to some proxies), one of these is built per snapshot and the
/// encoded field is shared by every response: fanning a change out to N proxies then copies
/// only each response's few header bytes.
#[derive(Debug)]
pub struct SotwResources {
    resources: Vec<Resource>,
    /// Names exactly this set of resources at these versions.
    hash: u64,
    encoded: Bytes,
}

impl SotwResources {
    pub fn new(resources: Vec<Resource>) -> Self {
        let mut hasher = Xxh3::new();
        let len: usize = resources.iter().map(|r| message_len(2, r.any_len())).sum();
        let mut encoded = BytesMut::with_capacity(len);
        for r in &resources {
            hasher.update(r.name().as_bytes());
            hasher.update(&[0]);
            hasher.update(&r.version().to_le_bytes());
            put_any(2, r, &mut encoded);
        }
        Self {
            resources,
            hash: hasher.digest(),
            encoded: encoded.freeze(),
        }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// A state-of-the-world response.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Arc<SotwResources>,
    pub type_url: &'static str,
    pub nonce: String,
}

/// A Delta response.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Resource>,
    pub type_url: &'static str,
    pub removed_resources: Vec<Arc<str>>,
    pub nonce: String,
}

/// A message capstan writes by hand: [`encode`](Self::encode) writes its own fields, and
/// [`shared_tail`](Self::shared_tail), if any, follows as-is (protobuf fields may come in any
/// order), so it can be sent without copying. `encoded_len` counts both.
pub trait WireMessage: Send + 'static {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut impl BufMut);
    fn shared_tail(&self) -> Option<Bytes> {
        None
    }
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

fn put_bytes(tag: u32, b: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    buf.put_slice(b);
}

/// A resource's `Any` as field `tag`.
fn put_any(tag: u32, r: &Resource, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(r.any_len() as u64, buf);
    r.write_any(buf);
}

fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl WireMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self.resources.encoded.len()
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        put_string(1, &self.version_info, buf);
        put_string(4, self.type_url, buf);
        put_string(5, &self.nonce, buf);
    }

    fn shared_tail(&self) -> Option<Bytes> {
        Some(self.resources.encoded.clone())
    }
}

/// Length of a Delta `Resource { version = 1, resource = 2, name = 3 }`.
fn delta_resource_len(r: &Resource, version: &str) -> usize {
    string_len(1, version) + message_len(2, r.any_len()) + string_len(3, r.name())
}

impl WireMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| message_len(2, delta_resource_len(r, r.version_hex())))
                .sum::<usize>()
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
                .sum::<usize>()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        put_string(1, &self.system_version_info, buf);
        for r in &self.resources {
            let version = r.version_hex();
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(delta_resource_len(r, version) as u64, buf);
            put_string(1, version, buf);
            put_any(2, r, buf);
            put_string(3, r.name(), buf);
        }
        put_string(4, self.type_url, buf);
        put_string(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            put_bytes(6, name.as_bytes(), buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::type_url;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use prost::Message;

    fn resources() -> Vec<Resource> {
        ["a", "bb", ""]
            .iter()
            .map(|n| {
                Resource::encode(
                    *n,
                    &Cluster {
                        name: n.to_string(),
                        ..Default::default()
                    },
                )
                .expect("served")
            })
            .collect()
    }

    fn encode(m: &impl WireMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        if let Some(tail) = m.shared_tail() {
            buf.extend_from_slice(&tail);
        }
        assert_eq!(buf.len(), m.encoded_len());
        buf
    }

    #[test]
    fn sotw_encodes_as_a_discovery_response() {
        let r = SotwResponse {
            version_info: "7".into(),
            resources: Arc::new(SotwResources::new(resources())),
            type_url: type_url::CLUSTER,
            nonce: "3".into(),
        };
        let decoded = DiscoveryResponse::decode(encode(&r).as_slice()).expect("decodes");
        assert_eq!(
            decoded,
            DiscoveryResponse {
                version_info: "7".into(),
                resources: r
                    .resources
                    .resources()
                    .iter()
                    .map(Resource::to_any)
                    .collect(),
                type_url: type_url::CLUSTER.into(),
                nonce: "3".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn delta_encodes_as_a_delta_discovery_response() {
        let r = DeltaResponse {
            system_version_info: "9".into(),
            resources: resources(),
            type_url: type_url::CLUSTER,
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "4".into(),
        };
        let decoded = DeltaDiscoveryResponse::decode(encode(&r).as_slice()).expect("decodes");
        let want = DeltaDiscoveryResponse {
            system_version_info: "9".into(),
            resources: r
                .resources
                .iter()
                .map(
                    |res| envoy_types::pb::envoy::service::discovery::v3::Resource {
                        name: res.name().into(),
                        version: res.version_string(),
                        resource: Some(res.to_any()),
                        ..Default::default()
                    },
                )
                .collect(),
            type_url: type_url::CLUSTER.into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "4".into(),
            ..Default::default()
        };
        assert_eq!(decoded, want);
    }

    #[test]
    fn empty_responses_encode() {
        let r = SotwResponse {
            version_info: String::new(),
            resources: Arc::new(SotwResources::new(vec![])),
            type_url: type_url::LISTENER,
            nonce: "1".into(),
        };
        let decoded = DiscoveryResponse::decode(encode(&r).as_slice()).expect("decodes");
        assert!(decoded.resources.is_empty());
        assert_eq!(decoded.type_url, type_url::LISTENER);
    }
}
