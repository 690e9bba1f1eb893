//! Pieces both protocols share: subscriptions, responses awaiting an answer, nonces.

use std::sync::Arc;

use tonic::Status;
use tracing::{debug, warn};

use super::limits::{Logged, MAX_LOGGED, MAX_NACK_MESSAGE, StreamLimits, check_node, truncated};
use crate::cache::{Nack, SnapshotCache, State};
use crate::connections::{Registration, XdsProtocol};
use crate::proxy::ProxyInfo;
use crate::resource::type_url;
use crate::snapshot::{Snapshot, TYPES, type_index};
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
    /// At least the bytes of the names held that no resource has (a name that exists is
    /// shared with the snapshot; one that does not is the proxy's own copy). Counted when
    /// such a name is added and recounted exactly whenever it would pass the limit, so names
    /// created or removed since only ever make it too high, never too low.
    unknown_bytes: usize,
}

/// Why names were not added: the subscription would pass a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("{0} names subscribed in one type, more than the {1} accepted")]
    Names(usize, usize),
    #[error(
        "{0} bytes of subscribed names that no resource has in one type, more than the {1} accepted"
    )]
    UnknownNames(usize, usize),
}

impl From<Exhausted> for Status {
    fn from(e: Exhausted) -> Self {
        Status::resource_exhausted(e.to_string())
    }
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

    /// Adds every name in `names` (sorting once, not per name), or none of them if that would
    /// pass a limit. Returns the names that were new.
    pub fn extend<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        snapshot: &Snapshot,
        index: usize,
        limits: &StreamLimits,
    ) -> Result<Vec<Arc<str>>, Exhausted> {
        let mut new: Vec<&str> = names.into_iter().filter(|n| !self.contains(n)).collect();
        new.sort_unstable();
        new.dedup();
        // Checked before a single name is copied: a million made-up names cost no more than
        // the request that carried them.
        let total = self.names.len() + new.len();
        if total > limits.max_subscribed_names {
            return Err(Exhausted::Names(total, limits.max_subscribed_names));
        }
        let unknown = unknown_bytes(new.iter().copied(), snapshot, index);
        self.reserve_unknown(unknown, snapshot, index, limits)?;
        let added: Vec<Arc<str>> = new
            .into_iter()
            .map(|n| shared_name(n, snapshot, index))
            .collect();
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
        Ok(added)
    }

    /// Counts `unknown` more bytes of names no resource has, recounting the names held if
    /// that passes the limit.
    fn reserve_unknown(
        &mut self,
        unknown: usize,
        snapshot: &Snapshot,
        index: usize,
        limits: &StreamLimits,
    ) -> Result<(), Exhausted> {
        let max = limits.max_unknown_name_bytes;
        if self.unknown_bytes.saturating_add(unknown) > max {
            self.unknown_bytes = unknown_bytes(self.names.iter().map(|n| &**n), snapshot, index);
            let total = self.unknown_bytes.saturating_add(unknown);
            if total > max {
                return Err(Exhausted::UnknownNames(total, max));
            }
        }
        self.unknown_bytes += unknown;
        Ok(())
    }

    /// Removes every name in `names`, in one pass over the subscription however many there
    /// are (one `Vec::remove` per name would move the rest of the vector each time).
    pub fn remove_all<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let mut gone: Vec<&str> = names.into_iter().collect();
        match gone.len() {
            0 => {}
            1 => {
                if let Ok(at) = self.position(gone[0]) {
                    self.names.remove(at);
                }
            }
            _ => {
                gone.sort_unstable();
                self.names
                    .retain(|n| gone.binary_search(&n.as_ref()).is_err());
            }
        }
        if self.names.is_empty() {
            self.unknown_bytes = 0;
        }
    }

    /// Forgets every explicit name.
    pub fn clear_names(&mut self) {
        self.names = Vec::new();
        self.unknown_bytes = 0;
    }

    /// Makes the explicit names exactly `names`, unless that would pass a limit. Returns
    /// `None` if they already were, else the names that are new. Proxies repeat their whole
    /// subscription in every SotW request (thousands of names), so this is one merge of two
    /// sorted lists: no lookups, and strings already held are reused.
    pub fn update_to<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        snapshot: &Snapshot,
        index: usize,
        limits: &StreamLimits,
    ) -> Result<Option<Vec<Arc<str>>>, Exhausted> {
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
            return Ok(None);
        }
        if wanted.len() > limits.max_subscribed_names {
            return Err(Exhausted::Names(wanted.len(), limits.max_subscribed_names));
        }
        let unknown = unknown_bytes(wanted.iter().copied(), snapshot, index);
        if unknown > limits.max_unknown_name_bytes {
            return Err(Exhausted::UnknownNames(
                unknown,
                limits.max_unknown_name_bytes,
            ));
        }
        self.unknown_bytes = unknown;
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
        Ok(Some(added))
    }
}

