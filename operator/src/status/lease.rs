//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` package does it.
//!
//! Every replica serves xDS, but status conditions must have exactly one writer: two replicas
//! patching the same object would fight over `lastTransitionTime` and multiply API traffic.
//! The replica holding the Lease (default `capstan-leader`) writes; the others stand by.
//!
//! How it stays safe without synchronised clocks:
//!
//! - **Expiry is measured on our own clock.** A candidate never compares the Lease's
//!   `renewTime` with its own wall clock. It remembers when (by its monotonic clock) it
//!   first saw the current version of the record, and takes over only once the record has
//!   not changed for `leaseDurationSeconds` from that moment. Clock skew between nodes does
//!   not matter, only clock *rate*.
//! - **Writes are conditional.** Every update carries the `resourceVersion` it was computed
//!   from, so of two candidates racing for an expired Lease exactly one wins; the other gets
//!   409 Conflict, which is the normal way to lose and not an error.
//! - **The leader steps down early.** If the leader cannot renew for `renew_deadline`
//!   (shorter than the lease duration), it stops acting as leader *before* any candidate
//!   could consider the Lease expired, so there is never a moment with two writers (given
//!   clocks that run at about the same rate).
//! - **A graceful stop hands over at once.** On shutdown the leader first stops acting as
//!   leader, then releases the Lease (empty `holderIdentity`, `leaseDurationSeconds: 1`), so
//!   a standby takes over on its next retry instead of waiting out the lease duration.
//!
//! The decision itself is the pure function [`decide`]: observed record, local timestamps
//! and `now` in, an [`Action`] out. The task around it only does the API calls.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, info, warn};

