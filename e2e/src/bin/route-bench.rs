//! capstan-route-bench: how long a VirtualService edit takes to reach a real Envoy and be
//! served, in a mesh with thousands of routes configured.
//!
//! capstan (`capstan run --config-dir`) serves a folder with `--hosts` ServiceEntry hosts,
//! each with a VirtualService of `--routes-per-host` routes (a header match, a path prefix
//! and a default), plus the host under test, `edited.bench.svc.cluster.local`, with subsets
//! v1 and v2 (two capstan-upstream instances) and the VirtualService `edited`: requests with
//! `end-user: jason` go to one subset, everything else to v1. One real Envoy (SotW, or Delta
//! with `--delta`) is connected. Each edit renames a new version of `edited`'s file into the
//! folder, sending jason to the other subset, and times from the rename to the first request
//! through Envoy (one kept-alive connection, polled every `--poll-us`) answered by the new
//! subset. Prints p50/p99/max and writes them as JSON.
//!
//! Two kinds of edit are timed. `prepared`: the new file is written `--prepare-ms` before it
//! is renamed into the folder, as git-sync and Kubernetes volume updates do; capstan reads a
//! file only once it has not been modified for 500 ms (`SETTLE_WINDOW` in
//! operator/src/source/folder.rs), so this measures capstan and Envoy. `fresh`: the file is
//! written and renamed at once, so the settle window is included.
//!
//! `--edit rule` times DestinationRule edits instead: each one switches the load balancer of
//! `edited`'s rule (ROUND_ROBIN ↔ RANDOM), which changes its clusters and not their endpoints,
//! and is timed from the rename to Envoy holding the new `outbound|8080|v1|edited…` cluster
//! as active (warmed, in service), asked of Envoy's admin for that cluster alone.
//!
//! `--capture` runs capstan with `--sidecar-listeners capture` (what the Helm chart installs)
//! and the Envoy behind istio-init's iptables rules in the bench's own network namespace (the
//! e2e `capture` harness): the polls go to a service address on 8080, are captured into
//! `virtualOutbound` and routed by the port's own route configuration, `8080`, whose virtual
//! hosts list each name once instead of with and without the port.
//!
//! `--replay-peer` then times the same edits served by the go-control-plane peer
//! (`load/peer`) replaying, byte for byte, the two configurations capstan served, to a fresh
//! Envoy: the peer watches and translates nothing, it only switches between two prepared
//! snapshots, so its row is what a control plane that does no more than hand over the same
//! bytes gets on this machine, in the same run (`route_bench/replay.rs`).
//!
//! Run: `make bench-routes`, or `cargo build --release -p capstan -p capstan-e2e --bin capstan
//! --bin capstan-upstream --bin capstan-route-bench` and run `capstan-route-bench` from the
//! release directory (Envoy from `$ENVOY_BIN` or `make tools`; capstan from `$CAPSTAN_BIN`,
//! else built next to this binary).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstan_e2e::bench_info::{commit, machine, write_results};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::capture::{self, OUTBOUND_CAPTURE_PORT, service_ip};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback, route_counts};
use capstan_e2e::http::{HttpClient, UpstreamReply};
use capstan_e2e::locate;
use capstan_e2e::mesh::OUTBOUND_LISTENER;
use capstan_e2e::netns;
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use capstan_load::stats::{Percentiles, fmt_ms};
use clap::Parser;
use serde::Serialize;

#[path = "route_bench/files.rs"]
mod files;
#[path = "route_bench/replay.rs"]
mod replay;

use files::{edited_rule, edited_service, edited_vs, filler_files, istio_stats_config};

// `--capture` needs a network namespace of its own for the capture rules; the other modes
// run in it too, on its loopback.
capstan_e2e::private_network!();

const NAMESPACE: &str = "bench";
const EDITED_HOST: &str = "edited.bench.svc.cluster.local";
const EDITED_FILE: &str = "edited-vs.yaml";
const EDITED_RULE_FILE: &str = "edited-dr.yaml";
/// The cluster a rule edit is read from.
const EDITED_CLUSTER: &str = "outbound|8080|v1|edited.bench.svc.cluster.local";
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
/// [`Run::served_by`] for capstan's runs.
const CAPSTAN: &str = "capstan";
/// capstan's settle window for a file (operator/src/source/folder.rs).
const SETTLE_WINDOW: Duration = Duration::from_millis(500);

