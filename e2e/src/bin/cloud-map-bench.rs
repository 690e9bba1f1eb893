//! `capstan-cloud-map-bench`: capstan's AWS Cloud Map source at 1,000 services × 10
//! instances (issue 14): what one poll cycle costs, and how long one instance change takes to
//! reach every proxy, with istiod reading capstan's materialised ServiceEntries as the peer,
//! measured in the same run.
//!
//! 1. Starts etcd + kube-apiserver (`capstan_e2e::kube::KubeCluster`) and moto (the patched
//!    AWS mock of `capstan_e2e::moto`), and registers one HTTP namespace `bench.local` with N
//!    services (`svc-<i>`, no health check) × M instances (`AWS_INSTANCE_IPV4` a distinct
//!    10.x address, `AWS_INSTANCE_PORT` 8080, `protocol: HTTP`), C services at once; the
//!    set-up's duration is reported.
//! 2. capstan, in-memory mode (`--cloud-map-config`, interval `--interval`, no jitter): start
//!    → ready → first (full) poll done, with its calls and duration from capstan's own
//!    metrics; then K quiet polls: calls per poll by operation (capstan's
//!    `capstan_cloud_map_calls_total` and moto's counters), wall time per poll
//!    (`capstan_cloud_map_poll_seconds` sum ÷ count), capstan's CPU per poll
//!    (`/proc/PID/stat` utime + stime over the period ÷ polls) and RSS.
//! 3. For each server row, P Delta proxies (`capstan_load`'s simulated Envoys with
//!    `capstan-kube-bench`'s Istio sidecar node) connect and sync; then R times one new
//!    instance is registered in `svc-0` (port 9000 + n, so its endpoint is recognisable) and
//!    each proxy's time from the RegisterInstance call returning to the proxy receiving and
//!    ACKing the load assignment of `svc-0` with it is taken; also when capstan's poll noticed
//!    (its `DiscoverInstances` counter moved, i.e. the poll that read the new revision ended),
//!    scraped every 20 ms. Rows: capstan in-memory; capstan in `mode: materialize` serving
//!    the ServiceEntries it wrote itself; istiod (`pilot-discovery`) serving the same
//!    ServiceEntries, capstan (materialize) the writer.
//!
//! Results: JSON to `--out` (default `<target dir>/bench/cloud-map.json`) and markdown
//! tables on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstan_e2e::cloudmap::CloudMap;
use capstan_e2e::http::HttpClient;
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::moto::{Moto, MotoFaults};
use capstan_e2e::process::ChildProcess;
use capstan_load::name_set::Interner;
use capstan_load::proxy::Env;
use capstan_load::proxy::delta::DeltaProxy;
use capstan_load::proxy::grpc;
use capstan_load::stats::{Percentiles, fmt_ms};
use capstan_load::tracker::Tracker;
use capstan_load::xds_scan::{self, DeltaResponse};
use capstan_xds::ads::service::DELTA_PATH;
use capstan_xds::type_url;
use clap::Parser;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// `capstan-kube-bench`'s pieces: the server specs, the proxies' node, RSS and CPU reading.
#[path = "kube-bench.rs"]
#[allow(dead_code)]
mod kube_bench;

use kube_bench::{ServerSpec, kib, ms, status_kib};

