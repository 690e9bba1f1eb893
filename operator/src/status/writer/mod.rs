//! The status writer: patches the `Reconciled` condition onto Istio objects, on the leader
//! only.
//!
//! The index publishes the *complete* desired state each time something changes: every
//! object with what its condition should say, what the object showed when last watched and
//! its whole current `status`. The writer is level-based rather than event-based: each pass
//! compares the latest published set with what the objects show and patches the difference.
//! That makes it indifferent to how often or in what order publishes arrive (the latest
//! wins: a `watch` channel, not a queue), and it makes a new leader catch up by simply
//! evaluating the last published set.
//!
//! Writes stay quiet in steady state because of two rules:
//!
//! - an object whose watched condition already says what it should is never patched;
//! - an object this writer already patched with the same content is not patched again while
//!   the watch has not caught up with that write (a publish can arrive between our patch and
//!   its watch event). The memory of a write is dropped once the watch shows it, so if
//!   anything later changes the condition behind our back, it is put right.
//!
//! Each patch is a JSON merge patch on the `status` subresource (`Api<DynamicObject>`,
//! version `v1`), with at most [`CONCURRENCY`] in flight and each bounded by
//! [`REQUEST_TIMEOUT`]. An object deleted meanwhile (404) is dropped silently; a 409 or 422
//! is logged with the object and tried again on a later publish; other failures (timeouts,
//! 5xx, 403, …) are also retried by themselves, with backoff.
//!
//! A merge patch replaces `status.conditions` whole, so the patch carries the other
//! controllers' conditions as the object showed them when last watched. A condition another
//! controller adds in the instant between that watch event and our patch would be lost;
//! the patch does not carry a `resourceVersion` precondition because the published items
//! do not carry one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use capstan_crds::ObjectKey;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use super::condition::{Desired, Observed};
use crate::source::kube::istio::api_resource;

/// Most status patches in flight at once.
pub const CONCURRENCY: usize = 8;
/// Longest a single status patch may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The field manager recorded on our writes (`metadata.managedFields`).
pub const FIELD_MANAGER: &str = "capstan";
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The published items by object: a persistent map, so the publisher keeps one and changes
/// only what changed, and a publish costs no copy of the rest.
pub type StatusSet = imbl::OrdMap<ObjectKey, StatusItem>;

/// A [`StatusSet`] from items (the last item for a key wins).
pub fn status_set(items: impl IntoIterator<Item = StatusItem>) -> StatusSet {
    items.into_iter().map(|i| (i.key.clone(), i)).collect()
}

/// One Istio object as the index sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusItem {
    pub key: ObjectKey,
    /// What its `Reconciled` condition should say.
    pub desired: Desired,
    /// What its `Reconciled` condition said when last watched (`None`: there is none).
    pub observed: Option<Observed>,
    /// Its whole `status` when last watched (other controllers' conditions are kept);
    /// shared with the index, not copied per publish.
    pub status: Option<Arc<Value>>,
    /// Its `metadata.resourceVersion` when last watched: the patch applies only to that
    /// version (409 Conflict otherwise), so a condition another controller added since is
    /// never overwritten; the watch brings the new version and the patch is made again.
    pub resource_version: Option<String>,
}

/// Why a status patch failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// 404: the object (or its kind) is gone.
    #[error("not found")]
    Gone,
    /// 409 or 422: the API server refused this content.
    #[error("rejected ({code}): {message}")]
    Rejected { code: u16, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl WriteError {
    fn classify(err: kube::Error) -> WriteError {
        match err {
            kube::Error::Api(status) if status.code == 404 => WriteError::Gone,
            kube::Error::Api(status) if matches!(status.code, 409 | 422) => WriteError::Rejected {
                code: status.code,
                message: status.message.clone(),
            },
            err => WriteError::Api(err),
        }
    }
}

/// Sends one status patch. The API server in production; a fake in tests.
trait Patcher: Send + Sync + 'static {
    fn patch(
        &self,
        key: &ObjectKey,
        body: Value,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
}

struct KubePatcher {
    client: Client,
}

impl Patcher for KubePatcher {
    async fn patch(&self, key: &ObjectKey, body: Value) -> Result<(), WriteError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &api_resource(key.kind));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch_status(&key.name, &params, &Patch::Merge(&body))
            .await
            .map(drop)
            .map_err(WriteError::classify)
    }
}

/// Handle to the status-writing task; cheap to clone. The task ends when every handle is
/// dropped (or when its `JoinHandle` is aborted).
#[derive(Debug, Clone)]
pub struct StatusWriter {
    published: watch::Sender<StatusSet>,
}

impl StatusWriter {
    /// Starts the writer. It writes only while `leader` says `true`. If the sending side of
    /// `leader` is dropped, its last value stands (`watch::channel(true).1` is "always
    /// leader"; the elector sets `false` before its side goes, even on panic or abort).
    pub fn start(
        client: kube::Client,
        leader: watch::Receiver<bool>,
    ) -> (StatusWriter, JoinHandle<()>) {
        Self::start_with(KubePatcher { client }, leader, Options::default())
    }

    fn start_with<P: Patcher>(
        patcher: P,
        leader: watch::Receiver<bool>,
        options: Options,
    ) -> (StatusWriter, JoinHandle<()>) {
        let (published, rx) = watch::channel(StatusSet::new());
        let task = tokio::spawn(run(Arc::new(patcher), rx, leader, options));
        (StatusWriter { published }, task)
    }

    /// The complete desired state: every Istio object capstan currently knows, with what
    /// the object showed when last watched (`None`: no Reconciled condition yet) and its full
    /// current `status` JSON (so other controllers' conditions are kept).
    ///
    /// Replaces the previous set (latest wins); never blocks.
    pub fn publish(&self, objects: StatusSet) {
        self.published.send_replace(objects);
    }
}

