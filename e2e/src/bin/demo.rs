//! `capstan-demo` (what `make run` runs): capstan serving a folder of Istio YAML to one real
//! Envoy on loopback, and what that Envoy made of it.
//!
//! Starts `capstan run --config-dir DIR` and one Envoy bootstrapped to it over ADS, then waits
//! until Envoy has acknowledged capstan's config: capstan is ready, its `/debug/syncz` shows
//! every xDS type of this proxy SYNCED at the current snapshot, and Envoy's own stats show
//! CDS and LDS updated (at that version, over SotW), nothing rejected and no cluster or
//! listener still warming. Nothing about the folder's content is assumed.
//!
//! Then it reads Envoy's `/config_dump` and prints what Envoy holds: listeners, clusters and
//! their endpoints, and per route configuration the virtual hosts (domains) and routes. For
//! every loopback endpoint Envoy holds it starts a `capstan-upstream` instance (named after the
//! service's short name and the subsets the endpoint is in) unless the port is taken, and sends
//! a few requests per route through Envoy, printing what answered. Runs until Ctrl-C (or
//! SIGTERM), then stops everything it started.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::http::{HttpClient, HttpResponse, UpstreamReply};
use capstan_e2e::locate;
use capstan_e2e::process::ChildProcess;
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use clap::Parser;
use serde_json::Value;

#[path = "demo/acked.rs"]
mod acked;
#[path = "demo/observe.rs"]
mod observe;

use acked::*;
use observe::*;

/// The xDS types a sidecar subscribes to, as `/debug/syncz` names them.
const XDS_TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];
/// At most this many virtual hosts get sample requests (a big folder still prints them all).
const MAX_SAMPLED_VIRTUAL_HOSTS: usize = 20;
/// At most this many clusters are listed one per line.
const MAX_LISTED_CLUSTERS: usize = 50;
/// Requests per route: a weighted route gets more, to show the split.
const SAMPLES_PER_ROUTE: usize = 3;
const SAMPLES_PER_WEIGHTED_ROUTE: usize = 20;

#[derive(Parser, Debug)]
#[command(
    about = "Run capstan on a folder of Istio YAML with one real Envoy on loopback, and show \
             what Envoy received and how it routes"
)]
struct Args {
    /// Directory with the Istio YAML capstan serves (watched: edit it while the demo runs).
    #[arg(long, default_value_os_t = locate::repo_dir().join("examples"))]
    config_dir: PathBuf,
    /// capstan's ADS port on 127.0.0.1.
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// capstan's monitoring port on 127.0.0.1 (/metrics, /readyz, /debug/syncz).
    #[arg(long, default_value_t = 15014)]
    monitoring_port: u16,
    /// Port of Envoy's outbound HTTP listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Envoy admin port on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The Envoy's namespace (short host names resolve in it, as for a sidecar there).
    #[arg(long, default_value = "bookinfo")]
    namespace: String,
    /// Use Delta xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// Where the logs go (default: `<target dir>/<profile>/e2e-logs/demo`, emptied first).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// How long to wait for Envoy to acknowledge capstan's config, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
}

/// Everything the demo started; dropping it stops all processes (Envoy first).
struct Demo {
    envoy: Envoy,
    capstan: ChildProcess,
    upstreams: Option<Upstreams>,
}

impl Demo {
    /// The first child that has exited, as an error with its log tail.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(upstreams) = &mut self.upstreams {
            upstreams.process.ensure_running()?;
        }
        self.capstan.ensure_running()?;
        self.envoy.process().ensure_running()
    }
}

fn step(msg: &str) {
    println!("demo: {msg}");
}

