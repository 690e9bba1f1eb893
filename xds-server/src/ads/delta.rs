//! Delta (incremental) ADS. Responses carry only resources that changed for the proxy, and
//! removals. Per type, a stream keeps its subscription and the snapshot version it is in sync
//! with; the history of changes tells which names to look at, so a change costs each stream
//! time proportional to the change, not to what it subscribes to.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;

use super::common::{Context, InFlight, Subscription};
use super::limits::StreamLimits;
use super::wire::{DeltaResponse, WireMessage};
use crate::cache::{SnapshotCache, State};
use crate::connections::XdsProtocol;
use crate::history::Since;
use crate::proxy::ProxyInfo;
use crate::resource::{Resource, type_url};
use crate::snapshot::{Entry, Snapshot, TYPES};

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// The snapshot version this proxy is in sync with for this type.
    synced: u64,
    /// The snapshot at `synced` (cheap: it shares all but what changed since with the
    /// current one). A proxy further behind than the history is compared against it, so
    /// what was deleted in the gap is removed and what did not change is not resent.
    held: Snapshot,
    /// The whole view must be compared (first response, wildcard just added, or the proxy
    /// was further behind than the history reaches).
    full: bool,
    /// Versions the proxy said it holds when it (re)connected; dropped after the first pass.
    initial: HashMap<String, String>,
    /// Names subscribed since the last response, to answer even if unchanged.
    pending: BTreeSet<Arc<str>>,
    /// The version sent of each resource whose name has variants for different proxies
    /// (scoped). The snapshot version and the history tell which names changed; for a scoped
    /// name that may be another proxy's variant, so this tells whether this proxy's changed.
    /// Empty while the type has nothing scoped: it costs a uniform mesh nothing.
    scoped_sent: HashMap<Arc<str>, u64>,
    responded: bool,
    in_flight: Option<InFlight>,
}

/// One Delta stream's protocol state: requests and new states in, responses out.
#[derive(Debug)]
pub struct DeltaStream {
    context: Context,
    types: [Option<TypeState>; TYPES],
}

impl DeltaStream {
    pub fn new(cache: SnapshotCache) -> Self {
        Self::with_limits(cache, StreamLimits::default())
    }

    pub fn with_limits(cache: SnapshotCache, limits: StreamLimits) -> Self {
        Self {
            context: Context::new(cache, XdsProtocol::Delta, limits),
            types: Default::default(),
        }
    }

    /// Why the stream must end, once a request broke a limit.
    pub fn take_failure(&mut self) -> Option<Status> {
        self.context.take_failure()
    }

    /// The most names held by one type's subscription, and their bytes that are the proxy's
    /// own (for tests of the limits).
    #[cfg(test)]
    pub(crate) fn most_names(&self) -> usize {
        self.types
            .iter()
            .flatten()
            .map(|ts| ts.subscription.names().len().max(ts.pending.len()))
            .max()
            .unwrap_or(0)
    }

    pub fn node_id(&self) -> &str {
        &self.context.proxy.id
    }

