//! The Kubernetes source: one kube-runtime watcher per kind, each converting what it receives
//! into index records at the edge and sending them as [`Event`]s to the task that owns the
//! index. A watcher's list — the first, and every re-list after an outage — is buffered and
//! sent as one `Reset` when complete, so the index never holds a partial list.

mod convert;
pub mod istio;

use std::fmt::Debug;
use std::time::Duration;

use capstan_crds::Kind;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::index::{Event, Record, RecordKey, Tag};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    kind: String,
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Counters of what the watchers receive.
#[derive(Clone, Default)]
pub struct WatchMetrics {
    events: Family<WatchLabels, Counter>,
    errors: Family<KindLabel, Counter>,
}

impl WatchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_watch_events",
            "Events received from the Kubernetes API server, by kind and event (apply, delete, list)",
            self.events.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Failed watch or list calls to the Kubernetes API server, by kind (each is retried with backoff)",
            self.errors.clone(),
        );
    }

    fn event(&self, tag: Tag, event: &str) {
        self.events
            .get_or_create(&WatchLabels {
                kind: tag.to_string(),
                event: event.to_string(),
            })
            .inc();
    }
}

/// The watchers, running.
pub struct KubeSource {
    pub events: mpsc::Receiver<Event>,
    /// Every kind watched: the source has synced once each has sent its first `Reset`.
    pub tags: Vec<Tag>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts one watcher per kind, cluster-wide.
pub fn start(client: Client, metrics: WatchMetrics) -> KubeSource {
    // Bounded: a slow index applies back-pressure to the watchers instead of growing memory.
    let (tx, events) = mpsc::channel(1024);
    let mut tags = Vec::new();
    let mut tasks = Vec::new();
    let cfg = watcher::Config::default;

    for kind in Kind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &istio::api_resource(kind));
        let stream = typed_watch(api, cfg());
        tags.push(Tag::Istio(kind));
        tasks.push(spawn(
            Tag::Istio(kind),
            stream,
            move |o| istio::key(kind, o),
            move |o| istio::record(kind, o),
            tx.clone(),
            metrics.clone(),
        ));
    }
    tags.push(Tag::Service);
    tasks.push(spawn(
        Tag::Service,
        typed_watch(Api::<Service>::all(client.clone()), cfg()),
        convert::service_key,
        convert::service,
        tx.clone(),
        metrics.clone(),
    ));
    tags.push(Tag::Slice);
    tasks.push(spawn(
        Tag::Slice,
        typed_watch(
            Api::<EndpointSlice>::all(client.clone()),
            cfg().labels(convert::SERVICE_NAME_LABEL),
        ),
        convert::slice_key,
        convert::slice,
        tx.clone(),
        metrics.clone(),
    ));
    tags.push(Tag::Pod);
    tasks.push(spawn(
        Tag::Pod,
        typed_watch(Api::<Pod>::all(client.clone()), cfg()),
        convert::pod_key,
        convert::pod,
        tx.clone(),
        metrics.clone(),
    ));
    // Only labels are read of nodes and namespaces: metadata watches are enough.
    tags.push(Tag::Node);
    tasks.push(spawn(
        Tag::Node,
        typed_watch(Api::<PartialObjectMeta<Node>>::all(client.clone()), cfg()),
        convert::node_key,
        convert::node,
        tx.clone(),
        metrics.clone(),
    ));
    tags.push(Tag::Namespace);
    tasks.push(spawn(
        Tag::Namespace,
        typed_watch(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            cfg(),
        ),
        convert::namespace_key,
        convert::namespace,
        tx.clone(),
        metrics.clone(),
    ));
    // Gateway credentials. Secret values arrive whole, so the types that never hold one are
    // filtered on the server, and lists come in small pages: a page of large Secrets is
    // held in memory at once. Only TLS-shaped Secrets are kept, and of them only their TLS
    // entries (`source::secret`).
    tags.push(Tag::Secret);
    tasks.push(spawn(
        Tag::Secret,
        typed_watch(
            Api::<Secret>::all(client),
            cfg()
                .fields(crate::source::secret::WATCH_FIELD_SELECTOR)
                .page_size(SECRET_PAGE_SIZE),
        ),
        crate::source::secret::key,
        crate::source::secret::record,
        tx,
        metrics,
    ));
    KubeSource {
        events,
        tags,
        tasks,
    }
}

/// A watch (typed, or metadata-only for `PartialObjectMeta`), retried with kube-runtime's default backoff.
fn typed_watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<WatchEvent<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

fn spawn<K, S>(
    tag: Tag,
    stream: S,
    key: impl Fn(&K) -> RecordKey + Send + 'static,
    convert: impl Fn(&K) -> Option<Record> + Send + 'static,
    tx: mpsc::Sender<Event>,
    metrics: WatchMetrics,
) -> JoinHandle<()>
where
    K: Send + 'static,
    S: Stream<Item = Result<WatchEvent<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listing: Vec<Record> = Vec::new();
        let mut failing_since: Option<tokio::time::Instant> = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => {
                    if let Some(since) = failing_since.take() {
                        info!(kind = %tag, after = ?since.elapsed(), "watch of {tag} recovered");
                    }
                    event
                }
                Err(err) => {
                    metrics
                        .errors
                        .get_or_create(&KindLabel {
                            kind: tag.to_string(),
                        })
                        .inc();
                    // Logged once per outage, then at debug: the backoff retries for ever.
                    if failing_since.is_none() {
                        warn!(kind = %tag, %err, "watch of {tag} failed; retrying, and serving the last good config meanwhile");
                        failing_since = Some(tokio::time::Instant::now());
                    } else {
                        debug!(kind = %tag, %err, "watch of {tag} still failing");
                    }
                    continue;
                }
            };
            let out = match event {
                WatchEvent::Init => {
                    listing.clear();
                    None
                }
                WatchEvent::InitApply(object) => {
                    listing.extend(convert(&object));
                    None
                }
                WatchEvent::InitDone => {
                    metrics.event(tag, "list");
                    debug!(kind = %tag, objects = listing.len(), "listed {tag}");
                    Some(Event::Reset(vec![tag], std::mem::take(&mut listing)))
                }
                WatchEvent::Apply(object) => {
                    metrics.event(tag, "apply");
                    Some(match convert(&object) {
                        Some(record) => Event::Apply(record),
                        // No longer something the mesh reads (a slice lost its service label).
                        None => Event::Delete(key(&object)),
                    })
                }
                WatchEvent::Delete(object) => {
                    metrics.event(tag, "delete");
                    Some(Event::Delete(key(&object)))
                }
            };
            if let Some(event) = out
                && tx.send(event).await.is_err()
            {
                return;
            }
        }
    })
}

/// Secrets per list page. A Secret may hold up to 1 MiB; the default page of 500 could then
/// hold half a gigabyte at once.
const SECRET_PAGE_SIZE: u32 = 50;

/// How long to wait for the first list of every kind before `run` reports what is missing.
pub const SYNC_REPORT_AFTER: Duration = Duration::from_secs(10);
