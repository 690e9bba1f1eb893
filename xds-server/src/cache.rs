//! The snapshot cache: holds the newest snapshot and its recent history, and wakes every ADS
//! stream when it changes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use envoy_types::pb::envoy::config::core::v3::Node;
use std::time::Instant;

use tokio::sync::watch;

use crate::ads::wire::SotwResources;
use crate::connections::Connections;
use crate::history::{ChangeSet, History};
use crate::metrics::Metrics;
use crate::proxy::{ProxyInfo, ProxyResolver};
use crate::resource::type_url;
use crate::snapshot::{Snapshot, SnapshotBuilder, TYPES, Update};

/// How many rejected updates are kept for inspection.
const NACK_HISTORY: usize = 64;

/// A proxy's rejection of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub node_id: String,
    pub type_url: String,
    /// What the proxy rejected: the response's version (SotW) or nonce (Delta).
    pub rejected: String,
    pub message: String,
}

/// What the streams read: the newest snapshot and how it came about.
#[derive(Debug, Default)]
pub struct State {
    pub snapshot: Snapshot,
    pub history: History,
    /// Per type, the complete set every proxy sees, built by the first stream that needs it
    /// (only for types where every proxy sees the same; see [`Snapshot::is_uniform`]).
    uniform: [OnceLock<Arc<SotwResources>>; TYPES],
}

impl State {
    fn new(snapshot: Snapshot, history: History) -> Self {
        Self {
            snapshot,
            history,
            uniform: Default::default(),
        }
    }

    /// Every resource of type `index`, encoded once for all SotW responses of this state;
    /// `None` when proxies see different sets.
    pub fn uniform_view(&self, index: usize) -> Option<Arc<SotwResources>> {
        if !self.snapshot.is_uniform(index) {
            return None;
        }
        let view = self.uniform.get(index)?.get_or_init(|| {
            let all = self
                .snapshot
                .entries(index)
                .filter_map(|(_, e)| e.variants().first().map(|(_, r)| r.clone()))
                .collect();
            Arc::new(SotwResources::new(all))
        });
        Some(view.clone())
    }
}

/// A change that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    /// Per type (in [`type_url::PUSH_ORDER`]), how many names changed.
    pub changed: [usize; TYPES],
}

impl Applied {
    /// `cds 3, eds 1` — the types that changed and how many resources each.
    pub fn summary(&self) -> String {
        type_url::PUSH_ORDER
            .iter()
            .zip(self.changed)
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{} {n}", type_url::short(t)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Shared by the config side (which applies updates) and every ADS stream (which watches).
///
/// Streams learn of a new state through a `watch` channel: a stream that is busy (say,
/// waiting for a slow proxy) sees only the newest state when it looks again, so intermediate
/// versions coalesce and one slow proxy never holds up another.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: watch::Sender<Arc<State>>,
    nacks: Mutex<VecDeque<Nack>>,
    metrics: Metrics,
    connections: Connections,
    resolver: RwLock<Option<Resolver>>,
}

/// What the control plane knows of proxies beyond their nodes.
#[derive(Clone)]
struct Resolver(Arc<dyn ProxyResolver>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyResolver")
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::with_metrics(Metrics::new())
    }

    pub fn with_metrics(metrics: Metrics) -> Self {
        let (state, _) = watch::channel(Arc::new(State::default()));
        Self {
            inner: Arc::new(Inner {
                state,
                nacks: Mutex::new(VecDeque::new()),
                metrics,
                connections: Connections::new(),
                resolver: RwLock::new(None),
            }),
        }
    }

    /// From now on, proxies that connect are completed by `resolver` (see [`ProxyResolver`]).
    pub fn set_proxy_resolver(&self, resolver: Arc<dyn ProxyResolver>) {
        let mut slot = self
            .inner
            .resolver
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(Resolver(resolver));
    }

    /// Who the proxy of `node` is: what its node says, completed by the resolver, if any.
    pub fn proxy_info(&self, node: &Node) -> ProxyInfo {
        let mut proxy = ProxyInfo::from_node(node);
        let resolver = self
            .inner
            .resolver
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(Resolver(resolver)) = resolver {
            resolver.resolve(&mut proxy);
            // A locality found this way is in its labels too, as one the node sent would be.
            let labels = std::mem::take(&mut proxy.labels);
            proxy.labels = proxy.locality.with_topology_labels(labels);
        }
        proxy
    }

