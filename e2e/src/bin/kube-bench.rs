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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use capstan_e2e::kube::{KubeCluster, KubeUser, kubectl_bin};
use capstan_e2e::process::ChildProcess;
use capstan_load::name_set::Interner;
use capstan_load::proxy::Env;
use capstan_load::proxy::delta::DeltaProxy;
use capstan_load::proxy::grpc;
use capstan_load::stats::{Percentiles, fmt_ms};
use capstan_load::tracker::Tracker;
use capstan_load::xds_scan::{self, DeltaResponse};
use capstan_xds::ads::service::DELTA_PATH;
use capstan_xds::type_url;
use clap::Parser;
use envoy_types::pb::google::protobuf::{Value, value};
use prost::Message;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

#[path = "kube_bench/policy.rs"]
mod policy;

const NAMESPACES: usize = 10;
const ENDPOINTS: usize = 10;
/// The service whose EndpointSlice changes, and the load assignment every proxy waits for.
const CHANGED_NS: &str = "ns-0";
const CHANGED_SLICE: &str = "svc-0-abcde";
const WATCHED: &str = "outbound|80||svc-0.ns-0.svc.cluster.local";
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_CONCURRENCY: usize = 100;
const ISTIO_VERSION: &str = "1.28.0";
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let capstan_bin = match &cli.capstan {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("capstan"),
    };
    ensure!(
        capstan_bin.is_file(),
        "capstan binary {} not found (cargo build --release -p capstan, or --capstan)",
        capstan_bin.display()
    );
    let istiod_bin = cli.istiod.clone().unwrap_or_else(|| {
        capstan_e2e::locate::tools_dir()
            .join("istiod")
            .join("pilot-discovery")
    });

    let t0 = Instant::now();
    let cluster = KubeCluster::start("kube-bench").await?;
    let cluster_start_ms = ms(t0.elapsed());
    let t_create = Instant::now();
    create_objects(&cluster, services).await?;
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
        let row = measure(
            &spec,
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
        print_row(&row);
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
    let out = match cli.out {
        Some(p) => p,
        None => {
            let dir = capstan_e2e::locate::profile_dir()?
                .parent()
                .context("target dir")?
                .join("bench");
            std::fs::create_dir_all(&dir)?;
            let base = if policy_mode { "kube-policy" } else { "kube" };
            let suffix = if cli.quick { "-quick" } else { "" };
            dir.join(format!("{base}{suffix}.json"))
        }
    };
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    print_table(&results);
    eprintln!("results: {}", out.display());
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- The objects ----

fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// Endpoint `j` of service `i`, in 10.244.0.0/16.
fn address(i: usize, j: usize) -> String {
    let k = i * ENDPOINTS + j;
    format!("10.244.{}.{}", (k / 250) % 256, k % 250 + 1)
}

fn objects_of(i: usize) -> String {
    let ns = namespace(i);
    let endpoints: String = (0..ENDPOINTS)
        .map(|j| {
            format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
                address(i, j)
            )
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  selector: {{app: svc-{i}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-abcde
  namespace: {ns}
  labels: {{kubernetes.io/service-name: svc-{i}, endpointslice.kubernetes.io/managed-by: capstan-kube-bench}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  host: svc-{i}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  hosts: [svc-{i}]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: svc-{i}, subset: v2}}
  - route:
    - destination: {{host: svc-{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc-{i}, subset: v2}}
      weight: 10
---
"
    )
}

async fn create_objects(cluster: &KubeCluster, services: usize) -> anyhow::Result<()> {
    // The harness's Service range is a /24; a second ServiceCIDR makes room for the rest.
    cluster
        .kubectl_apply_yaml(
            "apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kube-bench}
spec: {cidrs: [10.96.0.0/16]}
",
        )
        .await?;
    let dir = cluster.state_dir().join("kube-bench");
    std::fs::create_dir_all(&dir)?;
    let mut namespaces = String::new();
    for n in 0..NAMESPACES {
        namespaces.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}}}\n---\n"
        ));
    }
    cluster.kubectl_apply_yaml(&namespaces).await?;
    // Wait until the ServiceCIDR is usable: a Service of the first namespace gets an IP.
    let mut files = Vec::new();
    for n in 0..NAMESPACES {
        let yaml: String = (0..services)
            .filter(|i| i % NAMESPACES == n)
            .map(objects_of)
            .collect();
        let path = dir.join(format!("ns-{n}.yaml"));
        std::fs::write(&path, yaml)?;
        files.push(path);
    }
    let mut tasks = JoinSet::new();
    for path in files {
        let kubeconfig = cluster.kubeconfig(KubeUser::Admin).to_path_buf();
        tasks.spawn(async move {
            let out = tokio::process::Command::new(kubectl_bin()?)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["create", "-o", "name", "-f"])
                .arg(&path)
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "kubectl create -f {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<usize, anyhow::Error>(out.stdout.split(|b| *b == b'\n').count() - 1)
        });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        created += result??;
    }
    ensure!(
        created == services * 4,
        "created {created} objects, expected {}",
        services * 4
    );
    Ok(())
}

