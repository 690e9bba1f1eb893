//! The trust bundle where pods read it, as istiod publishes it: the ConfigMap
//! `istio-ca-root-cert` (key `root-cert.pem`) in every namespace. An agent mounts it as its
//! `--ca-root-cert`, which is how a rotation's next root reaches every proxy before it signs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use capstan_ca::Authority;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::{debug, info, warn};

/// Istio's name for the ConfigMap holding the mesh's roots.
pub const ROOTS_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its one key.
pub const ROOTS_KEY: &str = "root-cert.pem";
/// How often namespaces whose ConfigMap could not be written are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(30);

/// Keeps `istio-ca-root-cert` in every namespace equal to the authority's trust bundle, for
/// ever: new namespaces get it when they appear, every namespace when the bundle changes.
pub async fn publish_roots(client: Client, authority: Arc<Authority>) {
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let mut events =
        std::pin::pin!(watcher::watcher(namespaces, watcher::Config::default()).default_backoff());
    let mut bundles = authority.subscribe();
    let mut publisher = Publisher::new(client);
    let mut bundle = joined(&bundles.borrow_and_update().trust_bundle);
    let mut retry = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                    if ns.metadata.deletion_timestamp.is_none()
                        && let Some(name) = ns.metadata.name
                    {
                        publisher.ensure(&name, &bundle).await;
                    }
                }
                Some(Ok(Event::Delete(ns))) => {
                    if let Some(name) = ns.metadata.name {
                        publisher.forget(&name);
                    }
                }
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(error)) => debug!(%error, "watch of namespaces failed; retrying"),
                None => return,
            },
            changed = bundles.changed() => {
                if changed.is_err() {
                    return; // the authority is gone: shutting down
                }
                bundle = joined(&bundles.borrow_and_update().trust_bundle);
                info!(namespaces = publisher.known(), "publishing the CA's new trust bundle to every namespace");
                publisher.ensure_all(&bundle).await;
            }
            _ = retry.tick() => publisher.ensure_all(&bundle).await,
        }
    }
}

fn joined(roots: &[String]) -> String {
    roots
        .iter()
        .map(|r| r.trim_end().to_string() + "\n")
        .collect()
}

/// What was written where, so an unchanged bundle costs no request.
struct Publisher {
    client: Client,
    written: HashMap<String, Option<String>>,
}

impl Publisher {
    fn new(client: Client) -> Self {
        Self {
            client,
            written: HashMap::new(),
        }
    }

    fn known(&self) -> usize {
        self.written.len()
    }

    fn forget(&mut self, namespace: &str) {
        self.written.remove(namespace);
    }

    async fn ensure_all(&mut self, bundle: &str) {
        let stale: Vec<String> = self
            .written
            .iter()
            .filter(|(_, written)| written.as_deref() != Some(bundle))
            .map(|(ns, _)| ns.clone())
            .collect();
        for namespace in stale {
            self.ensure(&namespace, bundle).await;
        }
    }

    async fn ensure(&mut self, namespace: &str, bundle: &str) {
        if self.written.get(namespace).and_then(Option::as_deref) == Some(bundle) {
            return;
        }
        match write(&self.client, namespace, bundle).await {
            Ok(()) => {
                self.written
                    .insert(namespace.to_string(), Some(bundle.to_string()));
            }
            Err(error) => {
                // Tried again on the next tick.
                self.written.insert(namespace.to_string(), None);
                warn!(namespace, %error, "could not publish {ROOTS_CONFIGMAP}");
            }
        }
    }
}

/// Creates or updates the ConfigMap in `namespace` unless it already holds `bundle`.
async fn write(client: &Client, namespace: &str, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let data = BTreeMap::from([(ROOTS_KEY.to_string(), bundle.to_string())]);
    match api.get_opt(ROOTS_CONFIGMAP).await? {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
        Some(mut existing) => {
            existing.data = Some(data);
            api.replace(ROOTS_CONFIGMAP, &PostParams::default(), &existing)
                .await
                .map(drop)
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOTS_CONFIGMAP.to_string()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(BTreeMap::from([
                        ("istio.io/config".to_string(), "true".to_string()),
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "capstan".to_string(),
                        ),
                    ])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(()),
                // Another replica was first; the next round compares its content.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}
