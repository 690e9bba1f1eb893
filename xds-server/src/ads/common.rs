//! Pieces both protocols share: subscriptions, responses awaiting an answer, nonces.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::warn;

use crate::cache::{Nack, SnapshotCache, State};
use crate::proxy::ProxyInfo;
use crate::resource::type_url;
use crate::snapshot::Snapshot;

/// What a proxy subscribed to in one type.
#[derive(Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: HashSet<Arc<str>>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Adds `name`, sharing the snapshot's copy of the string when it has one. Returns whether
    /// it was new.
    pub fn insert(&mut self, name: &str, snapshot: &Snapshot, index: usize) -> bool {
        if self.names.contains(name) {
            return false;
        }
        let shared = snapshot
            .get(index, name)
            .and_then(|e| e.variants().first())
            .map(|(_, r)| r.name_arc().clone())
            .unwrap_or_else(|| Arc::from(name));
        self.names.insert(shared)
    }
}

/// A response the proxy has not answered yet. Until it does, nothing more of that type is
/// sent: changes meanwhile are merged into the next response.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub nonce: String,
    /// The snapshot version the response brought the proxy to.
    pub version: u64,
    /// Whether a config change (rather than the proxy's own request) caused it.
    pub change_driven: bool,
}

/// Per-stream context: who the proxy is, where to report.
#[derive(Debug)]
pub struct Context {
    pub cache: SnapshotCache,
    pub proxy: ProxyInfo,
    nonces: u64,
}

impl Context {
    pub fn new(cache: SnapshotCache) -> Self {
        Self {
            cache,
            proxy: ProxyInfo::default(),
            nonces: 0,
        }
    }

    pub fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// Handles the proxy's answer to `in_flight`: an ACK records convergence, a NACK is
    /// logged and recorded. Either way the type may send again.
    pub fn answered(
        &self,
        index: usize,
        in_flight: &InFlight,
        state: &State,
        error: Option<&str>,
        rejected: &str,
    ) {
        let metrics = self.cache.metrics();
        match error {
            None => {
                if in_flight.change_driven
                    && let Some(created) = state.history.created(in_flight.version)
                {
                    metrics.converged(created.elapsed().as_secs_f64());
                }
            }
            Some(message) => {
                let type_url = type_url::PUSH_ORDER[index];
                warn!(node = %self.proxy.id, r#type = type_url::short(type_url), rejected, error = message,
                      "proxy rejected update; it keeps its previous config");
                metrics.nacked(index);
                self.cache.record_nack(Nack {
                    node_id: self.proxy.id.clone(),
                    type_url: type_url.to_string(),
                    rejected: rejected.to_string(),
                    message: message.to_string(),
                });
            }
        }
    }

    /// Records a response about to be sent.
    pub fn sending(
        &self,
        index: usize,
        resources: usize,
        bytes: usize,
        change_driven: bool,
        version: u64,
        state: &State,
    ) {
        let metrics = self.cache.metrics();
        metrics.pushed(index, resources, bytes);
        if change_driven && let Some(created) = state.history.created(version) {
            metrics.push_latency(created.elapsed().as_secs_f64());
        }
    }
}
