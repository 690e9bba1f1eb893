//! When to renew, and how long to wait after a failure. Pure functions of the clock.

use std::time::{Duration, SystemTime};

/// Never renew sooner than this after an issuance, whatever the certificate says: a CA that
/// hands out nearly expired certificates must not make the agent spin.
pub const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);
/// The first retry waits about this long; each further one twice as long as the last.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// How long after `now` to renew a certificate valid from `not_before` to `not_after`:
/// halfway through what is left of its life. Life is counted from `received` when the CA
/// backdates `not_before` (to tolerate clock skew), so a backdated short-lived certificate
/// is not renewed the moment it arrives.
pub fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    received: SystemTime,
    now: SystemTime,
) -> Duration {
    let start = not_before.max(received);
    let life = not_after.duration_since(start).unwrap_or_default();
    let renew_at = start + life / 2;
    let earliest = received + MIN_RENEWAL_DELAY;
    renew_at
        .max(earliest)
        .duration_since(now)
        .unwrap_or_default()
}

/// The wait before retry number `attempt` (0 for the first): exponential from
/// [`FIRST_RETRY`], capped at [`MAX_RETRY`], scaled by a jitter factor in 0.8..1.2 taken from
/// `random` in 0..1 so agents started together do not retry together.
pub fn retry_delay(attempt: u32, random: f64) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_RETRY);
    base.mul_f64(0.8 + 0.4 * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(secs)
    }

    #[test]
    fn renews_at_half_life() {
        // A day-long certificate received at its start: renew 12 h later.
        let d = renewal_delay(at(1000), at(1000 + 86_400), at(1000), at(1000));
        assert_eq!(d, Duration::from_secs(43_200));
        // Asked again 2 h later, 10 h remain.
        let d = renewal_delay(at(1000), at(1000 + 86_400), at(1000), at(1000 + 7200));
        assert_eq!(d, Duration::from_secs(36_000));
    }

    #[test]
    fn a_backdated_certificate_counts_from_receipt() {
        // Issued for 20 s but backdated 5 min: renew 10 s after receipt, not at once.
        let d = renewal_delay(at(700), at(1020), at(1000), at(1000));
        assert_eq!(d, Duration::from_secs(10));
    }

    #[test]
    fn overdue_or_expired_is_due_now_but_never_a_spin() {
        assert_eq!(
            renewal_delay(at(0), at(100), at(0), at(500)),
            Duration::ZERO
        );
        // Expired on arrival: wait the minimum, not zero.
        assert_eq!(
            renewal_delay(at(0), at(100), at(200), at(200)),
            MIN_RENEWAL_DELAY
        );
    }

    #[test]
    fn retries_back_off_exponentially_with_bounded_jitter() {
        assert_eq!(retry_delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(3, 0.5), Duration::from_secs(8));
        assert_eq!(retry_delay(30, 0.5), MAX_RETRY);
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(4).mul_f64(0.8));
        assert_eq!(retry_delay(2, 1.0), Duration::from_secs(4).mul_f64(1.2));
        assert_eq!(retry_delay(2, 7.0), retry_delay(2, 1.0));
    }
}
