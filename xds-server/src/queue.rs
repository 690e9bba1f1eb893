//! The push queue: debounces bursts of updates into one snapshot.
//!
//! A burst of config changes (a rolling deployment, a `kubectl apply` of many objects) would
//! otherwise make one snapshot per change, and every proxy would be pushed each of them. A
//! change that arrives after a quiet spell is applied at once (an isolated change waits for
//! nothing); changes that follow it closely are merged until none arrived for a quiet window,
//! or until the oldest has waited the maximum delay, then applied as one. So a burst costs at
//! most two pushes: its first change, and everything after it.
//!
//! When every change to a cache goes through its queue, the queue is the cache's only writer,
//! so a complete replacement ([`PushQueue::replace`]) can be diffed against the snapshot at the
//! moment it is applied, together with whatever else the batch holds.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::cache::{Applied, SnapshotCache};
use crate::snapshot::{SnapshotBuilder, Update};

/// Default quiet window: far below istiod's 100 ms, enough to merge a burst.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(10);
/// Default maximum delay of an update under a continuous stream of changes.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

enum Change {
    Update(Update),
    /// Serve exactly these resources (boxed: a builder is far larger than an update).
    Replace(Box<SnapshotBuilder>),
}

struct Submission {
    change: Change,
    done: Option<oneshot::Sender<Option<Applied>>>,
}

/// A batch being collected: the last complete replacement, if any, and the updates after it.
#[derive(Default)]
struct Batch {
    target: Option<SnapshotBuilder>,
    updates: Update,
}

impl Batch {
    fn add(&mut self, change: Change) {
        match change {
            // A replacement makes everything queued before it moot.
            Change::Replace(target) => {
                self.target = Some(*target);
                self.updates = Update::new();
            }
            Change::Update(update) => self.updates.merge(update),
        }
    }

    fn apply(self, cache: &SnapshotCache) -> Option<Applied> {
        let mut update = match self.target {
            Some(target) => cache.current().snapshot.update_to(target),
            None => Update::new(),
        };
        update.merge(self.updates);
        cache.apply(update)
    }
}

/// Hands updates to the debouncing task. Dropping every handle stops the task once it has
/// applied what it holds.
#[derive(Clone)]
pub struct PushQueue {
    tx: mpsc::Sender<Submission>,
}

impl PushQueue {
    /// Starts the task that applies merged updates to `cache`.
    pub fn start(
        cache: SnapshotCache,
        quiet: Duration,
        max_delay: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(cache, rx, quiet, max_delay));
        (Self { tx }, task)
    }

    /// Queues `update`. Returns `false` if the queue has stopped.
    pub async fn submit(&self, update: Update) -> bool {
        self.send(Change::Update(update), None).await
    }

    /// Queues `update` and waits until the batch holding it is applied; returns what that
    /// batch changed (`None`: nothing, or the queue stopped).
    pub async fn submit_and_wait(&self, update: Update) -> Option<Applied> {
        self.send_and_wait(Change::Update(update)).await
    }

    /// Queues a complete replacement of the served resources and waits until it is applied;
    /// returns what changed (`None`: nothing, or the queue stopped).
    pub async fn replace(&self, target: SnapshotBuilder) -> Option<Applied> {
        self.send_and_wait(Change::Replace(Box::new(target))).await
    }

    async fn send(&self, change: Change, done: Option<oneshot::Sender<Option<Applied>>>) -> bool {
        self.tx.send(Submission { change, done }).await.is_ok()
    }

    async fn send_and_wait(&self, change: Change) -> Option<Applied> {
        let (done, applied) = oneshot::channel();
        if !self.send(change, Some(done)).await {
            return None;
        }
        applied.await.ok().flatten()
    }
}

async fn run(
    cache: SnapshotCache,
    mut rx: mpsc::Receiver<Submission>,
    quiet: Duration,
    max_delay: Duration,
) {
    let mut last_applied: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + max_delay;
        let mut batch = Batch::default();
        batch.add(first.change);
        let mut waiters: Vec<_> = first.done.into_iter().collect();
        let isolated = last_applied.is_none_or(|t| t.elapsed() >= quiet) && rx.is_empty();
        if !isolated {
            loop {
                let until = (Instant::now() + quiet).min(deadline);
                match timeout_at(until, rx.recv()).await {
                    Ok(Some(next)) => {
                        batch.add(next.change);
                        waiters.extend(next.done);
                    }
                    // Quiet, or past the deadline, or no more senders: apply what we have.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let applied = batch.apply(&cache);
        // What each batch changed, incremental or not (a full rebuild is also logged at info by
        // its caller).
        if let Some(applied) = &applied {
            tracing::debug!(
                version = applied.version,
                changed = %applied.summary(),
                "config applied"
            );
        }
        last_applied = Some(Instant::now());
        for waiter in waiters {
            let _ = waiter.send(applied.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::type_url;
    use crate::test_support::res;

    fn update(name: &str, body: &'static [u8]) -> Update {
        let mut u = Update::new();
        u.put(res(type_url::CLUSTER, name, body));
        u
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_is_applied_at_once() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(
            cache.clone(),
            Duration::from_millis(10),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        assert!(queue.submit_and_wait(update("a", b"x")).await.is_some());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no debounce for a lone change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_costs_at_most_two_snapshots() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(
            cache.clone(),
            Duration::from_millis(10),
            Duration::from_secs(1),
        );
        for i in 0..20u8 {
            assert!(queue.submit(update(&format!("c{i}"), b"x")).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let applied = queue
            .submit_and_wait(update("last", b"x"))
            .await
            .expect("applied");
        assert_eq!(
            applied.version, 2,
            "the first change, then the rest of the burst merged"
        );
        assert_eq!(cache.current().snapshot.len(0), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn a_continuous_stream_is_applied_by_the_maximum_delay() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(
            cache.clone(),
            Duration::from_millis(10),
            Duration::from_millis(100),
        );
        // One update every 5 ms never leaves a 10 ms quiet window.
        for i in 0..60u32 {
            queue.submit(update(&format!("c{i}"), b"x")).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let version = cache.current().snapshot.version();
        assert!(
            version >= 2,
            "the maximum delay forced applies during the stream, got {version}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_is_diffed_when_applied_and_supersedes_what_came_before() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(
            cache.clone(),
            Duration::from_millis(10),
            Duration::from_secs(1),
        );
        let full = |names: &[&str]| {
            let mut b = SnapshotBuilder::new();
            for n in names {
                b.add(res(type_url::CLUSTER, n, b"x"));
            }
            b
        };
        queue.replace(full(&["a", "b"])).await.expect("applied");
        // Queued together: an update, then a replacement, then another update.
        assert!(queue.submit(update("c", b"x")).await);
        let (replaced, updated) = tokio::join!(
            queue.replace(full(&["a"])),
            queue.submit_and_wait(update("d", b"x"))
        );
        assert_eq!(replaced, updated, "one batch");
        let state = cache.current();
        let names: Vec<&str> = state.snapshot.entries(0).map(|(n, _)| n.as_ref()).collect();
        assert_eq!(
            names,
            vec!["a", "d"],
            "c was superseded, b removed, d applied after"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_change_means_no_version() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(cache.clone(), DEFAULT_QUIET, DEFAULT_MAX_DELAY);
        assert!(queue.submit_and_wait(update("a", b"1")).await.is_some());
        assert!(queue.submit_and_wait(update("a", b"1")).await.is_none());
        assert_eq!(cache.current().snapshot.version(), 1);
    }
}
