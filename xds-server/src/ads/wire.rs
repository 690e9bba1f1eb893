//! Discovery responses as capstan sends them: built from shared, pre-encoded resources and
//! written to the wire without re-encoding a single resource.
//!
//! These encode exactly as `DiscoveryResponse` and `DeltaDiscoveryResponse` would (the tests
//! decode them with the generated types), but a response is a list of chunks sent in order:
//! its own fields and small resources copied into one, and each large resource's shared
//! buffer ([`Resource::any_bytes`]) as it is, so a large route configuration sent to a
//! thousand proxies is not copied a thousand times. Protobuf fields may come in any order,
//! which is what lets a response's own fields go first and a Delta resource's `Any` last.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use xxhash_rust::xxh3::Xxh3;

use crate::resource::Resource;

/// From this size on, a resource goes out as its own shared buffer instead of being copied
/// into the response: below it, the copy costs less than sending one more chunk.
const SHARED_FROM: usize = 16 * 1024;

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
    /// The encoded field, in order: small resources copied together, large ones shared.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    encoded_len: usize,
}

impl SotwResources {
    pub fn new(resources: Vec<Resource>) -> Self {
        let mut hasher = Xxh3::new();
        let mut chunks = Chunks::new(
            resources
                .iter()
                .map(|r| inline_len(r, message_len(2, r.any_len()) - r.any_len()))
                .sum(),
        );
        for r in &resources {
            hasher.update(r.name().as_bytes());
            hasher.update(&[0]);
            hasher.update(&r.version().to_le_bytes());
            chunks.put_any(2, r);
        }
        let (chunks, encoded_len) = chunks.finish();
        Self {
            resources,
            hash: hasher.digest(),
            chunks,
            encoded_len,
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

/// Bytes of `r` written into a response's own buffer, `prefix` included: all of it for a
/// small resource, only the prefix for one sent as its own chunk.
fn inline_len(r: &Resource, prefix: usize) -> usize {
    if r.any_len() >= SHARED_FROM {
        prefix
    } else {
        prefix + r.any_len()
    }
}

/// Chunks being gathered: what is copied waits in `pending` until a shared buffer follows.
struct Chunks {
    pending: BytesMut,
    done: Vec<Bytes>,
}

impl Chunks {
    fn new(inline: usize) -> Self {
        Self {
            pending: BytesMut::with_capacity(inline),
            done: Vec::new(),
        }
    }

    /// `r`'s `Any` as field `tag`: copied if small, else its shared buffer as a chunk of its
    /// own after the field's key and length.
    fn put_any(&mut self, tag: u32, r: &Resource) {
        encode_key(tag, WireType::LengthDelimited, &mut self.pending);
        encode_varint(r.any_len() as u64, &mut self.pending);
        if r.any_len() < SHARED_FROM {
            r.write_any(&mut self.pending);
            return;
        }
        if !self.pending.is_empty() {
            self.done.push(self.pending.split().freeze());
        }
        self.done.push(r.any_bytes());
    }

    fn finish(mut self) -> (Vec<Bytes>, usize) {
        if !self.pending.is_empty() {
            self.done.push(self.pending.freeze());
        }
        let len = self.done.iter().map(Bytes::len).sum();
        (self.done, len)
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

/// A message capstan writes by hand, as the chunks that make its encoding in order.
pub trait WireMessage: Send + 'static {
    fn encoded_len(&self) -> usize;
    /// The encoding: its own fields first, then what follows them, large resources as their
    /// shared buffers.
    fn chunks(&self) -> Vec<Bytes>;
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

fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl SotwResponse {
    fn own_len(&self) -> usize {
        string_len(1, &self.version_info)
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
    }
}

impl WireMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        self.own_len() + self.resources.encoded_len
    }

    fn chunks(&self) -> Vec<Bytes> {
        let mut own = BytesMut::with_capacity(self.own_len());
        put_string(1, &self.version_info, &mut own);
        put_string(4, self.type_url, &mut own);
        put_string(5, &self.nonce, &mut own);
        std::iter::once(own.freeze())
            .chain(self.resources.chunks.iter().cloned())
            .collect()
    }
}

/// Length of a Delta `Resource { version = 1, resource = 2, name = 3 }`.
fn delta_resource_len(r: &Resource, version: &str) -> usize {
    string_len(1, version) + message_len(2, r.any_len()) + string_len(3, r.name())
}

impl DeltaResponse {
    fn own_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
                .sum::<usize>()
    }
}

impl WireMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        self.own_len()
            + self
                .resources
                .iter()
                .map(|r| message_len(2, delta_resource_len(r, r.version_hex())))
                .sum::<usize>()
    }

