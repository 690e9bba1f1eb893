//! A load run: connect N simulated proxies (a bounded number at a time), wait for all of them to
//! sync, measure the server's memory, then make each scenario's change `rounds` times and time
//! how long every proxy takes to get it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::control::{ControlClient, ControlError};
use crate::cpu::CpuClock;
use crate::name_set::Interner;
use crate::proxy::grpc::Connection;
use crate::proxy::{Protocol, stream};
use crate::report::{LoadReport, RoundReport, RssReport, Scenario, ScenarioReport, SyncReport};
use crate::rss;
use crate::stats::Percentiles;
use crate::tracker::{Target, Tracker};

/// How often the runner looks at the proxies' progress.
const POLL: Duration = Duration::from_millis(10);
/// How often progress is logged while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Ports used for the endpoint change: `PORT_BASE + (first_change + round) % PORT_SPAN`.
const PORT_BASE: u32 = 20_000;
const PORT_SPAN: u64 = 40_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub ads: SocketAddr,
    pub control: SocketAddr,
    pub proxies: usize,
    pub protocol: Protocol,
    /// ADS streams multiplexed on one HTTP/2 connection (1: one connection per proxy, as
    /// Envoy does).
    pub streams_per_connection: usize,
    /// Proxies connecting and syncing at the same time.
    pub connect_concurrency: usize,
    pub scenarios: Vec<Scenario>,
    pub rounds: usize,
    /// A proxy that has not converged this long after a change counts as missing.
    pub round_timeout: Duration,
    /// Pause after each round (its traffic counts for the round), and after the sync before
    /// memory is measured.
    pub pause: Duration,
    pub sync_timeout: Duration,
    /// The server process, for its memory.
    pub server_pid: Option<u32>,
    /// Numbers the changes of this run (marker `marker-{first_change + round}`, a port derived
    /// from it), so that repeated runs against one server always make real changes.
    pub first_change: u64,
}

impl LoadConfig {
    /// Defaults for everything but the addresses, the size and the protocol.
    pub fn new(ads: SocketAddr, control: SocketAddr, proxies: usize, protocol: Protocol) -> Self {
        Self {
            ads,
            control,
            proxies,
            protocol,
            streams_per_connection: 1,
            connect_concurrency: 100,
            scenarios: vec![Scenario::Endpoint, Scenario::All],
            rounds: 5,
            round_timeout: Duration::from_secs(60),
            pause: Duration::from_millis(500),
            sync_timeout: Duration::from_secs(600),
            server_pid: None,
            first_change: default_first_change(),
        }
    }
}

/// A change number unlikely to have been used against the same server before.
pub fn default_first_change() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 1_000_000 * 10)
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("control API: {0}")]
    Control(#[from] ControlError),
}

/// Runs the load described by `config` and reports what it measured. Every proxy is
/// disconnected when this returns.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    if config.proxies == 0 || config.streams_per_connection == 0 || config.connect_concurrency == 0
    {
        return Err(LoadError::Config(
            "proxies, streams per connection and connect concurrency must be at least 1".into(),
        ));
    }
    let tracker = Arc::new(Tracker::new(config.proxies));
    let control = ControlClient::new(config.control);
    let rss_before = config.server_pid.and_then(rss::rss_kib);
    let mut tasks = spawn_proxies(config, &tracker);
    let result = measure(config, &tracker, &control, rss_before).await;
    tasks.shutdown().await;
    result
}

