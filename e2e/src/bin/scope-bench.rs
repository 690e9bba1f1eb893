//! capstan-scope-bench: how much a sidecar receives with and without an Istio `Sidecar`
//! scope, in a mesh of `--namespaces` × `--services-per-namespace` services.
//!
//! For each of SotW and Delta, and each of "unscoped" (no `Sidecar`) and "scoped" (the
//! root-namespace default `Sidecar` with egress hosts `./*` and `istio-system/*`, as Istio's
//! docs recommend for large meshes), a fresh capstan (`capstan run --config-dir`) serves the
//! mesh and one real Envoy, a sidecar in the first namespace, connects. Once Envoy holds the
//! clusters it should and has received nothing for a while, the bench reads Envoy's own
//! counters: bytes received on its xDS connection (`upstream_cx_rx_bytes_total` of the xDS
//! cluster: the gRPC frames as they arrived), clusters, virtual hosts, and the memory Envoy
//! has allocated.
//!
//! Run: `make bench-scope`, or `cargo build --release -p capstan -p capstan-e2e --bin capstan
//! --bin capstan-scope-bench` and run `capstan-scope-bench` from the release directory (Envoy
//! from `$ENVOY_BIN` or `make tools`; capstan from `$CAPSTAN_BIN`, else built next to it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::bench_info::{commit, machine, write_results};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, route_counts};
use capstan_e2e::locate;
use capstan_e2e::wait_until;
use clap::Parser;
use serde::Serialize;

/// Envoy's static cluster for capstan (see `Bootstrap::to_json`).
const XDS_CLUSTER: &str = "xds_cluster";
/// How long Envoy must receive nothing before its counters are read.
const QUIET: Duration = Duration::from_secs(2);
/// Bounds a hang only; nothing is timed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(name = "capstan-scope-bench")]
struct Cli {
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    #[arg(long, default_value_t = 20)]
    services_per_namespace: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Where to write the JSON results (default: `<profile dir>/bench/scope-bench.json`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: String,
    commit: String,
    services: usize,
    namespaces: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Row {
    xds: &'static str,
    scope: &'static str,
    clusters: u64,
    virtual_hosts: usize,
    xds_bytes_received: u64,
    envoy_memory_allocated: u64,
}

/// The mesh: one file per namespace, each service with an HTTP port and `endpoints`
/// endpoints; `scoped` adds the root namespace's default `Sidecar`.
fn write_mesh(cli: &Cli, dir: &Path, scoped: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for n in 0..cli.namespaces {
        let mut text = String::new();
        for s in 0..cli.services_per_namespace {
            let endpoints: Vec<String> = (0..cli.endpoints)
                .map(|e| format!("{{address: 10.{n}.{s}.{e}}}"))
                .collect();
            let _ = write!(
                text,
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{s}, namespace: ns-{n}}}
spec:
  hosts: [svc-{s}.ns-{n}.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{}]
---
",
                endpoints.join(", ")
            );
        }
        std::fs::write(dir.join(format!("ns-{n}.yaml")), text)?;
    }
    if scoped {
        std::fs::write(
            dir.join("sidecar.yaml"),
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress:
  - hosts: [\"./*\", \"istio-system/*\"]
",
        )?;
    }
    Ok(())
}

async fn measure(
    cli: &Cli,
    mode: AdsMode,
    scoped: bool,
    tmp: &Path,
    log_dir: &Path,
) -> anyhow::Result<Row> {
    let scope = if scoped { "scoped" } else { "unscoped" };
    let xds = match mode {
        AdsMode::Sotw => "sotw",
        AdsMode::Delta => "delta",
    };
    let name = format!("{xds}-{scope}");
    let config_dir = tmp.join(&name);
    write_mesh(cli, &config_dir, scoped)?;
    let capstan =
        Capstan::start_folder_with(&config_dir, &[], log_dir, &format!("capstan-{name}")).await?;
    let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
    bootstrap.namespace = "ns-0".to_string();
    bootstrap.workload = "client-0".to_string();
    let envoy = Envoy::start(
        &locate::envoy_bin()?,
        &bootstrap,
        log_dir,
        &format!("envoy-{name}"),
    )
    .await?;
    // The xDS cluster is Envoy's own; the rest are capstan's.
    let expected = if scoped {
        cli.services_per_namespace
    } else {
        cli.namespaces * cli.services_per_namespace
    } as u64
        + 1;
    let rx = format!("cluster.{XDS_CLUSTER}.upstream_cx_rx_bytes_total");
    let what = format!("{name}: {expected} clusters and {QUIET:?} without xDS bytes");
    let mut last: Option<u64> = None;
    let (clusters, bytes) = wait_until(&what, SYNC_TIMEOUT, async || {
        let clusters = envoy.stat("cluster_manager.active_clusters").await?;
        ensure!(clusters == expected, "{clusters} clusters");
        let bytes = envoy.stat(&rx).await?;
        let settled = last == Some(bytes);
        last = Some(bytes);
        ensure!(settled, "{bytes} bytes, still receiving");
        tokio::time::sleep(QUIET).await;
        let again = envoy.stat(&rx).await?;
        ensure!(again == bytes, "{again} bytes, still receiving");
        Ok((clusters - 1, bytes))
    })
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    envoy.ensure_no_rejected_updates().await?;
    let memory = envoy.stat("server.memory_allocated").await?;
    let (virtual_hosts, _) = route_counts(&envoy.config_dump(false).await?);
    drop(envoy);
    drop(capstan);
    Ok(Row {
        xds,
        scope,
        clusters,
        virtual_hosts,
        xds_bytes_received: bytes,
        envoy_memory_allocated: memory,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    ensure!(
        cli.namespaces >= 1 && cli.services_per_namespace >= 1,
        "at least one namespace and one service per namespace"
    );
    let log_dir = locate::fresh_log_dir("scope-bench")?;
    let tmp = tempfile::Builder::new()
        .prefix("capstan-scope-bench-")
        .tempdir()?;
    let mut rows = Vec::new();
    for mode in [AdsMode::Sotw, AdsMode::Delta] {
        for scoped in [false, true] {
            rows.push(measure(&cli, mode, scoped, tmp.path(), &log_dir).await?);
        }
    }
    let results = Results {
        machine: machine(),
        commit: commit(),
        services: cli.namespaces * cli.services_per_namespace,
        namespaces: cli.namespaces,
        rows,
    };
    println!(
        "What one sidecar receives: {} services in {} namespaces, {} endpoints each; {}, commit {}",
        results.services, results.namespaces, cli.endpoints, results.machine, results.commit
    );
    println!(
        "| xDS | Sidecar scope | clusters | virtual hosts | xDS bytes received | Envoy memory allocated |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &results.rows {
        println!(
            "| {} | {} | {} | {} | {:.1} KiB | {:.1} MiB |",
            row.xds,
            row.scope,
            row.clusters,
            row.virtual_hosts,
            row.xds_bytes_received as f64 / 1024.0,
            row.envoy_memory_allocated as f64 / (1024.0 * 1024.0)
        );
    }
    write_results(&results, cli.out.as_deref(), "scope-bench.json", &log_dir)?;
    Ok(())
}
