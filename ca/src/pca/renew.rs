//! Keeping the intermediate fresh: a new one from Private CA once `renew_at` of the current
//! one's life is used, swapped into the [`Authority`] whole. A failed renewal keeps the
//! current signer (it is still valid, and workloads keep getting certificates) and is retried
//! with backoff until it succeeds; the failure is logged and published in [`RenewalStatus`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::PcaIssuer;
use crate::{Authority, CaState};

/// The renewal loop's state, for health checks, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalStatus {
    /// When the signer in force expires.
    pub not_after: Option<SystemTime>,
    /// When the next renewal is due (or retried).
    pub next_attempt: Option<SystemTime>,
    /// Successful renewals since the loop started.
    pub renewals: u64,
    /// Failed renewal attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure, kept until a renewal succeeds.
    pub last_error: Option<String>,
}

/// When to renew a certificate valid from `not_before` to `not_after` and received at
/// `received`: once `renew_at` of its life is used. The life is counted from the later of
/// the two starts, because issuers backdate `not_before` for clock skew, and a short-lived
/// certificate counted from a backdated start would look due at once.
pub fn renewal_time(
    received: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    renew_at: f64,
) -> SystemTime {
    let start = received.max(not_before);
    let life = not_after.duration_since(start).unwrap_or_default();
    start + life.mul_f64(renew_at.clamp(0.0, 1.0))
}

/// The renewal loop running in the background; dropping it stops the loop.
#[derive(Debug)]
pub struct RenewalTask {
    task: JoinHandle<()>,
    status: watch::Receiver<RenewalStatus>,
}

impl RenewalTask {
    pub fn status(&self) -> watch::Receiver<RenewalStatus> {
        self.status.clone()
    }
}

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts [`renew_forever`] on the current Tokio runtime.
pub fn spawn_renewal(
    issuer: Arc<PcaIssuer>,
    authority: Arc<Authority>,
    trust_domain: String,
) -> RenewalTask {
    let (tx, status) = watch::channel(RenewalStatus::default());
    let task = tokio::spawn(renew_forever(issuer, authority, trust_domain, tx));
    RenewalTask { task, status }
}

/// Renews the authority's signer for as long as it runs. The signer in force when it starts
/// is taken as received now.
pub async fn renew_forever(
    issuer: Arc<PcaIssuer>,
    authority: Arc<Authority>,
    trust_domain: String,
    status: watch::Sender<RenewalStatus>,
) {
    let config = issuer.config().clone();
    let mut received = SystemTime::now();
    loop {
        let signer = Arc::clone(&authority.current().signer);
        let due = renewal_time(
            received,
            signer.not_before(),
            signer.not_after(),
            config.renew_at,
        );
        status.send_modify(|s| {
            s.not_after = Some(signer.not_after());
            s.next_attempt = Some(due);
        });
        info!(next_renewal = ?due, not_after = ?signer.not_after(), "intermediate renewal scheduled");
        sleep_until(due).await;

        let mut failures = 0u32;
        loop {
            match issuer.issue(&trust_domain).await {
                Ok(fresh) => {
                    if fresh.root_pem() != signer.root_pem() {
                        warn!(
                            "Private CA's root changed: workloads must be given the new trust \
                             bundle"
                        );
                    }
                    let not_after = fresh.not_after();
                    authority.set(CaState::new(fresh));
                    received = SystemTime::now();
                    status.send_modify(|s| {
                        s.renewals += 1;
                        s.consecutive_failures = 0;
                        s.last_error = None;
                    });
                    info!(?not_after, "renewed the intermediate from Private CA");
                    break;
                }
                Err(e) => {
                    failures += 1;
                    let wait = config.retry.backoff(failures, fastrand::f64());
                    let expired = SystemTime::now() >= signer.not_after();
                    let message = e.to_string();
                    status.send_modify(|s| {
                        s.consecutive_failures = failures;
                        s.last_error = Some(message.clone());
                        s.next_attempt = Some(SystemTime::now() + wait);
                    });
                    if expired {
                        error!(error = %message, failures, ?wait, "renewing the intermediate failed and the one in force has expired: workload certificates no longer verify");
                    } else {
                        warn!(error = %message, failures, ?wait, "renewing the intermediate failed; keeping the current one and retrying");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

async fn sleep_until(when: SystemTime) {
    // Wall-clock target, monotonic sleep: recomputed in short steps so that a suspended or
    // stepped clock delays a renewal by at most a minute.
    loop {
        let Ok(left) = when.duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    #[test]
    fn renews_after_the_fraction_of_life_counted_from_receipt() {
        // 90 days, received as issued: two thirds is day 60.
        assert_eq!(
            renewal_time(at(0), at(0), at(90 * 86_400), 2.0 / 3.0),
            at(60 * 86_400)
        );
        // Backdated by an hour, 60 s of real life left: half of it from receipt, not at once.
        assert_eq!(renewal_time(at(3_600), at(0), at(3_660), 0.5), at(3_630));
        // Received after expiry: due now.
        assert_eq!(renewal_time(at(100), at(0), at(50), 0.5), at(100));
    }

    #[tokio::test]
    async fn sleeping_until_a_past_time_returns_at_once() {
        let started = std::time::Instant::now();
        sleep_until(SystemTime::now() - Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