// ---- kubectl proxy: plaintext HTTP to the apiserver for the PATCH ----

struct KubectlProxy {
    process: ChildProcess,
    addr: SocketAddr,
}

impl KubectlProxy {
    fn start(cluster: &KubeCluster) -> anyhow::Result<Self> {
        let port = capstan_e2e::ports::free_port()?;
        let mut cmd = Command::new(kubectl_bin()?);
        cmd.arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Admin))
            .args(["proxy", "--address=127.0.0.1"])
            .arg(format!("--port={port}"));
        let process = ChildProcess::spawn(
            "kubectl-proxy",
            &mut cmd,
            &cluster.log_dir().join("kubectl-proxy.log"),
        )?;
        Ok(Self {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/readyz", None, "").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kubectl proxy not ready: {}", self.process.log_tail(10));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the port of the changed EndpointSlice; returns the PATCH's round trip.
    async fn set_slice_port(&self, port: u32) -> anyhow::Result<Duration> {
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{CHANGED_NS}/endpointslices/{CHANGED_SLICE}"
        );
        let body = format!(r#"[{{"op":"replace","path":"/ports/0/port","value":{port}}}]"#);
        let t = Instant::now();
        let (status, text) = http(
            self.addr,
            "PATCH",
            &path,
            Some("application/json-patch+json"),
            &body,
        )
        .await?;
        let took = t.elapsed();
        ensure!(status == 200, "PATCH {path}: {status} {text}");
        Ok(took)
    }

    /// Makes edit `n` of the benchmark's AuthorizationPolicy; returns the PATCH's round trip.
    async fn edit_policy(&self, n: u64) -> anyhow::Result<Duration> {
        let (path, body) = policy::patch(n);
        let t = Instant::now();
        let (status, text) = http(
            self.addr,
            "PATCH",
            &path,
            Some("application/merge-patch+json"),
            &body,
        )
        .await?;
        let took = t.elapsed();
        ensure!(status == 200, "PATCH {path}: {status} {text}");
        Ok(took)
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            request.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("HTTP request timed out")?
}

// ---- The servers ----

pub(crate) struct ServerSpec {
    pub(crate) name: &'static str,
    pub(crate) command: Command,
    pub(crate) ads: SocketAddr,
    pub(crate) ready: SocketAddr,
    pub(crate) ready_path: &'static str,
    /// A log line that says the ADS server listens.
    pub(crate) listening: Option<&'static str>,
    pub(crate) log: PathBuf,
}

pub(crate) fn loopback_port() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        capstan_e2e::ports::free_port()?,
    )))
}

