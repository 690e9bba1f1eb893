//! `capstan explain --kubeconfig`: the cluster's objects, read by the same watchers `capstan
//! run` starts, until each kind has been listed once.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use capstan_crds::IstioObject;

use super::Locations;
use crate::index::{Event, Index};
use crate::source::kube::{WatchMetrics, start};

/// The longest the first listing of every kind may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's objects as an index, and where each AuthorizationPolicy rule is (its object
/// and field: there is no file).
pub fn load(kubeconfig: &Path) -> Result<(Index, Locations), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let index = runtime.block_on(list(kubeconfig))?;
    let mut locations = Locations::default();
    for object in index.istio_objects() {
        if let IstioObject::AuthorizationPolicy(ap) = object {
            let key = object.key();
            for i in 0..ap.spec.rules.len().max(1) {
                locations.rules.insert(
                    crate::translate::authorization::rule_name(&key, i),
                    format!(
                        "AuthorizationPolicy {}/{} spec.rules[{i}]",
                        key.namespace, key.name
                    ),
                );
            }
        }
    }
    Ok((index, locations))
}

async fn list(kubeconfig: &Path) -> Result<Index, String> {
    let client = crate::run::kube_client(Some(kubeconfig))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let mut source = start(client, WatchMetrics::default());
    let mut pending: BTreeSet<_> = source.tags.iter().copied().collect();
    let mut index = Index::new();
    let deadline = tokio::time::Instant::now() + LIST_TIMEOUT;
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, source.events.recv())
            .await
            .map_err(|_| {
                format!(
                    "the API server did not list {pending:?} within {}s (are the CRDs \
                     installed, and may this kubeconfig list them?)",
                    LIST_TIMEOUT.as_secs()
                )
            })?
            .ok_or("the watchers stopped")?;
        if let Event::Reset(tags, _) = &event {
            for tag in tags {
                pending.remove(tag);
            }
        }
        index.handle(event);
    }
    Ok(index)
}
