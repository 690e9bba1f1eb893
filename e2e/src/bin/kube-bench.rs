//! `capstan-kube-bench`: capstan's Kubernetes mode against a real kube-apiserver, with istiod
//! (`pilot-discovery`) as the peer, measured in the same run on the same objects.
//!
//! 1. Starts etcd + kube-apiserver (`capstan_e2e::kube::KubeCluster`, binaries from
//!    `make kube-tools`), adds a ServiceCIDR large enough for the Services (the harness's own
//!    range is a /24), and creates N Services across 10 namespaces, N EndpointSlices with 10
//!    endpoints each (10.244.0.0/16, data only: nothing ever connects to them), N
//!    DestinationRules (subsets v1/v2) and N VirtualServices (a header match and a weighted
//!    split), in bulk (`kubectl create -f`, one multi-document file per namespace, in
//!    parallel).
//! 2. For each server in turn (capstan, then istiod): starts it, times process start to ready
//!    (`/readyz` 200 for capstan, `/ready` 200 for istiod) and, for capstan, to its
//!    `ADS server listening` log line; reads its peak RSS (VmHWM); waits until it is idle;
//!    connects P Delta proxies (`capstan_load`'s simulated Envoys, with an Istio sidecar's node
//!    id and metadata); then changes the port of one EndpointSlice R times (an HTTP PATCH
//!    through `kubectl proxy`) and times, per proxy, from just before the PATCH until the proxy
//!    has received and ACKed the changed load assignment; and the server's CPU per change
//!    (`/proc/PID/stat`, from the PATCH until 500 ms after the last proxy converged).
//!
//! `--change policy` measures an AuthorizationPolicy edit instead (see `kube_bench/policy.rs`).
//!
//! `--quick`: 100 services and 100 proxies. Results: JSON to `--out` (default
//! `<target dir>/bench/kube.json`) and a markdown table on stdout.
//!
//! The servers, the proxies and the process figures are `capstan_e2e::bench`'s, shared with
//! `capstan-cloud-map-bench`; this binary's own modules are in `kube_bench/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use capstan_e2e::bench::report::{log_to_stderr, machine, ms, results_path};
use capstan_e2e::bench::server::{ServerSpec, capstan_bin, istiod_bin};
use capstan_e2e::kube::KubeCluster;
use capstan_load::stats::Percentiles;
use clap::Parser;
use serde::Serialize;
use tracing::{info, warn};

use kubectl_proxy::KubectlProxy;

#[path = "kube_bench/kubectl_proxy.rs"]
mod kubectl_proxy;
#[path = "kube_bench/measure.rs"]
mod measure;
#[path = "kube_bench/objects.rs"]
mod objects;
#[path = "kube_bench/policy.rs"]
mod policy;
#[path = "kube_bench/report.rs"]
mod report;

const NAMESPACES: usize = 10;
const ENDPOINTS: usize = 10;
/// The service whose EndpointSlice changes, and the load assignment every proxy waits for.
const CHANGED_NS: &str = "ns-0";
const CHANGED_SLICE: &str = "svc-0-abcde";
const WATCHED: &str = "outbound|80||svc-0.ns-0.svc.cluster.local";
/// The default egress scope of every namespace: its own services only.
const ROOT_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: [\"./*\"]}]
";

#[derive(Debug, Parser)]
#[command(
    name = "capstan-kube-bench",
    about = "capstan's Kubernetes mode vs istiod against a real kube-apiserver"
)]
struct Cli {
    /// Smoke-test size: 100 services, 100 proxies, 2 rounds.
    #[arg(long)]
    quick: bool,
    /// Services (each with an EndpointSlice of 10 endpoints, a DestinationRule and a
    /// VirtualService) [default: 1000, 100 with --quick].
    #[arg(long)]
    services: Option<usize>,
    /// Delta proxies [default: 1000, 100 with --quick].
    #[arg(long)]
    proxies: Option<usize>,
    /// EndpointSlice changes per server [default: 5, 2 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// The capstan binary [default: `capstan` beside this binary].
    #[arg(long)]
    capstan: Option<PathBuf>,
    /// istiod's pilot-discovery [default: $CAPSTAN_TOOLS_DIR/istiod/pilot-discovery, as
    /// scripts/build-istiod.sh builds it]; the istiod row is skipped when it is missing.
    #[arg(long, env = "CAPSTAN_ISTIOD")]
    istiod: Option<PathBuf>,
    /// Servers to run; `<server>-scoped` runs it with a root-namespace `Sidecar` whose
    /// egress hosts are `./*` (each namespace's proxies see its own services only), applied
    /// before it starts and deleted after: then only the changed service's namespace's
    /// proxies (a tenth) receive the change and are waited for.
    #[arg(long, value_delimiter = ',', default_values = ["capstan", "istiod"])]
    only: Vec<String>,
    /// Extra environment of istiod, `NAME=VALUE` (repeatable), e.g. PILOT_DEBOUNCE_AFTER=10ms.
    #[arg(long = "istiod-env", value_name = "NAME=VALUE")]
    istiod_env: Vec<String>,
    /// What changes in each round.
    #[arg(long, value_enum, default_value = "endpoint")]
    change: Change,
    /// Where to write the JSON results [default: <target dir>/bench/kube.json, or
    /// kube-policy.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    /// The port of one EndpointSlice: every proxy that sees the service waits for it.
    Endpoint,
    /// One namespace-wide AuthorizationPolicy: the proxies of its namespace wait for their
    /// `virtualInbound`; the others should receive nothing.
    Policy,
}

