//! The election's decision, a pure function: what the Lease shows, what this replica saw
//! and when (by its own monotonic clock), and `now` in; what to do out. Tested without an
//! API server.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// The parts of a Lease's spec the election reads; two records are the same version when
/// these are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`; `None` when absent or empty (released).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`; `None` when absent or not positive.
    pub lease_duration: Option<Duration>,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        LeaseRecord {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            lease_duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|secs| u64::try_from(secs).ok())
                .filter(|&secs| secs > 0)
                .map(Duration::from_secs),
            acquire_time: spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// What a read of the Lease found.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// The read failed (network, timeout, 5xx, …).
    Unreachable,
    /// No such Lease (404).
    Absent,
    Present(&'a LeaseRecord),
}

/// What this replica remembers between tries, all on its own monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct LocalState {
    /// Whether we currently act as leader.
    pub leading: bool,
    /// When we sent our last successful create/renew/take-over (set while leading).
    pub last_renewed: Option<Instant>,
    /// The last version of the record we saw, and when we first saw it.
    pub observed: Option<(LeaseRecord, Instant)>,
}

impl LocalState {
    /// Notes a record read at `now`; the clock restarts only when the record changed.
    pub fn observe(&mut self, record: &LeaseRecord, now: Instant) {
        if self.observed.as_ref().map(|(r, _)| r) != Some(record) {
            self.observed = Some((record.clone(), now));
        }
    }

    /// Whether `record` has stayed unchanged for its lease duration (`default` if it names
    /// none) since we first saw it. A record not yet observed has just been seen.
    pub(super) fn expired(&self, record: &LeaseRecord, default: Duration, now: Instant) -> bool {
        match &self.observed {
            Some((seen, at)) if seen == record => {
                now.saturating_duration_since(*at) >= record.lease_duration.unwrap_or(default)
            }
            _ => false,
        }
    }

    pub(super) fn became_leader(&mut self, sent_at: Instant) {
        self.leading = true;
        self.last_renewed = Some(sent_at);
    }

    pub(super) fn step_down(&mut self) {
        self.leading = false;
        self.last_renewed = None;
    }
}

/// What to do after reading the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No Lease exists: create it with us as holder.
    Create,
    /// The Lease names us: write a new `renewTime` (becoming leader if we were not, e.g.
    /// after our own update's answer was lost).
    Renew,
    /// The Lease names someone else (or no one) and has expired by our clock (or was
    /// released): write ourselves in as holder.
    TakeOver,
    /// Someone else holds a valid Lease, or the API could not be read: try again later.
    Wait,
    /// We act as leader but must stop: renewing has failed for `renew_deadline`, or the
    /// Lease names someone else.
    StepDown,
}

/// The inputs of [`decide`] that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing<'a> {
    pub identity: &'a str,
    /// Used when the record carries no `leaseDurationSeconds`.
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
}

/// The election's decision table.
///
/// `local.observe(record, now)` should have been called for a present record; a record
/// that does not match `local.observed` counts as just seen (not expired).
pub fn decide(timing: Timing<'_>, local: &LocalState, seen: Seen<'_>, now: Instant) -> Action {
    if local.leading {
        let renewed = local.last_renewed.unwrap_or(now);
        if now.saturating_duration_since(renewed) >= timing.renew_deadline {
            return Action::StepDown;
        }
    }
    match seen {
        Seen::Unreachable => Action::Wait,
        Seen::Absent => Action::Create,
        Seen::Present(record) => {
            if record.holder.as_deref() == Some(timing.identity) {
                Action::Renew
            } else if local.leading {
                Action::StepDown
            } else if record.holder.is_none() || local.expired(record, timing.lease_duration, now) {
                Action::TakeOver
            } else {
                Action::Wait
            }
        }
    }
}
