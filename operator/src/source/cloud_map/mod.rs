//! AWS Cloud Map as a service registry: the configured namespaces' services become mesh
//! services, their healthy instances endpoints.
//!
//! A [`poll::Poller`] reads Cloud Map on an interval (with jitter) and turns what changed
//! into index events. In the in-memory mode they go straight to the index, as Istio's
//! registries feed istiod; in the materialised mode [`materialize`] writes them to the
//! cluster as ServiceEntries, which come back through the Kubernetes source like any other.
//! Failed calls back off (throttling included) and keep the last good view.

pub mod api;
pub mod config;
pub mod convert;
pub mod materialize;
pub mod metrics;
pub mod poll;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::{CloudMapConfig, Mode};
pub use materialize::condition::SyncState;
pub use metrics::CloudMapMetrics;

use crate::index::Event;

/// The first wait after a failure; it doubles up to the poll interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Failed polls in a row before Cloud Map counts as out of sync (one throttled call is
/// retried and gone before anyone needs to hear of it).
const FAILURES_BEFORE_UNSYNCED: u32 = 3;

/// Polls until `events` closes, sending what changed, and whether polls succeed to `sync`.
pub async fn run<A: api::CloudMapApi>(
    mut poller: poll::Poller<A>,
    events: mpsc::Sender<Event>,
    sync: watch::Sender<SyncState>,
    metrics: CloudMapMetrics,
) {
    let mut failures: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        let wait = match poller.poll().await {
            Ok(poll) => {
                metrics.polled(&poll.calls, poll.services, started.elapsed());
                if failures > 0 {
                    info!(after_failures = failures, "Cloud Map read again");
                }
                failures = 0;
                sync.send_if_modified(|s| replace(s, SyncState::synced()));
                if !poll.events.is_empty() {
                    tracing::debug!(
                        changes = poll.events.len(),
                        took = ?started.elapsed(),
                        "Cloud Map poll found changes"
                    );
                }
                for event in poll.events {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                poller.config().next_wait()
            }
            Err((err, calls)) => {
                metrics.failed(&calls, &err);
                failures += 1;
                if failures >= FAILURES_BEFORE_UNSYNCED {
                    let state = SyncState::failed(err.throttled, &err.to_string());
                    sync.send_if_modified(|s| replace(s, state));
                }
                let wait = backoff(failures, poller.config().interval);
                warn!(
                    operation = err.operation,
                    code = ?err.code,
                    throttled = err.throttled,
                    retry_in = ?wait,
                    "Cloud Map poll failed; serving the last good view: {}",
                    err.message
                );
                wait
            }
        };
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Sets `state` to `new`; whether that changed it.
fn replace(state: &mut SyncState, new: SyncState) -> bool {
    if *state == new {
        return false;
    }
    *state = new;
    true
}

/// 1 s, 2 s, 4 s… up to `cap`, each moved by up to a fifth of itself so replicas spread out.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    base.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let cap = Duration::from_secs(30);
        let seconds = |n| backoff(n, cap).as_secs_f64();
        assert!((0.8..=1.2).contains(&seconds(1)));
        assert!((1.6..=2.4).contains(&seconds(2)));
        assert!((24.0..=36.0).contains(&seconds(10)));
        assert!((24.0..=36.0).contains(&seconds(1000)));
    }
}
