//! `capstan-demo` (what `make run` runs): a small bookinfo-like mesh on loopback.
//!
//! Starts capstan-upstream servers (productpage v1, reviews v1/v2/v3, ratings v1 on the ports
//! examples/*.yaml point at), `capstan run` on examples/, and one Envoy bootstrapped to it;
//! waits until routing works, prints curl commands that show it, and runs until Ctrl-C, then
//! stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::http::HttpClient;
use capstan_e2e::locate;
use capstan_e2e::mesh::OUTBOUND_LISTENER;
use capstan_e2e::process::ChildProcess;
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use clap::Parser;

/// The upstream instances; examples/*.yaml must use the same ports.
const UPSTREAMS: &[(&str, &str, u16)] = &[
    ("productpage", "v1", 19001),
    ("reviews", "v1", 19081),
    ("reviews", "v2", 19082),
    ("reviews", "v3", 19083),
    ("ratings", "v1", 19091),
];

#[derive(Parser, Debug)]
#[command(about = "Run capstan, Envoy and a bookinfo-like set of upstreams on loopback")]
struct Args {
    /// Directory with the Istio YAML capstan serves.
    #[arg(long, default_value_os_t = locate::repo_dir().join("examples"))]
    config_dir: PathBuf,
    /// capstan's ADS port on 127.0.0.1.
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// Port of Envoy's outbound HTTP listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Envoy admin port on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Use Delta xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
}

/// Everything the demo started; dropping it stops all processes (Envoy first).
struct Demo {
    envoy: Envoy,
    capstan: ChildProcess,
    upstreams: Upstreams,
}

impl Demo {
    /// The first child that has exited, as an error with its log tail.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.upstreams.process.ensure_running()?;
        self.capstan.ensure_running()?;
        self.envoy.process().ensure_running()
    }
}

fn step(msg: &str) {
    println!("demo: {msg}");
}

async fn start(args: &Args, log_dir: &std::path::Path) -> anyhow::Result<Demo> {
    let envoy_bin = locate::envoy_bin()?;
    let capstan_bin = locate::capstan_bin()?;
    let upstream_bin = locate::upstream_bin()?;
    ensure!(
        args.config_dir.is_dir(),
        "config dir {} does not exist",
        args.config_dir.display()
    );

    step("starting upstreams (productpage v1, reviews v1/v2/v3, ratings v1) ...");
    let instances: Vec<(&str, &str, SocketAddr)> = UPSTREAMS
        .iter()
        .map(|(s, v, port)| (*s, *v, loopback(*port)))
        .collect();
    let upstreams = Upstreams::start(&upstream_bin, &instances, log_dir, "upstreams")
        .await
        .context("starting upstreams (are ports 19001, 19081-19083, 19091 free?)")?;

    step(&format!(
        "starting capstan on {} (ADS on 127.0.0.1:{}) ...",
        args.config_dir.display(),
        args.xds_port
    ));
    let mut cmd = Command::new(&capstan_bin);
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&args.config_dir)
        .arg("--xds-addr")
        .arg(format!("127.0.0.1:{}", args.xds_port))
        .arg("--outbound-port")
        .arg(args.outbound_port.to_string());
    let mut capstan = Capstan::spawn(cmd, log_dir, "capstan")?;
    Capstan::wait_listening(&mut capstan).await?;

    step(&format!(
        "starting Envoy (admin 127.0.0.1:{}) ...",
        args.admin_port
    ));
    let mode = if args.delta {
        AdsMode::Delta
    } else {
        AdsMode::Sotw
    };
    let mut bootstrap = Bootstrap::new(mode, args.xds_port);
    bootstrap.admin_port = args.admin_port;
    bootstrap.workload = "demo-0".to_string();
    let envoy = Envoy::start(&envoy_bin, &bootstrap, log_dir, "envoy")
        .await
        .with_context(|| format!("is port {} free?", args.admin_port))?;
    Ok(Demo {
        envoy,
        capstan,
        upstreams,
    })
}