const CLOUD_MAP_NAMESPACE: &str = "bench.local";
const MESH_NAMESPACE: &str = "cloud-map";
/// The service that gains an instance each round, and the cluster every proxy waits for.
const CHANGED_SERVICE: &str = "svc-0";
const WATCHED: &str = "outbound|8080||svc-0.bench.local";
const INSTANCE_PORT: &str = "8080";
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_TIMEOUT: Duration = Duration::from_secs(600);
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
const ROUND_TIMEOUT: Duration = Duration::from_secs(90);
const CONNECT_CONCURRENCY: usize = 100;
/// How often capstan's metrics are read while a change is under way.
const SCRAPE_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(
    name = "capstan-cloud-map-bench",
    about = "capstan's AWS Cloud Map source (moto): one poll's cost and one instance change to all proxies, istiod on materialised ServiceEntries as the peer"
)]
struct Cli {
    /// Cloud Map services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Instances per service.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Delta proxies per row.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Instance registrations per row.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Quiet polls measured for the poll cost.
    #[arg(long, default_value_t = 5)]
    quiet_polls: usize,
    /// capstan's poll interval (the config's `interval`; jitter is 0).
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Services set up at once in moto (each registers its instances in turn).
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// The capstan binary [default: `capstan` beside this binary].
    #[arg(long)]
    capstan: Option<PathBuf>,
    /// istiod's pilot-discovery [default: $CAPSTAN_TOOLS_DIR/istiod/pilot-discovery]; the
    /// istiod row is skipped when it is missing.
    #[arg(long, env = "CAPSTAN_ISTIOD")]
    istiod: Option<PathBuf>,
    /// Rows to run: `capstan` (in-memory, with the poll cost), `capstan-materialized`,
    /// `istiod` (both with capstan in `mode: materialize` writing the ServiceEntries).
    #[arg(long, value_delimiter = ',', default_values = ["capstan", "capstan-materialized", "istiod"])]
    only: Vec<String>,
    /// Where to write the JSON results [default: <target dir>/bench/cloud-map.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct PollCost {
    /// capstan start → `/readyz` 200.
    ready_ms: f64,
    /// capstan start → first poll complete (`capstan_cloud_map_poll_seconds_count` 1).
    start_to_first_poll_ms: f64,
    /// The first (full) poll: its duration and calls, from capstan's metrics.
    first_poll_s: f64,
    first_poll_calls: BTreeMap<String, f64>,
    /// The quiet period: polls, wall seconds, and per poll.
    quiet_polls: f64,
    quiet_period_s: f64,
    poll_wall_s: f64,
    calls_per_poll: BTreeMap<String, f64>,
    moto_calls_per_poll: BTreeMap<String, f64>,
    cpu_ms_per_poll: Option<f64>,
    /// capstan's CPU over the quiet period ÷ its wall time (1.0 = one core).
    cpu_cores: Option<f64>,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ChangeRow {
    server: String,
    /// Start → ready of the serving process.
    ready_ms: f64,
    /// capstan materialize: first poll complete → all ServiceEntries listed.
    materialized_ms: Option<f64>,
    rss_before_proxies_kib: Option<u64>,
    synced: usize,
    sync_ms: f64,
    /// Per proxy, over all rounds: RegisterInstance returned → load assignment ACKed.
    per_proxy: Percentiles,
    /// Per round: RegisterInstance returned → the last proxy ACKed.
    all_acked_ms: Vec<Option<f64>>,
    /// Per round: RegisterInstance returned → the first proxy ACKed.
    first_acked_ms: Vec<Option<f64>>,
    /// Per round: the first proxy ACKed → the last (the fan-out).
    first_to_last_ms: Vec<Option<f64>>,
    /// Per round: RegisterInstance returned → capstan's poll that read it ended (seen on
    /// `/metrics`, scraped every 20 ms).
    noticed_ms: Vec<Option<f64>>,
    /// Per round: that poll ended (as seen, up to ~20 ms late) → the last proxy ACKed; a
    /// lower bound, negative when the push took less than the scrape's lag.
    noticed_to_all_ms: Vec<Option<f64>>,
    register_call_ms: Vec<f64>,
    /// The serving process's CPU per change (capstan: its polls during the round included).
    cpu_ms_per_change: Option<f64>,
    /// The writer capstan's CPU per change (istiod row).
    writer_cpu_ms_per_change: Option<f64>,
    bytes_per_proxy_per_change: f64,
    responses_per_proxy_per_change: f64,
    rss_end_kib: Option<u64>,
    hwm_end_kib: Option<u64>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: BTreeMap<String, String>,
    services: usize,
    instances_per_service: usize,
    proxies: usize,
    rounds: usize,
    interval: String,
    cluster_start_ms: f64,
    setup_ms: f64,
    setup_calls: usize,
    poll: Option<PollCost>,
    rows: Vec<ChangeRow>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    ensure!(
        cli.services > 0 && cli.instances > 0,
        "no services or instances"
    );
    let capstan_bin = match &cli.capstan {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("capstan"),
    };
    ensure!(
        capstan_bin.is_file(),
        "capstan binary {} not found (cargo build --release -p capstan, or --capstan)",
        capstan_bin.display()
    );
    let istiod_bin = cli.istiod.clone().unwrap_or_else(|| {
        capstan_e2e::locate::tools_dir()
            .join("istiod")
            .join("pilot-discovery")
    });
    for row in &cli.only {
        ensure!(
            ["capstan", "capstan-materialized", "istiod"].contains(&row.as_str()),
            "unknown row {row:?} (capstan, capstan-materialized, istiod)"
        );
    }

    let t0 = Instant::now();
    let cluster = KubeCluster::start("cloud-map-bench").await?;
    let cluster_start_ms = ms(t0.elapsed());
    let mut namespaces = String::new();
    for n in 0..10 {
        namespaces.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n---\n"
        ));
    }
    namespaces.push_str(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {MESH_NAMESPACE}}}\n---\n"
    ));
    cluster.kubectl_apply_yaml(&namespaces).await?;
    cluster
        .kubectl_apply_yaml(&capstan_e2e::kube_mesh::cloud_map_role_yaml(MESH_NAMESPACE))
        .await?;

    let moto = Moto::start(cluster.log_dir(), &MotoFaults::default()).await?;
    let cloud_map = CloudMap::new(&moto).await?;
    let t_setup = Instant::now();
    let changed_service = setup(&cloud_map, &cli).await?;
    let setup_ms = ms(t_setup.elapsed());
    let setup_calls = cloud_map.counts().await?.values().sum::<u64>() as usize;
    info!(
        services = cli.services,
        instances = cli.instances,
        seconds = setup_ms / 1e3,
        calls = setup_calls,
        "Cloud Map set up in moto"
    );

    let bench = Bench {
        cli: &cli,
        cluster: &cluster,
        moto: &moto,
        cloud_map: &cloud_map,
        changed_service,
        capstan_bin,
        change: std::sync::atomic::AtomicU32::new(0),
    };
    let mut poll = None;
    let mut rows = Vec::new();
    if cli.only.iter().any(|r| r == "capstan") {
        let (cost, row) = bench.in_memory().await.context("capstan, in-memory")?;
        print_poll(&cost);
        print_row(&row);
        poll = Some(cost);
        rows.push(row);
    }
    let materialized = cli.only.iter().any(|r| r == "capstan-materialized");
    let istiod = cli.only.iter().any(|r| r == "istiod");
    let istiod = istiod
        && (istiod_bin.is_file() || {
            warn!(
                "istiod row skipped: {} not found (scripts/build-istiod.sh)",
                istiod_bin.display()
            );
            false
        });
    if materialized || istiod {
        for row in bench
            .materialized(materialized, istiod.then_some(&istiod_bin))
            .await
            .context("capstan, materialize")?
        {
            print_row(&row);
            rows.push(row);
        }
    }

    let results = Results {
        machine: kube_bench::machine(),
        services: cli.services,
        instances_per_service: cli.instances,
        proxies: cli.proxies,
        rounds: cli.rounds,
        interval: cli.interval.clone(),
        cluster_start_ms,
        setup_ms,
        setup_calls,
        poll,
        rows,
    };
    let out = match &cli.out {
        Some(p) => p.clone(),
        None => {
            let dir = capstan_e2e::locate::profile_dir()?
                .parent()
                .context("target dir")?
                .join("bench");
            std::fs::create_dir_all(&dir)?;
            dir.join("cloud-map.json")
        }
    };
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    print_tables(&results);
    eprintln!("results: {}", out.display());
    Ok(())
}