async fn start(args: &Args, log_dir: &Path) -> anyhow::Result<(Demo, Bootstrap)> {
    let envoy_bin = locate::envoy_bin()?;
    let capstan_bin = locate::capstan_bin()?;
    ensure!(
        args.config_dir.is_dir(),
        "config dir {} does not exist",
        args.config_dir.display()
    );

    step(&format!(
        "starting capstan on {} (ADS on 127.0.0.1:{}, monitoring on 127.0.0.1:{}) ...",
        args.config_dir.display(),
        args.xds_port,
        args.monitoring_port
    ));
    let mut cmd = Command::new(&capstan_bin);
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&args.config_dir)
        .arg("--xds-addr")
        .arg(format!("127.0.0.1:{}", args.xds_port))
        .arg("--monitoring-addr")
        .arg(format!("127.0.0.1:{}", args.monitoring_port))
        .arg("--outbound-port")
        .arg(args.outbound_port.to_string());
    let mut capstan = Capstan::spawn(cmd, log_dir, "capstan")?;
    Capstan::wait_listening(&mut capstan).await?;

    step(&format!(
        "starting Envoy (admin 127.0.0.1:{}, namespace {}) ...",
        args.admin_port, args.namespace
    ));
    let mode = if args.delta {
        AdsMode::Delta
    } else {
        AdsMode::Sotw
    };
    let mut bootstrap = Bootstrap::new(mode, args.xds_port);
    bootstrap.admin_port = args.admin_port;
    bootstrap.workload = "demo-0".to_string();
    bootstrap.namespace = args.namespace.clone();
    let envoy = Envoy::start(&envoy_bin, &bootstrap, log_dir, "envoy")
        .await
        .with_context(|| format!("is port {} free?", args.admin_port))?;
    Ok((
        Demo {
            envoy,
            capstan,
            upstreams: None,
        },
        bootstrap,
    ))
}

// ---------------------------------------------------------------------------------------
// Readiness: Envoy acknowledged capstan's config.

/// What showed that Envoy holds capstan's current config.
/// Starts a capstan-upstream instance on each free loopback endpoint address. Prints what it
/// started and what it could not.
async fn start_upstreams(observed: &Observed, log_dir: &Path) -> anyhow::Result<Option<Upstreams>> {
    let w = workloads(&observed.clusters);
    let mut instances: Vec<(String, String, SocketAddr)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (addr, (services, subsets)) in &w.loopback {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            step(&format!(
                "not starting an upstream on {addr}: {e} (requests to it reach whatever listens there)"
            ));
            continue;
        }
        let service = services.iter().next().cloned().unwrap_or_default();
        let mut version = if subsets.is_empty() {
            "any".to_string()
        } else {
            subsets.iter().cloned().collect::<Vec<_>>().join("+")
        };
        // Upstreams are told apart by (service, version).
        let base = version.clone();
        let mut n = 1;
        while !seen.insert((service.clone(), version.clone())) {
            n += 1;
            version = format!("{base}#{n}");
        }
        instances.push((service, version, *addr));
    }
    for addr in &w.elsewhere {
        step(&format!(
            "not starting an upstream for endpoint {addr}: not a loopback address"
        ));
    }
    if instances.is_empty() {
        step("no loopback endpoints to serve: no upstreams started");
        return Ok(None);
    }
    let shown: Vec<String> = instances
        .iter()
        .map(|(s, v, a)| format!("{s} {v} on {a}"))
        .collect();
    step(&format!(
        "starting capstan-upstream for the endpoints Envoy holds: {}",
        shown.join(", ")
    ));
    let refs: Vec<(&str, &str, SocketAddr)> = instances
        .iter()
        .map(|(s, v, a)| (s.as_str(), v.as_str(), *a))
        .collect();
    let bin = locate::upstream_bin()?;
    let upstreams = Upstreams::start(&bin, &refs, log_dir, "upstreams").await?;
    Ok(Some(upstreams))
}

/// What answered one request, as printed.
fn outcome(resp: &anyhow::Result<HttpResponse>, upstreams: Option<&Upstreams>) -> String {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{e:#}");
            return format!("error: {}", text.lines().next().unwrap_or(""));
        }
    };
    if let Ok(reply) = resp.json::<UpstreamReply>() {
        let addr = upstreams
            .and_then(|u| u.addr(&reply.service, &reply.version).ok())
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        return format!(
            "{} from {} {}{addr}",
            resp.status.as_u16(),
            reply.service,
            reply.version
        );
    }
    let mut text = format!("{} from Envoy", resp.status.as_u16());
    if let Some(location) = resp
        .headers
        .get(hyper::header::LOCATION)
        .and_then(|l| l.to_str().ok())
    {
        text.push_str(&format!(", location {location}"));
    }
    let body = resp.text();
    let body = body.trim();
    if !body.is_empty() {
        let cut: String = body.chars().take(60).collect();
        text.push_str(&format!(": {cut:?}"));
    }
    text
}

