//! capstan-fault-bench: what the worst hostile clients of `e2e/tests/faults_*.rs` cost the
//! well-behaved proxies. capstan's bench server (`capstan-bench-server`, the same ADS server
//! and limits as `capstan run`) serves S services; P simulated Delta proxies (`capstan_load`)
//! sync and time R endpoint changes, once alone and once while hostile clients run against
//! the same ADS port: idle TCP connections, half-open HTTP/2 connections, stream-reset
//! floods, NACK storms with 64 KiB reasons, clients that never read, and oversized node ids.
//! Prints both runs' latency and the server's memory, and writes them as JSON.
//!
//! Build: `cargo build --release -p capstan-load -p capstan-e2e --bin capstan-bench-server
//! --bin capstan-fault-bench`; run `$CARGO_TARGET_DIR/release/capstan-fault-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use capstan_e2e::hostile_ads::{AdsClient, nack_everything, subscribe_all};
use capstan_e2e::transport::{self, rss_kib};
use capstan_load::server_process::ServerProcess;
use capstan_load::stats::{Percentiles, fmt_ms};
use capstan_load::{LoadConfig, LoadReport, Protocol, Scenario};
use clap::Parser;
use serde::Serialize;
use tokio::task::JoinSet;

/// The HTTP/2 connection preface: a connection that sends it and then nothing is half-open.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Parser)]
#[command(name = "capstan-fault-bench")]
struct Cli {
    /// Well-behaved Delta proxies.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes timed per run.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Hostile clients of each connection-level kind (idle TCP, half-open HTTP/2).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Hostile ADS streams of each kind (NACKing, never reading).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    calm: LoadReport,
    under_attack: LoadReport,
    /// The server's RSS after each run, and at its highest sampled during the attack.
    calm_rss_kib: Option<u64>,
    attack_rss_kib: Option<u64>,
    attack_peak_rss_kib: u64,
    /// What the hostile clients did during the attack run.
    attack: AttackCounts,
}

#[derive(Debug, Default, Serialize)]
struct AttackCounts {
    nacks: u64,
    reset_floods: u64,
    reset_streams: u64,
    oversized_nodes: u64,
    reconnects_after_close: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,capstan_load=info".into()),
        )
        .init();
    let cli = Cli::parse();
    transport::ensure_fds(cli.proxies + 4 * cli.idle + 4 * cli.streams + 1000)?;
    let server_bin = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .join("capstan-bench-server");
    let server = ServerProcess::start(
        &server_bin,
        &[],
        cli.services,
        cli.endpoints,
        &[],
        Duration::from_secs(120),
    )
    .await
    .with_context(|| format!("starting {} (build it first)", server_bin.display()))?;
    let pid = server.pid();
    let config = |first_change| {
        let mut config = LoadConfig::new(server.ads, server.control, cli.proxies, Protocol::Delta);
        config.scenarios = vec![Scenario::Endpoint];
        config.rounds = cli.rounds;
        config.server_pid = Some(pid);
        config.first_change = first_change;
        config
    };
    let first = capstan_load::runner::default_first_change();

    eprintln!("run 1: {} proxies alone", cli.proxies);
    let calm = capstan_load::run(&config(first)).await?;
    let calm_rss_kib = rss_kib(pid).ok();

    eprintln!("run 2: the same, with hostile clients");
    let counts = Arc::new(Counters::default());
    let mut attack = start_attack(server.ads, &cli, counts.clone());
    // Let the connection-level attackers fill their slots before the proxies connect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(pid, peak.clone()));
    let under_attack = capstan_load::run(&config(first + 1000)).await?;
    let attack_rss_kib = rss_kib(pid).ok();
    sampler.abort();
    attack.abort_all();
    server.stop().await?;

    let results = Results {
        calm,
        under_attack,
        calm_rss_kib,
        attack_rss_kib,
        attack_peak_rss_kib: peak.load(Ordering::Relaxed),
        attack: counts.snapshot(),
    };
    print_summary(&results);
    let out = cli.out.unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or("target".into(), PathBuf::from);
        target.join("bench/faults.json")
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    eprintln!("results: {}", out.display());
    Ok(())
}

