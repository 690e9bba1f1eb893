//! capstan's xDS core: encoded resources, versioned snapshots and their history, per-proxy
//! views, and the ADS server (state-of-the-world and Delta) that pushes them to Envoy.
//!
//! Translation hands the cache [`Update`]s (or a complete [`SnapshotBuilder`]); each resource
//! is encoded to protobuf bytes once ([`Resource`]) and shared by every response to every
//! proxy. The cache publishes immutable snapshots with a short history of what changed; each
//! ADS stream works out from that history what its proxy needs, so a change costs time
//! proportional to the change.

pub mod ads;
mod cache;
mod connections;
mod history;
mod metrics;
pub mod net;
mod parts;
mod proxy;
mod queue;
mod resource;
mod snapshot;
#[cfg(test)]
mod test_support;
mod visibility;

pub use cache::{Applied, Nack, SnapshotCache, State};
pub use connections::{
    Connection, Connections, NackRecord, ResponseId, SyncStatus, TypeSync, XdsProtocol,
};
pub use history::{History, Since};
pub use metrics::Metrics;
pub use parts::Parts;
pub use proxy::{Locality, ProxyInfo, ProxyResolver, Role, Selector};
pub use queue::{DEFAULT_MAX_DELAY, DEFAULT_QUIET, PushQueue};
pub use resource::{Resource, type_url};
pub use snapshot::{Entry, Snapshot, SnapshotBuilder, TYPES, Update, type_index};
pub use visibility::Visibility;