/// What each edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EditKind {
    /// The VirtualService: jason's route to the other subset (timed to the first request
    /// answered there).
    VirtualService,
    /// The DestinationRule: its load balancer (timed to Envoy holding the new cluster active).
    Rule,
}

#[derive(Debug, Parser)]
#[command(name = "capstan-route-bench")]
struct Cli {
    /// What each edit changes.
    #[arg(long, value_enum, default_value = "virtual-service")]
    edit: EditKind,
    /// ServiceEntry hosts besides the edited one, each with its own VirtualService.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Routes in each host's VirtualService (header match, path prefix, ..., default).
    #[arg(long, default_value_t = 3)]
    routes_per_host: usize,
    /// Hosts per file in the folder.
    #[arg(long, default_value_t = 100)]
    hosts_per_file: usize,
    /// Edits timed with the file written ahead of the rename.
    #[arg(long, default_value_t = 100)]
    edits: usize,
    /// Edits timed with the file written and renamed at once (settle window included).
    #[arg(long, default_value_t = 20)]
    fresh_edits: usize,
    /// How long before its rename a prepared edit's file is written, in ms.
    #[arg(long, default_value_t = 600)]
    prepare_ms: u64,
    /// Pause between polls of Envoy while waiting for an edit, in µs (0: none).
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
    /// How long one edit may take before it counts as missed, in ms.
    #[arg(long, default_value_t = 10_000)]
    edit_timeout_ms: u64,
    /// Use Delta xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// Give Envoy the stats inclusion list of Istio's proxy bootstrap (only the stats Istio
    /// keeps by default, plus RDS's, which the bench reads), as Istio's sidecars run.
    #[arg(long)]
    istio_stats: bool,
    /// Capture-mode sidecar listeners (`--sidecar-listeners capture`, as the Helm chart
    /// runs capstan), the Envoy behind iptables capture as in a pod.
    #[arg(long)]
    capture: bool,
    /// A further flag for `capstan run`, e.g. `--capstan-arg=--debounce-ms=10`; may be
    /// repeated.
    #[arg(long = "capstan-arg", allow_hyphen_values = true)]
    capstan_args: Vec<String>,
    /// Where to write the JSON results (default: `<profile dir>/bench/route-bench.json`,
    /// `rule-bench.json` for rule edits).
    #[arg(long)]
    out: Option<PathBuf>,
    /// After capstan's edits, time as many served by the go-control-plane peer replaying
    /// the two configurations capstan served, byte for byte, to a fresh Envoy: a control
    /// plane that only hands over prepared snapshots (see `route_bench/replay.rs`).
    #[arg(long)]
    replay_peer: bool,
    /// The peer binary for `--replay-peer` (default: `gcp-peer` in `$CAPSTAN_TOOLS_DIR`).
    #[arg(long, env = "CAPSTAN_GCP_PEER")]
    gcp_peer: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: String,
    commit: String,
    edit: &'static str,
    xds: &'static str,
    capstan_args: Vec<String>,
    istio_stats: bool,
    sidecar_listeners: &'static str,
    hosts: usize,
    routes_configured: usize,
    envoy_virtual_hosts: usize,
    envoy_routes: usize,
    prepared: Run,
    fresh: Run,
    /// `--replay-peer`: the prepared edits again, served by the go-control-plane peer.
    replayed_by_peer: Option<Run>,
}

#[derive(Debug, Serialize)]
struct Run {
    /// `capstan`, or `go-control-plane replay` (`--replay-peer`).
    served_by: &'static str,
    latency: Percentiles,
    /// Mean per edit from capstan's own metrics over the run: the rebuild after a folder
    /// rescan (`capstan_reconcile_seconds`, scope objects), and from the change reaching the
    /// push queue to Envoy's ACK (`capstan_xds_convergence_seconds`; an edit changes only the
    /// route configuration).
    reconcile_mean_ms: Option<f64>,
    /// From capstan noticing the folder change to its proxy config handed to the push queue
    /// (`capstan_folder_change_seconds`): the folder watch's grace, the rescan, the parse and
    /// the rebuild.
    folder_mean_ms: Option<f64>,
    convergence_mean_ms: Option<f64>,
    /// From the change reaching the push queue to its response handed to the proxy's stream
    /// (`capstan_xds_push_latency_seconds`): capstan's part of the previous figure.
    handed_mean_ms: Option<f64>,
    /// Route configuration bytes pushed per edit (`capstan_xds_push_bytes_total`, rds).
    route_bytes_per_edit: Option<f64>,
    /// Requests sent while waiting, per edit (median).
    polls_p50: usize,
    samples_ms: Vec<Option<f64>>,
}

