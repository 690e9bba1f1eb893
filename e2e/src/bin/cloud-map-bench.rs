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
//!
//! The servers, the proxies and the process figures are `capstan_e2e::bench`'s, shared with
//! `capstan-kube-bench`; this binary's own modules are in `cloud_map_bench/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstan_e2e::bench::report::{log_to_stderr, machine, ms, results_path};
use capstan_e2e::bench::server::{capstan_bin, istiod_bin};
use capstan_e2e::cloudmap::CloudMap;
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::moto::{Moto, MotoFaults};
use capstan_load::stats::Percentiles;
use clap::Parser;
use serde::Serialize;
use tracing::{info, warn};

use rows::Bench;

#[path = "cloud_map_bench/metrics.rs"]
mod metrics;
#[path = "cloud_map_bench/report.rs"]
mod report;
#[path = "cloud_map_bench/rounds.rs"]
mod rounds;
#[path = "cloud_map_bench/rows.rs"]
mod rows;
#[path = "cloud_map_bench/setup.rs"]
mod setup;

const CLOUD_MAP_NAMESPACE: &str = "bench.local";
const MESH_NAMESPACE: &str = "cloud-map";
/// The service that gains an instance each round, and the cluster every proxy waits for.
const CHANGED_SERVICE: &str = "svc-0";
const WATCHED: &str = "outbound|8080||svc-0.bench.local";
const POLL_TIMEOUT: Duration = Duration::from_secs(600);

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
    log_to_stderr();
    let cli = Cli::parse();
    ensure!(
        cli.services > 0 && cli.instances > 0,
        "no services or instances"
    );
    let capstan_bin = capstan_bin(cli.capstan.as_deref())?;
    let istiod_bin = istiod_bin(cli.istiod.as_deref());
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
    let changed_service = setup::setup(&cloud_map, &cli).await?;
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
        report::print_poll(&cost);
        report::print_row(&row);
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
            report::print_row(&row);
            rows.push(row);
        }
    }

    let results = Results {
        machine: machine(),
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
    let out = results_path(cli.out.clone(), "cloud-map.json")?;
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    report::print_tables(&results);
    eprintln!("results: {}", out.display());
    Ok(())
}