// ---- Cloud Map in moto ----

/// Instance `j` of service `i`: 10.0.0.1 onwards, 250 a /24.
fn address(i: usize, j: usize, instances: usize) -> String {
    let k = i * instances + j;
    format!(
        "10.{}.{}.{}",
        (k / 250 / 256) % 200,
        (k / 250) % 256,
        k % 250 + 1
    )
}

/// Creates the namespace, the services and their instances; the changed service's id.
async fn setup(cloud_map: &CloudMap<'_>, cli: &Cli) -> anyhow::Result<String> {
    let namespace = cloud_map.create_http_namespace(CLOUD_MAP_NAMESPACE).await?;
    let semaphore = Arc::new(Semaphore::new(cli.setup_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let instances = cli.instances;
    let mut changed = None;
    for i in 0..cli.services {
        let permit = semaphore.clone().acquire_owned().await?;
        let client = cloud_map.client().clone();
        let namespace = namespace.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let name = format!("svc-{i}");
            let created = client
                .create_service()
                .namespace_id(&namespace)
                .name(&name)
                .send()
                .await
                .with_context(|| format!("CreateService {name}"))?;
            let id = created
                .service()
                .and_then(|s| s.id())
                .with_context(|| format!("CreateService {name}: no id"))?
                .to_string();
            for j in 0..instances {
                client
                    .register_instance()
                    .service_id(&id)
                    .instance_id(format!("i-{j}"))
                    .attributes("AWS_INSTANCE_IPV4", address(i, j, instances))
                    .attributes("AWS_INSTANCE_PORT", INSTANCE_PORT)
                    .attributes("protocol", "HTTP")
                    .send()
                    .await
                    .with_context(|| format!("RegisterInstance i-{j} in {name}"))?;
            }
            Ok::<_, anyhow::Error>((i, id))
        });
        while let Some(done) = tasks.try_join_next() {
            let (i, id) = done??;
            if i == 0 {
                changed = Some(id);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (i, id) = done??;
        if i == 0 {
            changed = Some(id);
        }
    }
    changed.with_context(|| format!("{CHANGED_SERVICE} not created"))
}

// ---- capstan's metrics ----

#[derive(Debug, Clone, Default)]
struct CloudMapMetrics {
    calls: BTreeMap<String, f64>,
    poll_sum: f64,
    poll_count: f64,
}

impl CloudMapMetrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(rest) = name.strip_prefix("capstan_cloud_map_calls_total{operation=\"") {
                let op = rest.trim_end_matches("\"}");
                m.calls.insert(op.to_string(), value);
            } else if name == "capstan_cloud_map_poll_seconds_sum" {
                m.poll_sum = value;
            } else if name == "capstan_cloud_map_poll_seconds_count" {
                m.poll_count = value;
            }
        }
        m
    }

    fn calls_of(&self, op: &str) -> f64 {
        self.calls.get(op).copied().unwrap_or(0.0)
    }

    fn calls_since(&self, before: &Self, per: f64) -> BTreeMap<String, f64> {
        self.calls
            .iter()
            .map(|(op, n)| (op.clone(), (n - before.calls_of(op)) / per.max(1.0)))
            .filter(|(_, n)| *n > 0.0)
            .collect()
    }
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<CloudMapMetrics> {
    let response = HttpClient::new(addr)
        .get("127.0.0.1", "/metrics", &[])
        .await?;
    ensure!(
        response.status.is_success(),
        "/metrics: {}",
        response.status
    );
    Ok(CloudMapMetrics::parse(&response.text()))
}

