//! Simulates N Envoy proxies over ADS against a bench server and reports how long config
//! changes take to reach all of them (see `capstan_load`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use capstan_load::{LoadConfig, Protocol, Scenario};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "capstan-load",
    about = "ADS load generator: simulated Envoy proxies"
)]
struct Cli {
    /// The server's ADS address.
    #[arg(long)]
    ads: SocketAddr,
    /// The server's control API address (bench-server contract).
    #[arg(long)]
    control: SocketAddr,
    /// Simulated proxies.
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    /// xDS protocol: sotw or delta.
    #[arg(long, default_value = "delta")]
    protocol: Protocol,
    /// ADS streams per HTTP/2 connection (1: a connection per proxy, like Envoy).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Proxies connecting and syncing at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Scenarios to run after the sync, in order: endpoint, all.
    #[arg(long, value_delimiter = ',', default_value = "endpoint,all")]
    scenarios: Vec<Scenario>,
    /// Rounds (changes) per scenario.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds after a change until a proxy that has not got it counts as missing.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Pause after each round, milliseconds.
    #[arg(long, default_value_t = 500)]
    pause_ms: u64,
    /// Seconds to wait for every proxy's initial sync.
    #[arg(long, default_value_t = 600)]
    sync_timeout_s: u64,
    /// The server's process id, to report its memory (VmRSS) per proxy.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Number of the first change (markers `marker-N`, ports derived from N); default from
    /// the clock, so repeated runs against one server make real changes.
    #[arg(long)]
    first_change: Option<u64>,
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build()?;

    let mut config = LoadConfig::new(cli.ads, cli.control, cli.proxies, cli.protocol);
    config.streams_per_connection = cli.streams_per_connection;
    config.connect_concurrency = cli.connect_concurrency;
    config.scenarios = cli.scenarios;
    config.rounds = cli.rounds;
    config.round_timeout = Duration::from_secs(cli.timeout_s);
    config.pause = Duration::from_millis(cli.pause_ms);
    config.sync_timeout = Duration::from_secs(cli.sync_timeout_s);
    config.server_pid = cli.server_pid;
    if let Some(first) = cli.first_change {
        config.first_change = first;
    }
    let report = runtime.block_on(capstan_load::run(&config))?;
    print!("{}", report.table());
    if let Some(path) = cli.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