    pub fn on_request(
        &mut self,
        mut request: DeltaDiscoveryRequest,
        state: &State,
    ) -> Vec<DeltaResponse> {
        let Some(index) = self
            .context
            .request_type(request.node.as_ref(), &request.type_url)
        else {
            return Vec::new();
        };
        let first = self.types[index].is_none();
        let ts = self.types[index].get_or_insert_with(TypeState::default);
        let mut answered = false;
        if let Some(in_flight) = ts.in_flight.take_if(|f| f.nonce == request.response_nonce) {
            let error = request.error_detail.as_ref().map(|s| s.message.as_str());
            self.context
                .answered(index, &in_flight, state, error, &request.response_nonce);
            answered = true;
        }
        if first {
            ts.full = true;
            ts.initial = std::mem::take(&mut request.initial_resource_versions);
            // A first request naming nothing is the legacy form of a wildcard subscription.
            ts.subscription.wildcard = request.resource_names_subscribe.is_empty();
        }
        if request.resource_names_subscribe.iter().any(|n| n == "*") {
            ts.full |= !ts.subscription.wildcard;
            ts.subscription.wildcard = true;
        }
        // Removals first, in one pass, so a request that swaps names is measured against the
        // limits by what it leaves subscribed.
        let mut gone: Vec<&str> = Vec::new();
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                ts.subscription.wildcard = false;
            } else {
                ts.pending.remove(name.as_str());
                gone.push(name);
            }
        }
        gone.sort_unstable();
        ts.subscription.remove_all(gone.iter().copied());
        let named = request
            .resource_names_subscribe
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "*" && gone.binary_search(n).is_err());
        match ts
            .subscription
            .extend(named, &state.snapshot, index, &self.context.limits)
        {
            Ok(added) => ts.pending.extend(added),
            Err(exhausted) => {
                self.context.fail(exhausted);
                return Vec::new();
            }
        }
        let change_driven = answered && ts.pending.is_empty() && !ts.full;
        let held = change_driven && self.held_before(index, state);
        let mut out: Vec<DeltaResponse> = if held {
            Vec::new()
        } else {
            let ts = self.types[index].get_or_insert_with(TypeState::default);
            let response = push(&mut self.context, index, ts, state, change_driven);
            if let Some(response) = &response {
                self.warm_clusters(index, response);
            }
            response.into_iter().collect()
        };
        // An answer may release the changes of the types after it.
        out.extend(self.push_changes(index + 1, state));
        out
    }

    /// Whether a type before `index` has a change it cannot send yet.
    fn held_before(&self, index: usize, state: &State) -> bool {
        self.types[..index]
            .iter()
            .flatten()
            .any(|ts| holding(ts, state))
    }

    /// The changes of the types from `first` on, in push order; a type with a change it cannot
    /// send yet holds back the types after it (see the SotW stream's `push_changes`).
    fn push_changes(&mut self, first: usize, state: &State) -> Vec<DeltaResponse> {
        let mut out = Vec::new();
        let mut held = self.held_before(first, state);
        for index in first..TYPES {
            let Some(ts) = &mut self.types[index] else {
                continue;
            };
            if holding(ts, state) {
                held = true;
            } else if !held && let Some(response) = push(&mut self.context, index, ts, state, true)
            {
                self.warm_clusters(index, &response);
                out.push(response);
            }
        }
        out
    }

    /// After clusters are sent, their load assignments are due again, changed or not: Envoy
    /// warms an updated cluster until an assignment arrives, and on Delta it does not ask
    /// for one it is subscribed to already (envoyproxy/envoy#33607; istiod pushes EDS after
    /// CDS for the same reason). Without it an updated cluster waits out Envoy's initial
    /// fetch timeout (15 s) before it serves. A cluster's assignment has the cluster's name.
    fn warm_clusters(&mut self, index: usize, response: &DeltaResponse) {
        if type_url::PUSH_ORDER[index] != type_url::CLUSTER {
            return;
        }
        let Some(eds) =
            crate::snapshot::type_index(type_url::ENDPOINT).and_then(|i| self.types[i].as_mut())
        else {
            return;
        };
        let sent = response.resources.iter().map(Resource::name_arc);
        eds.pending
            .extend(sent.filter(|name| eds.subscription.wants(name)).cloned());
    }

    /// Responses for every subscribed type with changes for this proxy, in push order.
    pub fn on_state(&mut self, state: &State) -> Vec<DeltaResponse> {
        self.push_changes(0, state)
    }
}

/// A response of the type is unanswered and something is due after it.
fn holding(ts: &TypeState, state: &State) -> bool {
    ts.in_flight.is_some() && (ts.synced != state.snapshot.version() || !ts.pending.is_empty())
}

