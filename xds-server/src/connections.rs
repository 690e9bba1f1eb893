//! The live ADS streams, for operators: who is connected, over which protocol, and per type
//! what was last sent, acknowledged and rejected (istiod's `/debug/syncz`, `istioctl
//! proxy-status`).
//!
//! This sits on the push path of a server meant for ten thousand proxies, so a stream records
//! into its own [`Connection`] and the shared registry is touched only when a stream opens and
//! when it ends. Per response a stream stores a few atomics in its record: no lock, no
//! allocation. Only a NACK, which is rare, takes the record's lock to keep the message.
//!
//! Readers (the monitoring server) load those atomics without synchronising with the stream,
//! so a reader racing a response may see a sent version one response newer than the nonce
//! beside it. The status is derived from nonces alone and is never inconsistent: an
//! acknowledged nonce is always read as sent.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;

use crate::ads::limits::{MAX_NACK_MESSAGE, MAX_NODE_FIELD, truncated};
use crate::proxy::ProxyInfo;
use crate::snapshot::TYPES;

/// Shards of the registry. Streams open and close at a few thousand per second at most
/// (a rollout); sharding keeps those from queueing behind one lock or behind a reader.
const SHARDS: usize = 16;

/// Which ADS protocol a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdsProtocol {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

impl XdsProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            XdsProtocol::Sotw => "sotw",
            XdsProtocol::Delta => "delta",
        }
    }
}

impl fmt::Display for XdsProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every live ADS stream, by connection id. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    shards: [Mutex<HashMap<u64, Arc<Connection>>>; SHARDS],
    next_id: AtomicU64,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections")
            .field("len", &self.len())
            .finish()
    }
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream; it stays listed until the returned guard is dropped.
    pub(crate) fn register(&self, protocol: XdsProtocol) -> Registration {
        // Ids start at 1 and are never reused, so "newest" is "highest".
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            protocol,
            connected_at: SystemTime::now(),
            identity: OnceLock::new(),
            types: Default::default(),
            nacks: Mutex::new(Vec::new()),
        });
        lock(self.shard(id)).insert(id, connection.clone());
        Registration {
            registry: self.clone(),
            connection,
        }
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Connection>>> {
        &self.inner.shards[(id % SHARDS as u64) as usize]
    }

    /// Every live stream, oldest first.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        let mut all: Vec<Arc<Connection>> = self
            .inner
            .shards
            .iter()
            .flat_map(|shard| lock(shard).values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// The newest live stream of the proxy with node id `node_id` (a proxy that reconnects
    /// may briefly hold two).
    pub fn find(&self, node_id: &str) -> Option<Arc<Connection>> {
        self.inner
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .values()
                    .filter(|c| c.proxy().is_some_and(|p| p.id == node_id))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .max_by_key(|c| c.id)
    }

    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lock poisoned by a panicking holder still guards consistent data here: every critical
/// section is a single insert, remove or read.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stream's place in the registry; dropping it (the stream ended) removes the stream.
pub(crate) struct Registration {
    registry: Connections,
    connection: Arc<Connection>,
}

impl std::ops::Deref for Registration {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.connection, f)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(self.registry.shard(self.connection.id)).remove(&self.connection.id);
    }
}

/// Who a proxy is, learned from its first request.
#[derive(Debug)]
struct Identity {
    proxy: Arc<ProxyInfo>,
    agent_version: Option<String>,
}

/// One live stream.
pub struct Connection {
    id: u64,
    protocol: XdsProtocol,
    connected_at: SystemTime,
    identity: OnceLock<Identity>,
    types: [TypeRecord; TYPES],
    /// The last NACK per type index; empty for a proxy that never rejected anything.
    nacks: Mutex<Vec<(usize, NackRecord)>>,
}

/// What was sent and answered in one type. Nonce 0 means none: capstan's nonces count from 1.
#[derive(Debug, Default)]
struct TypeRecord {
    sent_version: AtomicU64,
    sent_nonce: AtomicU64,
    acked_version: AtomicU64,
    acked_nonce: AtomicU64,
    nacked_nonce: AtomicU64,
}

/// A response the proxy rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRecord {
    /// The snapshot version of the rejected response.
    pub version: u64,
    pub nonce: u64,
    pub message: String,
    pub at: SystemTime,
}

/// Where a type stands between capstan and the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncStatus {
    /// Nothing of this type was sent (the proxy did not ask, or not yet).
    NotSent,
    /// The last response is not answered yet.
    Stale,
    /// The proxy acknowledged the last response.
    Synced,
    /// The proxy rejected the last response; it keeps its previous config.
    Nacked,
}