struct Bench {
    proxy: HttpClient,
    envoy: Envoy,
    /// The Envoy's bootstrap (its node is what a replay captures as).
    bootstrap: serde_json::Value,
    capture: bool,
    envoy_bin: PathBuf,
    capstan: Capstan,
    _upstreams: Upstreams,
    config_dir: PathBuf,
    scratch: PathBuf,
    log_dir: PathBuf,
    poll: Duration,
    kind: EditKind,
    edit_timeout: Duration,
    /// Where jason's requests go now.
    jason_at: String,
    /// The edited rule's load balancer now.
    balancer: &'static str,
    edits: usize,
}

impl Bench {
    /// The version answering jason's request.
    async fn jason_version(&mut self) -> anyhow::Result<String> {
        let resp = self.proxy.get(EDITED_HOST, "/", JASON).await?;
        let reply: UpstreamReply = resp.upstream_reply()?;
        Ok(reply.version)
    }

    /// One edit, prepared `prepare` ahead if set; the time from the rename to the edit
    /// served (`None`: not within `--edit-timeout-ms`) and the polls it took.
    async fn edit(
        &mut self,
        prepare: Option<Duration>,
    ) -> anyhow::Result<(Option<Duration>, usize)> {
        self.edits += 1;
        let target = self.next_target();
        let (file, text) = match self.kind {
            EditKind::VirtualService => (EDITED_FILE, edited_vs(target, self.edits)),
            EditKind::Rule => (EDITED_RULE_FILE, edited_rule(target)),
        };
        let staged = self.scratch.join(file);
        std::fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        if let Some(prepare) = prepare {
            tokio::time::sleep(prepare).await;
        }
        let into = self.config_dir.join(file);
        let renamed = Instant::now();
        std::fs::rename(&staged, &into)
            .with_context(|| format!("renaming into {}", into.display()))?;
        self.await_served(target, renamed).await
    }