/// Bytes of the names in `names` that no resource of type `index` has.
fn unknown_bytes<'a>(
    names: impl IntoIterator<Item = &'a str>,
    snapshot: &Snapshot,
    index: usize,
) -> usize {
    names
        .into_iter()
        .filter(|n| snapshot.get(index, n).is_none())
        .map(str::len)
        .fold(0, usize::saturating_add)
}

fn shared_name(name: &str, snapshot: &Snapshot, index: usize) -> Arc<str> {
    snapshot
        .get(index, name)
        .and_then(|e| e.all_variants().next())
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

/// Per-stream context: who the proxy is, where to report, what it may still do.
#[derive(Debug)]
pub struct Context {
    pub cache: SnapshotCache,
    /// Shared with the stream's entry in the connection registry.
    pub proxy: Arc<ProxyInfo>,
    pub limits: StreamLimits,
    nonces: u64,
    /// The stream's entry in [`SnapshotCache::connections`], removed when the stream ends.
    connection: Registration,
    /// Requests for types capstan does not serve, so far.
    bad_requests: u32,
    /// Hash of the last NACK message logged per type: a proxy rejecting every push with the
    /// same reason is logged once, not once per push.
    nack_logged: [Option<u64>; TYPES],
    /// Why the stream must end, once it must.
    failure: Option<Status>,
}

impl Context {
    pub fn new(cache: SnapshotCache, protocol: XdsProtocol, limits: StreamLimits) -> Self {
        let connection = cache.connections().register(protocol);
        Self {
            cache,
            proxy: Arc::default(),
            limits,
            nonces: 0,
            connection,
            bad_requests: 0,
            nack_logged: [None; TYPES],
            failure: None,
        }
    }

    /// Ends the stream with `status` (the first reason given is kept).
    pub fn fail(&mut self, status: impl Into<Status>) {
        if self.failure.is_none() {
            self.failure = Some(status.into());
        }
    }

    /// Why the stream must end, if it must; the stream's task sends it as the final status.
    pub fn take_failure(&mut self) -> Option<Status> {
        self.failure.take()
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Takes a request's first look: learns who the proxy is from the node (sent on the first
    /// request only) and returns the index of the requested type, or `None` for a node that
    /// is refused or a type capstan does not serve (the stream then ends or counts a bad
    /// request).
    pub fn request_type(&mut self, node: Option<&Node>, type_url: &str) -> Option<usize> {
        if self.failed() {
            return None;
        }
        if self.proxy.id.is_empty()
            && let Some(node) = node
        {
            if let Err(status) = check_node(node) {
                warn!(node = %Logged::new(&node.id), reason = status.message(), "proxy refused");
                self.fail(status);
                return None;
            }
            self.proxy = Arc::new(self.cache.proxy_info(node));
            self.connection.identify(self.proxy.clone(), node);
        }
        let index = type_index(type_url);
        if index.is_none() {
            self.bad_requests += 1;
            let (node, type_url) = (Logged::new(&self.proxy.id), Logged::new(type_url));
            if self.bad_requests == 1 {
                warn!(%node, %type_url, "request for a type capstan does not serve (logged once per stream)");
            } else {
                debug!(%node, %type_url, "request for a type capstan does not serve");
            }
            if self.bad_requests > self.limits.max_bad_requests {
                self.fail(Status::invalid_argument(format!(
                    "{} requests for types capstan does not serve (the last for {type_url}); \
                     at most {} are accepted on a stream",
                    self.bad_requests, self.limits.max_bad_requests
                )));
            }
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
        &mut self,
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
                // Kept and logged cut to size: the message is whatever the proxy sent.
                let message = truncated(message, MAX_NACK_MESSAGE);
                let (node, r#type) = (Logged::new(&self.proxy.id), type_url::short(type_url));
                let rejected_kept = truncated(rejected, MAX_LOGGED);
                let rejected = Logged::new(rejected);
                let error = Logged::up_to(&message, MAX_NACK_MESSAGE);
                let hash = xxhash_rust::xxh3::xxh3_64(message.as_bytes());
                if self.nack_logged[index].replace(hash) == Some(hash) {
                    debug!(%node, r#type, %rejected, %error, "proxy rejected update again");
                } else {
                    warn!(%node, r#type, %rejected, %error,
                          "proxy rejected update; it keeps its previous config");
                }
                metrics.nacked(index);
                self.connection
                    .nacked(index, in_flight.version, in_flight.seq, &message);
                self.cache.record_nack(Nack {
                    node_id: self.proxy.id.clone(),
                    type_url: type_url.to_string(),
                    rejected: rejected_kept,
                    message,
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

    const L: StreamLimits = StreamLimits {
        max_bad_requests: 1,
        max_subscribed_names: 2000,
        max_unknown_name_bytes: 1 << 20,
    };

    fn names(s: &Subscription) -> Vec<&str> {
        s.names().iter().map(|n| n.as_ref()).collect()
    }

    #[test]
    fn update_to_merges_and_reports_new_names() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let added = s
            .update_to(["b", "a", "c", "a"], &snapshot, 1, &L)
            .expect("within limits");
        assert_eq!(added.map(|a| a.len()), Some(3));
        assert_eq!(names(&s), vec!["a", "b", "c"]);
        assert!(
            s.update_to(["a", "b", "c"], &snapshot, 1, &L) == Ok(None),
            "unchanged"
        );
        let added = s
            .update_to(["a", "c", "d"], &snapshot, 1, &L)
            .ok()
            .flatten()
            .expect("changed");
        assert_eq!(
            added.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            vec!["d"]
        );
        assert_eq!(names(&s), vec!["a", "c", "d"]);
        assert!(s.contains("c") && !s.contains("b"));
        let added = s
            .update_to(["a"], &snapshot, 1, &L)
            .ok()
            .flatten()
            .expect("shrunk");
        assert!(added.is_empty());
        assert_eq!(names(&s), vec!["a"]);
    }

    #[test]
    fn extend_and_remove() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let added = s
            .extend(["x", "y", "x"], &snapshot, 1, &L)
            .expect("within limits");
        assert_eq!(added.len(), 2);
        // Many at once, then a few into the middle: the names stay sorted either way.
        let many: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        assert_eq!(
            s.extend(many.iter().map(String::as_str), &snapshot, 1, &L)
                .expect("within limits")
                .len(),
            100
        );
        s.extend(["n0505", "a"], &snapshot, 1, &L)
            .expect("within limits");
        assert!(s.names().windows(2).all(|w| w[0] < w[1]));
        assert!(s.contains("n0505") && s.contains("n042") && s.contains("a"));
        s.remove_all(
            many.iter()
                .map(String::as_str)
                .chain(["n0505", "a", "never"]),
        );
        assert!(
            s.extend(["y"], &snapshot, 1, &L)
                .expect("within limits")
                .is_empty()
        );
        s.remove_all(["x"]);
        assert_eq!(names(&s), vec!["y"]);
        assert!(s.wants("y") && !s.wants("x"));
    }

    #[test]
    fn one_added_name_does_not_double_a_large_subscription() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let many: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        s.extend(many.iter().map(String::as_str), &snapshot, 1, &L)
            .expect("within limits");
        s.names.shrink_to_fit();
        s.extend(["n0500x"], &snapshot, 1, &L)
            .expect("within limits");
        assert_eq!(s.names().len(), 1001);
        assert!(s.names().windows(2).all(|w| w[0] < w[1]));
        assert!(
            s.names.capacity() <= 1000 + 1000 / 8,
            "capacity {}",
            s.names.capacity()
        );
    }

    #[test]
    fn names_past_the_limit_are_refused_and_none_is_kept() {
        let snapshot = Snapshot::default();
        let mut s = Subscription::default();
        let limits = StreamLimits {
            max_subscribed_names: 3,
            ..L
        };
        s.extend(["a", "b"], &snapshot, 1, &limits).expect("within");
        let refused = s.extend(["c", "d"], &snapshot, 1, &limits);
        assert_eq!(refused, Err(Exhausted::Names(4, 3)));
        assert_eq!(
            names(&s),
            vec!["a", "b"],
            "nothing of the refused request kept"
        );
        let refused = s.update_to(["a", "b", "c", "d"], &snapshot, 1, &limits);
        assert_eq!(refused, Err(Exhausted::Names(4, 3)));
        s.remove_all(["a"]);
        s.extend(["c", "d"], &snapshot, 1, &limits)
            .expect("room again");
    }

    #[test]
    fn names_that_exist_nowhere_are_limited_in_bytes_and_recounted() {
        let limits = StreamLimits {
            max_unknown_name_bytes: 10,
            ..L
        };
        let mut s = Subscription::default();
        let empty = Snapshot::default();
        s.extend(["aaaaa", "bbbbb"], &empty, 0, &limits)
            .expect("10 bytes");
        let refused = s.extend(["c"], &empty, 0, &limits);
        assert_eq!(refused, Err(Exhausted::UnknownNames(11, 10)));
        // Once the names exist they are the snapshot's, and no longer count.
        let cache = crate::SnapshotCache::new();
        let state = crate::test_support::apply(
            &cache,
            &[
                (crate::resource::type_url::CLUSTER, "aaaaa", b"1"),
                (crate::resource::type_url::CLUSTER, "bbbbb", b"1"),
            ],
        );
        s.extend(["ccccc", "ddddd"], &state.snapshot, 0, &limits)
            .expect("the first names are known now");
        assert_eq!(s.names().len(), 4);
        let refused = s.update_to(["x".repeat(11).as_str()], &empty, 0, &limits);
        assert_eq!(refused, Err(Exhausted::UnknownNames(11, 10)));
    }
}
