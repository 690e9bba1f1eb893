//! `capstan-ca-bench`: how fast capstan's CA signs workload certificates, over the real path
//! (`CreateCertificate` over TLS, the caller's token checked by TokenReview against a real
//! kube-apiserver, then cached), with istiod's CA as the peer when `pilot-discovery` is built
//! (scripts/build-istiod.sh).
//!
//! For each server: starts it on the same apiserver, warms the token cache (one request per
//! token), then
//! 1. *throughput*: `--workers` concurrent callers over `--connections` TLS connections send
//!    CSRs (ECDSA P-256 keys) back to back for `--seconds`; signings per second, latency, and
//!    the server's CPU per signing (`/proc/PID/stat`);
//! 2. *agents*: `--agents` separate TLS connections (one per simulated agent, as after a
//!    restart of every pod) each send one CSR at the same instant; latency p50/p99/max.
//!
//! Results: a markdown table on stdout and JSON at `--out` (default
//! `<target dir>/bench/ca.json`).

#[path = "ca_bench/client.rs"]
mod client;
#[path = "ca_bench/servers.rs"]
mod servers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capstan_e2e::bench::report;
use capstan_e2e::kube::KubeCluster;
use capstan_load::stats::{Percentiles, fmt_ms};
use clap::Parser;
use serde::Serialize;
use tokio::sync::Barrier;
use tracing::info;

use client::{Caller, csr_for};

const NAMESPACE: &str = "ca-bench";
const SERVICE_ACCOUNTS: usize = 10;

#[derive(Debug, Parser)]
#[command(
    name = "capstan-ca-bench",
    about = "CSR signing: capstan's CA vs istiod's"
)]
struct Cli {
    /// Smoke-test size: 100 agents, 3 s of throughput.
    #[arg(long)]
    quick: bool,
    /// Simultaneous agents in the latency phase [default: 1000, 100 with --quick].
    #[arg(long)]
    agents: Option<usize>,
    /// Seconds of the throughput phase [default: 10, 3 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Concurrent callers in the throughput phase.
    #[arg(long, default_value_t = 256)]
    workers: usize,
    /// TLS connections the throughput callers share. capstan closes a connection that makes
    /// more than 64 calls a second after a burst of 256 (an agent makes one a day), so the
    /// default gives each caller its own.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// The capstan binary [default: `capstan` beside this binary].
    #[arg(long)]
    capstan: Option<PathBuf>,
    /// istiod's pilot-discovery [default: $CAPSTAN_TOOLS_DIR/istiod/pilot-discovery].
    #[arg(long, env = "CAPSTAN_ISTIOD")]
    istiod: Option<PathBuf>,
    /// Servers to run: capstan (its default ECDSA P-256 root), capstan-rsa (an RSA 2048 root,
    /// the key istiod's self-signed root has) and istiod.
    #[arg(long, value_delimiter = ',', default_values = ["capstan", "capstan-rsa", "istiod"])]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    server: String,
    signed: u64,
    failed: u64,
    seconds: f64,
    per_second: f64,
    latency: Percentiles,
    /// Server CPU per signing, in microseconds.
    cpu_us_per_signing: Option<f64>,
    agents: Percentiles,
    agents_failed: usize,
    errors: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    report::log_to_stderr();
    let cli = Cli::parse();
    let agents = cli.agents.unwrap_or(if cli.quick { 100 } else { 1000 });
    let seconds = cli.seconds.unwrap_or(if cli.quick { 3 } else { 10 });

    let cluster = KubeCluster::start("ca-bench").await?;
    cluster.kubectl(&["create", "namespace", NAMESPACE]).await?;
    let mut callers = Vec::new();
    for i in 0..SERVICE_ACCOUNTS {
        let sa = format!("sa-{i}");
        cluster
            .kubectl(&["create", "serviceaccount", &sa, "-n", NAMESPACE])
            .await?;
        let token = cluster
            .kubectl(&[
                "create",
                "token",
                &sa,
                "-n",
                NAMESPACE,
                "--audience",
                "istio-ca",
                "--duration",
                "2h",
            ])
            .await?;
        callers.push(Caller {
            token: token.trim().to_string(),
            csr: csr_for(NAMESPACE, &sa)?,
        });
    }
    let callers = Arc::new(callers);

    let mut rows = Vec::new();
    for name in &cli.only {
        let Some(server) = servers::start(name, &cli, &cluster).await? else {
            continue;
        };
        info!(server = name, addr = %server.addr, "measuring");
        let row = measure(name, &server, &callers, &cli, agents, seconds).await;
        rows.push(row);
        drop(server);
    }