    fn chunks(&self) -> Vec<Bytes> {
        let inline: usize = self
            .resources
            .iter()
            .map(|r| {
                let whole = message_len(2, delta_resource_len(r, r.version_hex()));
                inline_len(r, whole - r.any_len())
            })
            .sum();
        let mut chunks = Chunks::new(self.own_len() + inline);
        let own = &mut chunks.pending;
        put_string(1, &self.system_version_info, own);
        put_string(4, self.type_url, own);
        put_string(5, &self.nonce, own);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            put_bytes(6, name.as_bytes(), own);
        }
        for r in &self.resources {
            let version = r.version_hex();
            let own = &mut chunks.pending;
            encode_key(2, WireType::LengthDelimited, own);
            encode_varint(delta_resource_len(r, version) as u64, own);
            put_string(1, version, own);
            put_string(3, r.name(), own);
            // The `Any` last, so that a large one can follow as its own chunk.
            chunks.put_any(2, r);
        }
        chunks.finish().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Parts;
    use crate::resource::type_url;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
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
        let buf = m.chunks().concat();
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

    /// A route configuration of `hosts` virtual hosts, kept in parts as the translator keeps
    /// one, and the same encoded whole.
    fn large_route(hosts: usize) -> (Resource, RouteConfiguration) {
        let config = RouteConfiguration {
            name: "8080".into(),
            virtual_hosts: (0..hosts)
                .map(|i| VirtualHost {
                    name: format!("svc-{i}.bench.svc.cluster.local:8080"),
                    domains: vec![format!("svc-{i}.bench.svc.cluster.local")],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let pieces = config.virtual_hosts.iter().map(|vh| {
            let one = RouteConfiguration {
                virtual_hosts: vec![vh.clone()],
                ..Default::default()
            };
            Parts::leaf(one.encode_to_vec())
        });
        let head = RouteConfiguration {
            name: config.name.clone(),
            ..Default::default()
        };
        let parts = Parts::join(std::iter::once(Parts::leaf(head.encode_to_vec())).chain(pieces));
        let resource = Resource::from_parts(type_url::ROUTE, "8080", parts);
        assert!(
            resource.any_len() >= SHARED_FROM,
            "large enough to be shared"
        );
        (resource, config)
    }

    #[test]
    fn a_large_resource_is_shared_by_every_response_not_copied_into_each() {
        let (route, config) = large_route(1000);
        let small = resources();
        // Two proxies' responses, each with its own set of resources.
        let responses: Vec<SotwResponse> = (0..2)
            .map(|i| SotwResponse {
                version_info: i.to_string(),
                resources: Arc::new(SotwResources::new(
                    [small[0].clone(), route.clone(), small[1].clone()].to_vec(),
                )),
                type_url: type_url::ROUTE,
                nonce: i.to_string(),
            })
            .collect();
        let [one, two] = [&responses[0], &responses[1]].map(|r| r.chunks());
        assert_eq!(one.len(), 4, "own fields, small, the route, small");
        assert_eq!(one[2].as_ptr(), two[2].as_ptr(), "one copy of the route");
        let decoded = DiscoveryResponse::decode(encode(&responses[1]).as_slice()).expect("decodes");
        assert_eq!(decoded.resources.len(), 3);
        assert_eq!(decoded.resources[1], route.to_any());
        let value = decoded.resources[1].value.as_slice();
        assert_eq!(RouteConfiguration::decode(value).expect("a route"), config);

        let delta = DeltaResponse {
            system_version_info: "1".into(),
            resources: vec![route.clone(), small[2].clone()],
            type_url: type_url::ROUTE,
            removed_resources: vec!["gone".into()],
            nonce: "5".into(),
        };
        let chunks = delta.chunks();
        assert_eq!(chunks[1].as_ptr(), one[2].as_ptr(), "the same copy again");
        let decoded = DeltaDiscoveryResponse::decode(encode(&delta).as_slice()).expect("decodes");
        assert_eq!(decoded.resources.len(), 2);
        assert_eq!(decoded.resources[0].name, "8080");
        assert_eq!(decoded.resources[0].version, route.version_string());
        assert_eq!(decoded.resources[0].resource, Some(route.to_any()));
        assert_eq!(decoded.resources[1].resource, Some(small[2].to_any()));
        assert_eq!(decoded.removed_resources, ["gone"]);
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
