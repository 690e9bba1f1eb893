//! Pieces both protocols share: subscriptions, responses awaiting an answer, nonces.

use std::sync::Arc;

use tracing::warn;

use crate::cache::{Nack, SnapshotCache, State};
use crate::connections::{Registration, XdsProtocol};
use crate::proxy::ProxyInfo;
use crate::resource::type_url;
use crate::snapshot::{Snapshot, type_index};
use envoy_types::pb::envoy::config::core::v3::Node;

/// Up to this many new names are inserted one by one; more are appended and sorted once.
const FEW: usize = 32;

/// What a proxy subscribed to in one type.
///
/// The names are kept in a sorted vector rather than a hash set: a sidecar subscribes to the
/// load assignment of every cluster it knows, thousands of names per proxy, and a vector of
/// shared names is half the size of a set (memory per connected proxy is what limits how many
/// proxies one control plane serves). Lookups are binary searches.
#[derive(Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    names: Vec<Arc<str>>,
    /// [`SotwRequest::names_hash`](super::request::SotwRequest::names_hash) of the request
    /// that set `names`, if a SotW request did.
    pub sent_as: Option<u64>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.contains(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.names.binary_search_by(|n| n.as_ref().cmp(name))
    }

    /// The explicitly subscribed names, sorted.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Adds every name in `names` (sorting once, not per name). Returns the names that were
    /// new.
    pub fn extend<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        snapshot: &Snapshot,
        index: usize,
    ) -> Vec<Arc<str>> {
        let mut added: Vec<Arc<str>> = names
            .into_iter()
            .filter(|n| !self.contains(n))
            .map(|n| shared_name(n, snapshot, index))
            .collect();
        added.sort();
        added.dedup();
        if added.len() <= FEW {
            // The common case once a proxy is in sync: one new cluster, one new name. Put it
            // in place instead of sorting thousands of names again. A full vector grows by an
            // eighth, not by doubling: one cluster added to a mesh of a thousand would
            // otherwise cost every proxy 8 KiB more, for good.
            if self.names.capacity() - self.names.len() < added.len() {
                self.names
                    .reserve_exact(added.len().max(self.names.len() / 8));
            }
            for name in &added {
                if let Err(at) = self.position(name) {
                    self.names.insert(at, name.clone());
                }
            }
        } else {
            self.names.extend(added.iter().cloned());
            self.names.sort_unstable();
        }
        added
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(at) = self.position(name) {
            self.names.remove(at);
        }
    }

    /// Makes the explicit names exactly `names`. Returns `None` if they already were, else
    /// the names that are new. Proxies repeat their whole subscription in every SotW request
    /// (thousands of names), so this is one merge of two sorted lists: no lookups, and strings
    /// already held are reused.
    pub fn update_to<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        snapshot: &Snapshot,
        index: usize,
    ) -> Option<Vec<Arc<str>>> {
        let mut wanted: Vec<&str> = names.into_iter().collect();
        if !wanted.is_sorted() {
            wanted.sort_unstable();
        }
        wanted.dedup();
        if wanted.len() == self.names.len()
            && wanted
                .iter()
                .zip(&self.names)
                .all(|(w, n)| *w == n.as_ref())
        {
            return None;
        }
        let mut merged = Vec::with_capacity(wanted.len());
        let mut added = Vec::new();
        let mut held = self.names.iter().peekable();
        for name in wanted {
            while held.next_if(|h| h.as_ref() < name).is_some() {}
            match held.next_if(|h| h.as_ref() == name) {
                Some(h) => merged.push(h.clone()),
                None => {
                    let new = shared_name(name, snapshot, index);
                    added.push(new.clone());
                    merged.push(new);
                }
            }
        }
        self.names = merged;
        Some(added)
    }
}

fn shared_name(name: &str, snapshot: &Snapshot, index: usize) -> Arc<str> {
    snapshot
        .get(index, name)
        .and_then(|e| e.variants().first())
        .map(|(_, r)| r.name_arc().clone())
        .unwrap_or_else(|| Arc::from(name))
}

/// A response the proxy has not answered yet. Until it does, nothing more of that type is
/// sent: changes meanwhile are merged into the next response.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub nonce: String,
    /// `nonce` as the number it was made from, for the connection registry.
    pub seq: u64,
    /// The snapshot version the response brought the proxy to.
    pub version: u64,
    /// Whether a config change (rather than the proxy's own request) caused it.
    pub change_driven: bool,
}

/// Per-stream context: who the proxy is, where to report.
#[derive(Debug)]
pub struct Context {
    pub cache: SnapshotCache,
    /// Shared with the stream's entry in the connection registry.
    pub proxy: Arc<ProxyInfo>,
    nonces: u64,
    /// The stream's entry in [`SnapshotCache::connections`], removed when the stream ends.
    connection: Registration,
}