fn spawn_proxies(config: &LoadConfig, tracker: &Arc<Tracker>) -> JoinSet<()> {
    let interner = Arc::new(Interner::new());
    let semaphore = Arc::new(Semaphore::new(config.connect_concurrency));
    let connections: Vec<Arc<OnceCell<Connection>>> =
        (0..config.proxies.div_ceil(config.streams_per_connection))
            .map(|_| Arc::new(OnceCell::new()))
            .collect();
    let mut tasks = JoinSet::new();
    for index in 0..config.proxies {
        let connection = connections[index / config.streams_per_connection].clone();
        let (tracker, interner, semaphore) = (tracker.clone(), interner.clone(), semaphore.clone());
        let (ads, protocol) = (config.ads, config.protocol);
        tasks.spawn(async move {
            let Ok(permit) = semaphore.acquire_owned().await else {
                return;
            };
            tracker.started(index);
            let result = match connection.get_or_try_init(|| stream::connect(ads)).await {
                Ok(connection) => {
                    let connection = connection.clone();
                    stream::run(
                        index,
                        protocol,
                        ads,
                        connection,
                        tracker.clone(),
                        interner,
                        permit,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracker.failed(index, format!("proxy {index}: {e}"));
            }
        });
    }
    tasks
}

async fn measure(
    config: &LoadConfig,
    tracker: &Tracker,
    control: &ControlClient,
    rss_before: Option<u64>,
) -> Result<LoadReport, LoadError> {
    let start = tracker.now();
    let n = config.proxies;
    let mut last_log = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + config.sync_timeout;
    loop {
        let synced = tracker.synced_count();
        if synced + tracker.failures_before_sync() >= n {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(synced, proxies = n, "initial sync timed out");
            break;
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            info!(synced, failed = tracker.failures(), proxies = n, "syncing");
            last_log = tokio::time::Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    let (sync_bytes, sync_responses) = tracker.traffic();
    let sync = SyncReport {
        wall_ms: Tracker::offset(tracker.last_synced().saturating_sub(start)).as_secs_f64() * 1e3,
        per_proxy: Percentiles::of(&tracker.sync_times()),
        synced: tracker.synced_count(),
        bytes: sync_bytes,
        responses: sync_responses,
    };
    info!(
        synced = sync.synced,
        seconds = sync.wall_ms / 1e3,
        "initial sync done"
    );
    tokio::time::sleep(config.pause.max(Duration::from_millis(500))).await;
    let server_rss = match (rss_before, config.server_pid.and_then(rss::rss_kib)) {
        (Some(before), Some(after)) => Some(RssReport {
            before_kib: before,
            after_kib: after,
            per_proxy_kib: after.saturating_sub(before) as f64 / n as f64,
        }),
        _ => None,
    };
    let load_rss_kib = rss::own_rss_kib();

    let mut scenarios = Vec::new();
    for &scenario in &config.scenarios {
        let mut rounds = Vec::new();
        let mut samples = Vec::new();
        let cpu_before = CpuClock::read(config.server_pid);
        for round in 0..config.rounds {
            let change = config.first_change + round as u64;
            let (report, latencies) =
                run_round(config, tracker, control, scenario, round, change).await?;
            info!(
                scenario = scenario.as_str(),
                round,
                p99_ms = report.latency.p99_ms,
                missing = report.latency.missing(),
                "round done"
            );
            samples.extend(latencies);
            rounds.push(report);
        }
        let (server_cpu_ms, load_cpu_ms) =
            CpuClock::read(config.server_pid).ms_per_change_since(&cpu_before, rounds.len());
        scenarios.push(ScenarioReport {
            scenario,
            overall: Percentiles::of(&samples),
            bytes: rounds.iter().map(|r| r.bytes).sum(),
            rounds,
            server_cpu_ms,
            load_cpu_ms,
        });
    }
    Ok(LoadReport {
        protocol: config.protocol,
        proxies: n,
        streams_per_connection: config.streams_per_connection,
        connect_concurrency: config.connect_concurrency,
        sync,
        server_rss,
        load_rss_kib,
        scenarios,
        failures: tracker.failures(),
        errors: tracker.errors(),
    })
}

/// Makes one change and waits until every live proxy has it, or the round times out.
async fn run_round(
    config: &LoadConfig,
    tracker: &Tracker,
    control: &ControlClient,
    scenario: Scenario,
    round: usize,
    change: u64,
) -> Result<(RoundReport, Vec<Option<Duration>>), LoadError> {
    let (bytes_before, _) = tracker.traffic();
    let port = PORT_BASE + (change % PORT_SPAN) as u32;
    let marker = Target::marker_name(change);
    let (generation, description) = match scenario {
        Scenario::Endpoint => (
            tracker.expect_endpoint_port(port),
            format!("{} endpoint 0 port {port}", Target::ENDPOINT_SERVICE),
        ),
        Scenario::All => (tracker.expect_marker(change), format!("cluster {marker}")),
    };
    let t0 = tracker.now();
    match scenario {
        Scenario::Endpoint => control.set_endpoint_port(0, port).await?,
        Scenario::All => control.add_cluster(&marker).await?,
    }
    let control_ms = Tracker::offset(tracker.now().saturating_sub(t0)).as_secs_f64() * 1e3;
    let deadline = tokio::time::Instant::now() + config.round_timeout;
    loop {
        let live = config.proxies.saturating_sub(tracker.failures());
        if tracker.converged_count(generation) >= live {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                scenario = scenario.as_str(),
                round,
                converged = tracker.converged_count(generation),
                "round timed out"
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let latencies: Vec<Option<Duration>> = tracker
        .convergence(generation)
        .into_iter()
        .map(|t| t.map(|t| Tracker::offset(t.saturating_sub(t0))))
        .collect();
    // Follow-up traffic of the change (say, new EDS subscriptions) belongs to this round.
    tokio::time::sleep(config.pause).await;
    let (bytes_after, _) = tracker.traffic();
    let report = RoundReport {
        round,
        change: description,
        latency: Percentiles::of(&latencies),
        control_ms,
        bytes: bytes_after - bytes_before,
    };
    Ok((report, latencies))
}