/// Waits until Envoy routes like examples/ says, and returns sample replies for the printout.
async fn wait_routing(demo: &mut Demo, outbound_port: u16) -> anyhow::Result<Samples> {
    step("waiting for Envoy to get its routes from capstan ...");
    let port = demo
        .envoy
        .wait_listener_port(OUTBOUND_LISTENER, Duration::from_secs(30))
        .await?;
    ensure!(
        port == outbound_port,
        "Envoy's {OUTBOUND_LISTENER} listens on {port}, expected {outbound_port}"
    );
    let mut client = HttpClient::new(loopback(port));
    let jason = wait_until(
        "reviews for jason to reach v2",
        Duration::from_secs(30),
        async || {
            let body = client
                .get("reviews", "/reviews/1", &[("end-user", "jason")])
                .await?;
            let reply = body.upstream_reply()?;
            ensure!(reply.version == "v2", "got {reply:?}");
            Ok(body.text())
        },
    )
    .await?;
    let mut split = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let reply = client.upstream("reviews", "/reviews/1", &[]).await?;
        *split.entry(reply.version).or_default() += 1;
    }
    let ratings = client.get("ratings", "/ratings/0", &[]).await?.text();
    let productpage = client
        .get(
            "productpage.bookinfo.svc.cluster.local:9080",
            "/productpage",
            &[],
        )
        .await?
        .text();
    Ok(Samples {
        jason,
        split: split
            .iter()
            .map(|(v, n)| format!("{n} × {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        ratings,
        productpage,
    })
}

struct Samples {
    jason: String,
    split: String,
    ratings: String,
    productpage: String,
}

fn print_instructions(args: &Args, samples: &Samples, log_dir: &std::path::Path) {
    let out = format!("http://127.0.0.1:{}", args.outbound_port);
    let admin = format!("http://127.0.0.1:{}", args.admin_port);
    println!(
        "
capstan demo is running: Envoy's outbound listener is {out}, routed by capstan from {config}.

  # reviews, as end-user jason: always v2
  curl -s -H 'Host: reviews' -H 'end-user: jason' {out}/reviews/1
    -> {jason}
  # reviews, anyone else: 50/50 between v1 and v3 (just now, 20 requests: {split})
  for i in $(seq 20); do curl -s -H 'Host: reviews' {out}/reviews/1; done | sort | uniq -c
  # ratings: pinned to v1
  curl -s -H 'Host: ratings' {out}/ratings/0
    -> {ratings}
  # productpage, by its full name and port
  curl -s -H 'Host: productpage.bookinfo.svc.cluster.local:9080' {out}/productpage
    -> {productpage}

  # what Envoy received from capstan
  curl -s {admin}/config_dump
  curl -s {admin}/clusters | grep health_flags

Edit the YAML in {config} (e.g. the weights in reviews.yaml) and rerun the curls: capstan
pushes the change to the running Envoy. Logs: {logs}/{{capstan,envoy,upstreams}}.log
Press Ctrl-C to stop.
",
        config = args.config_dir.display(),
        jason = samples.jason.trim(),
        split = samples.split,
        ratings = samples.ratings.trim(),
        productpage = samples.productpage.trim(),
        logs = log_dir.display(),
    );
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_dir = locate::fresh_log_dir("demo")?;
    let mut demo = start(&args, &log_dir)
        .await
        .with_context(|| format!("demo failed to start; logs in {}", log_dir.display()))?;
    let samples = wait_routing(&mut demo, args.outbound_port)
        .await
        .with_context(|| format!("routing did not come up; logs in {}", log_dir.display()))?;
    print_instructions(&args, &samples, &log_dir);

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Err(e) = demo.check_alive() {
                    break Err(e.context("a demo process died"));
                }
            }
        }
    };
    step("stopping Envoy, capstan and upstreams ...");
    drop(demo);
    step("stopped");
    result
}