impl ServerSpec {
    /// capstan; `capture`: sidecars with inbound listeners (`--sidecar-listeners capture`).
    pub(crate) fn capstan(
        bin: &Path,
        cluster: &KubeCluster,
        capture: bool,
    ) -> anyhow::Result<Self> {
        let ads = loopback_port()?;
        let monitoring = loopback_port()?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Capstan))
            .arg("--leader-elect=false")
            .arg(format!("--xds-addr={ads}"))
            .arg(format!("--monitoring-addr={monitoring}"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if capture {
            command.arg("--sidecar-listeners=capture");
        }
        Ok(Self {
            name: "capstan",
            command,
            ads,
            ready: monitoring,
            ready_path: "/readyz",
            listening: Some("ADS server listening"),
            log: cluster.log_dir().join("capstan.log"),
        })
    }

    pub(crate) fn istiod(
        bin: &Path,
        cluster: &KubeCluster,
        env: &[String],
    ) -> anyhow::Result<Self> {
        let ads = loopback_port()?;
        let http = loopback_port()?;
        let mut command = Command::new(bin);
        command
            .arg("discovery")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Admin))
            .arg(format!("--grpcAddr={ads}"))
            .arg(format!("--httpAddr={http}"))
            .arg(format!("--monitoringAddr={}", loopback_port()?))
            .arg(format!("--secureGRPCAddr={}", loopback_port()?))
            .arg(format!("--httpsAddr={}", loopback_port()?))
            .arg(format!("--ctrlz_port={}", loopback_port()?.port()))
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "istiod-kube-bench")
            .env("REVISION", "default")
            // istiod accepts 25 new xDS connections per second by default and turns the rest
            // away ("request rate limit exceeded"); Envoys would retry with backoff. Lifted so
            // that the sync measures istiod's pushes, not the limiter.
            .env("PILOT_MAX_REQUESTS_PER_SECOND", "100000");
        for pair in env {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("--istiod-env {pair}: expected NAME=VALUE"))?;
            command.env(name, value);
        }
        Ok(Self {
            name: "istiod",
            command,
            ads,
            ready: http,
            ready_path: "/ready",
            listening: None,
            log: cluster.log_dir().join("istiod.log"),
        })
    }
}

/// The node of simulated proxy `k`: an Istio sidecar's id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.
/// cluster.local`) and metadata (NAMESPACE, CLUSTER_ID, NAME, LABELS from `capstan_load`,
/// plus ISTIO_VERSION and the rest istiod reads). As a `workload`, it claims endpoint 0 of
/// service `k` as its address.
pub(crate) fn node(k: usize, workload: bool) -> Bytes {
    let mut node = capstan_load::request::node(k);
    if workload {
        let ip = address(k, 0);
        let ns = namespace(k);
        node.id = format!("sidecar~{ip}~load-{k}.{ns}~{ns}.svc.cluster.local");
        if let Some(metadata) = node.metadata.as_mut() {
            metadata.fields.insert(
                "INSTANCE_IPS".into(),
                Value {
                    kind: Some(value::Kind::StringValue(ip)),
                },
            );
        }
    }
    let metadata = node.metadata.get_or_insert_with(Default::default);
    let string = |s: &str| Value {
        kind: Some(value::Kind::StringValue(s.to_string())),
    };
    metadata
        .fields
        .insert("ISTIO_VERSION".into(), string(ISTIO_VERSION));
    metadata
        .fields
        .insert("INTERCEPTION_MODE".into(), string("REDIRECT"));
    metadata
        .fields
        .insert("SERVICE_ACCOUNT".into(), string("default"));
    Bytes::from(node.encode_to_vec())
}