#[derive(Debug, Clone)]
struct Options {
    concurrency: usize,
    request_timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    /// Counts finished evaluations (tests wait on it).
    evaluations: Option<watch::Sender<u64>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: CONCURRENCY,
            request_timeout: REQUEST_TIMEOUT,
            retry_min: RETRY_MIN,
            retry_max: RETRY_MAX,
            evaluations: None,
        }
    }
}

/// What the writer remembers: the content of each patch it sent that the watch has not
/// shown back yet.
#[derive(Debug, Default)]
struct Ledger {
    written: HashMap<ObjectKey, Desired>,
}

impl Ledger {
    /// The items to patch, in key order. Forgets writes to objects no longer published and
    /// writes the watch has shown back.
    fn plan<'a>(&mut self, items: &'a StatusSet) -> Vec<&'a StatusItem> {
        self.written.retain(|key, _| items.contains_key(key));
        let mut plan = Vec::new();
        for (key, item) in items {
            if item
                .observed
                .as_ref()
                .is_some_and(|o| item.desired.matches(o))
            {
                self.written.remove(key);
            } else if self.written.get(key) != Some(&item.desired) {
                plan.push(item);
            }
        }
        plan
    }

    fn record(&mut self, key: ObjectKey, desired: Desired) {
        self.written.insert(key, desired);
    }

    /// Forgets everything (on becoming leader: another replica may have written since).
    fn clear(&mut self) {
        self.written.clear();
    }
}

enum Outcome {
    Written,
    /// Not sent: leadership lost or a newer publish arrived.
    Skipped,
    Failed(WriteError),
}

async fn run<P: Patcher>(
    patcher: Arc<P>,
    mut published: watch::Receiver<StatusSet>,
    mut leader: watch::Receiver<bool>,
    options: Options,
) {
    let mut ledger = Ledger::default();
    let mut leader_open = true;
    let mut was_leader = false;
    let mut backoff = options.retry_min;
    let mut retry_at: Option<Instant> = None;
    let mut evaluations = 0u64;
    loop {
        let is_leader = *leader.borrow_and_update();
        if is_leader != was_leader {
            if is_leader {
                info!("status: leader; writing conditions");
                ledger.clear();
            } else {
                info!("status: not leader; no longer writing conditions");
            }
            was_leader = is_leader;
        }
        if !is_leader {
            retry_at = None;
        }
        if is_leader {
            let items = published.borrow_and_update().clone();
            let retry = pass(
                &*patcher,
                &items,
                &mut ledger,
                &published,
                &leader,
                &options,
            )
            .await;
            if retry {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(options.retry_max);
            } else {
                retry_at = None;
                backoff = options.retry_min;
            }
        }
        evaluations += 1;
        if let Some(counter) = &options.evaluations {
            counter.send_replace(evaluations);
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    debug!("status: every writer handle dropped; stopping");
                    return;
                }
            }
            changed = leader.changed(), if leader_open => {
                if changed.is_err() {
                    leader_open = false;
                }
            }
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
    }
}

/// Patches what [`Ledger::plan`] says; `true` if something failed in a way worth retrying
/// by itself.
async fn pass<P: Patcher>(
    patcher: &P,
    items: &StatusSet,
    ledger: &mut Ledger,
    published: &watch::Receiver<StatusSet>,
    leader: &watch::Receiver<bool>,
    options: &Options,
) -> bool {
    let plan = ledger.plan(items);
    if plan.is_empty() {
        return false;
    }
    debug!(
        objects = items.len(),
        patches = plan.len(),
        "status: writing"
    );
    let now = Timestamp::now();
    let plan = &plan;
    // Indices, not references, go into the stream: its futures must not borrow per item.
    let outcomes: Vec<(usize, Outcome)> = futures::stream::iter(0..plan.len())
        .map(|i| async move {
            let item = plan[i];
            // Checked per item: a long pass stops early for a newer publish (the next pass
            // starts from it) or a lost lease.
            if !*leader.borrow() || published.has_changed().unwrap_or(false) {
                return (i, Outcome::Skipped);
            }
            let mut body = item.desired.status_patch(item.status.as_deref(), now);
            if let (Some(rv), Value::Object(fields)) = (&item.resource_version, &mut body) {
                fields.insert(
                    "metadata".into(),
                    serde_json::json!({ "resourceVersion": rv }),
                );
            }
            let outcome =
                match timeout(options.request_timeout, patcher.patch(&item.key, body)).await {
                    Ok(Ok(())) => Outcome::Written,
                    Ok(Err(err)) => Outcome::Failed(err),
                    Err(_) => Outcome::Failed(WriteError::Timeout(options.request_timeout)),
                };
            (i, outcome)
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    let mut retry = false;
    for (i, outcome) in outcomes {
        let item = plan[i];
        let key = &item.key;
        match outcome {
            Outcome::Written => {
                debug!(object = %key, reason = item.desired.reason.as_str(), "status: written");
                ledger.record(key.clone(), item.desired.clone());
            }
            Outcome::Skipped => {}
            Outcome::Failed(WriteError::Gone) => {
                debug!(object = %key, "status: object gone; dropped");
            }
            Outcome::Failed(WriteError::Rejected { code: 409, .. }) => {
                debug!(object = %key, "status: object changed since last watched; patched again when the watch shows it");
            }
            Outcome::Failed(err @ WriteError::Rejected { .. }) => {
                warn!(object = %key, %err, "status: patch rejected; will retry on a later change");
            }
            Outcome::Failed(err) => {
                warn!(object = %key, %err, "status: patch failed; will retry");
                retry = true;
            }
        }
    }
    retry
}

#[cfg(test)]
mod tests;
