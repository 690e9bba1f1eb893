//! A simulated Envoy: the xDS client state machine of one proxy (SotW in [`sotw`], Delta in
//! [`delta`]) and the task that runs it on an ADS stream ([`stream`]).
//!
//! The state machines are pure: a response's bytes in, the requests to send and what happened
//! (initial sync finished, the awaited change arrived) out. Like Envoy, a proxy asks for
//! clusters (wildcard), then the load assignments of its EDS clusters, then, once it has all of
//! them, listeners (wildcard), then the route configurations its listeners name; it is synced
//! when it has all of those. It ACKs every response.

pub mod delta;
pub mod grpc;
pub mod sotw;
pub mod stream;

use bytes::Bytes;
use capstan_xds::type_url;

use crate::name_set::{Interner, NameSet, Received};
use crate::tracker::Target;
use crate::wire::WireError;
use crate::xds_scan;

/// State-of-the-world or incremental (Delta) xDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sotw" => Ok(Protocol::Sotw),
            "delta" => Ok(Protocol::Delta),
            other => Err(format!("unknown protocol {other:?} (sotw or delta)")),
        }
    }
}

/// A response the proxy cannot make sense of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed response: {0}")]
    Wire(#[from] WireError),
    #[error("response of a type never asked for: {0:?}")]
    UnexpectedType(String),
}

/// What the proxy looks at while handling one response.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub interner: &'a Interner,
    pub target: Target,
}

/// What handling one response produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Requests to send, in order (the ACK first).
    pub requests: Vec<Bytes>,
    /// The proxy has just finished its initial sync.
    pub synced: bool,
    /// The response carried what the current target waits for.
    pub converged: bool,
}

/// Where a proxy is in its initial sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Clusters,
    Endpoints,
    Listeners,
    Routes,
    Synced,
}

/// One of the four types a proxy asks for, as an index into per-type state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clusters = 0,
    Endpoints = 1,
    Listeners = 2,
    Routes = 3,
}

impl Kind {
    fn of(type_url: &str) -> Result<Self, ProxyError> {
        match type_url {
            type_url::CLUSTER => Ok(Kind::Clusters),
            type_url::ENDPOINT => Ok(Kind::Endpoints),
            type_url::LISTENER => Ok(Kind::Listeners),
            type_url::ROUTE => Ok(Kind::Routes),
            other => Err(ProxyError::UnexpectedType(other.to_string())),
        }
    }

    fn type_url(self) -> &'static str {
        match self {
            Kind::Clusters => type_url::CLUSTER,
            Kind::Endpoints => type_url::ENDPOINT,
            Kind::Listeners => type_url::LISTENER,
            Kind::Routes => type_url::ROUTE,
        }
    }
}

/// Waits for every member of a subscription during the initial sync.
#[derive(Debug)]
struct Awaited {
    set: std::sync::Arc<NameSet>,
    received: Received,
}

impl Awaited {
    fn new(set: std::sync::Arc<NameSet>) -> Self {
        let received = Received::new(set.len());
        Self { set, received }
    }

    fn mark(&mut self, name: &str) {
        if let Some(i) = self.set.index(name) {
            self.received.mark(i);
        }
    }

    fn complete(&self) -> bool {
        self.received.complete()
    }
}

/// Whether an encoded load assignment named `name` is what `target` waits for.
fn endpoint_converged(target: &Target, name: &str, body: &[u8]) -> Result<bool, WireError> {
    match target.endpoint_port {
        Some(port) if name == Target::ENDPOINT_SERVICE => {
            xds_scan::load_assignment_has_port(body, port)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! Discovery responses for the state machine tests, from the bench mesh.

    use envoy_types::pb::google::protobuf::Any;

    use crate::mesh::Mesh;

    /// Every resource of `type_url` in `mesh`, by name, as `Any`s.
    pub fn resources(mesh: &Mesh, type_url: &str) -> Vec<(String, Any)> {
        mesh.resources()
            .filter(|r| r.type_url() == type_url)
            .map(|r| {
                let any = Any {
                    type_url: type_url.to_string(),
                    value: r.body().to_vec(),
                };
                (r.name().to_string(), any)
            })
            .collect()
    }
}