impl SyncStatus {
    /// The words `istioctl proxy-status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::NotSent => "NOT SENT",
            SyncStatus::Stale => "STALE",
            SyncStatus::Synced => "SYNCED",
            SyncStatus::Nacked => "NACKED",
        }
    }
}

impl fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response: the snapshot version it brought the proxy to, and its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseId {
    pub version: u64,
    pub nonce: u64,
}

/// One type of one stream, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSync {
    pub sent: Option<ResponseId>,
    pub acked: Option<ResponseId>,
    pub status: SyncStatus,
    pub last_nack: Option<NackRecord>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("protocol", &self.protocol)
            .field("node", &self.proxy().map(|p| p.id.as_str()))
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Unique per process, increasing with the time the stream opened.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn protocol(&self) -> XdsProtocol {
        self.protocol
    }

    pub fn connected_at(&self) -> SystemTime {
        self.connected_at
    }

    /// Who the proxy is; `None` until its first request named its node.
    pub fn proxy(&self) -> Option<&Arc<ProxyInfo>> {
        self.identity.get().map(|i| &i.proxy)
    }

    /// The proxy's own version (Envoy's build version), if its node said.
    pub fn agent_version(&self) -> Option<&str> {
        self.identity.get()?.agent_version.as_deref()
    }

    /// Where type `index` (in [`type_url::PUSH_ORDER`](crate::type_url::PUSH_ORDER)) stands.
    pub fn type_sync(&self, index: usize) -> Option<TypeSync> {
        let record = self.types.get(index)?;
        // Acked before sent: a stream stores a nonce as sent before it can be acknowledged,
        // so read in this order an acknowledged nonce is never newer than the sent one.
        let acked_nonce = record.acked_nonce.load(Ordering::Acquire);
        let acked_version = record.acked_version.load(Ordering::Relaxed);
        let nacked_nonce = record.nacked_nonce.load(Ordering::Acquire);
        let sent_nonce = record.sent_nonce.load(Ordering::Acquire);
        let sent_version = record.sent_version.load(Ordering::Relaxed);
        let status = match sent_nonce {
            0 => SyncStatus::NotSent,
            n if n == acked_nonce => SyncStatus::Synced,
            n if n == nacked_nonce => SyncStatus::Nacked,
            _ => SyncStatus::Stale,
        };
        let response = |nonce, version| (nonce != 0).then_some(ResponseId { version, nonce });
        let last_nack = if nacked_nonce == 0 {
            None
        } else {
            lock(&self.nacks)
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, n)| n.clone())
        };
        Some(TypeSync {
            sent: response(sent_nonce, sent_version),
            acked: response(acked_nonce, acked_version),
            status,
            last_nack,
        })
    }

    /// Records who the proxy is; only the first call counts (the node comes once).
    pub(crate) fn identify(&self, proxy: Arc<ProxyInfo>, node: &Node) {
        let _ = self.identity.set(Identity {
            proxy,
            agent_version: agent_version(node),
        });
    }

    pub(crate) fn sent(&self, index: usize, version: u64, nonce: u64) {
        if let Some(record) = self.types.get(index) {
            record.sent_version.store(version, Ordering::Relaxed);
            record.sent_nonce.store(nonce, Ordering::Release);
        }
    }

    pub(crate) fn acked(&self, index: usize, version: u64, nonce: u64) {
        if let Some(record) = self.types.get(index) {
            record.acked_version.store(version, Ordering::Relaxed);
            record.acked_nonce.store(nonce, Ordering::Release);
        }
    }

    pub(crate) fn nacked(&self, index: usize, version: u64, nonce: u64, message: &str) {
        let Some(record) = self.types.get(index) else {
            return;
        };
        let nack = NackRecord {
            version,
            nonce,
            // Whatever the proxy sent, cut to size: this lives as long as the stream.
            message: truncated(message, MAX_NACK_MESSAGE),
            at: SystemTime::now(),
        };
        {
            let mut nacks = lock(&self.nacks);
            match nacks.iter_mut().find(|(i, _)| *i == index) {
                Some((_, last)) => *last = nack,
                None => nacks.push((index, nack)),
            }
        }
        // After the message is in place, so a reader that sees the nonce finds it.
        record.nacked_nonce.store(nonce, Ordering::Release);
    }
}