    /// What the next edit changes to: the other subset, or the other load balancer.
    fn next_target(&self) -> &'static str {
        match self.kind {
            EditKind::VirtualService if self.jason_at == "v1" => "v2",
            EditKind::VirtualService => "v1",
            EditKind::Rule if self.balancer == "ROUND_ROBIN" => "RANDOM",
            EditKind::Rule => "ROUND_ROBIN",
        }
    }

    /// What is served now (the previous edit's target).
    fn current_target(&self) -> String {
        match self.kind {
            EditKind::VirtualService => self.jason_at.clone(),
            EditKind::Rule => self.balancer.to_string(),
        }
    }

    /// Polls until the edit to `target`, made at `started`, is served; the time it took
    /// (`None`: not within `--edit-timeout-ms`, and then waited for before returning) and the
    /// polls.
    async fn await_served(
        &mut self,
        target: &'static str,
        started: Instant,
    ) -> anyhow::Result<(Option<Duration>, usize)> {
        let mut polls = 0;
        let arrived = loop {
            polls += 1;
            match self.served(target).await {
                Ok(true) => break Some(started.elapsed()),
                Ok(false) => {}
                Err(e) => tracing::warn!("poll failed: {e:#}"),
            }
            if started.elapsed() > self.edit_timeout {
                break None;
            }
            if !self.poll.is_zero() {
                tokio::time::sleep(self.poll).await;
            }
        };
        match self.kind {
            EditKind::VirtualService => self.jason_at = target.to_string(),
            EditKind::Rule => self.balancer = target,
        }
        if arrived.is_none() {
            // Let it land before the next edit, so edits stay independent.
            let log_dir = self.log_dir.clone();
            wait_until(
                "the missed edit to land",
                Duration::from_secs(30),
                async || {
                    ensure!(self.served(target).await?, "not served yet");
                    Ok(())
                },
            )
            .await
            .with_context(|| format!("logs in {}", log_dir.display()))?;
        }
        Ok((arrived, polls))
    }

    /// Whether the edit to `target` is served: jason's request answered by that subset, or
    /// the edited cluster active with that load balancer.
    async fn served(&mut self, target: &str) -> anyhow::Result<bool> {
        Ok(match self.kind {
            EditKind::VirtualService => self.jason_version().await? == target,
            EditKind::Rule => self
                .envoy
                .active_cluster(EDITED_CLUSTER)
                .await?
                // Envoy's dump leaves out the default, ROUND_ROBIN.
                .is_some_and(|c| c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN") == target),
        })
    }

    async fn run(
        &mut self,
        what: &str,
        edits: usize,
        prepare: Option<Duration>,
    ) -> anyhow::Result<Run> {
        let before = self.capstan.monitoring_get("/metrics").await?.text();
        let mut samples = Vec::with_capacity(edits);
        let mut polls = Vec::with_capacity(edits);
        for i in 0..edits {
            let (took, n) = self.edit(prepare).await?;
            samples.push(took);
            polls.push(n);
            if (i + 1) % 10 == 0 {
                eprintln!("{what}: {} of {edits} edits", i + 1);
            }
            // Some quiet between edits (a prepared edit waits anyway).
            if prepare.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let after = self.capstan.monitoring_get("/metrics").await?.text();
        let mean = |metric: &str, label: &str| {
            let (sum, count) = (
                metric_total(&after, &format!("{metric}_sum"), label)
                    - metric_total(&before, &format!("{metric}_sum"), label),
                metric_total(&after, &format!("{metric}_count"), label)
                    - metric_total(&before, &format!("{metric}_count"), label),
            );
            (count > 0.0).then(|| sum / count * 1e3)
        };
        let route_bytes = metric_total(&after, "capstan_xds_push_bytes_total", "type=\"rds\"")
            - metric_total(&before, "capstan_xds_push_bytes_total", "type=\"rds\"");
        Ok(Run {
            reconcile_mean_ms: mean("capstan_reconcile_seconds", "scope=\"objects\""),
            folder_mean_ms: mean("capstan_folder_change_seconds", ""),
            convergence_mean_ms: mean("capstan_xds_convergence_seconds", ""),
            handed_mean_ms: mean("capstan_xds_push_latency_seconds", ""),
            route_bytes_per_edit: (edits > 0).then(|| route_bytes / edits as f64),
            ..Run::timed(CAPSTAN, &samples, polls)
        })
    }
}

impl Run {
    /// The edits' times (`None`: missed) and polls, without capstan's metrics.
    fn timed(served_by: &'static str, samples: &[Option<Duration>], mut polls: Vec<usize>) -> Self {
        polls.sort_unstable();
        Run {
            served_by,
            latency: Percentiles::of(samples),
            reconcile_mean_ms: None,
            folder_mean_ms: None,
            convergence_mean_ms: None,
            handed_mean_ms: None,
            route_bytes_per_edit: None,
            polls_p50: polls.get(polls.len() / 2).copied().unwrap_or(0),
            samples_ms: samples
                .iter()
                .map(|s| s.map(|d| d.as_secs_f64() * 1e3))
                .collect(),
        }
    }
}

/// Envoy's own account of applying each route configuration (its subscriptions'
/// `update_duration` histograms), to tell its share from the control plane's.
async fn rds_update_durations(envoy: &Envoy) -> anyhow::Result<String> {
    let stats = envoy
        .admin_get("/stats?filter=rds\\..*update_duration")
        .await?;
    Ok(String::from_utf8_lossy(&stats.body).trim().to_string())
}

/// The sum of a Prometheus text-format series over the label sets containing `label`.
fn metric_total(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sidecar_listeners(cli: &Cli) -> &'static str {
    if cli.capture { "capture" } else { "direct" }
}

/// Starts Envoy with `bootstrap` (as a captured sidecar with `capture`) and waits for its
/// outbound listener; a client for the requests through it.
async fn start_envoy(
    capture: bool,
    envoy_bin: &Path,
    bootstrap: &serde_json::Value,
    log_dir: &Path,
    name: &str,
) -> anyhow::Result<(Envoy, HttpClient)> {
    if capture {
        // As uid 1337, so that its own connections are not captured.
        let envoy =
            Envoy::start_json(envoy_bin, bootstrap, log_dir, name, Some(capture::PROXY)).await?;
        let port = envoy
            .wait_listener_port("virtualOutbound", Duration::from_secs(60))
            .await?;
        ensure!(
            port == OUTBOUND_CAPTURE_PORT,
            "virtualOutbound on {port}, not the capture port"
        );
        // Any service address on 8080 is captured and routed by Host.
        let client = HttpClient::new(SocketAddr::from((service_ip(1), 8080)));
        Ok((envoy, client))
    } else {
        let envoy = Envoy::start_json(envoy_bin, bootstrap, log_dir, name, None).await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, Duration::from_secs(60))
            .await?;
        Ok((envoy, HttpClient::new(loopback(port))))
    }
}