/// Waits until capstan has completed at least `polls` polls; the metrics then.
async fn wait_polls(
    process: &mut ChildProcess,
    monitoring: SocketAddr,
    polls: f64,
    every: Duration,
) -> anyhow::Result<CloudMapMetrics> {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Ok(m) = scrape(monitoring).await
            && m.poll_count >= polls
        {
            return Ok(m);
        }
        process.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "{} polls not done after {POLL_TIMEOUT:?}: {}",
            polls,
            process.log_tail(20)
        );
        tokio::time::sleep(every).await;
    }
}

fn moto_per_poll(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
    polls: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(op, n)| {
            let d = n.saturating_sub(before.get(op).copied().unwrap_or(0));
            (op.clone(), d as f64 / polls.max(1.0))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

// ---- The rows ----

struct Bench<'a> {
    cli: &'a Cli,
    cluster: &'a KubeCluster,
    moto: &'a Moto,
    cloud_map: &'a CloudMap<'a>,
    changed_service: String,
    capstan_bin: PathBuf,
    change: std::sync::atomic::AtomicU32,
}

/// A started server.
struct Started {
    process: ChildProcess,
    ready: Duration,
    ads: SocketAddr,
    monitoring: SocketAddr,
    t0: Instant,
}

async fn start(spec: &mut ServerSpec) -> anyhow::Result<Started> {
    info!(server = spec.name, log = %spec.log.display(), "starting");
    let t0 = Instant::now();
    let mut process = ChildProcess::spawn(spec.name, &mut spec.command, &spec.log)?;
    let ready = loop {
        if let Ok((200, _)) = kube_bench::http(spec.ready, "GET", spec.ready_path, None, "").await {
            break t0.elapsed();
        }
        process.ensure_running()?;
        ensure!(
            t0.elapsed() < READY_TIMEOUT,
            "{} not ready after {READY_TIMEOUT:?}: {}",
            spec.name,
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    info!(server = spec.name, ready = ?ready, "ready");
    Ok(Started {
        process,
        ready,
        ads: spec.ads,
        monitoring: spec.ready,
        t0,
    })
}

impl Bench<'_> {
    fn config(&self, mode: &str, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.cluster.log_dir().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "namespaces: [{{name: {CLOUD_MAP_NAMESPACE}}}]
mode: {mode}
meshNamespace: {MESH_NAMESPACE}
interval: {}
jitter: 0
endpoint: {}
region: {}
",
                self.cli.interval,
                self.moto.endpoint_url(),
                capstan_e2e::moto::REGION
            ),
        )?;
        Ok(path)
    }

    /// capstan (kube mode, as in capstan-kube-bench) with the Cloud Map source in `mode`.
    fn capstan_spec(&self, mode: &str, name: &'static str) -> anyhow::Result<ServerSpec> {
        let config = self.config(mode, name)?;
        let mut spec = ServerSpec::capstan(&self.capstan_bin, self.cluster, false)?;
        spec.name = name;
        spec.log = self.cluster.log_dir().join(format!("{name}.log"));
        spec.command
            .arg("--cloud-map-config")
            .arg(&config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", capstan_e2e::moto::REGION);
        Ok(spec)
    }

    /// Row 1: capstan in-memory; the poll cost, then the instance changes.
    async fn in_memory(&self) -> anyhow::Result<(PollCost, ChangeRow)> {
        self.cloud_map.reset_counts().await?;
        let mut spec = self.capstan_spec("in-memory", "capstan-in-memory")?;
        let mut server = start(&mut spec).await?;
        let pid = server.process.pid();
        let first = wait_polls(
            &mut server.process,
            server.monitoring,
            1.0,
            Duration::from_millis(10),
        )
        .await?;
        let start_to_first_poll_ms = ms(server.t0.elapsed());
        info!(
            seconds = first.poll_sum,
            calls = ?first.calls,
            "first poll"
        );

        // The quiet period, from one poll's end to K polls later.
        let every = Duration::from_millis(200);
        let at = wait_polls(&mut server.process, server.monitoring, 2.0, every).await?;
        let before = wait_polls(
            &mut server.process,
            server.monitoring,
            at.poll_count + 1.0,
            every,
        )
        .await?;
        let t_before = Instant::now();
        let cpu_before = capstan_load::cpu::cpu_time(pid);
        let moto_before = self.cloud_map.counts().await?;
        let after = wait_polls(
            &mut server.process,
            server.monitoring,
            before.poll_count + self.cli.quiet_polls as f64,
            every,
        )
        .await?;
        let cpu_after = capstan_load::cpu::cpu_time(pid);
        let period = t_before.elapsed();
        let moto_after = self.cloud_map.counts().await?;
        let polls = after.poll_count - before.poll_count;
        let cpu = cpu_after
            .zip(cpu_before)
            .and_then(|(a, b)| a.checked_sub(b));
        let cost = PollCost {
            ready_ms: ms(server.ready),
            start_to_first_poll_ms,
            first_poll_s: first.poll_sum,
            first_poll_calls: first.calls_since(&CloudMapMetrics::default(), 1.0),
            quiet_polls: polls,
            quiet_period_s: period.as_secs_f64(),
            poll_wall_s: (after.poll_sum - before.poll_sum) / polls.max(1.0),
            calls_per_poll: after.calls_since(&before, polls),
            moto_calls_per_poll: moto_per_poll(&moto_after, &moto_before, polls),
            cpu_ms_per_poll: cpu.map(|c| ms(c) / polls.max(1.0)),
            cpu_cores: cpu.map(|c| c.as_secs_f64() / period.as_secs_f64()),
            rss_kib: status_kib(pid, "VmRSS:"),
            hwm_kib: status_kib(pid, "VmHWM:"),
        };
        info!(?cost, "quiet polls");
        let monitoring = server.monitoring;
        let row = self
            .changes("capstan, in-memory", &mut server, None, monitoring, None)
            .await?;
        server.process.stop();
        Ok((cost, row))
    }

    /// Rows 2 and 3: capstan in `mode: materialize` writes the ServiceEntries; proxies on
    /// capstan, then on istiod.
    async fn materialized(
        &self,
        capstan_row: bool,
        istiod: Option<&PathBuf>,
    ) -> anyhow::Result<Vec<ChangeRow>> {
        let mut spec = self.capstan_spec("materialize", "capstan-materialize")?;
        let mut writer = start(&mut spec).await?;
        wait_polls(
            &mut writer.process,
            writer.monitoring,
            1.0,
            Duration::from_millis(10),
        )
        .await?;
        let polled = Instant::now();
        let deadline = polled + POLL_TIMEOUT;
        loop {
            let listed = self
                .cluster
                .kubectl(&["get", "serviceentries", "-n", MESH_NAMESPACE, "-o", "name"])
                .await?;
            let n = listed.lines().filter(|l| !l.trim().is_empty()).count();
            if n >= self.cli.services {
                break;
            }
            writer.process.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "{n} of {} ServiceEntries after {POLL_TIMEOUT:?}",
                self.cli.services
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let materialized_ms = ms(polled.elapsed());
        info!(
            seconds = materialized_ms / 1e3,
            "ServiceEntries written (first poll done → all listed)"
        );
        let mut rows = Vec::new();
        let monitoring = writer.monitoring;
        if capstan_row {
            let mut row = self
                .changes(
                    "capstan, materialize (its own ServiceEntries)",
                    &mut writer,
                    None,
                    monitoring,
                    None,
                )
                .await?;
            row.materialized_ms = Some(materialized_ms);
            rows.push(row);
        }
        if let Some(bin) = istiod {
            let mut spec = ServerSpec::istiod(bin, self.cluster, &[])?;
            let mut server = start(&mut spec).await?;
            kube_bench::wait_idle(server.process.pid(), Duration::from_secs(60)).await;
            let writer_pid = writer.process.pid();
            let mut row = self
                .changes(
                    "istiod, ServiceEntries written by capstan (materialize)",
                    &mut server,
                    Some(&mut writer.process),
                    monitoring,
                    Some(writer_pid),
                )
                .await;
            if let Ok(row) = &mut row {
                row.materialized_ms = Some(materialized_ms);
            }
            server.process.stop();
            rows.push(row?);
        }
        writer.process.stop();
        Ok(rows)
    }

    /// Connects the proxies to `server`, then registers one instance per round in the
    /// changed service and times it to every proxy's ACK. `monitoring`: the capstan that
    /// polls (the server itself, or the writer).
    async fn changes(
        &self,
        name: &str,
        server: &mut Started,
        mut writer: Option<&mut ChildProcess>,
        monitoring: SocketAddr,
        writer_pid: Option<u32>,
    ) -> anyhow::Result<ChangeRow> {
        let proxies = self.cli.proxies;
        let pid = server.process.pid();
        let rss_before_proxies_kib = status_kib(pid, "VmRSS:");
        let tracker = Arc::new(Tracker::new(proxies));
        let shared = Arc::new(Shared {
            tracker: tracker.clone(),
            interner: Arc::new(Interner::new()),
            semaphore: Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
        });
        let mut tasks = JoinSet::new();
        let sync_start = tracker.now();
        for index in 0..proxies {
            let (shared, ads) = (shared.clone(), server.ads);
            tasks.spawn(async move {
                if let Err(e) = run_proxy(index, ads, shared.clone()).await {
                    shared
                        .tracker
                        .failed(index, format!("proxy {index}: {e:#}"));
                }
            });
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut last_log = Instant::now();
        loop {
            let synced = tracker.synced_count();
            if synced + tracker.failures_before_sync() >= proxies {
                break;
            }
            server.process.ensure_running()?;
            if Instant::now() > deadline {
                warn!(synced, "initial sync timed out");
                break;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                info!(
                    server = name,
                    synced,
                    failed = tracker.failures(),
                    "syncing"
                );
                last_log = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let synced = tracker.synced_count();
        let sync_ms = ms(Tracker::offset(
            tracker.last_synced().saturating_sub(sync_start),
        ));
        info!(server = name, synced, sync_ms, errors = ?tracker.errors(), "proxies synced");
        ensure!(
            synced > 0,
            "no proxy synced with {name}: {:?}; log tail:\n{}",
            tracker.errors(),
            server.process.log_tail(20)
        );
        // capstan polls every interval, so it is never idle for long: let the sync settle.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let sync_times = tracker.sync_times();
        let expected = sync_times.iter().flatten().count();
        let mut samples = Vec::new();
        let mut all_acked_ms = Vec::new();
        let mut first_acked_ms = Vec::new();
        let mut first_to_last_ms = Vec::new();
        let mut noticed_ms = Vec::new();
        let mut noticed_to_all_ms = Vec::new();
        let mut register_call_ms = Vec::new();
        let (bytes_before, responses_before) = tracker.traffic();
        let cpu_before = capstan_load::cpu::cpu_time(pid);
        let writer_before = writer_pid.and_then(capstan_load::cpu::cpu_time);
        for round in 0..self.cli.rounds {
            let change = self
                .change
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let port = 9000 + change;
            let baseline = scrape(monitoring).await?.calls_of("DiscoverInstances");
            let generation = tracker.expect_endpoint_port(port);
            let t_register = Instant::now();
            self.cloud_map
                .register(
                    &self.changed_service,
                    &format!("new-{change}"),
                    &[
                        (
                            "AWS_INSTANCE_IPV4",
                            &format!("10.250.{}.{}", change / 250, change % 250 + 1),
                        ),
                        ("AWS_INSTANCE_PORT", &port.to_string()),
                        ("protocol", "HTTP"),
                    ],
                )
                .await?;
            let start = tracker.now();
            register_call_ms.push(ms(t_register.elapsed()));
            let deadline = Instant::now() + ROUND_TIMEOUT;
            let mut noticed = None;
            let mut last_scrape = Instant::now();
            loop {
                let done = tracker.converged_count(generation) >= expected;
                if noticed.is_none() && (done || last_scrape.elapsed() >= SCRAPE_EVERY) {
                    last_scrape = Instant::now();
                    if let Ok(m) = scrape(monitoring).await
                        && m.calls_of("DiscoverInstances") > baseline
                    {
                        noticed = Some(tracker.now());
                    }
                }
                if (done && noticed.is_some()) || Instant::now() > deadline {
                    break;
                }
                server.process.ensure_running()?;
                if let Some(writer) = writer.as_deref_mut() {
                    writer.ensure_running()?;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let times = tracker.convergence(generation);
            let mut round_samples: Vec<Option<Duration>> = times
                .iter()
                .zip(&sync_times)
                .filter(|(_, synced)| synced.is_some())
                .map(|(t, _)| t.map(|t| Tracker::offset(t.saturating_sub(start))))
                .collect();
            let arrived = round_samples.iter().flatten().count();
            let last = (arrived == expected)
                .then(|| round_samples.iter().flatten().max().copied())
                .flatten();
            let first = round_samples.iter().flatten().min().copied();
            let noticed_at = noticed.map(|n| Tracker::offset(n.saturating_sub(start)));
            all_acked_ms.push(last.map(ms));
            first_acked_ms.push(first.map(ms));
            first_to_last_ms.push(last.zip(first).map(|(l, f)| ms(l) - ms(f)));
            noticed_ms.push(noticed_at.map(ms));
            noticed_to_all_ms.push(last.zip(noticed_at).map(|(l, n)| ms(l) - ms(n)));
            info!(
                server = name,
                round,
                arrived,
                all_acked = fmt_ms(last.map(ms)),
                noticed = fmt_ms(noticed_at.map(ms)),
                register_ms = register_call_ms.last().copied().unwrap_or_default(),
                "instance registered"
            );
            samples.append(&mut round_samples);
            // Registrations land at different points of the poll cycle.
            tokio::time::sleep(Duration::from_millis(300 + (round as u64 * 373) % 1000)).await;
        }
        let rounds = self.cli.rounds.max(1);
        let cpu_after = capstan_load::cpu::cpu_time(pid);
        let writer_after = writer_pid.and_then(capstan_load::cpu::cpu_time);
        let per_change = |a: Option<Duration>, b: Option<Duration>| {
            a.zip(b)
                .and_then(|(a, b)| a.checked_sub(b))
                .map(|d| ms(d) / rounds as f64)
        };
        let (bytes_after, responses_after) = tracker.traffic();
        let per = (rounds * synced.max(1)) as f64;
        let row = ChangeRow {
            server: name.to_string(),
            ready_ms: ms(server.ready),
            materialized_ms: None,
            rss_before_proxies_kib,
            synced,
            sync_ms,
            per_proxy: Percentiles::of(&samples),
            all_acked_ms,
            first_acked_ms,
            first_to_last_ms,
            noticed_ms,
            noticed_to_all_ms,
            register_call_ms,
            cpu_ms_per_change: per_change(cpu_after, cpu_before),
            writer_cpu_ms_per_change: per_change(writer_after, writer_before),
            bytes_per_proxy_per_change: (bytes_after - bytes_before) as f64 / per,
            responses_per_proxy_per_change: (responses_after - responses_before) as f64 / per,
            rss_end_kib: status_kib(pid, "VmRSS:"),
            hwm_end_kib: status_kib(pid, "VmHWM:"),
            errors: tracker.errors(),
        };
        tasks.shutdown().await;
        Ok(row)
    }
}

// ---- The proxies ----

struct Shared {
    tracker: Arc<Tracker>,
    interner: Arc<Interner>,
    semaphore: Arc<Semaphore>,
}

async fn run_proxy(index: usize, ads: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let Shared {
        tracker, interner, ..
    } = &*shared;
    let permit = shared.semaphore.clone().acquire_owned().await?;
    tracker.started(index);
    let connection = capstan_load::proxy::stream::connect(ads).await?;
    let mut proxy = DeltaProxy::new(kube_bench::node(index, false), interner.empty());
    let first = grpc::frame_all(&proxy.start());
    let mut stream = grpc::open(connection, ads, DELTA_PATH, first).await?;
    let mut permit = Some(permit);
    loop {
        let Some(message) = stream.message().await? else {
            bail!("the server closed the stream");
        };
        tracker.received(message.len());
        let target = tracker.target();
        let env = Env { interner, target };
        let step = proxy.on_response(&message, &env)?;
        if !step.requests.is_empty() {
            stream.send(grpc::frame_all(&step.requests))?;
        }
        if step.synced {
            tracker.synced(index);
            drop(permit.take());
        }
        if let Some(port) = target.endpoint_port
            && carries_port(&message, port)?
        {
            tracker.converged(index, target.generation);
        }
    }
}

/// Whether a Delta response carries [`WATCHED`] with an endpoint on `port`.
fn carries_port(message: &[u8], port: u32) -> anyhow::Result<bool> {
    let response = DeltaResponse::parse(message)?;
    if response.type_url != type_url::ENDPOINT {
        return Ok(false);
    }
    for resource in response.resources() {
        let resource = resource?;
        if resource.name == WATCHED && xds_scan::load_assignment_has_port(resource.body, port)? {
            return Ok(true);
        }
    }
    Ok(false)
}

// ---- Reporting ----

/// p50 / max of per-round values, and how many rounds had none.
fn rounds_summary(values: &[Option<f64>]) -> String {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let missing = values.len() - v.len();
    let mut s = format!("{:.0} / {:.0}", v[(v.len() - 1) / 2], v[v.len() - 1]);
    if missing > 0 {
        s.push_str(&format!(" ({missing} missing)"));
    }
    s
}

fn calls(map: &BTreeMap<String, f64>) -> String {
    map.iter()
        .map(|(op, n)| format!("{op} {n:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_poll(cost: &PollCost) {
    eprintln!(
        "poll cost: first poll {:.2} s ({}); quiet: {:.2} s wall per poll, {} per poll (moto: {}), CPU {} ms per poll, RSS {} MiB",
        cost.first_poll_s,
        calls(&cost.first_poll_calls),
        cost.poll_wall_s,
        calls(&cost.calls_per_poll),
        calls(&cost.moto_calls_per_poll),
        cost.cpu_ms_per_poll
            .map_or("–".into(), |v| format!("{v:.0}")),
        kib(cost.rss_kib),
    );
}

fn print_row(row: &ChangeRow) {
    eprintln!(
        "{}: {} proxies synced in {:.1} s; register → all ACKed p50/max {} ms; first → last ACK p50/max {} ms; poll noticed → all ACKed p50/max {} ms",
        row.server,
        row.synced,
        row.sync_ms / 1e3,
        rounds_summary(&row.all_acked_ms),
        rounds_summary(&row.first_to_last_ms),
        rounds_summary(&row.noticed_to_all_ms),
    );
}

fn print_tables(results: &Results) {
    println!(
        "{} Cloud Map services × {} instances (moto), interval {}; {} Delta proxies; {} registrations per row; set-up {:.1} s ({} calls)",
        results.services,
        results.instances_per_service,
        results.interval,
        results.proxies,
        results.rounds,
        results.setup_ms / 1e3,
        results.setup_calls,
    );
    if let Some(p) = &results.poll {
        println!();
        println!(
            "| poll | wall s | calls (capstan's metric) | calls (moto) | capstan CPU ms | capstan RSS MiB |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| first (full), {:.1} s after start | {:.2} | {} | – | – | – |",
            p.start_to_first_poll_ms / 1e3,
            p.first_poll_s,
            calls(&p.first_poll_calls),
        );
        println!(
            "| quiet, per poll (mean of {:.0} over {:.1} s) | {:.2} | {} | {} | {} ({:.2} cores) | {} (peak {}) |",
            p.quiet_polls,
            p.quiet_period_s,
            p.poll_wall_s,
            calls(&p.calls_per_poll),
            calls(&p.moto_calls_per_poll),
            p.cpu_ms_per_poll.map_or("–".into(), |v| format!("{v:.0}")),
            p.cpu_cores.unwrap_or(f64::NAN),
            kib(p.rss_kib),
            kib(p.hwm_kib),
        );
    }
    println!();
    println!(
        "| server | proxies synced | sync s | register → all ACKed p50 / max ms | register → poll done p50 / max ms | register → first ACK p50 / max ms | first → last ACK p50 / max ms | poll seen done → all ACKed p50 / max ms (a lower bound) | per proxy p50/p99/max ms | missed | RegisterInstance ms (median) | server CPU ms per change | writer CPU ms per change | received per proxy per change | RSS end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &results.rows {
        let mut register = row.register_call_ms.clone();
        register.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {:.1} responses, {} | {} |",
            row.server,
            row.synced,
            row.sync_ms / 1e3,
            rounds_summary(&row.all_acked_ms),
            rounds_summary(&row.noticed_ms),
            rounds_summary(&row.first_acked_ms),
            rounds_summary(&row.first_to_last_ms),
            rounds_summary(&row.noticed_to_all_ms),
            fmt_ms(row.per_proxy.p50_ms),
            fmt_ms(row.per_proxy.p99_ms),
            fmt_ms(row.per_proxy.max_ms),
            row.per_proxy.missing(),
            register
                .get(register.len() / 2)
                .map_or("–".into(), |v| format!("{v:.1}")),
            row.cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.writer_cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.responses_per_proxy_per_change,
            capstan_load::stats::fmt_bytes(row.bytes_per_proxy_per_change),
            kib(row.rss_end_kib),
        );
    }
}
