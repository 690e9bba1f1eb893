//! capstan-bench: the whole ADS load benchmark in one run on this machine. For every load of
//! the matrix (1,000 and 10,000 Delta proxies, 1,000 SotW proxies; `--quick`: 100 of each),
//! each server in turn — capstan, go-control-plane with its snapshot cache, and with its linear
//! cache — is started on free loopback ports, loaded in-process by `capstan_load`, and
//! stopped. One table compares them, with the ratio capstan/peer on each peer row; the
//! reports go to `<target>/bench/load.json`, and a markdown table for BENCHMARKS.md to stdout.
//!
//! capstan's server is this same binary (`capstan-bench serve-capstan`), so it always matches
//! the code under test. The peer is `$CAPSTAN_GCP_PEER` (built by `scripts/build-peer.sh`).

mod machine;
mod matrix;
mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use capstan_load::server_process::ServerProcess;
use capstan_load::{LoadConfig, LoadReport};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::machine::Machine;
use crate::matrix::{Case, Matrix, Row, Server};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "capstan-bench",
    about = "ADS load benchmark: capstan vs go-control-plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run the small smoke-test matrix (100 proxies, 100 services).
    #[arg(long)]
    quick: bool,
    /// Servers to run (default: all three; peers are skipped when the peer binary is missing).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Server>,
    /// Rounds per change kind (default: 5, or 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Proxies connecting and syncing at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// The go-control-plane peer binary.
    #[arg(long, env = "CAPSTAN_GCP_PEER")]
    peer: Option<PathBuf>,
    /// Where to write the JSON results (default: <target dir>/bench/load.json, or
    /// load-quick.json with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run capstan's bench server (what `capstan-bench-server` runs); used by the benchmark.
    #[command(hide = true)]
    ServeCapstan(capstan_load::bench_server::BenchServerArgs),
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    machine: &'a Machine,
    matrix: &'a Matrix,
    rows: &'a [Row],
}

/// The repository this binary was built from.
fn repo_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn default_out(quick: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_dir().join("target"), PathBuf::from);
    let file = if quick {
        "load-quick.json"
    } else {
        "load.json"
    };
    target.join("bench").join(file)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(Command::ServeCapstan(args)) = &cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_writer(std::io::stderr)
            .init();
        runtime.block_on(capstan_load::bench_server::serve(
            args,
            capstan_load::bench_server::shutdown_signal(),
        ))?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    runtime.block_on(bench(&cli))
}

async fn bench(cli: &Cli) -> anyhow::Result<()> {
    let mut matrix = if cli.quick {
        Matrix::quick()
    } else {
        Matrix::full()
    };
    if let Some(rounds) = cli.rounds {
        matrix.rounds = rounds;
    }
    let servers: Vec<Server> = if cli.only.is_empty() {
        Server::ALL.to_vec()
    } else {
        cli.only.clone()
    };
    let peer = match &cli.peer {
        Some(path) if path.is_file() => Ok(path.clone()),
        Some(path) => Err(format!(
            "peer binary {} not found (run scripts/build-peer.sh)",
            path.display()
        )),
        None => Err("CAPSTAN_GCP_PEER is not set (run scripts/build-peer.sh)".into()),
    };
    if let Err(why) = &peer
        && servers.iter().any(|s| s.peer_cache().is_some())
    {
        warn!("go-control-plane rows skipped: {why}");
    }
    let machine = Machine::describe(&repo_dir());
    info!("{}", machine.summary());
    let own_exe = std::env::current_exe().context("locating capstan-bench itself")?;

    let mut rows = Vec::new();
    for &case in &matrix.cases {
        for &server in &servers {
            let launch = match (server.peer_cache(), &peer) {
                (None, _) => Ok((own_exe.clone(), vec!["serve-capstan".to_string()], vec![])),
                (Some(cache), Ok(peer)) => Ok((
                    peer.clone(),
                    vec![],
                    vec!["--cache".to_string(), cache.to_string()],
                )),
                (Some(_), Err(why)) => Err(why.clone()),
            };
            info!(
                server = server.name(),
                protocol = %case.protocol,
                proxies = case.proxies,
                "starting run"
            );
            let outcome = match launch {
                Ok((program, leading, trailing)) => {
                    run_one(cli, &matrix, case, &program, &leading, &trailing).await
                }
                Err(why) => Err(anyhow::anyhow!(why)),
            };
            match &outcome {
                Ok(report) => println!("\n== {} ==\n{}", server.name(), report.table()),
                Err(e) => warn!(server = server.name(), "run failed: {e:#}"),
            }
            let (report, error) = match outcome {
                Ok(report) => (Some(report), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            rows.push(Row {
                server,
                case,
                report,
                error,
            });
        }
    }

    let out = cli.out.clone().unwrap_or_else(|| default_out(cli.quick));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&Results {
        machine: &machine,
        matrix: &matrix,
        rows: &rows,
    })?;
    std::fs::write(&out, json + "\n").with_context(|| format!("writing {}", out.display()))?;

    println!("\n{}\n", machine.summary());
    print!("{}", table::text(&rows));
    println!("\nresults: {}\n", out.display());
    print!("{}", table::markdown(&rows, &machine, &matrix));
    println!();
    print!("{}", table::targets(&rows, &matrix));
    Ok(())
}

/// Starts one server, runs one load against it, stops it.
async fn run_one(
    cli: &Cli,
    matrix: &Matrix,
    case: Case,
    program: &Path,
    leading: &[String],
    trailing: &[String],
) -> anyhow::Result<LoadReport> {
    let server = ServerProcess::start(
        program,
        leading,
        matrix.services,
        matrix.endpoints,
        trailing,
        READY_TIMEOUT,
    )
    .await?;
    let mut config = LoadConfig::new(server.ads, server.control, case.proxies, case.protocol);
    config.rounds = matrix.rounds;
    config.connect_concurrency = cli.connect_concurrency;
    config.server_pid = Some(server.pid());
    config.first_change = 0;
    let report = capstan_load::run(&config).await;
    let stopped = server.stop().await;
    let report = report?;
    stopped?;
    Ok(report)
}