#[derive(Default)]
struct Counters {
    nacks: AtomicU64,
    reset_floods: AtomicU64,
    reset_streams: AtomicU64,
    oversized_nodes: AtomicU64,
    reconnects: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> AttackCounts {
        AttackCounts {
            nacks: self.nacks.load(Ordering::Relaxed),
            reset_floods: self.reset_floods.load(Ordering::Relaxed),
            reset_streams: self.reset_streams.load(Ordering::Relaxed),
            oversized_nodes: self.oversized_nodes.load(Ordering::Relaxed),
            reconnects_after_close: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// Every hostile client, each kind in a loop that starts again when capstan closes it.
fn start_attack(ads: SocketAddr, cli: &Cli, counts: Arc<Counters>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    // Idle TCP and half-open HTTP/2 connections, reopened as capstan closes them.
    for (first, n) in [(&b""[..], cli.idle), (H2_PREFACE, cli.idle)] {
        for _ in 0..n {
            let counts = counts.clone();
            set.spawn(async move {
                loop {
                    let mut held = transport::hold_connections(ads, 1, first);
                    let _ = held.join_next().await;
                    counts.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    // Two stream-reset floods, one after the other, forever.
    for wait_accepted in [false, true] {
        let counts = counts.clone();
        set.spawn(async move {
            loop {
                if let Ok((opened, _)) = transport::reset_flood(ads, 20_000, wait_accepted).await {
                    counts
                        .reset_streams
                        .fetch_add(opened as u64, Ordering::Relaxed);
                }
                counts.reset_floods.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let reason = Arc::new(format!("bench NACK: {}", "r".repeat(64 * 1024)));
    for i in 0..cli.streams {
        // NACK everything, with a 64 KiB reason.
        let (counts, reason) = (counts.clone(), reason.clone());
        set.spawn(async move {
            let id = format!(
                "sidecar~10.2.{}.{}~nack-{i}.ns~ns.svc.cluster.local",
                i / 250,
                i % 250
            );
            loop {
                let nacks = &counts.nacks;
                let _ = nack_everything(ads, &id, &reason, || {
                    nacks.fetch_add(1, Ordering::Relaxed);
                })
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Subscribe to everything and never read (1 KiB window).
        set.spawn(async move {
            let id = format!("stuck-{i}");
            if let Ok(_client) = AdsClient::delta(ads, 1024, subscribe_all(&id)).await {
                std::future::pending::<()>().await;
            }
        });
    }
    // Oversized node ids (1 MiB), again and again.
    set.spawn(async move {
        let id = "x".repeat(1 << 20);
        loop {
            if let Ok(mut client) = AdsClient::delta(ads, 1 << 20, subscribe_all(&id)).await {
                let _ = client.final_status().await;
            }
            counts.oversized_nodes.fetch_add(1, Ordering::Relaxed);
        }
    });
    set
}

/// Keeps the highest RSS of `pid` seen, sampled every 100 ms.
async fn sample_rss(pid: u32, peak: Arc<AtomicU64>) {
    loop {
        if let Ok(kib) = rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(results: &Results) {
    println!(
        "| run | synced | endpoint change p50 | p99 | max | failures | server RSS after sync | after the run |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, report, after) in [
        ("alone", &results.calm, results.calm_rss_kib),
        (
            "under attack",
            &results.under_attack,
            results.attack_rss_kib,
        ),
    ] {
        let overall = report.scenario(Scenario::Endpoint).map(|s| &s.overall);
        let ms = |f: fn(&Percentiles) -> Option<f64>| fmt_ms(overall.and_then(f));
        println!(
            "| {name} | {}/{} | {} ms | {} ms | {} ms | {} | {} MiB | {} MiB |",
            report.sync.synced,
            report.proxies,
            ms(|p| p.p50_ms),
            ms(|p| p.p99_ms),
            ms(|p| p.max_ms),
            report.failures,
            report.server_rss.map_or(0, |r| r.after_kib) / 1024,
            after.unwrap_or(0) / 1024,
        );
    }
    println!(
        "attack: peak server RSS {} MiB; {:?}",
        results.attack_peak_rss_kib / 1024,
        results.attack
    );
}
