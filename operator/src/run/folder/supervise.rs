//! Keeping folder mode's background tasks alive, and `/readyz` honest about them.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::{error, info};

use crate::monitoring::ReadyState;

/// The wait before the first restart of a task that died; doubled per restart up to
/// [`RESTART_BACKOFF_MAX`]. A tenth of a second recovers from a one-off fault at once
/// without letting a task that dies on every run spin.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between restarts: a task that keeps dying is retried twice a minute, so
/// it recovers soon after its cause is fixed without flooding the log. A task that ran at
/// least this long before dying starts over from [`RESTART_BACKOFF`].
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Sets and clears the parts of `/readyz` that report failures.
#[derive(Clone)]
pub(super) struct Readiness(watch::Sender<ReadyState>);

impl Readiness {
    pub fn new(ready: watch::Sender<ReadyState>) -> Self {
        Self(ready)
    }

    /// Marks `part` failing (with why) or working; logs each change.
    pub fn set(&self, part: &str, failure: Option<String>) {
        match failure {
            Some(why) => {
                if self
                    .0
                    .send_if_modified(|state| state.fail(part, why.clone()))
                {
                    error!(part, %why, "not ready: {part} failing: {why}");
                }
            }
            None => {
                if self.0.send_if_modified(|state| state.recover(part)) {
                    info!(part, "{part} works again");
                }
            }
        }
    }
}

/// Runs the task `start` makes, and when it ends (it should not) or panics, marks `part`
/// failing and starts another after a backoff. The new task clears `part` once it works.
pub(super) async fn restarting<F, Fut>(part: &'static str, readiness: Readiness, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = RESTART_BACKOFF;
    loop {
        let started = Instant::now();
        let task = tokio::spawn(start());
        let outcome = {
            let _abort = AbortOnDrop(task.abort_handle());
            task.await
        };
        if started.elapsed() >= RESTART_BACKOFF_MAX {
            backoff = RESTART_BACKOFF;
        }
        readiness.set(
            part,
            Some(format!("{}; restarting in {backoff:?}", ended(outcome))),
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Waits for a task that cannot be restarted; if it ends, marks `part` failing for good.
pub(super) async fn watch_task(part: &'static str, task: JoinHandle<()>, readiness: Readiness) {
    let why = ended(task.await);
    readiness.set(
        part,
        Some(format!(
            "{why}; config changes are no longer pushed (restart capstan)"
        )),
    );
}

/// Why a task that should run forever ended.
fn ended(outcome: Result<(), JoinError>) -> String {
    match outcome {
        Ok(()) => "stopped".to_string(),
        Err(err) if err.is_panic() => {
            let panic = err.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".to_string());
            format!("panicked: {message}")
        }
        Err(_) => "cancelled".to_string(),
    }
}

/// Aborts a task when its supervisor is dropped (aborted at shutdown), so none outlives it.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
