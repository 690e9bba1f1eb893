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

mod decide;

pub use decide::{Action, LeaseRecord, LocalState, Seen, Timing, decide};

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
mod tests;
