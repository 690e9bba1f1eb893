//! State shared by every simulated proxy and the runner: what change the proxies are waiting
//! for, when each proxy synced and converged, bytes received, and failures.
//!
//! Proxies only store timestamps; the runner counts and summarises. Convergence slots carry the
//! round's generation, so a late report from an earlier round can never count for a later one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bits of a convergence slot that hold the time (nanoseconds since the run began, ~78 hours);
/// the bits above hold the round's generation.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Failures whose message is kept for the report.
const KEPT_ERRORS: usize = 8;

/// What a proxy looks for in the responses it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target {
    pub generation: u64,
    /// The load assignment of [`Target::ENDPOINT_SERVICE`] has an endpoint on this port.
    pub endpoint_port: Option<u32>,
    /// CDS delivered cluster `marker-{n}`.
    pub marker: Option<u64>,
}

impl Target {
    /// The service whose endpoint the endpoint scenario changes.
    pub const ENDPOINT_SERVICE: &'static str = "svc-0";
    pub const MARKER_PREFIX: &'static str = "marker-";

    /// The name of marker cluster `n`.
    pub fn marker_name(n: u64) -> String {
        format!("{}{n}", Self::MARKER_PREFIX)
    }

    /// Whether `cluster` is the marker this target waits for.
    pub fn is_marker(&self, cluster: &str) -> bool {
        self.is_marker_number(Self::marker_number(cluster))
    }

    /// Whether the marker numbered `number` (see [`Target::marker_number`]) is the one this
    /// target waits for.
    pub fn is_marker_number(&self, number: Option<u64>) -> bool {
        self.marker.is_some_and(|n| number == Some(n))
    }

    /// `n` if `cluster` is marker cluster `n`.
    pub fn marker_number(cluster: &str) -> Option<u64> {
        cluster
            .strip_prefix(Self::MARKER_PREFIX)
            .and_then(|rest| rest.parse::<u64>().ok())
    }
}