fn push(
    context: &mut Context,
    index: usize,
    ts: &mut TypeState,
    state: &State,
    change_driven: bool,
) -> Option<DeltaResponse> {
    if ts.in_flight.is_some() {
        return None;
    }
    let snapshot = &state.snapshot;
    let version = snapshot.version();
    if ts.synced == version && ts.pending.is_empty() && !ts.full {
        return None;
    }
    let proxy = &context.proxy;
    let mut resources: Vec<Resource> = Vec::new();
    let mut removed: Vec<Arc<str>> = Vec::new();
    let since = if ts.full {
        Since::Unknown
    } else {
        state.history.since(index, ts.synced)
    };
    match since {
        Since::Unknown if !ts.full => {
            catch_up(ts, snapshot, index, proxy, &mut resources, &mut removed)
        }
        Since::Unknown => {
            // Everything in the view, less what the proxy already holds at that version.
            let holds = |r: &Resource| {
                ts.initial
                    .get(r.name())
                    .is_some_and(|v| v == r.version_hex())
            };
            if ts.subscription.wildcard {
                resources.extend(snapshot.view(index, proxy).filter(|r| !holds(r)).cloned());
            } else {
                for name in ts.subscription.names() {
                    match snapshot.resource_for(index, name, proxy) {
                        Some(r) if !holds(r) => resources.push(r.clone()),
                        Some(_) => {}
                        None => removed.push(name.clone()),
                    }
                }
            }
            // What it kept from an earlier stream that no longer exists for it.
            for name in ts.initial.keys() {
                let exists = snapshot.resource_for(index, name, proxy).is_some();
                if !exists && ts.subscription.wants(name) {
                    removed.push(Arc::from(name.as_str()));
                }
            }
        }
        Since::Names(changed) => {
            let candidates = changed
                .iter()
                .filter(|n| ts.subscription.wants(n))
                .chain(ts.pending.iter().filter(|n| !changed.contains(*n)));
            for name in candidates {
                match snapshot.get(index, name) {
                    // A name just asked for is answered whatever was sent before.
                    Some(entry) if entry.is_scoped() && !ts.pending.contains(name) => {
                        // Another proxy's variant may be what changed. An entry that was
                        // the same for everyone when last synced was sent as such.
                        let sent = ts.scoped_sent.get(name).copied().or_else(|| {
                            ts.held
                                .get(index, name)
                                .filter(|held| !held.is_scoped())
                                .and_then(|held| held.for_proxy(proxy))
                                .map(Resource::version)
                        });
                        match entry.for_proxy(proxy) {
                            Some(r) if sent == Some(r.version()) => {}
                            Some(r) => resources.push(r.clone()),
                            None if sent.is_some() => removed.push(name.clone()),
                            None => {}
                        }
                    }
                    entry => match entry.and_then(|e| e.for_proxy(proxy)) {
                        Some(r) => resources.push(r.clone()),
                        None => removed.push(name.clone()),
                    },
                }
            }
        }
    }
    remember_scoped(ts, snapshot, index, &resources, &removed);
    ts.synced = version;
    ts.held = snapshot.clone();
    ts.full = false;
    ts.initial = HashMap::new();
    ts.pending.clear();
    if resources.is_empty() && removed.is_empty() && ts.responded {
        return None;
    }
    resources.sort_by(|a, b| a.name().cmp(b.name()));
    removed.sort();
    removed.dedup();
    let nonce = context.next_nonce();
    let response = DeltaResponse {
        system_version_info: version.to_string(),
        resources,
        type_url: type_url::PUSH_ORDER[index],
        removed_resources: removed,
        nonce,
    };
    let nonce = &response.nonce;
    let size = (response.resources.len(), response.encoded_len());
    ts.in_flight = Some(context.sending(index, nonce, size, change_driven, state));
    ts.responded = true;
    Some(response)
}

/// What changed for `proxy` between the snapshot it holds and `snapshot`, when that is
/// further back than the history reaches: every name in either view is compared.
fn catch_up(
    ts: &mut TypeState,
    snapshot: &Snapshot,
    index: usize,
    proxy: &ProxyInfo,
    resources: &mut Vec<Resource>,
    removed: &mut Vec<Arc<str>>,
) {
    let mut names: BTreeSet<&Arc<str>> = ts.subscription.names().iter().collect();
    names.extend(&ts.pending);
    if ts.subscription.wildcard {
        names.extend(snapshot.entries(index).map(|(name, _)| name));
        names.extend(ts.held.entries(index).map(|(name, _)| name));
    }
    for name in names {
        if !ts.subscription.wants(name) {
            continue;
        }
        let held = ts
            .held
            .resource_for(index, name, proxy)
            .map(Resource::version);
        // A name just asked for is answered whatever the proxy holds.
        let asked = ts.pending.contains(name);
        let now = snapshot
            .get(index, name)
            .and_then(|e| Some((e.is_scoped(), e.for_proxy(proxy)?)));
        match now {
            Some((_, r)) if asked || held != Some(r.version()) => resources.push(r.clone()),
            // Unchanged, so not resent; a scoped one is remembered as if it were.
            Some((true, r)) => {
                ts.scoped_sent.insert(name.clone(), r.version());
            }
            Some((false, _)) => {}
            None if asked || held.is_some() => removed.push(name.clone()),
            None => {}
        }
    }
}

/// Records the versions of scoped resources about to be sent, and forgets removed names.
fn remember_scoped(
    ts: &mut TypeState,
    snapshot: &Snapshot,
    index: usize,
    resources: &[Resource],
    removed: &[Arc<str>],
) {
    if snapshot.is_uniform(index) {
        ts.scoped_sent = HashMap::new();
        return;
    }
    for r in resources {
        if snapshot.get(index, r.name()).is_some_and(Entry::is_scoped) {
            ts.scoped_sent.insert(r.name_arc().clone(), r.version());
        } else {
            ts.scoped_sent.remove(r.name());
        }
    }
    for name in removed {
        ts.scoped_sent.remove(name);
    }
}

#[cfg(test)]
mod tests;
