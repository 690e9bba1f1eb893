//! State-of-the-world requests, read without allocating per resource name.
//!
//! A SotW proxy repeats its whole subscription in every request, ACKs included: a sidecar
//! with a thousand clusters sends a thousand names each time it acknowledges an endpoint
//! update. Decoding those into a `Vec<String>` costs a thousand allocations per ACK, which is
//! most of what a server spends on a SotW fan-out. [`SotwRequest`] keeps the request's bytes
//! and hands the names out as `&str` slices of them.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("truncated or malformed field")]
    Malformed,
    #[error("invalid UTF-8 in a string field")]
    Utf8,
    #[error(transparent)]
    Message(#[from] prost::DecodeError),
}

/// The fields of a `DiscoveryRequest` capstan uses.
#[derive(Debug, Default, Clone)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<RpcStatus>,
    /// A hash of the resource names as sent: equal lists, equal hashes. A proxy repeats an
    /// unchanged subscription in every ACK; comparing this tells so without reading a name.
    pub names_hash: u64,
    /// Whether the request names no resource or names `*`: a wildcard subscription. Known
    /// from the one pass of [`parse`](Self::parse), so an ACK is never read twice.
    pub wildcard: bool,
    /// The encoded request, for [`names`](Self::names).
    raw: Bytes,
}

const NAMES: u64 = 3;

impl SotwRequest {
    /// Reads an encoded `DiscoveryRequest`.
    pub fn parse(raw: Bytes) -> Result<Self, RequestError> {
        let mut request = SotwRequest::default();
        let mut names = NamesHash::default();
        let (mut named, mut star) = (false, false);
        let mut fields = Fields::new(&raw);
        while let Some((span, tag, value)) = fields.next_spanned()? {
            match (tag, value) {
                (1, Value::Bytes(v)) => request.version_info = utf8(v)?.to_string(),
                (2, Value::Bytes(v)) => request.node = Some(Node::decode(v)?),
                (4, Value::Bytes(v)) => request.type_url = utf8(v)?.to_string(),
                (5, Value::Bytes(v)) => request.response_nonce = utf8(v)?.to_string(),
                (6, Value::Bytes(v)) => request.error_detail = Some(RpcStatus::decode(v)?),
                (NAMES, Value::Bytes(v)) => {
                    named = true;
                    star |= v == b"*";
                    names.field(&raw, span);
                }
                _ => {}
            }
        }
        request.names_hash = names.finish(&raw);
        request.wildcard = !named || star;
        request.raw = raw;
        Ok(request)
    }

    /// The resource names, in the order sent. A name that is not UTF-8 names no resource
    /// capstan has, and is left out.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        Fields::new(&self.raw).filter_map(|field| match field {
            Ok((NAMES, Value::Bytes(v))) => std::str::from_utf8(v).ok(),
            _ => None,
        })
    }
}

/// Hashes the encoded name fields (tag, length and bytes) in the order sent. Names usually
/// come as one run of adjacent fields, which is hashed in one call: per name, a streaming
/// hasher costs more than the name's few bytes.
#[derive(Default)]
struct NamesHash {
    hasher: xxhash_rust::xxh3::Xxh3Default,
    /// The byte range of the current run of adjacent name fields.
    run: Option<std::ops::Range<usize>>,
}

impl NamesHash {
    fn field(&mut self, raw: &[u8], span: std::ops::Range<usize>) {
        self.run = match self.run.take() {
            Some(run) if run.end == span.start => Some(run.start..span.end),
            Some(run) => {
                self.hasher.update(&raw[run]);
                Some(span)
            }
            None => Some(span),
        };
    }

    fn finish(mut self, raw: &[u8]) -> u64 {
        if let Some(run) = self.run.take() {
            self.hasher.update(&raw[run]);
        }
        self.hasher.digest()
    }
}

impl From<&envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest> for SotwRequest {
    fn from(request: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest) -> Self {
        // Encoding a generated message always yields something `parse` reads.
        Self::parse(Bytes::from(request.encode_to_vec())).unwrap_or_default()
    }
}

fn utf8(v: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(v).map_err(|_| RequestError::Utf8)
}

enum Value<'a> {
    Bytes(&'a [u8]),
    Other,
}

/// The top-level fields of an encoded message.
struct Fields<'a> {
    rest: &'a [u8],
    /// The length of the whole message, to tell where a field sits in it.
    len: usize,
}

