//! State-of-the-world ADS. A response carries the full set of a type's resources the proxy
//! subscribes to, so one is due only when that set (names and versions) differs from the one
//! last sent. The history of changes tells cheaply whether anything the proxy subscribes to
//! changed at all; only then is its view rebuilt and compared.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::Status;
use tracing::debug;

use super::common::{Context, InFlight, Subscription};
use super::limits::{Logged, StreamLimits};
use super::request::SotwRequest;
use super::wire::{SotwResources, SotwResponse, WireMessage};
use crate::cache::{SnapshotCache, State};
use crate::connections::XdsProtocol;
use crate::history::Since;
use crate::resource::{Resource, type_url};
use crate::snapshot::TYPES;

/// Types whose SotW responses may carry only the resources that changed.
const PARTIAL_TYPES: [&str; 3] = [type_url::ENDPOINT, type_url::ROUTE, type_url::SECRET];

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// The snapshot version this proxy's view of the type was last brought up to.
    synced: u64,
    /// Hash of the names and versions of the last complete view sent; `None` before the
    /// first response and after a partial one.
    sent_hash: Option<u64>,
    responded: bool,
    sent_nonce: Option<String>,
    in_flight: Option<InFlight>,
    /// Names to send again though unchanged: the load assignments of clusters just updated
    /// (see [`SotwStream::warm_clusters`]).
    due: BTreeSet<Arc<str>>,
}

/// One SotW stream's protocol state: requests and new states in, responses out.
#[derive(Debug)]
pub struct SotwStream {
    context: Context,
    types: [Option<TypeState>; TYPES],
}

impl SotwStream {
    pub fn new(cache: SnapshotCache) -> Self {
        Self::with_limits(cache, StreamLimits::default())
    }

    pub fn with_limits(cache: SnapshotCache, limits: StreamLimits) -> Self {
        Self {
            context: Context::new(cache, XdsProtocol::Sotw, limits),
            types: Default::default(),
        }
    }

    /// Why the stream must end, once a request broke a limit.
    pub fn take_failure(&mut self) -> Option<Status> {
        self.context.take_failure()
    }

    /// The most names held by one type's subscription (for tests of the limits).
    #[cfg(test)]
    pub(crate) fn most_names(&self) -> usize {
        self.types
            .iter()
            .flatten()
            .map(|ts| ts.subscription.names().len())
            .max()
            .unwrap_or(0)
    }

    pub fn node_id(&self) -> &str {
        &self.context.proxy.id
    }

