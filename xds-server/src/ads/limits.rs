//! What a stream accepts from a proxy, and how much of what a proxy sends it keeps and logs.
//!
//! Everything here is input from the network: a buggy or hostile client can send a 4 MiB node
//! id, a NACK message as large as a request, or subscribe to every name it can make up. Each
//! limit bounds what one stream pins in memory or writes to the log, far above what a real
//! Envoy sends. Beyond a limit a stream is ended with a status that says which one.

use std::fmt::{self, Write};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::Status;

/// Longest node field kept: the id, the `NAMESPACE` and `SERVICE_ACCOUNT` metadata and each
/// `LABELS` key and value.
/// An Istio node id is `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`, under 400 bytes with
/// Kubernetes' own name limits; a label key is at most 317 bytes and a value 63. A longer
/// field is refused rather than cut: a cut id could name another proxy.
pub const MAX_NODE_FIELD: usize = 1024;

/// Most `LABELS` a node may carry. Pods carry a handful; 256 keeps what one stream can pin
/// with its labels under 512 KiB.
pub const MAX_NODE_LABELS: usize = 256;

/// Longest string a log line shows of anything a proxy sent (node ids, type URLs, versions).
/// Enough to recognise any real value; a log line per request stays small whatever is sent.
pub const MAX_LOGGED: usize = 1024;

/// Longest NACK message kept (in the connection registry and the NACK history) and logged.
/// Envoy's rejection messages name the resources and the reason: a few hundred bytes each,
/// a few KiB for a batch of rejected clusters.
pub const MAX_NACK_MESSAGE: usize = 4 * 1024;

/// Requests a stream may make that capstan cannot act on (types it does not serve) before it
/// is ended with `INVALID_ARGUMENT`. Envoy asks once per type and resource kind it is
/// configured for, and again only on a new stream: a hundred is far past any real proxy.
pub const MAX_BAD_REQUESTS: u32 = 100;

/// Most names one stream may subscribe to in one type; beyond it the stream is ended with
/// `RESOURCE_EXHAUSTED`. A sidecar subscribes to one load assignment per cluster it knows:
/// 100,000 is ten times the largest meshes a single istiod serves, and held as shared names
/// it is 1.6 MiB a type.
pub const MAX_SUBSCRIBED_NAMES: usize = 100_000;

/// Most bytes of subscribed names that no resource has, per type and stream; beyond it the
/// stream is ended with `RESOURCE_EXHAUSTED`. A name that exists is shared with the snapshot
/// and costs a pointer; one that exists nowhere is a copy of whatever the proxy sent. Envoy
/// asks for missing names only in passing (a cluster removed while its endpoints were being
/// requested): tens of names, a few KiB.
pub const MAX_UNKNOWN_NAME_BYTES: usize = 1024 * 1024;

/// The limits one stream enforces. The defaults are the constants above; tests use small ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_bad_requests: u32,
    pub max_subscribed_names: usize,
    pub max_unknown_name_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_bad_requests: MAX_BAD_REQUESTS,
            max_subscribed_names: MAX_SUBSCRIBED_NAMES,
            max_unknown_name_bytes: MAX_UNKNOWN_NAME_BYTES,
        }
    }
}

/// Checks the parts of a node capstan keeps; the error names the field over its limit.
pub fn check_node(node: &Node) -> Result<(), Status> {
    let too_long = |field: &str, len: usize| {
        Status::invalid_argument(format!(
            "{field} is {len} bytes, more than the {MAX_NODE_FIELD} accepted"
        ))
    };
    if node.id.len() > MAX_NODE_FIELD {
        return Err(too_long("node.id", node.id.len()));
    }
    let Some(metadata) = &node.metadata else {
        return Ok(());
    };
    for field in ["NAMESPACE", "SERVICE_ACCOUNT"] {
        if let Some(Kind::StringValue(value)) =
            metadata.fields.get(field).and_then(|v| v.kind.as_ref())
            && value.len() > MAX_NODE_FIELD
        {
            return Err(too_long(&format!("node.metadata {field}"), value.len()));
        }
    }
    if let Some(Kind::StructValue(labels)) =
        metadata.fields.get("LABELS").and_then(|v| v.kind.as_ref())
    {
        if labels.fields.len() > MAX_NODE_LABELS {
            return Err(Status::invalid_argument(format!(
                "node.metadata LABELS has {} labels, more than the {MAX_NODE_LABELS} accepted",
                labels.fields.len()
            )));
        }
        for (key, value) in &labels.fields {
            if key.len() > MAX_NODE_FIELD {
                return Err(too_long("a node.metadata LABELS key", key.len()));
            }
            if let Some(Kind::StringValue(v)) = &value.kind
                && v.len() > MAX_NODE_FIELD
            {
                return Err(too_long(
                    &format!("node.metadata LABELS[{}]", Logged::new(key)),
                    v.len(),
                ));
            }
        }
    }
    Ok(())
}

/// `s` cut to at most `max` bytes on a character boundary, saying how long it was if cut.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}… ({} bytes)", &s[..floor_char_boundary(s, max)], s.len())
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// A string a proxy sent, for a log line: at most [`MAX_LOGGED`] bytes of it (or `max`), with
/// control characters escaped so a newline in it cannot start a forged log line.
#[derive(Clone, Copy)]
pub struct Logged<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Logged<'a> {
    pub fn new(text: &'a str) -> Self {
        Self::up_to(text, MAX_LOGGED)
    }

    pub fn up_to(text: &'a str, max: usize) -> Self {
        Self { text, max }
    }
}

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.text[..floor_char_boundary(self.text, self.max)];
        for c in shown.chars() {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if shown.len() < self.text.len() {
            write!(f, "… ({} bytes)", self.text.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