/// The proxy's version as its node states it: Envoy sends a structured build version; any
/// other client, a string of any length, of which as much as any node field is kept.
fn agent_version(node: &Node) -> Option<String> {
    match node.user_agent_version_type.as_ref()? {
        UserAgentVersionType::UserAgentBuildVersion(build) => build
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)),
        UserAgentVersionType::UserAgentVersion(v) if !v.is_empty() => {
            Some(truncated(v, MAX_NODE_FIELD))
        }
        UserAgentVersionType::UserAgentVersion(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 40,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        }
    }

    fn identify(registration: &Registration, id: &str) {
        let node = node(id);
        registration.identify(Arc::new(ProxyInfo::from_node(&node)), &node);
    }

    #[test]
    fn streams_are_listed_until_they_end() {
        let connections = Connections::new();
        let a = connections.register(XdsProtocol::Sotw);
        let b = connections.register(XdsProtocol::Delta);
        // Spread over several shards, still listed oldest first.
        let more: Vec<_> = (0..40)
            .map(|_| connections.register(XdsProtocol::Sotw))
            .collect();
        assert_eq!(connections.len(), 42);
        let ids: Vec<u64> = connections.list().iter().map(|c| c.id()).collect();
        assert!(ids.is_sorted() && ids[0] == a.id() && ids[1] == b.id());
        drop(more);
        drop(a);
        let listed = connections.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].protocol(), XdsProtocol::Delta);
    }

    #[test]
    fn find_returns_the_newest_stream_of_an_identified_proxy() {
        let connections = Connections::new();
        let old = connections.register(XdsProtocol::Sotw);
        let anonymous = connections.register(XdsProtocol::Sotw);
        let new = connections.register(XdsProtocol::Delta);
        identify(&old, "p");
        identify(&new, "p");
        assert!(anonymous.proxy().is_none());
        let found = connections.find("p").expect("connected");
        assert_eq!(found.id(), new.id());
        assert_eq!(found.agent_version(), Some("1.40.0"));
        // The node is read once: a later identity does not replace it.
        identify(&new, "q");
        assert_eq!(new.proxy().map(|p| p.id.as_str()), Some("p"));
        drop(new);
        assert_eq!(connections.find("p").map(|c| c.id()), Some(old.id()));
        assert!(connections.find("nobody").is_none());
    }

    #[test]
    fn status_follows_sent_acked_and_nacked_nonces() {
        let connections = Connections::new();
        let c = connections.register(XdsProtocol::Sotw);
        let status = |i| c.type_sync(i).expect("a served type").status;
        assert_eq!(status(0), SyncStatus::NotSent);
        c.sent(0, 3, 1);
        assert_eq!(status(0), SyncStatus::Stale);
        assert_eq!(status(1), SyncStatus::NotSent, "types are independent");
        c.acked(0, 3, 1);
        assert_eq!(status(0), SyncStatus::Synced);
        c.sent(0, 4, 2);
        let stale = c.type_sync(0).expect("served");
        assert_eq!(stale.status, SyncStatus::Stale);
        assert_eq!(
            stale.sent,
            Some(ResponseId {
                version: 4,
                nonce: 2
            })
        );
        assert_eq!(
            stale.acked,
            Some(ResponseId {
                version: 3,
                nonce: 1
            })
        );
        c.nacked(0, 4, 2, "bad cluster");
        let nacked = c.type_sync(0).expect("served");
        assert_eq!(nacked.status, SyncStatus::Nacked);
        let nack = nacked.last_nack.expect("recorded");
        assert_eq!((nack.version, nack.nonce), (4, 2));
        assert_eq!(nack.message, "bad cluster");
        // The next response is accepted: synced again, the NACK is still shown as the last.
        c.sent(0, 5, 3);
        c.acked(0, 5, 3);
        let synced = c.type_sync(0).expect("served");
        assert_eq!(synced.status, SyncStatus::Synced);
        assert_eq!(synced.last_nack.map(|n| n.nonce), Some(2));
        assert!(c.type_sync(TYPES).is_none());
    }

    #[test]
    fn what_a_proxy_sent_is_kept_cut_to_size() {
        let connections = Connections::new();
        let c = connections.register(XdsProtocol::Delta);
        let node = Node {
            id: "p".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                "v".repeat(1 << 20),
            )),
            ..Default::default()
        };
        c.identify(Arc::new(ProxyInfo::from_node(&node)), &node);
        let agent = c.agent_version().expect("kept");
        assert!(agent.len() <= 2 * 1024, "{} bytes kept", agent.len());
        assert!(agent.starts_with("vvv"));
        c.sent(1, 1, 1);
        c.nacked(1, 1, 1, &"e".repeat(1 << 20));
        let nack = c.type_sync(1).and_then(|s| s.last_nack).expect("kept");
        assert!(
            nack.message.len() <= 8 * 1024,
            "{} bytes kept",
            nack.message.len()
        );
        assert!(nack.message.starts_with("eee"));
    }
}