fn curl(host: &str, req: &SampleRequest, listener: SocketAddr) -> String {
    let mut cmd = format!("curl -s -H 'Host: {host}'");
    for (k, v) in &req.headers {
        cmd.push_str(&format!(" -H '{k}: {v}'"));
    }
    cmd.push_str(&format!(" 'http://{listener}{}'", req.path));
    cmd
}

/// Prints what Envoy holds and, per route, what answers requests it matches.
async fn report(observed: &Observed, upstreams: Option<&Upstreams>, outbound_port: u16) {
    println!("\nWhat Envoy holds (its /config_dump), as acknowledged from capstan:");
    println!("listeners ({}):", observed.listeners.len());
    for l in &observed.listeners {
        let addr = l.address.map_or_else(|| "?".to_string(), |a| a.to_string());
        println!(
            "  listener {} on {addr}, routes from RDS {:?}",
            l.name, l.route_configs
        );
    }
    println!("clusters ({}):", observed.clusters.len());
    for c in observed.clusters.iter().take(MAX_LISTED_CLUSTERS) {
        let eps: Vec<String> = c.endpoints.iter().map(SocketAddr::to_string).collect();
        println!(
            "  cluster {} ({}) endpoints [{}]",
            c.name,
            c.kind,
            eps.join(", ")
        );
    }
    if observed.clusters.len() > MAX_LISTED_CLUSTERS {
        println!(
            "  ... and {} more clusters",
            observed.clusters.len() - MAX_LISTED_CLUSTERS
        );
    }

    let mut sampled = 0;
    for rc in &observed.route_configs {
        // Requests go to the listener that takes this route configuration.
        let listener = observed
            .listeners
            .iter()
            .find(|l| l.route_configs.contains(&rc.name))
            .and_then(|l| l.address)
            .map(|a| {
                if a.ip().is_unspecified() {
                    loopback(a.port())
                } else {
                    a
                }
            })
            .unwrap_or_else(|| loopback(outbound_port));
        println!(
            "route configuration {} ({} virtual hosts), served on {listener}:",
            rc.name,
            rc.virtual_hosts.len()
        );
        let mut client = HttpClient::new(listener);
        for vh in &rc.virtual_hosts {
            println!("  virtual host {}", vh.name);
            println!("    domains: {}", vh.domains.join(", "));
            let host = sample_host(&vh.domains);
            let sample = sampled < MAX_SAMPLED_VIRTUAL_HOSTS;
            if sample {
                sampled += 1;
            }
            for r in &vh.routes {
                let name = if r.name.is_empty() {
                    String::new()
                } else {
                    format!(" {}", r.name)
                };
                let matcher = if r.matcher.is_empty() {
                    "any request".to_string()
                } else {
                    r.matcher.clone()
                };
                println!("    route{name}: {matcher} -> {}", r.action);
                let (Some(host), true) = (&host, sample) else {
                    continue;
                };
                let req = match &r.request {
                    Ok(req) => req,
                    Err(why) => {
                        println!("      ({why})");
                        continue;
                    }
                };
                let n = if r.weighted {
                    SAMPLES_PER_WEIGHTED_ROUTE
                } else {
                    SAMPLES_PER_ROUTE
                };
                let headers: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut tally: BTreeMap<String, usize> = BTreeMap::new();
                for _ in 0..n {
                    let resp = client.get(host, &req.path, &headers).await;
                    *tally.entry(outcome(&resp, upstreams)).or_default() += 1;
                }
                let answers: Vec<String> = tally
                    .iter()
                    .map(|(what, count)| format!("{count} × {what}"))
                    .collect();
                println!("      $ {}", curl(host, req, listener));
                println!("        {n} requests: {}", answers.join(", "));
            }
        }
    }
    if sampled == MAX_SAMPLED_VIRTUAL_HOSTS {
        println!(
            "(requests were sent to the first {MAX_SAMPLED_VIRTUAL_HOSTS} virtual hosts only)"
        );
    }
}

