//! capstan's bench server: the benchmark mesh in capstan's snapshot cache, served over ADS,
//! with the control API of the bench-server contract (see `capstan_load::bench_server`).

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "capstan-bench-server",
    about = "capstan's ADS server for load benchmarks"
)]
struct Cli {
    #[command(flatten)]
    server: capstan_load::bench_server::BenchServerArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            capstan_load::bench_server::serve(
                &cli.server,
                capstan_load::bench_server::shutdown_signal(),
            )
            .await
        })?;
    Ok(())
}