/// The shared run state.
#[derive(Debug)]
pub struct Tracker {
    base: Instant,
    generation: AtomicU64,
    endpoint_port: AtomicU32,
    marker: AtomicU64,
    started: Vec<AtomicU64>,
    synced: Vec<AtomicU64>,
    converged: Vec<AtomicU64>,
    failed: AtomicUsize,
    failed_before_sync: AtomicUsize,
    bytes: AtomicU64,
    responses: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn slots(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Tracker {
    pub fn new(proxies: usize) -> Self {
        Self {
            base: Instant::now(),
            generation: AtomicU64::new(0),
            endpoint_port: AtomicU32::new(0),
            marker: AtomicU64::new(u64::MAX),
            started: slots(proxies),
            synced: slots(proxies),
            converged: slots(proxies),
            failed: AtomicUsize::new(0),
            failed_before_sync: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub fn proxies(&self) -> usize {
        self.synced.len()
    }

    /// Nanoseconds since the run began; never 0, so 0 can mean "not yet".
    pub fn now(&self) -> u64 {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(TIME_MASK);
        nanos.clamp(1, TIME_MASK)
    }

    /// The time `nanos` (from [`Tracker::now`]) as an offset from the run's start.
    pub fn offset(nanos: u64) -> Duration {
        Duration::from_nanos(nanos)
    }

    /// What proxies should look for now.
    pub fn target(&self) -> Target {
        let generation = self.generation.load(Ordering::Acquire);
        let port = self.endpoint_port.load(Ordering::Relaxed);
        let marker = self.marker.load(Ordering::Relaxed);
        Target {
            generation,
            endpoint_port: (port != 0).then_some(port),
            marker: (marker != u64::MAX).then_some(marker),
        }
    }

    /// Starts a round waiting for endpoint 0 of `svc-0` on `port`; returns its generation.
    pub fn expect_endpoint_port(&self, port: u32) -> u64 {
        self.marker.store(u64::MAX, Ordering::Relaxed);
        self.endpoint_port.store(port, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Starts a round waiting for cluster `marker-{n}`; returns its generation.
    pub fn expect_marker(&self, n: u64) -> u64 {
        self.endpoint_port.store(0, Ordering::Relaxed);
        self.marker.store(n, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn started(&self, proxy: usize) {
        if let Some(slot) = self.started.get(proxy) {
            slot.store(self.now(), Ordering::Relaxed);
        }
    }

    pub fn synced(&self, proxy: usize) {
        if let Some(slot) = self.synced.get(proxy) {
            slot.store(self.now(), Ordering::Release);
        }
    }

    /// Records that `proxy` has what round `generation` waits for (first report wins).
    pub fn converged(&self, proxy: usize, generation: u64) {
        let Some(slot) = self.converged.get(proxy) else {
            return;
        };
        let tag = (generation & 0xffff) << TIME_BITS;
        let current = slot.load(Ordering::Relaxed);
        if current & !TIME_MASK == tag && current != 0 {
            return;
        }
        let now = self.now();
        let _ = slot.compare_exchange(current, tag | now, Ordering::AcqRel, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.responses.fetch_add(1, Ordering::Relaxed);
    }

    /// Proxy `proxy`'s stream ended with `error`.
    pub fn failed(&self, proxy: usize, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if self
            .synced
            .get(proxy)
            .is_none_or(|s| s.load(Ordering::Acquire) == 0)
        {
            self.failed_before_sync.fetch_add(1, Ordering::Relaxed);
        }
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < KEPT_ERRORS {
            errors.push(error);
        }
    }

    pub fn failures(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Proxies that failed before finishing their initial sync.
    pub fn failures_before_sync(&self) -> usize {
        self.failed_before_sync.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Total payload bytes and responses received so far.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.responses.load(Ordering::Relaxed),
        )
    }

    pub fn synced_count(&self) -> usize {
        self.synced
            .iter()
            .filter(|s| s.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Per proxy: how long from starting to connect until synced (`None`: not synced).
    pub fn sync_times(&self) -> Vec<Option<Duration>> {
        self.started
            .iter()
            .zip(&self.synced)
            .map(|(start, done)| {
                let (start, done) = (start.load(Ordering::Relaxed), done.load(Ordering::Acquire));
                (done != 0).then(|| Duration::from_nanos(done.saturating_sub(start)))
            })
            .collect()
    }

    /// The latest sync time of any proxy, as a [`Tracker::now`] value.
    pub fn last_synced(&self) -> u64 {
        self.synced
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Per proxy: its convergence time in round `generation`, as a [`Tracker::now`] value.
    pub fn convergence(&self, generation: u64) -> Vec<Option<u64>> {
        let tag = (generation & 0xffff) << TIME_BITS;
        self.converged
            .iter()
            .map(|slot| {
                let value = slot.load(Ordering::Acquire);
                (value != 0 && value & !TIME_MASK == tag).then_some(value & TIME_MASK)
            })
            .collect()
    }

    pub fn converged_count(&self, generation: u64) -> usize {
        self.convergence(generation).iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_belongs_to_its_round() {
        let tracker = Tracker::new(3);
        let g1 = tracker.expect_endpoint_port(9001);
        assert_eq!(tracker.target().endpoint_port, Some(9001));
        assert_eq!(tracker.target().marker, None);
        tracker.converged(0, g1);
        tracker.converged(1, g1);
        let first = tracker.convergence(g1)[0];
        tracker.converged(0, g1);
        assert_eq!(tracker.convergence(g1)[0], first, "first report wins");
        assert_eq!(tracker.converged_count(g1), 2);

        let g2 = tracker.expect_marker(4);
        assert_eq!(tracker.converged_count(g2), 0, "a new round starts empty");
        tracker.converged(2, g1);
        assert_eq!(tracker.converged_count(g2), 0, "late report of round 1");
        tracker.converged(2, g2);
        let round2 = tracker.convergence(g2);
        assert!(round2[0].is_none() && round2[1].is_none() && round2[2].is_some());
        tracker.converged(99, g2);
        assert_eq!(
            tracker.convergence(g2),
            round2,
            "a report from an unknown proxy changes nothing"
        );
    }

    #[test]
    fn marker_names_match_exactly() {
        let target = Target {
            marker: Some(3),
            ..Default::default()
        };
        assert!(target.is_marker("marker-3"));
        assert!(!target.is_marker("marker-30"));
        assert!(!target.is_marker("svc-3"));
        assert!(!Target::default().is_marker("marker-3"));
        assert_eq!(Target::marker_name(3), "marker-3");
    }

    #[test]
    fn sync_and_failures_are_counted() {
        let tracker = Tracker::new(2);
        tracker.started(0);
        tracker.synced(0);
        tracker.failed(1, "boom".into());
        assert_eq!(tracker.synced_count(), 1);
        assert_eq!(tracker.failures(), 1);
        assert_eq!(tracker.failures_before_sync(), 1);
        tracker.failed(0, "late".into());
        assert_eq!(tracker.failures_before_sync(), 1);
        assert_eq!(tracker.errors(), ["boom", "late"]);
        assert!(tracker.sync_times()[0].is_some());
        assert!(tracker.sync_times()[1].is_none());
        tracker.received(10);
        assert_eq!(tracker.traffic(), (10, 1));
    }
}
