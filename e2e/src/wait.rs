//! Polling with a deadline.

use std::time::{Duration, Instant};

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok`, or fails after `timeout` with an error naming `what`
/// and the last error `check` returned. No timing is asserted: the deadline only bounds a hang.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "timed out after {timeout:?} ({attempts} attempts) waiting for: {what}; last error"
                )));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_value_once_ready_and_describes_timeouts() {
        let mut n = 0;
        let v = wait_until("n reaches 3", Duration::from_secs(5), async || {
            n += 1;
            anyhow::ensure!(n >= 3, "n is {n}");
            Ok(n)
        })
        .await
        .unwrap();
        assert_eq!(v, 3);

        let err = wait_until::<()>("never", Duration::from_millis(250), async || {
            anyhow::bail!("still no")
        })
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("waiting for: never") && msg.contains("still no"),
            "{msg}"
        );
    }
}