#[derive(Debug, Serialize)]
struct Row {
    server: String,
    /// Process start to ready (readiness endpoint 200).
    ready_ms: f64,
    /// Process start to the ADS server's "listening" log line (capstan only).
    ads_listening_ms: Option<f64>,
    /// Peak RSS (VmHWM) when ready, before any proxy connected.
    hwm_ready_kib: Option<u64>,
    /// RSS when idle after ready (status writes and the like done), before proxies.
    rss_idle_kib: Option<u64>,
    /// Time from the first proxy connecting until every proxy had synced.
    sync_ms: f64,
    synced: usize,
    /// Peak RSS at the end (proxies connected, changes made).
    hwm_end_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    /// Per proxy, over all rounds: PATCH sent → changed load assignment (or, `--change
    /// policy`, `virtualInbound`) received and ACKed.
    endpoint: Percentiles,
    /// `--change policy`: proxies outside the policy's namespace that received a listener
    /// during the edits.
    outside_pushed: Option<usize>,
    /// The PATCH's own round trip (apiserver + etcd), per round.
    patch_ms: Vec<f64>,
    /// Server CPU per change.
    cpu_ms_per_change: Option<f64>,
    /// Load generator CPU per change.
    load_cpu_ms_per_change: Option<f64>,
    /// What each proxy received per change (responses and their bytes).
    bytes_per_proxy_per_change: f64,
    responses_per_proxy_per_change: f64,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: BTreeMap<String, String>,
    change: Change,
    services: usize,
    endpoints_per_service: usize,
    proxies: usize,
    rounds: usize,
    create_objects_ms: f64,
    cluster_start_ms: f64,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    log_to_stderr();
    let cli = Cli::parse();
    let services = cli.services.unwrap_or(if cli.quick { 100 } else { 1000 });
    let proxies = cli.proxies.unwrap_or(if cli.quick { 100 } else { 1000 });
    let policy_mode = cli.change == Change::Policy;
    // Proxy k is endpoint 0 of service k.
    ensure!(
        !policy_mode || proxies <= services,
        "--change policy needs a service per proxy ({proxies} proxies, {services} services)"
    );
    let rounds = cli.rounds.unwrap_or(if cli.quick { 2 } else { 5 });
    let capstan_bin = capstan_bin(cli.capstan.as_deref())?;
    let istiod_bin = istiod_bin(cli.istiod.as_deref());

    let t0 = Instant::now();
    let cluster = KubeCluster::start("kube-bench").await?;
    let cluster_start_ms = ms(t0.elapsed());
    let t_create = Instant::now();
    objects::create(&cluster, services).await?;
    let create_objects_ms = ms(t_create.elapsed());
    info!(
        services,
        seconds = create_objects_ms / 1e3,
        "objects created"
    );
    if policy_mode {
        cluster.kubectl_apply_yaml(&policy::initial()).await?;
    }
    let kube_proxy = KubectlProxy::start(&cluster)?;
    kube_proxy.wait_ready().await?;

    let mut change = 0u32;
    let mut rows = Vec::new();
    for server in &cli.only {
        let (base, scoped) = match server.strip_suffix("-scoped") {
            Some(base) => (base, true),
            None => (server.as_str(), false),
        };
        let mut spec = match base {
            "capstan" => ServerSpec::capstan(&capstan_bin, &cluster, policy_mode)?,
            "istiod" => {
                if !istiod_bin.is_file() {
                    warn!(
                        "istiod row skipped: {} not found (scripts/build-istiod.sh)",
                        istiod_bin.display()
                    );
                    continue;
                }
                ServerSpec::istiod(&istiod_bin, &cluster, &cli.istiod_env)?
            }
            other => bail!("unknown server {other:?} (capstan or istiod)"),
        };
        if scoped {
            cluster.kubectl_apply_yaml(ROOT_SIDECAR).await?;
            spec.name = match base {
                "capstan" => "capstan, root Sidecar ./*",
                _ => "istiod, root Sidecar ./*",
            };
        }
        let row = measure::measure(
            &mut spec,
            &kube_proxy,
            proxies,
            rounds,
            scoped,
            cli.change,
            &mut change,
        )
        .await
        .with_context(|| format!("measuring {}", spec.name))?;
        if scoped {
            cluster
                .kubectl(&["delete", "sidecar", "-n", "istio-system", "default"])
                .await?;
        }
        report::print_row(&row);
        rows.push(row);
    }

    let results = Results {
        machine: machine(),
        change: cli.change,
        services,
        endpoints_per_service: ENDPOINTS,
        proxies,
        rounds,
        create_objects_ms,
        cluster_start_ms,
        rows,
    };
    let base = if policy_mode { "kube-policy" } else { "kube" };
    let suffix = if cli.quick { "-quick" } else { "" };
    let out = results_path(cli.out, &format!("{base}{suffix}.json"))?;
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    report::print_table(&results);
    eprintln!("results: {}", out.display());
    Ok(())
}