async fn setup(cli: &Cli, log_dir: &Path, tmp: &Path) -> anyhow::Result<Bench> {
    netns::network_up()?;
    if cli.capture {
        capture::install()?;
    }
    let config_dir = tmp.join("config");
    let scratch = tmp.join("scratch");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&scratch)?;

    let upstream_bin = locate::upstream_bin()?;
    let upstreams = Upstreams::start_on_free_ports(
        &upstream_bin,
        &[("edited", "v1"), ("edited", "v2"), ("filler", "v1")],
        log_dir,
    )
    .await?;
    let filler = upstreams.port("filler", "v1")?;
    for (name, text) in filler_files(cli, filler) {
        std::fs::write(config_dir.join(name), text)?;
    }
    std::fs::write(
        config_dir.join("edited.yaml"),
        edited_service(
            upstreams.port("edited", "v1")?,
            upstreams.port("edited", "v2")?,
        ),
    )?;
    std::fs::write(
        config_dir.join(EDITED_RULE_FILE),
        edited_rule("ROUND_ROBIN"),
    )?;
    std::fs::write(config_dir.join(EDITED_FILE), edited_vs("v1", 0))?;
    // Files written just now wait out the settle window at startup: let them settle first.
    tokio::time::sleep(SETTLE_WINDOW + Duration::from_millis(100)).await;

    let mut flags = vec!["--sidecar-listeners", sidecar_listeners(cli)];
    flags.extend(cli.capstan_args.iter().map(String::as_str));
    let capstan = Capstan::start_folder_with(&config_dir, &flags, log_dir, "capstan").await?;
    let mode = if cli.delta {
        AdsMode::Delta
    } else {
        AdsMode::Sotw
    };
    let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
    bootstrap.namespace = NAMESPACE.to_string();
    let envoy_bin = locate::envoy_bin()?;
    let mut json = bootstrap.to_json();
    if cli.istio_stats {
        json["stats_config"] = istio_stats_config();
    }
    let (envoy, proxy) = start_envoy(cli.capture, &envoy_bin, &json, log_dir, "envoy").await?;
    let mut bench = Bench {
        proxy,
        envoy,
        bootstrap: json,
        capture: cli.capture,
        envoy_bin,
        capstan,
        _upstreams: upstreams,
        config_dir,
        scratch,
        log_dir: log_dir.to_path_buf(),
        poll: Duration::from_micros(cli.poll_us),
        kind: cli.edit,
        edit_timeout: Duration::from_millis(cli.edit_timeout_ms),
        jason_at: "v1".into(),
        balancer: "ROUND_ROBIN",
        edits: 0,
    };
    wait_until(
        "jason to reach edited v1",
        Duration::from_secs(60),
        async || {
            let v = bench.jason_version().await?;
            ensure!(v == "v1", "jason reaches {v}");
            Ok(())
        },
    )
    .await?;
    Ok(bench)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    ensure!(
        cli.routes_per_host >= 1,
        "--routes-per-host must be at least 1"
    );
    // Found before the long part of the run, so that a missing peer fails at once.
    let peer_bin = cli
        .replay_peer
        .then(|| replay::peer_bin(cli.gcp_peer.clone()))
        .transpose()?;
    let log_dir = locate::fresh_log_dir("route-bench")?;
    let tmp = tempfile::Builder::new()
        .prefix("capstan-route-bench-")
        .tempdir()?;
    let mut bench = setup(&cli, &log_dir, tmp.path())
        .await
        .with_context(|| format!("setting up; logs in {}", log_dir.display()))?;

    let dump = bench.envoy.config_dump(false).await?;
    let (envoy_virtual_hosts, envoy_routes) = route_counts(&dump);
    let routes_configured = cli.hosts * cli.routes_per_host + 3;
    eprintln!(
        "Envoy holds {envoy_routes} routes in {envoy_virtual_hosts} virtual hosts \
         ({routes_configured} configured)"
    );
    if envoy_routes < routes_configured {
        bail!("Envoy holds {envoy_routes} routes, fewer than the {routes_configured} configured");
    }
    bench.envoy.ensure_no_rejected_updates().await?;

    let prepare = Duration::from_millis(cli.prepare_ms);
    if prepare <= SETTLE_WINDOW {
        eprintln!(
            "note: --prepare-ms {} is within capstan's {SETTLE_WINDOW:?} settle window",
            cli.prepare_ms
        );
    }
    let prepared = bench.run("prepared", cli.edits, Some(prepare)).await?;
    let fresh = bench.run("fresh", cli.fresh_edits, None).await?;
    bench.envoy.ensure_no_rejected_updates().await?;
    let update_durations = rds_update_durations(&bench.envoy).await?;
    let (replayed_by_peer, replayed_update_durations) = match peer_bin {
        Some(bin) => {
            let run = replay::run(&mut bench, &bin, cli.edits, prepare)
                .await
                .with_context(|| format!("replaying; logs in {}", log_dir.display()))?;
            (Some(run), Some(rds_update_durations(&bench.envoy).await?))
        }
        None => (None, None),
    };
    ensure!(
        bench.proxy.resets() == 0,
        "{} polls were reset on the kept-alive connection",
        bench.proxy.resets()
    );

    let results = Results {
        machine: machine(),
        commit: commit(),
        edit: match cli.edit {
            EditKind::VirtualService => "VirtualService",
            EditKind::Rule => "DestinationRule",
        },
        xds: if cli.delta { "delta" } else { "sotw" },
        capstan_args: cli.capstan_args.clone(),
        istio_stats: cli.istio_stats,
        sidecar_listeners: sidecar_listeners(&cli),
        hosts: cli.hosts + 1,
        routes_configured,
        envoy_virtual_hosts,
        envoy_routes,
        prepared,
        fresh,
        replayed_by_peer,
    };
    println!(
        "{} edit to a serving Envoy: {} routes in {} virtual hosts, {} xDS, {} sidecar \
         listeners, {}, commit {}",
        results.edit,
        results.envoy_routes,
        results.envoy_virtual_hosts,
        results.xds,
        results.sidecar_listeners,
        results.machine,
        results.commit
    );
    println!(
        "| edit | edits | p50 ms | p99 ms | max ms | missed | polls per edit (p50) | \
         folder change to the push queue, mean ms | of which the rebuild, mean ms | change to \
         Envoy's ACK, mean ms | of which to the stream, mean ms | route bytes per edit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let runs = [
        ("prepared", Some(&results.prepared)),
        ("fresh", Some(&results.fresh)),
        (
            "prepared, go-control-plane replaying capstan's configurations",
            results.replayed_by_peer.as_ref(),
        ),
    ];
    // Rows without edits are left out; capstan's metrics are "-" where capstan did not serve.
    let timed = runs
        .into_iter()
        .filter_map(|(name, run)| Some((name, run?)))
        .filter(|(_, run)| run.latency.count > 0);
    for (name, run) in timed {
        let l = &run.latency;
        let metric = |m: Option<f64>| {
            if run.served_by == CAPSTAN {
                fmt_ms(m)
            } else {
                "-".to_string()
            }
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.count,
            fmt_ms(l.p50_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.max_ms),
            l.missing(),
            run.polls_p50,
            metric(run.folder_mean_ms),
            metric(run.reconcile_mean_ms),
            metric(run.convergence_mean_ms),
            metric(run.handed_mean_ms),
            run.route_bytes_per_edit
                .map_or_else(|| "-".to_string(), |b| format!("{b:.0}"))
        );
    }
    println!("Envoy's RDS update_duration: {update_durations}");
    if let Some(replayed) = replayed_update_durations {
        println!("Envoy's RDS update_duration, replayed by the peer: {replayed}");
    }
    let file = match cli.edit {
        EditKind::VirtualService => "route-bench.json",
        EditKind::Rule => "rule-bench.json",
    };
    write_results(&results, cli.out.as_deref(), file, &log_dir)?;
    Ok(())
}
