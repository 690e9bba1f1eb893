//! Resources and cache states for the crate's tests.

use std::sync::Arc;

use bytes::Bytes;

use crate::cache::{SnapshotCache, State};
use crate::proxy::Selector;
use crate::resource::Resource;
use crate::snapshot::Update;

pub fn res(type_url: &'static str, name: &str, body: &'static [u8]) -> Resource {
    Resource::from_bytes(type_url, name, Bytes::from_static(body))
}

/// Puts each `(type, name, body)`; a body of `b""` removes the resource instead.
pub fn apply(cache: &SnapshotCache, changes: &[(&'static str, &str, &'static [u8])]) -> Arc<State> {
    let mut update = Update::new();
    for (t, n, body) in changes {
        if body.is_empty() {
            update.remove(t, n);
        } else {
            update.put(res(t, n, body));
        }
    }
    cache.apply(update);
    cache.current()
}

pub fn apply_for(
    cache: &SnapshotCache,
    selector: Selector,
    t: &'static str,
    n: &str,
    body: &'static [u8],
) -> Arc<State> {
    let mut update = Update::new();
    update.put_for(selector, res(t, n, body));
    cache.apply(update);
    cache.current()
}
