//! What to do after a failed Private CA call, and how long to wait: pure decisions, so they
//! can be tested without a network. The SDK's own retries are off (see `issuer.rs`): one
//! policy, with one total deadline, governs every call of an issuance.

use std::time::Duration;

/// Error codes AWS answers when a request may succeed if sent again later: throttling
/// (per-operation quotas are low: IssueCertificate is 25/s per account) and server faults.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// How a failed call failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The service answered with an error code (and HTTP status, when known).
    Service {
        code: Option<&'a str>,
        status: Option<u16>,
    },
    /// No answer: connection refused or reset, timeout, a response that would not parse.
    Transport,
    /// The request could not even be built: retrying cannot help.
    Local,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// GetCertificate: the certificate is still being issued; poll again.
    Poll,
    /// A transient failure: back off, then try again.
    Retry,
    /// Give up: the error will not go away by itself (bad ARN, denied, wrong state, bad CSR).
    Fail,
}

pub fn classify(failure: Failure<'_>) -> Action {
    match failure {
        Failure::Service {
            code: Some("RequestInProgressException"),
            ..
        } => Action::Poll,
        Failure::Service {
            code: Some(code), ..
        } if RETRYABLE_CODES.contains(&code) => Action::Retry,
        Failure::Service {
            status: Some(status),
            ..
        } if status == 429 || status >= 500 => Action::Retry,
        Failure::Service { .. } | Failure::Local => Action::Fail,
        Failure::Transport => Action::Retry,
    }
}

/// Waits and limits for one issuance (IssueCertificate, then GetCertificate until ready).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The first backoff after a transient failure; doubles with each further failure.
    pub initial_backoff: Duration,
    /// The longest single backoff.
    pub max_backoff: Duration,
    /// Between GetCertificate polls while the certificate is being issued.
    pub poll_interval: Duration,
    /// The whole issuance gives up after this long.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            poll_interval: Duration::from_millis(500),
            total: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th consecutive transient failure (1-based), given a
    /// uniform `jitter` in [0, 1): between half and all of the exponential step, so that
    /// replicas throttled together do not retry together, yet never retry at once.
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.max_backoff);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// How long to sleep before the next attempt, or `None` when `elapsed` plus that sleep
    /// would pass the total deadline (then the caller reports the last error).
    pub fn next_wait(
        &self,
        action: Action,
        failures: u32,
        elapsed: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        let wait = match action {
            Action::Fail => return None,
            Action::Poll => self.poll_interval,
            Action::Retry => self.backoff(failures, jitter),
        };
        (elapsed + wait <= self.total).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str) -> Failure<'_> {
        Failure::Service {
            code: Some(code),
            status: Some(400),
        }
    }

    #[test]
    fn in_progress_polls_throttling_retries_client_errors_fail() {
        assert_eq!(
            classify(service("RequestInProgressException")),
            Action::Poll
        );
        assert_eq!(classify(service("ThrottlingException")), Action::Retry);
        assert_eq!(classify(service("InvalidArnException")), Action::Fail);
        assert_eq!(classify(service("AccessDeniedException")), Action::Fail);
        assert_eq!(classify(service("MalformedCSRException")), Action::Fail);
        assert_eq!(classify(service("LimitExceededException")), Action::Fail);
        assert_eq!(classify(Failure::Transport), Action::Retry);
        assert_eq!(classify(Failure::Local), Action::Fail);
    }

    #[test]
    fn server_errors_retry_by_status_even_without_a_code() {
        let status = |s| Failure::Service {
            code: None,
            status: Some(s),
        };
        assert_eq!(classify(status(500)), Action::Retry);
        assert_eq!(classify(status(503)), Action::Retry);
        assert_eq!(classify(status(429)), Action::Retry);
        assert_eq!(classify(status(400)), Action::Fail);
        assert_eq!(classify(status(403)), Action::Fail);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_half_to_all() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(policy.backoff(5, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(60, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_millis(200));
        for jitter in [0.0, 0.3, 0.99, 7.0, -1.0] {
            let wait = policy.backoff(4, jitter);
            assert!(wait >= Duration::from_millis(400) && wait <= Duration::from_millis(800));
        }
    }

    #[test]
    fn the_total_deadline_bounds_every_wait() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
            total: Duration::from_secs(2),
        };
        let zero = Duration::ZERO;
        assert_eq!(
            policy.next_wait(Action::Poll, 0, zero, 0.5),
            Some(Duration::from_millis(250))
        );
        assert_eq!(policy.next_wait(Action::Fail, 0, zero, 0.5), None);
        assert_eq!(
            policy.next_wait(Action::Retry, 1, Duration::from_millis(1_900), 1.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            policy.next_wait(Action::Retry, 1, Duration::from_millis(1_950), 1.0),
            None
        );
        assert_eq!(
            policy.next_wait(Action::Poll, 9, Duration::from_millis(1_800), 0.0),
            None
        );
    }
}