fn print_footer(args: &Args, log_dir: &Path) {
    let admin = format!("http://127.0.0.1:{}", args.admin_port);
    let monitoring = format!("http://127.0.0.1:{}", args.monitoring_port);
    println!(
        "
capstan demo is running: Envoy's outbound listener is http://127.0.0.1:{port}, routed by
capstan from {config}.

  # what Envoy holds, and what capstan sent it and saw acknowledged
  curl -s {admin}/config_dump
  curl -s {monitoring}/debug/syncz
  curl -s {monitoring}/metrics | grep capstan_xds

Edit the YAML in {config} and rerun the curls above: capstan
pushes the change to the running Envoy.
Logs: {logs}/{{capstan,envoy,upstreams}}.log
Press Ctrl-C to stop.",
        port = args.outbound_port,
        config = args.config_dir.display(),
        logs = log_dir.display(),
    );
}

/// SIGTERM or Ctrl-C, registered when this is called: one that arrives while the demo starts
/// or right after its report stops it cleanly, rather than killing it by the signal's default
/// action (the handlers used to be registered only once the report was printed).
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn run(args: &Args, log_dir: &Path) -> anyhow::Result<Demo> {
    let (mut demo, bootstrap) = start(args, log_dir).await.context("demo failed to start")?;
    let acked = wait_acked(&mut demo, &bootstrap, args).await?;
    print_acked(&acked);
    let dump = demo.envoy.config_dump(true).await?;
    let observed = observe(&dump);
    demo.upstreams = start_upstreams(&observed, log_dir).await?;
    report(&observed, demo.upstreams.as_ref(), args.outbound_port).await;
    print_footer(args, log_dir);
    Ok(demo)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_dir = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => locate::fresh_log_dir("demo")?,
    };
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    let mut demo = tokio::select! {
        demo = run(&args, &log_dir) => demo.with_context(|| format!("logs in {}", log_dir.display()))?,
        _ = &mut shutdown => {
            step("stopped before it was ready");
            return Ok(());
        }
    };

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_are_described_with_a_request_they_match() {
        let route = json!({
            "name": "jason-to-v2",
            "match": {"prefix": "/", "headers": [
                {"name": "end-user", "string_match": {"exact": "jason"}}
            ], "query_parameters": [{"name": "debug", "present_match": true}]},
            "route": {"cluster": "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                      "timeout": "0s"}
        });
        let view = route_view(&route);
        assert_eq!(
            view.matcher,
            "prefix / and header end-user exact \"jason\" and query debug present"
        );
        assert!(
            view.action.starts_with("outbound|9080|v2|reviews"),
            "{}",
            view.action
        );
        assert!(view.action.contains("timeout 0s"), "{}", view.action);
        let req = view.request.expect("a request");
        assert_eq!(req.path, "/?debug");
        assert_eq!(req.headers, [("end-user".to_string(), "jason".to_string())]);
        assert!(!view.weighted);

        let weighted = route_view(&json!({
            "match": {"safe_regex": {"regex": "/a.*"}},
            "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}
        }));
        assert_eq!(weighted.action, "80% a, 20% b");
        assert!(weighted.weighted);
        assert!(weighted.request.is_err());
    }

    #[test]
    fn sample_host_prefers_the_short_name() {
        let domains: Vec<String> = [
            "reviews.bookinfo.svc.cluster.local:9080",
            "reviews",
            "reviews.bookinfo",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(sample_host(&domains).as_deref(), Some("reviews"));
        assert_eq!(sample_host(&["*".to_string()]).as_deref(), Some("demo"));
    }

    #[test]
    fn workloads_are_named_by_service_and_subset() {
        let addr: SocketAddr = "127.0.0.1:19082".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let clusters = vec![
            ClusterView {
                name: "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
                kind: "EDS".into(),
                endpoints: vec![addr, far],
            },
            ClusterView {
                name: "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".into(),
                kind: "EDS".into(),
                endpoints: vec![addr],
            },
        ];
        let w = workloads(&clusters);
        let (services, subsets) = &w.loopback[&addr];
        assert_eq!(services.iter().collect::<Vec<_>>(), ["reviews"]);
        assert_eq!(subsets.iter().collect::<Vec<_>>(), ["v2"]);
        assert!(w.elsewhere.contains(&far));
    }
}