/// Name of the Lease when none is configured.
pub const DEFAULT_LEASE_NAME: &str = "capstan-leader";
/// How long a Lease stays valid after its holder's last renewal (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it steps down (client-go's default).
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and candidates retry (client-go's default).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Candidates wait `retry_period × (1 + up to this factor)` between tries, so that
/// replicas started together do not retry in lock-step (client-go's `JitterFactor`).
const JITTER_FACTOR: f64 = 1.2;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid leader-election settings: {0}")]
    Config(String),
    #[error("the Lease changed since it was read (409 Conflict)")]
    Conflict,
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Where the Lease is, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (capstan's own namespace).
    pub namespace: String,
    /// Name of the Lease; replicas sharing it elect one leader.
    pub name: String,
    /// This replica's identity, written to `holderIdentity`; unique per process.
    pub identity: String,
    /// How long candidates wait, after the record last changed, before taking over.
    pub lease_duration: Duration,
    /// How long the leader tries to renew before stepping down; less than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// Interval between renewals (leader) and tries (candidates).
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    /// `capstan-leader` in `istio-system`, identity from [`default_identity`], client-go's
    /// default timings.
    fn default() -> Self {
        LeaseConfig::new("istio-system", default_identity())
    }
}

impl LeaseConfig {
    /// The Lease `capstan-leader` in `namespace`, with client-go's default timings
    /// (15 s lease, 10 s renew deadline, 2 s retry).
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Sets the lease duration and scales the renew deadline and retry period with it, in
    /// the default proportions (10/15 and 2/15 of it; for `--lease-duration-secs`).
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = lease_duration.mul_f64(2.0 / 3.0);
        self.retry_period = lease_duration.mul_f64(2.0 / 15.0);
        self
    }

    /// Checks the settings the way client-go does: lease duration (at least 1 s, the
    /// Lease's granularity) > renew deadline > 1.2 × retry period > 0; name and identity
    /// not empty.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let fail = |msg: String| Err(LeaseError::Config(msg));
        if self.name.is_empty() || self.namespace.is_empty() {
            return fail("the Lease needs a name and a namespace".into());
        }
        if self.identity.is_empty() {
            return fail("the identity must not be empty".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail(format!(
                "lease duration {:?} is under 1 s",
                self.lease_duration
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return fail(format!(
                "renew deadline {:?} must be shorter than the lease duration {:?}",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero()
            || self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR)
        {
            return fail(format!(
                "renew deadline {:?} must be longer than 1.2 × the retry period {:?}",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds`: the duration rounded up to whole seconds.
    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }

    fn timing(&self) -> Timing<'_> {
        Timing {
            identity: &self.identity,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
        }
    }
}

/// A default identity: the pod name (`POD_NAME`, else `HOSTNAME`, else `/etc/hostname`)
/// plus a random suffix, like client-go's `hostname_uuid`. The suffix keeps two processes
/// on one host (or a restarted container in the same pod) from sharing an identity, which
/// would make both believe they hold the Lease.
pub fn default_identity() -> String {
    let host = ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .chain(std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "capstan".to_owned());
    let suffix = RandomState::new().hash_one((std::process::id(), std::time::Instant::now()));
    format!("{host}_{suffix:016x}")
}

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
    fn expired(&self, record: &LeaseRecord, default: Duration, now: Instant) -> bool {
        match &self.observed {
            Some((seen, at)) if seen == record => {
                now.saturating_duration_since(*at) >= record.lease_duration.unwrap_or(default)
            }
            _ => false,
        }
    }

    fn became_leader(&mut self, sent_at: Instant) {
        self.leading = true;
        self.last_renewed = Some(sent_at);
    }

    fn step_down(&mut self) {
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

/// Handle to a running leader election. Start it with [`Elector::start`]; stop it
/// gracefully with [`Elector::release`]. Dropping the handle leaves the election running
/// (like dropping a `JoinHandle`); it also stops, releasing the Lease, once every
/// receiver of the leader flag is dropped.
#[derive(Debug)]
pub struct Elector {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts the election. The receiver says whether this replica is the leader right
    /// now; it starts `false`, turns `true` once the Lease is ours, and turns `false` again
    /// *before* the Lease could pass to another replica.
    ///
    /// Settings that fail [`LeaseConfig::validate`] are replaced by timings derived from the
    /// lease duration (or the defaults), with a warning.
    pub fn start(client: Client, config: LeaseConfig) -> (watch::Receiver<bool>, Elector) {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        Self::start_with(api, config)
    }

    fn start_with(api: Api<Lease>, config: LeaseConfig) -> (watch::Receiver<bool>, Elector) {
        let config = usable(config);
        let (tx, rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            // A dropped handle is not a stop request.
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let task = tokio::spawn(run(api, config, LeaderFlag(tx), shutdown));
        (rx, Elector { stop, task })
    }

    /// Graceful stop: if leading, flips the flag to `false` first, then releases the Lease
    /// (empty holder, 1 s duration) so a standby takes over on its next try; returns when
    /// that is done (bounded by the renew deadline, at most 5 s).
    pub async fn release(self) {
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            warn!(%err, "leader election: the task failed");
        }
    }
}

fn usable(config: LeaseConfig) -> LeaseConfig {
    let Err(err) = config.validate() else {
        return config;
    };
    let scaled = config.clone().with_lease_duration(config.lease_duration);
    // Only the lease duration was changed from the defaults (`--lease-duration-secs`): the
    // other two follow it, as documented.
    let only_duration_set = config.renew_deadline == DEFAULT_RENEW_DEADLINE
        && config.retry_period == DEFAULT_RETRY_PERIOD;
    if scaled.validate().is_ok() {
        if !only_duration_set {
            warn!(%err, renew_deadline = ?scaled.renew_deadline, retry_period = ?scaled.retry_period,
                  "leader election: timings adjusted to the lease duration");
        }
        return scaled;
    }
    let fixed = LeaseConfig {
        lease_duration: DEFAULT_LEASE_DURATION,
        renew_deadline: DEFAULT_RENEW_DEADLINE,
        retry_period: DEFAULT_RETRY_PERIOD,
        ..config
    };
    warn!(%err, lease_duration = ?fixed.lease_duration, renew_deadline = ?fixed.renew_deadline,
          retry_period = ?fixed.retry_period, "leader election: using the default timings");
    fixed
}

/// The sending side of the leader flag. Dropping it (the task ending, panicking or being
/// aborted) sets the flag to `false` first: a flag left at `true` by a dead elector would let
/// the status writer go on writing without the Lease.
#[derive(Debug)]
struct LeaderFlag(watch::Sender<bool>);

impl std::ops::Deref for LeaderFlag {
    type Target = watch::Sender<bool>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for LeaderFlag {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    tx: LeaderFlag,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut local = LocalState::default();
    let mut noise = Noise::default();
    tokio::pin!(shutdown);
    info!(lease = %format_args!("{}/{}", config.namespace, config.name),
          identity = %config.identity, lease_duration = ?config.lease_duration,
          renew_deadline = ?config.renew_deadline, retry_period = ?config.retry_period,
          "leader election: started");
    loop {
        let stop = tokio::select! {
            () = &mut shutdown => true,
            () = tx.closed() => true,
            () = try_acquire_or_renew(&api, &config, &mut local, &tx, &mut noise) => false,
        };
        if stop {
            break;
        }
        let pause = if local.leading {
            config.retry_period
        } else {
            jittered(config.retry_period)
        };
        let stop = tokio::select! {
            () = &mut shutdown => true,
            () = tx.closed() => true,
            () = sleep(pause) => false,
        };
        if stop {
            break;
        }
    }
    if local.leading {
        local.step_down();
        tx.send_replace(false);
        info!(identity = %config.identity, "leader election: stopping; releasing the lease");
        let budget = config.renew_deadline.min(Duration::from_secs(5));
        match timeout(budget, release(&api, &config)).await {
            Ok(Ok(true)) => info!("leader election: lease released"),
            Ok(Ok(false)) => debug!("leader election: lease no longer ours; nothing to release"),
            Ok(Err(LeaseError::Conflict)) => {
                debug!("leader election: lease changed while releasing; left as it is")
            }
            Ok(Err(err)) => warn!(%err, "leader election: could not release the lease"),
            Err(_) => warn!(?budget, "leader election: releasing the lease timed out"),
        }
    }
}

/// One round: read the Lease, decide, act.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    local: &mut LocalState,
    tx: &watch::Sender<bool>,
    noise: &mut Noise,
) {
    // The leader's requests never outlive its renew deadline: it must be able to step down
    // on time even if the API server hangs.
    let budget = |local: &LocalState| match (local.leading, local.last_renewed) {
        (true, Some(renewed)) => {
            (renewed + config.renew_deadline).saturating_duration_since(Instant::now())
        }
        _ => config.renew_deadline,
    };
    let read = call(budget(local), api.get_opt(&config.name)).await;
    let now = Instant::now();
    let (current, record, reachable) = match read {
        Ok(Some(lease)) => {
            let record = LeaseRecord::from_lease(&lease);
            local.observe(&record, now);
            noise.read = false;
            (Some(lease), Some(record), true)
        }
        Ok(None) => {
            noise.read = false;
            (None, None, true)
        }
        Err(err) => {
            report_failure(&mut noise.read, local.leading, "reading", &err);
            (None, None, false)
        }
    };
    let seen = match (&record, reachable) {
        (_, false) => Seen::Unreachable,
        (Some(record), true) => Seen::Present(record),
        (None, true) => Seen::Absent,
    };
    let action = decide(config.timing(), local, seen, now);
    let holder = record.as_ref().and_then(|r| r.holder.clone());
    let result = match action {
        Action::Wait => {
            debug!(
                holder = holder.as_deref().unwrap_or(""),
                "leader election: lease held by another replica"
            );
            return;
        }
        Action::StepDown => {
            local.step_down();
            tx.send_replace(false);
            if holder.as_deref().is_some_and(|h| h != config.identity) {
                info!(
                    holder = holder.as_deref().unwrap_or(""),
                    "leader election: lease taken by another replica; no longer leader"
                );
            } else {
                warn!(renew_deadline = ?config.renew_deadline,
                      "leader election: could not renew the lease in time; stepping down");
            }
            return;
        }
        Action::Create => {
            let sent = Instant::now();
            let lease = new_lease(config);
            call(budget(local), api.create(&PostParams::default(), &lease))
                .await
                .map(|lease| (lease, sent))
        }
        Action::Renew | Action::TakeOver => {
            let Some(mut lease) = current else {
                return;
            };
            let sent = Instant::now();
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let stamp = MicroTime(Timestamp::now());
            if action == Action::TakeOver {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            if action == Action::TakeOver || !local.leading {
                spec.acquire_time = Some(stamp.clone());
            }
            spec.holder_identity = Some(config.identity.clone());
            spec.lease_duration_seconds = Some(config.lease_duration_seconds());
            spec.renew_time = Some(stamp);
            // `lease` still carries the resourceVersion it was read with: the update is
            // conditional on nobody having written in between.
            call(
                budget(local),
                api.replace(&config.name, &PostParams::default(), &lease),
            )
            .await
            .map(|lease| (lease, sent))
        }
    };
    match result {
        Ok((lease, sent)) => {
            noise.write = false;
            local.observe(&LeaseRecord::from_lease(&lease), Instant::now());
            if !local.leading {
                info!(identity = %config.identity, ?action, "leader election: became leader");
                local.became_leader(sent);
                tx.send_replace(true);
            } else {
                local.became_leader(sent);
                debug!("leader election: renewed");
            }
        }
        Err(LeaseError::Conflict) => {
            // Someone else wrote first: lost the race (or our renew collided); re-read next
            // round.
            debug!(
                ?action,
                "leader election: lease changed underneath us (409)"
            );
        }
        Err(err) => report_failure(&mut noise.write, local.leading, "writing", &err),
    }
}

/// Whether reads / writes of the Lease are failing (so repeats are logged quietly).
#[derive(Debug, Default)]
struct Noise {
    read: bool,
    write: bool,
}

/// Logs a failed request: loudly while leading (the renew deadline is running) or on the
/// first failure, quietly while it keeps failing as a candidate.
fn report_failure(failing: &mut bool, leading: bool, doing: &str, err: &LeaseError) {
    if leading || !*failing {
        warn!(%err, "leader election: {doing} the lease failed");
    } else {
        debug!(%err, "leader election: {doing} the lease failed again");
    }
    *failing = true;
}

async fn call<T>(
    budget: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match timeout(budget, request).await {
        Err(_) => Err(LeaseError::Timeout(budget)),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(LeaseError::Conflict),
        Ok(Err(err)) => Err(LeaseError::Api(err)),
        Ok(Ok(value)) => Ok(value),
    }
}

fn new_lease(config: &LeaseConfig) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Gives the Lease up if it still names us: empty holder, 1 s duration, so candidates
/// take over on their next try. `Ok(false)`: it was not ours (any more).
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, LeaseError> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(false);
    };
    if LeaseRecord::from_lease(&lease).holder.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let now = MicroTime(Timestamp::now());
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(LeaseError::Conflict),
        Err(err) => Err(err.into()),
    }
}

/// `period × (1 + r)`, `r` uniform-ish in `[0, JITTER_FACTOR)`.
fn jittered(period: Duration) -> Duration {
    let r = RandomState::new().hash_one(std::time::Instant::now()) % 1_000_000;
    period.mul_f64(1.0 + JITTER_FACTOR * (r as f64 / 1_000_000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "capstan-a";
    const OTHER: &str = "capstan-b";

    fn timing() -> Timing<'static> {
        Timing {
            identity: ME,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn record(holder: Option<&str>, renewed: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            lease_duration: Some(secs(15)),
            acquire_time: Some("2024-01-01T00:00:00Z".parse().expect("time")),
            renew_time: Some(renewed.parse().expect("time")),
            transitions: 3,
        }
    }

    /// A candidate that has seen `rec` since `at`.
    fn candidate_seeing(rec: &LeaseRecord, at: Instant) -> LocalState {
        let mut local = LocalState::default();
        local.observe(rec, at);
        local
    }

    fn leader(renewed_at: Instant) -> LocalState {
        LocalState {
            leading: true,
            last_renewed: Some(renewed_at),
            observed: None,
        }
    }

    #[test]
    fn absent_lease_is_created() {
        let t0 = Instant::now();
        assert_eq!(
            decide(timing(), &LocalState::default(), Seen::Absent, t0),
            Action::Create
        );
        // Deleted under a leader: recreate it (still within the renew deadline).
        assert_eq!(
            decide(timing(), &leader(t0), Seen::Absent, t0 + secs(2)),
            Action::Create
        );
    }

    #[test]
    fn unreachable_api_waits_until_the_renew_deadline_then_steps_down() {
        let t0 = Instant::now();
        assert_eq!(
            decide(timing(), &LocalState::default(), Seen::Unreachable, t0),
            Action::Wait
        );
        let local = leader(t0);
        assert_eq!(
            decide(timing(), &local, Seen::Unreachable, t0 + secs(9)),
            Action::Wait,
            "still within the renew deadline: keep leading"
        );
        assert_eq!(
            decide(timing(), &local, Seen::Unreachable, t0 + secs(10)),
            Action::StepDown
        );
        // Past the deadline even a readable lease naming us does not save it: our renew
        // would land after others may have taken over.
        let mine = record(Some(ME), "2024-01-01T00:00:00Z");
        assert_eq!(
            decide(timing(), &local, Seen::Present(&mine), t0 + secs(11)),
            Action::StepDown
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let t0 = Instant::now();
        let mine = record(Some(ME), "2024-01-01T00:00:00Z");
        let mut local = leader(t0);
        local.observe(&mine, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&mine), t0 + secs(2)),
            Action::Renew
        );
        // A restarted process with the same identity resumes by renewing at once.
        let fresh = candidate_seeing(&mine, t0);
        assert_eq!(
            decide(timing(), &fresh, Seen::Present(&mine), t0),
            Action::Renew
        );
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_waited_out_on_our_clock() {
        let t0 = Instant::now();
        let theirs = record(Some(OTHER), "2024-01-01T00:00:00Z");
        let local = candidate_seeing(&theirs, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&theirs), t0),
            Action::Wait
        );
        assert_eq!(
            decide(
                timing(),
                &local,
                Seen::Present(&theirs),
                t0 + secs(15) - Duration::from_millis(1)
            ),
            Action::Wait
        );
        assert_eq!(
            decide(timing(), &local, Seen::Present(&theirs), t0 + secs(15)),
            Action::TakeOver
        );
    }

    #[test]
    fn remote_timestamps_do_not_decide_expiry() {
        let t0 = Instant::now();
        // renewTime decades ago (a skewed clock, or our own clock far ahead): still valid
        // until it has stayed unchanged for the lease duration as *we* measure it.
        let ancient = record(Some(OTHER), "2000-01-01T00:00:00Z");
        let local = candidate_seeing(&ancient, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&ancient), t0 + secs(1)),
            Action::Wait
        );
        // renewTime in the future does not keep a dead holder alive either.
        let future = record(Some(OTHER), "2999-01-01T00:00:00Z");
        let local = candidate_seeing(&future, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&future), t0 + secs(15)),
            Action::TakeOver
        );
    }

    #[test]
    fn each_renewal_restarts_the_candidates_clock() {
        let t0 = Instant::now();
        let first = record(Some(OTHER), "2024-01-01T00:00:00Z");
        let renewed = record(Some(OTHER), "2024-01-01T00:00:14Z");
        let mut local = candidate_seeing(&first, t0);
        local.observe(&renewed, t0 + secs(14));
        assert_eq!(
            decide(timing(), &local, Seen::Present(&renewed), t0 + secs(16)),
            Action::Wait
        );
        // Seeing the same record again does not move the clock.
        local.observe(&renewed, t0 + secs(20));
        assert_eq!(
            decide(timing(), &local, Seen::Present(&renewed), t0 + secs(29)),
            Action::TakeOver
        );
    }

    #[test]
    fn a_record_not_yet_observed_counts_as_just_seen() {
        let t0 = Instant::now();
        let old = record(Some(OTHER), "2024-01-01T00:00:00Z");
        let new = record(Some(OTHER), "2024-01-01T00:00:02Z");
        let local = candidate_seeing(&old, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&new), t0 + secs(60)),
            Action::Wait
        );
    }

    #[test]
    fn the_records_own_duration_wins_over_ours() {
        let t0 = Instant::now();
        let short = LeaseRecord {
            lease_duration: Some(secs(5)),
            ..record(Some(OTHER), "2024-01-01T00:00:00Z")
        };
        let local = candidate_seeing(&short, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&short), t0 + secs(5)),
            Action::TakeOver
        );
        let unset = LeaseRecord {
            lease_duration: None,
            ..record(Some(OTHER), "2024-01-01T00:00:00Z")
        };
        let local = candidate_seeing(&unset, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&unset), t0 + secs(14)),
            Action::Wait
        );
        assert_eq!(
            decide(timing(), &local, Seen::Present(&unset), t0 + secs(15)),
            Action::TakeOver
        );
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let t0 = Instant::now();
        let released = LeaseRecord {
            lease_duration: Some(secs(1)),
            ..record(None, "2024-01-01T00:00:00Z")
        };
        let local = candidate_seeing(&released, t0);
        assert_eq!(
            decide(timing(), &local, Seen::Present(&released), t0),
            Action::TakeOver
        );
    }

    #[test]
    fn a_leader_that_sees_another_holder_steps_down() {
        let t0 = Instant::now();
        let theirs = record(Some(OTHER), "2024-01-01T00:00:00Z");
        assert_eq!(
            decide(timing(), &leader(t0), Seen::Present(&theirs), t0 + secs(1)),
            Action::StepDown
        );
        let released = record(None, "2024-01-01T00:00:00Z");
        assert_eq!(
            decide(
                timing(),
                &leader(t0),
                Seen::Present(&released),
                t0 + secs(1)
            ),
            Action::StepDown,
            "someone released our lease: we are not the holder any more"
        );
    }

    /// Two replicas on one timeline: the leader renews every 2 s until its API access breaks
    /// at 30 s; the candidate polls every 2 s. The leader must have stepped down before the
    /// candidate takes over, and the candidate must take over eventually.
    #[test]
    fn a_partitioned_leader_steps_down_before_a_candidate_takes_over() {
        let t0 = Instant::now();
        let retry = secs(2);
        let broken_at = t0 + secs(30);
        let mut a = LocalState::default();
        let mut b = LocalState::default();
        let mut lease: Option<LeaseRecord> = None;
        let mut renewals = 0u64;
        let (mut a_stepped_down, mut b_took_over) = (None, None);
        let ta = timing();
        let tb = Timing {
            identity: OTHER,
            ..timing()
        };
        let mut now = t0;
        while now < t0 + secs(120) {
            // Replica a.
            let seen = if now >= broken_at {
                Seen::Unreachable
            } else {
                match &lease {
                    Some(rec) => {
                        a.observe(rec, now);
                        Seen::Present(rec)
                    }
                    None => Seen::Absent,
                }
            };
            match decide(ta, &a, seen, now) {
                Action::Create | Action::Renew | Action::TakeOver => {
                    renewals += 1;
                    let renewed = LeaseRecord {
                        transitions: renewals as i32,
                        ..record(Some(ME), "2024-01-01T00:00:00Z")
                    };
                    lease = Some(renewed.clone());
                    a.became_leader(now);
                    a.observe(&renewed, now);
                }
                Action::StepDown => {
                    a.step_down();
                    a_stepped_down.get_or_insert(now);
                }
                Action::Wait => {}
            }
            // Replica b, a moment later.
            let later = now + Duration::from_millis(500);
            if let Some(rec) = lease.clone() {
                b.observe(&rec, later);
                if decide(tb, &b, Seen::Present(&rec), later) == Action::TakeOver {
                    b_took_over.get_or_insert(later);
                    lease = Some(record(Some(OTHER), "2024-01-01T00:01:00Z"));
                    b.became_leader(later);
                }
            }
            assert!(!(a.leading && b.leading), "two leaders at {:?}", now - t0);
            now += retry;
        }
        let stepped = a_stepped_down.expect("a stepped down");
        let took = b_took_over.expect("b took over");
        assert!(stepped < took);
        assert!(stepped - broken_at <= secs(10));
        assert!(took - broken_at <= secs(15) + retry * 2);
    }

    #[test]
    fn a_dropped_flag_reads_false() {
        let (tx, mut rx) = watch::channel(false);
        let flag = LeaderFlag(tx);
        flag.send_replace(true);
        assert!(*rx.borrow_and_update());
        drop(flag);
        assert!(!*rx.borrow_and_update(), "never left at true");
        assert!(rx.has_changed().is_err(), "and closed");
    }

    #[test]
    fn observe_keeps_the_first_sighting() {
        let t0 = Instant::now();
        let rec = record(Some(OTHER), "2024-01-01T00:00:00Z");
        let mut local = LocalState::default();
        local.observe(&rec, t0);
        local.observe(&rec, t0 + secs(5));
        assert_eq!(local.observed, Some((rec, t0)));
    }

    #[test]
    fn records_read_from_leases() {
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(-3),
                lease_transitions: Some(4),
                renew_time: Some(MicroTime("2024-01-01T00:00:00Z".parse().expect("time"))),
                ..LeaseSpec::default()
            }),
        };
        let rec = LeaseRecord::from_lease(&lease);
        assert_eq!(rec.holder, None, "an empty holder is a released lease");
        assert_eq!(rec.lease_duration, None);
        assert_eq!(rec.transitions, 4);
        assert!(rec.renew_time.is_some());
        let bare = LeaseRecord::from_lease(&Lease::default());
        assert_eq!(
            bare,
            LeaseRecord {
                holder: None,
                lease_duration: None,
                acquire_time: None,
                renew_time: None,
                transitions: 0,
            }
        );

        let config = LeaseConfig::new("ns", ME);
        let created = new_lease(&config);
        let rec = LeaseRecord::from_lease(&created);
        assert_eq!(rec.holder.as_deref(), Some(ME));
        assert_eq!(rec.lease_duration, Some(secs(15)));
        assert_eq!(created.metadata.name.as_deref(), Some(DEFAULT_LEASE_NAME));
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        // It serialises as the API expects.
        let json = serde_json::to_value(&created).expect("serialise");
        assert_eq!(json["spec"]["holderIdentity"], ME);
        assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
        assert!(json["spec"]["renewTime"].is_string());
    }

    #[test]
    fn config_validation_and_scaling() {
        let config = LeaseConfig::new("istio-system", ME);
        assert_eq!(config.name, "capstan-leader");
        assert!(config.validate().is_ok());
        assert_eq!(config.lease_duration_seconds(), 15);

        let scaled = config.clone().with_lease_duration(secs(6));
        assert_eq!(scaled.renew_deadline, secs(4));
        assert_eq!(scaled.retry_period, Duration::from_millis(800));
        assert!(scaled.validate().is_ok());

        let bad = |f: fn(&mut LeaseConfig)| {
            let mut c = config.clone();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.renew_deadline = c.lease_duration));
        assert!(bad(|c| c.retry_period = secs(9)), "10 s ≤ 1.2 × 9 s");
        assert!(bad(|c| c.retry_period = Duration::ZERO));
        assert!(bad(|c| c.lease_duration = Duration::from_millis(500)));
        assert!(bad(|c| c.identity.clear()));
        assert!(bad(|c| c.namespace.clear()));

        let odd = LeaseConfig {
            lease_duration: Duration::from_millis(2500),
            ..config.clone()
        };
        assert_eq!(odd.lease_duration_seconds(), 3, "rounded up");
    }

    #[test]
    fn unusable_timings_are_replaced() {
        // Only --lease-duration-secs set, below the default renew deadline: the other two
        // follow it.
        let short = LeaseConfig::new("ns", ME).with_lease_duration(secs(3));
        let short = LeaseConfig {
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            ..short
        };
        let fixed = usable(short);
        assert_eq!(fixed.lease_duration, secs(3));
        assert_eq!(fixed.renew_deadline, secs(2));
        assert!(fixed.validate().is_ok());

        // A duration too short to scale: the defaults.
        let tiny = LeaseConfig {
            lease_duration: Duration::from_millis(100),
            ..LeaseConfig::new("ns", ME)
        };
        let fixed = usable(tiny);
        assert_eq!(fixed.lease_duration, DEFAULT_LEASE_DURATION);
        assert!(fixed.validate().is_ok());

        let fine = LeaseConfig::new("ns", ME);
        assert_eq!(usable(fine.clone()), fine);
    }

    #[test]
    fn identities_differ_per_call_and_name_the_host() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        let (host, suffix) = a.rsplit_once('_').expect("host_suffix");
        assert!(!host.is_empty());
        assert_eq!(suffix.len(), 16);
    }

    #[test]
    fn jitter_stays_within_client_go_bounds() {
        for _ in 0..200 {
            let d = jittered(secs(2));
            assert!(
                d >= secs(2) && d < secs(2).mul_f64(1.0 + JITTER_FACTOR),
                "{d:?}"
            );
        }
    }
}
