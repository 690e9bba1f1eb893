//! State-of-the-world ADS. A response carries the full set of a type's resources the proxy
//! subscribes to, so one is due only when that set (names and versions) differs from the one
//! last sent. The history of changes tells cheaply whether anything the proxy subscribes to
//! changed at all; only then is its view rebuilt and compared.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tracing::{debug, warn};
use xxhash_rust::xxh3::Xxh3;

use super::common::{Context, InFlight, Subscription};
use super::wire::{SotwResponse, WireMessage};
use crate::cache::{SnapshotCache, State};
use crate::history::Since;
use crate::proxy::ProxyInfo;
use crate::resource::{Resource, type_url};
use crate::snapshot::{TYPES, type_index};

#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// The snapshot version this proxy's view of the type was last brought up to.
    synced: u64,
    /// Hash of the names and versions last sent; `None` before the first response.
    sent_hash: Option<u64>,
    sent_nonce: Option<String>,
    in_flight: Option<InFlight>,
}

/// One SotW stream's protocol state: requests and new states in, responses out.
#[derive(Debug)]
pub struct SotwStream {
    context: Context,
    types: [Option<TypeState>; TYPES],
}

impl SotwStream {
    pub fn new(cache: SnapshotCache) -> Self {
        Self {
            context: Context::new(cache),
            types: Default::default(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.context.proxy.id
    }

    pub fn on_request(&mut self, request: DiscoveryRequest, state: &State) -> Vec<SotwResponse> {
        if self.context.proxy.id.is_empty()
            && let Some(node) = &request.node
        {
            self.context.proxy = ProxyInfo::from_node(node);
        }
        let Some(index) = type_index(&request.type_url) else {
            warn!(node = %self.node_id(), type_url = %request.type_url, "request for a type capstan does not serve");
            return Vec::new();
        };
        let type_state = self.types[index].get_or_insert_with(TypeState::default);
        if !request.response_nonce.is_empty()
            && type_state.sent_nonce.as_deref() != Some(request.response_nonce.as_str())
        {
            // The answer to a response since superseded; the proxy answers the newer one too.
            debug!(node = %self.context.proxy.id, r#type = type_url::short(type_url::PUSH_ORDER[index]), "stale nonce");
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
        let wildcard =
            request.resource_names.is_empty() || request.resource_names.iter().any(|n| n == "*");
        let subscription = &mut type_state.subscription;
        let unchanged = subscription.wildcard == wildcard
            && (wildcard
                || (subscription.names.len() == request.resource_names.len()
                    && request
                        .resource_names
                        .iter()
                        .all(|n| subscription.names.contains(n.as_str()))));
        if !unchanged {
            subscription.wildcard = wildcard;
            subscription.names.clear();
            if !wildcard {
                for name in &request.resource_names {
                    subscription.insert(name, &state.snapshot, index);
                }
            }
        }
        // A new or changed subscription is answered from the whole view; an ACK only catches
        // up on changes that arrived while the response was in flight.
        let requested = !unchanged || type_state.sent_hash.is_none();
        push(&mut self.context, index, type_state, state, requested)
            .into_iter()
            .collect()
    }

    /// Responses for every subscribed type whose view changed, in push order.
    pub fn on_state(&mut self, state: &State) -> Vec<SotwResponse> {
        let mut out = Vec::new();
        for (index, type_state) in self.types.iter_mut().enumerate() {
            if let Some(type_state) = type_state {
                out.extend(push(&mut self.context, index, type_state, state, false));
            }
        }
        out
    }
}

/// The response due for one type, if any. `requested`: the proxy just asked.
fn push(
    context: &mut Context,
    index: usize,
    ts: &mut TypeState,
    state: &State,
    requested: bool,
) -> Option<SotwResponse> {
    if ts.in_flight.is_some() {
        return None;
    }
    let snapshot = &state.snapshot;
    let version = snapshot.version();
    if !requested && ts.synced == version {
        return None;
    }
    // Nothing the proxy subscribes to changed: no need to look at its view.
    if !requested
        && ts.sent_hash.is_some()
        && let Since::Names(changed) = state.history.since(index, ts.synced)
        && !changed.iter().any(|n| ts.subscription.wants(n))
    {
        ts.synced = version;
        return None;
    }
    let proxy = &context.proxy;
    let resources: Vec<Resource> = if ts.subscription.wildcard {
        snapshot.view(index, proxy).cloned().collect()
    } else {
        let mut names: Vec<_> = ts.subscription.names.iter().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| snapshot.get(index, n)?.for_proxy(proxy).cloned())
            .collect()
    };
    let hash = view_hash(&resources);
    ts.synced = version;
    if ts.sent_hash == Some(hash) {
        return None;
    }
    let nonce = context.next_nonce();
    let response = SotwResponse {
        version_info: format!("{version}-{hash:016x}"),
        resources,
        type_url: type_url::PUSH_ORDER[index],
        nonce: nonce.clone(),
    };
    context.sending(
        index,
        response.resources.len(),
        response.encoded_len(),
        !requested,
        version,
        state,
    );
    ts.sent_hash = Some(hash);
    ts.sent_nonce = Some(nonce.clone());
    ts.in_flight = Some(InFlight {
        nonce,
        version,
        change_driven: !requested,
    });
    Some(response)
}

/// Names exactly this set of resources at these versions.
fn view_hash(resources: &[Resource]) -> u64 {
    let mut hasher = Xxh3::new();
    for r in resources {
        hasher.update(r.name().as_bytes());
        hasher.update(&[0]);
        hasher.update(&r.version().to_le_bytes());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests;
