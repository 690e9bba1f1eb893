//! The push queue: debounces bursts of updates into one snapshot.
//!
//! A burst of config changes (a rolling deployment, a `kubectl apply` of many objects) would
//! otherwise make one snapshot per change, and every proxy would be pushed each of them. The
//! queue merges updates until none arrived for a quiet window, or until the oldest has waited
//! the maximum delay, then applies them as one.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::cache::{Applied, SnapshotCache};
use crate::snapshot::Update;

/// Default quiet window: far below istiod's 100 ms, enough to merge a burst.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(10);
/// Default maximum delay of an update under a continuous stream of changes.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

struct Submission {
    update: Update,
    done: Option<oneshot::Sender<Option<Applied>>>,
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
        self.tx
            .send(Submission { update, done: None })
            .await
            .is_ok()
    }

    /// Queues `update` and waits until the batch holding it is applied; returns what that
    /// batch changed (`None`: nothing, or the queue stopped).
    pub async fn submit_and_wait(&self, update: Update) -> Option<Applied> {
        let (done, applied) = oneshot::channel();
        self.tx
            .send(Submission {
                update,
                done: Some(done),
            })
            .await
            .ok()?;
        applied.await.ok().flatten()
    }
}

async fn run(
    cache: SnapshotCache,
    mut rx: mpsc::Receiver<Submission>,
    quiet: Duration,
    max_delay: Duration,
) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + max_delay;
        let mut batch = first.update;
        let mut waiters: Vec<_> = first.done.into_iter().collect();
        loop {
            let until = (Instant::now() + quiet).min(deadline);
            match timeout_at(until, rx.recv()).await {
                Ok(Some(next)) => {
                    batch.merge(next.update);
                    waiters.extend(next.done);
                }
                // Quiet, or past the deadline, or no more senders: apply what we have.
                Ok(None) | Err(_) => break,
            }
        }
        let applied = cache.apply(batch);
        for waiter in waiters {
            let _ = waiter.send(applied.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, type_url};
    use bytes::Bytes;

    fn update(name: &str, body: &'static [u8]) -> Update {
        let mut u = Update::new();
        u.put(Resource::from_bytes(
            type_url::CLUSTER,
            name,
            Bytes::from_static(body),
        ));
        u
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_snapshot() {
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
        assert_eq!(applied.version, 1, "one snapshot for the whole burst");
        assert_eq!(applied.changed[0], 21);
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
    async fn no_change_means_no_version() {
        let cache = SnapshotCache::new();
        let (queue, _task) = PushQueue::start(cache.clone(), DEFAULT_QUIET, DEFAULT_MAX_DELAY);
        assert!(queue.submit_and_wait(update("a", b"1")).await.is_some());
        assert!(queue.submit_and_wait(update("a", b"1")).await.is_none());
        assert_eq!(cache.current().snapshot.version(), 1);
    }
}