    print_table(&rows, agents, seconds, &cli);
    let out = report::results_path(cli.out.clone(), "ca.json")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let results = serde_json::json!({
        "agents": agents, "seconds": seconds, "workers": cli.workers,
        "connections": cli.connections, "rows": rows, "machine": report::machine(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results: {}", out.display());
    Ok(())
}

async fn measure(
    name: &str,
    server: &servers::Server,
    callers: &Arc<Vec<Caller>>,
    cli: &Cli,
    agents: usize,
    seconds: u64,
) -> Row {
    let mut errors = Vec::new();
    // Warm: one request per token, so every later TokenReview is a cache hit.
    match client::connect(server.addr).await {
        Ok(mut channel) => {
            for caller in callers.iter() {
                if let Err(e) = client::sign(&mut channel, caller).await {
                    errors.push(format!("warm-up: {e:#}"));
                }
            }
        }
        Err(e) => errors.push(format!("connect: {e:#}")),
    }

    // Throughput.
    let mut channels = Vec::new();
    for _ in 0..cli.connections {
        match client::connect(server.addr).await {
            Ok(c) => channels.push(c),
            Err(e) => errors.push(format!("connect: {e:#}")),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (signed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu_before = capstan_load::cpu::cpu_time(server.pid);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..cli.workers.min(channels.len() * 1000) {
        let Some(channel) = channels.get(w % channels.len().max(1)).cloned() else {
            break;
        };
        let (callers, stop, signed, failed) = (
            callers.clone(),
            stop.clone(),
            signed.clone(),
            failed.clone(),
        );
        workers.spawn(async move {
            let mut channel = channel;
            let mut latencies = Vec::new();
            let mut i = w;
            let mut last_error = None;
            while !stop.load(Ordering::Relaxed) {
                let caller = &callers[i % callers.len()];
                i += 1;
                let sent = Instant::now();
                match client::sign(&mut channel, caller).await {
                    Ok(()) => {
                        signed.fetch_add(1, Ordering::Relaxed);
                        latencies.push(Some(sent.elapsed()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        last_error = Some(format!("{e:#}"));
                    }
                }
            }
            (latencies, last_error)
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        if let Ok((mut l, e)) = done {
            latencies.append(&mut l);
            errors.extend(e);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = capstan_load::cpu::cpu_time(server.pid);
    let signed = signed.load(Ordering::Relaxed);
    let cpu_us_per_signing = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if signed > 0 => {
            Some(a.saturating_sub(b).as_secs_f64() * 1e6 / signed as f64)
        }
        _ => None,
    };

    // Agents: one connection each, all asking at once.
    let barrier = Arc::new(Barrier::new(agents));
    let mut tasks = tokio::task::JoinSet::new();
    let connects = Arc::new(tokio::sync::Semaphore::new(100));
    for a in 0..agents {
        let (barrier, callers, connects, addr) = (
            barrier.clone(),
            callers.clone(),
            connects.clone(),
            server.addr,
        );
        tasks.spawn(async move {
            let channel = {
                let _permit = connects.acquire().await;
                client::connect(addr).await
            };
            barrier.wait().await;
            let mut channel = channel?;
            let sent = Instant::now();
            client::sign(&mut channel, &callers[a % callers.len()]).await?;
            anyhow::Ok(sent.elapsed())
        });
    }
    let mut samples = Vec::new();
    let mut agents_failed = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(latency)) => samples.push(Some(latency)),
            Ok(Err(e)) => {
                agents_failed += 1;
                samples.push(None);
                if errors.len() < 20 {
                    errors.push(format!("agent: {e:#}"));
                }
            }
            Err(e) => {
                agents_failed += 1;
                samples.push(None);
                errors.push(format!("agent task: {e}"));
            }
        }
    }
    errors.dedup();
    Row {
        server: name.to_string(),
        signed,
        failed: failed.load(Ordering::Relaxed),
        seconds: elapsed,
        per_second: signed as f64 / elapsed,
        latency: Percentiles::of(&latencies),
        cpu_us_per_signing,
        agents: Percentiles::of(&samples),
        agents_failed,
        errors,
    }
}

fn print_table(rows: &[Row], agents: usize, seconds: u64, cli: &Cli) {
    println!(
        "\n{} callers over {} TLS connections for {seconds} s; then {agents} agents, one connection each, at once\n",
        cli.workers, cli.connections
    );
    println!(
        "| server | signings/s | p50 ms | p99 ms | server CPU µs/signing | {agents} agents p50 ms | p99 ms | max ms | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.server,
            r.per_second,
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p99_ms),
            r.cpu_us_per_signing
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "-".into()),
            fmt_ms(r.agents.p50_ms),
            fmt_ms(r.agents.p99_ms),
            fmt_ms(r.agents.max_ms),
            r.failed as usize + r.agents_failed,
        );
    }
    for r in rows {
        for e in r.errors.iter().take(5) {
            eprintln!("{}: {e}", r.server);
        }
    }
}