    /// Applies `update`; costs time proportional to the update. Returns what took effect, or
    /// `None` when nothing changed — then no stream is woken.
    pub fn apply(&self, update: Update) -> Option<Applied> {
        let mut applied = None;
        self.inner.state.send_if_modified(|current| {
            let Some((snapshot, names)) = current.snapshot.apply(update) else {
                return false;
            };
            let version = snapshot.version();
            let mut history = current.history.clone();
            applied = Some(Applied {
                version,
                changed: names.each_ref().map(Vec::len),
            });
            history.push(ChangeSet {
                version,
                created: Instant::now(),
                names,
            });
            *current = Arc::new(State::new(snapshot, history));
            true
        });
        if let Some(applied) = &applied {
            self.inner.metrics.snapshot_version(applied.version);
        }
        applied
    }

    /// Replaces the served resources with exactly `next`, applying only the difference.
    pub fn replace(&self, next: SnapshotBuilder) -> Option<Applied> {
        let update = self.current().snapshot.update_to(next);
        self.apply(update)
    }

    /// The state being served now.
    pub fn current(&self) -> Arc<State> {
        self.inner.state.borrow().clone()
    }

    /// A receiver that wakes on every new state (coalescing ones it missed).
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.inner.state.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The ADS streams connected to this cache, and how far each proxy is in sync.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    pub(crate) fn record_nack(&self, nack: Nack) {
        let mut nacks = self.inner.nacks.lock().unwrap_or_else(|e| e.into_inner());
        if nacks.len() == NACK_HISTORY {
            nacks.pop_front();
        }
        nacks.push_back(nack);
    }

    /// The most recent rejected updates, oldest first.
    pub fn nacks(&self) -> Vec<Nack> {
        let nacks = self.inner.nacks.lock().unwrap_or_else(|e| e.into_inner());
        nacks.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Since;
    use crate::test_support::res;

    fn update(body: &'static [u8]) -> Update {
        let mut u = Update::new();
        u.put(res(type_url::CLUSTER, "c", body));
        u
    }

    #[tokio::test]
    async fn only_effective_changes_wake_watchers() {
        let cache = SnapshotCache::new();
        let mut rx = cache.subscribe();
        assert_eq!(cache.apply(update(b"1")).map(|a| a.version), Some(1));
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        assert!(cache.apply(update(b"1")).is_none());
        assert!(!rx.has_changed().expect("sender alive"));
        let applied = cache.apply(update(b"2")).expect("changed");
        assert_eq!(applied.summary(), "cds 1");
        assert!(rx.has_changed().expect("sender alive"));
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.snapshot.version(), 2);
        match state.history.since(0, 1) {
            Since::Names(names) => assert_eq!(names.len(), 1),
            Since::Unknown => panic!("history covers version 1"),
        }
    }

    #[test]
    fn nack_history_is_bounded() {
        let cache = SnapshotCache::new();
        for i in 0..(NACK_HISTORY + 5) {
            cache.record_nack(Nack {
                node_id: format!("n{i}"),
                type_url: type_url::CLUSTER.into(),
                rejected: "1".into(),
                message: "bad".into(),
            });
        }
        let nacks = cache.nacks();
        assert_eq!(nacks.len(), NACK_HISTORY);
        assert_eq!(nacks[0].node_id, "n5");
    }

    #[test]
    fn a_resolver_completes_proxies_as_they_connect() {
        struct Zones;
        impl ProxyResolver for Zones {
            fn resolve(&self, proxy: &mut ProxyInfo) {
                if proxy.locality.region.is_empty() && proxy.pod_name() == Some("sleep-0") {
                    proxy.locality = crate::proxy::Locality::parse("us-east-1/us-east-1a");
                }
            }
        }
        let cache = SnapshotCache::new();
        let node = Node {
            id: "sidecar~10.0.0.1~sleep-0.bookinfo~bookinfo.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(cache.proxy_info(&node).locality, Default::default());
        cache.set_proxy_resolver(Arc::new(Zones));
        let proxy = cache.proxy_info(&node);
        assert_eq!(proxy.locality.zone, "us-east-1a");
        assert_eq!(
            proxy.namespace.as_deref(),
            Some("bookinfo"),
            "the node's facts stay"
        );
    }
}