/// Whether a Delta response carries [`WATCHED`] with an endpoint on `port`.
fn carries_change(message: &[u8], port: u32) -> anyhow::Result<bool> {
    let response = DeltaResponse::parse(message)?;
    if response.type_url != type_url::ENDPOINT {
        return Ok(false);
    }
    for resource in response.resources() {
        let resource = resource?;
        if resource.name == WATCHED && xds_scan::load_assignment_has_port(resource.body, port)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a proxy shares with the run.
struct Shared {
    tracker: Arc<Tracker>,
    interner: Arc<Interner>,
    semaphore: Arc<Semaphore>,
    listeners: Arc<policy::ListenerCounts>,
    change: Change,
}

async fn run_proxy(index: usize, ads: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let Shared {
        tracker, interner, ..
    } = &*shared;
    let permit = shared.semaphore.clone().acquire_owned().await?;
    tracker.started(index);
    let connection = capstan_load::proxy::stream::connect(ads).await?;
    let policy_mode = shared.change == Change::Policy;
    let mut proxy = DeltaProxy::new(node(index, policy_mode), interner.empty());
    let first = grpc::frame_all(&proxy.start());
    let mut stream = grpc::open(connection, ads, DELTA_PATH, first).await?;
    let mut permit = Some(permit);
    loop {
        let Some(message) = stream.message().await? else {
            bail!("the server closed the stream");
        };
        tracker.received(message.len());
        let target = tracker.target();
        let env = Env { interner, target };
        let step = proxy.on_response(&message, &env)?;
        if !step.requests.is_empty() {
            stream.send(grpc::frame_all(&step.requests))?;
        }
        if step.synced {
            tracker.synced(index);
            drop(permit.take());
        }
        if policy::is_listener(&message) {
            shared.listeners.received(index);
        }
        let converged = match (shared.change, target.endpoint_port, target.marker) {
            (Change::Endpoint, Some(port), _) => carries_change(&message, port)?,
            (Change::Policy, _, Some(edit)) => policy::carries_edit(&message, edit)?,
            _ => false,
        };
        if converged {
            tracker.converged(index, target.generation);
        }
    }
}

pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits until `pid` used less than 2 % of a core over a second (at most `limit`).
pub(crate) async fn wait_idle(pid: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut before = capstan_load::cpu::cpu_time(pid);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = capstan_load::cpu::cpu_time(pid);
        match (before, now) {
            (Some(b), Some(n)) if n.saturating_sub(b) < Duration::from_millis(20) => break,
            (_, None) => break,
            _ => {}
        }
        before = now;
    }
    start.elapsed()
}

async fn measure(
    spec: &ServerSpec,
    kube_proxy: &KubectlProxy,
    proxies: usize,
    rounds: usize,
    scoped: bool,
    mode: Change,
    change: &mut u32,
) -> anyhow::Result<Row> {
    // The proxies that see the changed service: all, or its namespace's under the root
    // Sidecar (proxy k is in namespace ns-(k % 10), as `node` says); the policy's namespace's.
    let sees_change = |index: usize| match mode {
        Change::Endpoint => !scoped || namespace(index) == CHANGED_NS,
        Change::Policy => namespace(index) == policy::POLICY_NS,
    };
    let mut command = Command::new(spec.command.get_program());
    command.args(spec.command.get_args());
    for (k, v) in spec.command.get_envs() {
        if let Some(v) = v {
            command.env(k, v);
        }
    }
    info!(server = spec.name, log = %spec.log.display(), "starting");
    let t0 = Instant::now();
    let mut process = ChildProcess::spawn(spec.name, &mut command, &spec.log)?;
    let pid = process.pid();
    let mut ads_listening = None;
    let ready = loop {
        if ads_listening.is_none()
            && let Some(line) = spec.listening
            && process.log().contains(line)
        {
            ads_listening = Some(t0.elapsed());
        }
        if let Ok((200, _)) = http(spec.ready, "GET", spec.ready_path, None, "").await {
            break t0.elapsed();
        }
        process.ensure_running()?;
        ensure!(
            t0.elapsed() < READY_TIMEOUT,
            "{} not ready after {READY_TIMEOUT:?}: {}",
            spec.name,
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if let Some(line) = spec.listening {
        while ads_listening.is_none() && t0.elapsed() < READY_TIMEOUT {
            if process.log().contains(line) {
                ads_listening = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let hwm_ready_kib = status_kib(pid, "VmHWM:");
    info!(server = spec.name, ready = ?ready, ads_listening = ?ads_listening, hwm_ready_kib, "ready");
    let idle = wait_idle(pid, Duration::from_secs(60)).await;
    let rss_idle_kib = status_kib(pid, "VmRSS:");
    info!(server = spec.name, after = ?idle, rss_idle_kib, "idle");

    // Connect the proxies.
    let tracker = Arc::new(Tracker::new(proxies));
    let listeners = Arc::new(policy::ListenerCounts::new(proxies));
    let shared = Arc::new(Shared {
        tracker: tracker.clone(),
        interner: Arc::new(Interner::new()),
        semaphore: Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
        listeners: listeners.clone(),
        change: mode,
    });
    let mut tasks = JoinSet::new();
    let sync_start = tracker.now();
    for index in 0..proxies {
        let (shared, ads) = (shared.clone(), spec.ads);
        tasks.spawn(async move {
            if let Err(e) = run_proxy(index, ads, shared.clone()).await {
                shared
                    .tracker
                    .failed(index, format!("proxy {index}: {e:#}"));
            }
        });
    }
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut last_log = Instant::now();
    loop {
        let synced = tracker.synced_count();
        if synced + tracker.failures_before_sync() >= proxies {
            break;
        }
        process.ensure_running()?;
        if Instant::now() > deadline {
            warn!(synced, "initial sync timed out");
            break;
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            info!(
                server = spec.name,
                synced,
                failed = tracker.failures(),
                "syncing"
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let synced = tracker.synced_count();
    let sync_ms = ms(Tracker::offset(
        tracker.last_synced().saturating_sub(sync_start),
    ));
    info!(server = spec.name, synced, sync_ms, errors = ?tracker.errors(), "proxies synced");
    ensure!(
        synced > 0,
        "no proxy synced with {}: {:?}; log tail:\n{}",
        spec.name,
        tracker.errors(),
        process.log_tail(20)
    );
    wait_idle(pid, Duration::from_secs(30)).await;

    // The changes.
    let mut samples = Vec::new();
    let mut patch_ms = Vec::new();
    let sync_times = tracker.sync_times();
    let expected = sync_times
        .iter()
        .enumerate()
        .filter(|(index, synced)| synced.is_some() && sees_change(*index))
        .count();
    let (bytes_before, responses_before) = tracker.traffic();
    let listeners_before = listeners.snapshot();
    let cpu_before = capstan_load::cpu::CpuClock::read(Some(pid));
    for round in 0..rounds {
        *change += 1;
        let (generation, start, took) = match mode {
            Change::Endpoint => {
                let port = 9000 + *change;
                let generation = tracker.expect_endpoint_port(port);
                let start = tracker.now();
                (generation, start, kube_proxy.set_slice_port(port).await?)
            }
            Change::Policy => {
                let edit = u64::from(*change);
                let generation = tracker.expect_marker(edit);
                let start = tracker.now();
                (generation, start, kube_proxy.edit_policy(edit).await?)
            }
        };
        patch_ms.push(ms(took));
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while tracker.converged_count(generation) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let times = tracker.convergence(generation);
        let arrived = times.iter().flatten().count();
        // Over the proxies that synced (a proxy the server turned away is not counted).
        let mut round_samples: Vec<Option<Duration>> = times
            .iter()
            .zip(&sync_times)
            .enumerate()
            .filter(|(index, (_, synced))| synced.is_some() && sees_change(*index))
            .map(|(_, (t, _))| t.map(|t| Tracker::offset(t.saturating_sub(start))))
            .collect();
        let round_stats = Percentiles::of(&round_samples);
        info!(
            server = spec.name,
            round,
            arrived,
            p50 = fmt_ms(round_stats.p50_ms),
            p99 = fmt_ms(round_stats.p99_ms),
            max = fmt_ms(round_stats.max_ms),
            patch_ms = ms(took),
            change = ?mode,
            "change"
        );
        samples.append(&mut round_samples);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_after = capstan_load::cpu::CpuClock::read(Some(pid));
    let (cpu, load_cpu) = cpu_after.ms_per_change_since(&cpu_before, rounds);
    let (bytes_after, responses_after) = tracker.traffic();
    let per_change = (rounds.max(1) * synced.max(1)) as f64;
    let row = Row {
        server: spec.name.to_string(),
        ready_ms: ms(ready),
        ads_listening_ms: ads_listening.map(ms),
        hwm_ready_kib,
        rss_idle_kib,
        sync_ms,
        synced,
        hwm_end_kib: status_kib(pid, "VmHWM:"),
        rss_end_kib: status_kib(pid, "VmRSS:"),
        endpoint: Percentiles::of(&samples),
        outside_pushed: (mode == Change::Policy).then(|| {
            policy::pushed_outside(&listeners_before, &listeners.snapshot(), |k| {
                !sees_change(k)
            })
        }),
        patch_ms,
        cpu_ms_per_change: cpu,
        load_cpu_ms_per_change: load_cpu,
        bytes_per_proxy_per_change: (bytes_after - bytes_before) as f64 / per_change,
        responses_per_proxy_per_change: (responses_after - responses_before) as f64 / per_change,
        errors: tracker.errors(),
    };
    tasks.shutdown().await;
    process.stop();
    Ok(row)
}

// ---- Reporting ----

pub(crate) fn machine() -> BTreeMap<String, String> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    BTreeMap::from([
        ("nproc".into(), run("nproc", &[])),
        ("cpu".into(), cpu),
        ("memory".into(), run("free", &["-h"])),
        ("kernel".into(), run("uname", &["-r"])),
        (
            "date".into(),
            run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        ),
        (
            "loadavg".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (
            "commit".into(),
            run(
                "git",
                &[
                    "-C",
                    &capstan_e2e::locate::repo_dir().display().to_string(),
                    "rev-parse",
                    "--short=12",
                    "HEAD",
                ],
            ),
        ),
    ])
}

pub(crate) fn kib(v: Option<u64>) -> String {
    v.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn print_row(row: &Row) {
    eprintln!(
        "{}: ready {:.0} ms, peak RSS at ready {} MiB, sync {:.0} ms ({} proxies), change p50/p99/max {}/{}/{} ms, server CPU {:.1} ms per change",
        row.server,
        row.ready_ms,
        kib(row.hwm_ready_kib),
        row.sync_ms,
        row.synced,
        fmt_ms(row.endpoint.p50_ms),
        fmt_ms(row.endpoint.p99_ms),
        fmt_ms(row.endpoint.max_ms),
        row.cpu_ms_per_change.unwrap_or(f64::NAN)
    );
}

fn print_table(results: &Results) {
    let changes = match results.change {
        Change::Endpoint => "EndpointSlice changes",
        Change::Policy => "AuthorizationPolicy edits (ns-3, namespace-wide)",
    };
    println!(
        "{} services × {} endpoints, {} DestinationRules, {} VirtualServices; {} Delta proxies; {} {changes} per server; objects created in {:.1} s",
        results.services,
        results.endpoints_per_service,
        results.services,
        results.services,
        results.proxies,
        results.rounds,
        results.create_objects_ms / 1e3
    );
    println!();
    println!(
        "| server | start → ready ms | start → ADS listening ms | peak RSS at ready MiB | RSS idle MiB | proxies synced | sync s | change → ACKed p50/p99/max ms | missed | others pushed | PATCH ms (median) | server CPU ms per change | load generator CPU ms per change | received per proxy per change | peak RSS at end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &results.rows {
        let mut patch = row.patch_ms.clone();
        patch.sort_by(f64::total_cmp);
        let median = patch.get(patch.len() / 2).copied();
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.2} | {} / {} / {} | {} | {} | {} | {} | {} | {:.1} responses, {} | {} |",
            row.server,
            row.ready_ms,
            row.ads_listening_ms
                .map_or("–".into(), |v| format!("{v:.0}")),
            kib(row.hwm_ready_kib),
            kib(row.rss_idle_kib),
            row.synced,
            row.sync_ms / 1e3,
            fmt_ms(row.endpoint.p50_ms),
            fmt_ms(row.endpoint.p99_ms),
            fmt_ms(row.endpoint.max_ms),
            row.endpoint.missing(),
            row.outside_pushed.map_or("–".into(), |n| n.to_string()),
            median.map_or("–".into(), |v| format!("{v:.1}")),
            row.cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.load_cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.responses_per_proxy_per_change,
            capstan_load::stats::fmt_bytes(row.bytes_per_proxy_per_change),
            kib(row.hwm_end_kib),
        );
    }
}