/// A field, with its byte range in the message: key, length and payload.
type Spanned<'a> = (std::ops::Range<usize>, u64, Value<'a>);

impl<'a> Fields<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Self {
            rest: raw,
            len: raw.len(),
        }
    }

    /// The next field with its byte range.
    fn next_spanned(&mut self) -> Result<Option<Spanned<'a>>, RequestError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let start = self.len - self.rest.len();
        let (tag, value) = self.field()?;
        Ok(Some((start..self.len - self.rest.len(), tag, value)))
    }

    fn varint(&mut self) -> Result<u64, RequestError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&byte, rest)) = self.rest.split_first() else {
                return Err(RequestError::Malformed);
            };
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RequestError::Malformed)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], RequestError> {
        let len = usize::try_from(len).map_err(|_| RequestError::Malformed)?;
        if len > self.rest.len() {
            return Err(RequestError::Malformed);
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(value)
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), RequestError> {
        let key = self.varint()?;
        let (tag, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => {
                self.varint()?;
                Value::Other
            }
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            _ => return Err(RequestError::Malformed),
        };
        Ok((tag, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), RequestError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    #[test]
    fn reads_what_prost_writes() {
        let request = DiscoveryRequest {
            version_info: "v7".into(),
            node: Some(Node {
                id: "sidecar~1".into(),
                ..Default::default()
            }),
            resource_names: vec!["a".into(), "bb".into(), "".into(), "ünï".into()],
            type_url: "type.googleapis.com/x".into(),
            response_nonce: "42".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let parsed = SotwRequest::from(&request);
        assert_eq!(parsed.version_info, "v7");
        assert_eq!(
            parsed.node.as_ref().map(|n| n.id.as_str()),
            Some("sidecar~1")
        );
        assert_eq!(
            parsed.names().collect::<Vec<_>>(),
            vec!["a", "bb", "", "ünï"]
        );
        assert_eq!(parsed.type_url, "type.googleapis.com/x");
        assert_eq!(parsed.response_nonce, "42");
        assert_eq!(parsed.error_detail.map(|s| s.message), Some("bad".into()));
    }

    #[test]
    fn equal_name_lists_have_equal_hashes() {
        let with = |names: &[&str]| {
            SotwRequest::from(&DiscoveryRequest {
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                response_nonce: "any".into(),
                ..Default::default()
            })
            .names_hash
        };
        assert_eq!(with(&["a", "b"]), with(&["a", "b"]));
        assert_ne!(with(&["a", "b"]), with(&["ab"]));
        assert_ne!(with(&["a", "b"]), with(&["a", "b", ""]));
        assert_ne!(with(&["a"]), with(&[]));
    }

    #[test]
    fn names_hash_does_not_depend_on_fields_between_names() {
        // names "a", "b" with the type URL between them, then after them.
        let split = [0x1a, 1, b'a', 0x22, 1, b't', 0x1a, 1, b'b'];
        let adjacent = [0x1a, 1, b'a', 0x1a, 1, b'b', 0x22, 1, b't'];
        let parse = |b: &[u8]| SotwRequest::parse(Bytes::copy_from_slice(b)).expect("valid");
        let (split, adjacent) = (parse(&split), parse(&adjacent));
        assert_eq!(split.names_hash, adjacent.names_hash);
        assert_eq!(split.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(split.type_url, "t");
        let reordered = parse(&[0x1a, 1, b'b', 0x1a, 1, b'a']);
        assert_ne!(reordered.names_hash, adjacent.names_hash);
    }

    #[test]
    fn wildcard_is_no_names_or_a_star() {
        let wildcard = |names: &[&str]| {
            SotwRequest::from(&DiscoveryRequest {
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })
            .wildcard
        };
        assert!(wildcard(&[]));
        assert!(wildcard(&["*"]));
        assert!(wildcard(&["a", "*"]));
        assert!(!wildcard(&["a"]));
        assert!(!wildcard(&[""]));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &[0x1a, 0x05, b'a'][..],
            &[0x22, 0x02, 0xff, 0xfe][..],
            &[0xff][..],
            &[0x0f][..],
        ] {
            assert!(
                SotwRequest::parse(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            SotwRequest::parse(Bytes::new()).is_ok(),
            "an empty request is valid"
        );
    }
}