impl Context {
    pub fn new(cache: SnapshotCache, protocol: XdsProtocol) -> Self {
        let connection = cache.connections().register(protocol);
        Self {
            cache,
            proxy: Arc::default(),
            nonces: 0,
            connection,
        }
    }

    /// Takes a request's first look: learns who the proxy is from the node (sent on the first
    /// request only) and returns the index of the requested type, or `None` (logged) for a
    /// type capstan does not serve.
    pub fn request_type(&mut self, node: Option<&Node>, type_url: &str) -> Option<usize> {
        if self.proxy.id.is_empty()
            && let Some(node) = node
        {
            self.proxy = Arc::new(ProxyInfo::from_node(node));
            self.connection.identify(self.proxy.clone(), node);
        }
        let index = type_index(type_url);
        if index.is_none() {
            warn!(node = %self.proxy.id, type_url, "request for a type capstan does not serve");
        }
        index
    }

    /// The nonce of the next response; [`sending`](Self::sending) must record that response
    /// before another nonce is taken.
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
                self.connection
                    .acked(index, in_flight.version, in_flight.seq);
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
                self.connection
                    .nacked(index, in_flight.version, in_flight.seq, message);
                self.cache.record_nack(Nack {
                    node_id: self.proxy.id.clone(),
                    type_url: type_url.to_string(),
                    rejected: rejected.to_string(),
                    message: message.to_string(),
                });
            }
        }
    }

    /// Records a response about to be sent with `nonce`, carrying `resources` in `bytes`,
    /// and returns it as the type's response in flight.
    pub fn sending(
        &self,
        index: usize,
        nonce: &str,
        (resources, bytes): (usize, usize),
        change_driven: bool,
        state: &State,
    ) -> InFlight {
        let version = state.snapshot.version();
        // The nonce is the one `next_nonce` just made: the counter names it without parsing.
        debug_assert_eq!(nonce, self.nonces.to_string());
        let seq = self.nonces;
        self.connection.sent(index, version, seq);
        let metrics = self.cache.metrics();
        metrics.pushed(index, resources, bytes);
        if change_driven && let Some(created) = state.history.created(version) {
            metrics.push_latency(created.elapsed().as_secs_f64());
        }
        InFlight {
            nonce: nonce.to_string(),
            seq,
            version,
            change_driven,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Subscription) -> Vec<&str> {
        s.names().iter().map(|n| n.as_ref()).collect()
    }

    #[test]
    fn update_to_merges_and_reports_new_names() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let added = s.update_to(["b", "a", "c", "a"], &snapshot, 1);
        assert_eq!(added.map(|a| a.len()), Some(3));
        assert_eq!(names(&s), vec!["a", "b", "c"]);
        assert!(
            s.update_to(["a", "b", "c"], &snapshot, 1).is_none(),
            "unchanged"
        );
        let added = s.update_to(["a", "c", "d"], &snapshot, 1).expect("changed");
        assert_eq!(
            added.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            vec!["d"]
        );
        assert_eq!(names(&s), vec!["a", "c", "d"]);
        assert!(s.contains("c") && !s.contains("b"));
        let added = s.update_to(["a"], &snapshot, 1).expect("shrunk");
        assert!(added.is_empty());
        assert_eq!(names(&s), vec!["a"]);
    }

    #[test]
    fn extend_and_remove() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let added = s.extend(["x", "y", "x"], &snapshot, 1);
        assert_eq!(added.len(), 2);
        // Many at once, then a few into the middle: the names stay sorted either way.
        let many: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        assert_eq!(
            s.extend(many.iter().map(String::as_str), &snapshot, 1)
                .len(),
            100
        );
        s.extend(["n0505", "a"], &snapshot, 1);
        assert!(s.names().windows(2).all(|w| w[0] < w[1]));
        assert!(s.contains("n0505") && s.contains("n042") && s.contains("a"));
        for n in many.iter().map(String::as_str).chain(["n0505", "a"]) {
            s.remove(n);
        }
        assert!(s.extend(["y"], &snapshot, 1).is_empty());
        s.remove("x");
        assert_eq!(names(&s), vec!["y"]);
        assert!(s.wants("y") && !s.wants("x"));
    }

    #[test]
    fn one_added_name_does_not_double_a_large_subscription() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let many: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        s.extend(many.iter().map(String::as_str), &snapshot, 1);
        s.names.shrink_to_fit();
        s.extend(["n0500x"], &snapshot, 1);
        assert_eq!(s.names().len(), 1001);
        assert!(s.names().windows(2).all(|w| w[0] < w[1]));
        assert!(
            s.names.capacity() <= 1000 + 1000 / 8,
            "capacity {}",
            s.names.capacity()
        );
    }
}