    pub fn on_request(&mut self, request: SotwRequest, state: &State) -> Vec<SotwResponse> {
        let Some(index) = self
            .context
            .request_type(request.node.as_ref(), &request.type_url)
        else {
            return Vec::new();
        };
        let type_state = self.types[index].get_or_insert_with(TypeState::default);
        if !request.response_nonce.is_empty()
            && type_state.sent_nonce.as_deref() != Some(request.response_nonce.as_str())
        {
            // The answer to a response since superseded; the proxy answers the newer one too.
            debug!(node = %Logged::new(&self.context.proxy.id), r#type = type_url::short(type_url::PUSH_ORDER[index]), "stale nonce");
            return Vec::new();
        }
        if let Some(in_flight) = type_state
            .in_flight
            .take_if(|f| f.nonce == request.response_nonce)
        {
            let error = request.error_detail.as_ref().map(|s| s.message.as_str());
            self.context
                .answered(index, &in_flight, state, error, &request.version_info);
        }
        let wildcard = request.wildcard;
        let subscription = &mut type_state.subscription;
        let trigger = if wildcard != subscription.wildcard {
            subscription.wildcard = wildcard;
            subscription.sent_as = None;
            subscription.clear_names();
            Trigger::Request
        } else if wildcard || subscription.sent_as == Some(request.names_hash) {
            Trigger::Change
        } else {
            let limits = &self.context.limits;
            match subscription.update_to(request.names(), &state.snapshot, index, limits) {
                Ok(added) => {
                    subscription.sent_as = Some(request.names_hash);
                    added.map_or(Trigger::Change, Trigger::Subscribed)
                }
                Err(exhausted) => {
                    self.context.fail(exhausted);
                    return Vec::new();
                }
            }
        };
        // Until the type was answered once, any request asks for the whole view.
        let trigger = if type_state.responded {
            trigger
        } else {
            Trigger::Request
        };
        let held = matches!(trigger, Trigger::Change) && self.held_before(index, state);
        let mut out: Vec<SotwResponse> = if held {
            Vec::new()
        } else {
            self.push_type(index, state, trigger).into_iter().collect()
        };
        // An answer may release the changes of the types after it.
        out.extend(self.push_changes(index + 1, state));
        out
    }

    /// Responses for every subscribed type whose view changed, in push order.
    pub fn on_state(&mut self, state: &State) -> Vec<SotwResponse> {
        self.push_changes(0, state)
    }

    /// Whether a type before `index` has a change it cannot send yet.
    fn held_before(&self, index: usize, state: &State) -> bool {
        self.types[..index]
            .iter()
            .flatten()
            .any(|ts| holding(ts, state))
    }

    /// The changes of the types from `first` on, in push order. A type with a change it cannot
    /// send yet (its last response unanswered) holds back the types after it: their new
    /// resources may name its new ones (a listener a new cluster), which the proxy would
    /// refuse before it has them.
    fn push_changes(&mut self, first: usize, state: &State) -> Vec<SotwResponse> {
        let mut out = Vec::new();
        let mut held = self.held_before(first, state);
        for index in first..TYPES {
            let Some(type_state) = &self.types[index] else {
                continue;
            };
            if holding(type_state, state) {
                held = true;
            } else if !held {
                out.extend(self.push_type(index, state, Trigger::Change));
            }
        }
        out
    }

    /// The response due for type `index` (subscribed), if any.
    fn push_type(&mut self, index: usize, state: &State, trigger: Trigger) -> Option<SotwResponse> {
        let ts = self.types[index].as_mut()?;
        let before = ts.responded.then_some(ts.synced);
        let response = push(&mut self.context, index, ts, state, trigger)?;
        self.warm_clusters(index, before, &response, state);
        Some(response)
    }

    /// After clusters are sent, the load assignments of those that changed are due again,
    /// changed or not: Envoy warms an updated cluster until an assignment arrives, and the
    /// request it sends for one it holds reads as an acknowledgement (envoyproxy/envoy#13009;
    /// istiod pushes EDS with CDS for the same reason). Without it an updated cluster waits
    /// out Envoy's initial fetch timeout (15 s) before it serves. A SotW response carries
    /// every cluster; those changed since `before` (the version the last one was built at;
    /// `None`: all) are the ones Envoy warms. A cluster's assignment has the cluster's name.
    fn warm_clusters(
        &mut self,
        index: usize,
        before: Option<u64>,
        response: &SotwResponse,
        state: &State,
    ) {
        if type_url::PUSH_ORDER[index] != type_url::CLUSTER {
            return;
        }
        let Some(eds) =
            crate::snapshot::type_index(type_url::ENDPOINT).and_then(|i| self.types[i].as_mut())
        else {
            return;
        };
        // The changed names, not the response, are walked: a response holds every cluster.
        match before.map(|v| state.history.since(index, v)) {
            Some(Since::Names(changed)) => eds
                .due
                .extend(changed.into_iter().filter(|n| eds.subscription.wants(n))),
            Some(Since::Unknown) | None => {
                let sent = response
                    .resources
                    .resources()
                    .iter()
                    .map(Resource::name_arc);
                eds.due
                    .extend(sent.filter(|n| eds.subscription.wants(n)).cloned());
            }
        }
    }
}

/// A response of the type is unanswered and the snapshot has moved on since it was sent.
fn holding(ts: &TypeState, state: &State) -> bool {
    ts.in_flight.is_some() && ts.synced != state.snapshot.version()
}

/// Why a type's response is being considered.
#[derive(Debug)]
enum Trigger {
    /// The config changed (or the proxy answered while changes waited).
    Change,
    /// The proxy asked for something new: its first request, or a wildcard change.
    Request,
    /// The proxy added these names to its subscription.
    Subscribed(Vec<Arc<str>>),
}

/// The response due for one type, if any.
fn push(
    context: &mut Context,
    index: usize,
    ts: &mut TypeState,
    state: &State,
    trigger: Trigger,
) -> Option<SotwResponse> {
    if ts.in_flight.is_some() {
        return None;
    }
    let snapshot = &state.snapshot;
    let version = snapshot.version();
    if matches!(trigger, Trigger::Change) && ts.synced == version && ts.due.is_empty() {
        return None;
    }
    let due = std::mem::take(&mut ts.due);
    let proxy = &context.proxy;
    let since = if ts.responded && !matches!(trigger, Trigger::Request) {
        state.history.since(index, ts.synced)
    } else {
        Since::Unknown
    };
    // Route configurations and load assignments are referenced by name, and a SotW response
    // need not repeat the ones that did not change (listeners and clusters, the roots, must
    // always come complete). So an endpoint change sends one load assignment, not every one
    // the proxy has, and a new cluster sends just its own.
    let partial = PARTIAL_TYPES.contains(&type_url::PUSH_ORDER[index]) && !ts.subscription.wildcard;
    if let Since::Names(changed) = &since {
        let added = match &trigger {
            Trigger::Subscribed(added) => added.as_slice(),
            _ => &[],
        };
        let wanted: BTreeSet<&Arc<str>> = changed
            .iter()
            .filter(|n| ts.subscription.wants(n))
            .chain(added)
            .chain(&due)
            .collect();
        if wanted.is_empty() {
            // Nothing the proxy subscribes to changed: no need to look at its view.
            ts.synced = version;
            return None;
        }
        if partial {
            let resources: Vec<Resource> = wanted
                .into_iter()
                .filter_map(|n| snapshot.resource_for(index, n, proxy).cloned())
                .collect();
            ts.synced = version;
            if resources.is_empty() {
                return None;
            }
            // The full view is no longer what was last sent as a whole.
            ts.sent_hash = None;
            let change_driven = matches!(trigger, Trigger::Change);
            return Some(send(
                context,
                index,
                ts,
                state,
                Arc::new(SotwResources::new(resources)),
                version.to_string(),
                change_driven,
            ));
        }
    }
    let view = match state
        .uniform_view(index)
        .filter(|_| ts.subscription.wildcard)
    {
        Some(shared) => shared,
        None => Arc::new(SotwResources::new(if ts.subscription.wildcard {
            snapshot.view(index, proxy).cloned().collect()
        } else {
            ts.subscription
                .names()
                .iter()
                .filter_map(|n| snapshot.resource_for(index, n, proxy).cloned())
                .collect()
        })),
    };
    let hash = view.hash();
    ts.synced = version;
    if ts.sent_hash == Some(hash) && due.is_empty() {
        return None;
    }
    ts.sent_hash = Some(hash);
    let change_driven = matches!(trigger, Trigger::Change);
    Some(send(
        context,
        index,
        ts,
        state,
        view,
        format!("{version}-{hash:016x}"),
        change_driven,
    ))
}

fn send(
    context: &mut Context,
    index: usize,
    ts: &mut TypeState,
    state: &State,
    resources: Arc<SotwResources>,
    version_info: String,
    change_driven: bool,
) -> SotwResponse {
    let response = SotwResponse {
        version_info,
        resources,
        type_url: type_url::PUSH_ORDER[index],
        nonce: context.next_nonce(),
    };
    let size = (response.resources.len(), response.encoded_len());
    ts.in_flight = Some(context.sending(index, &response.nonce, size, change_driven, state));
    ts.sent_nonce = Some(response.nonce.clone());
    ts.responded = true;
    response
}

#[cfg(test)]
mod tests;
