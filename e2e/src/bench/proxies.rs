//! The simulated proxies of the benchmarks: `capstan_load`'s Delta proxies with an Istio
//! sidecar's node, connected to a server as a [`Fleet`] whose [`Tracker`] records when each
//! synced and when each received (and ACKed) the change a round waits for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use bytes::Bytes;
use capstan_load::name_set::Interner;
use capstan_load::proxy::Env;
use capstan_load::proxy::delta::DeltaProxy;
use capstan_load::proxy::grpc;
use capstan_load::tracker::{Target, Tracker};
use capstan_load::xds_scan::{self, DeltaResponse};
use capstan_xds::ads::service::DELTA_PATH;
use capstan_xds::type_url;
use envoy_types::pb::google::protobuf::{Value, value};
use prost::Message;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::bench::report::ms;
use crate::process::ChildProcess;

/// The Istio version the proxies claim: istiod shapes its config by it.
pub const ISTIO_VERSION: &str = "1.28.0";
/// Proxies connecting and syncing at once: the rest wait for a permit.
pub const CONNECT_CONCURRENCY: usize = 100;
/// How long the whole fleet may take to sync.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// The node of simulated proxy `k`: `capstan_load`'s (NAMESPACE, CLUSTER_ID, NAME, LABELS)
/// plus ISTIO_VERSION and the rest istiod reads. As a workload at `(ip, namespace)`, an
/// Istio sidecar's id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`) and that address
/// as its INSTANCE_IPS, so that servers build it an inbound side.
pub fn node(k: usize, workload: Option<(String, String)>) -> Bytes {
    let mut node = capstan_load::request::node(k);
    if let Some((ip, ns)) = workload {
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

/// Whether a Delta response carries the load assignment `watched` with an endpoint on
/// `port`: how an endpoint change is recognised.
pub fn carries_port(message: &[u8], watched: &str, port: u32) -> anyhow::Result<bool> {
    let response = DeltaResponse::parse(message)?;
    if response.type_url != type_url::ENDPOINT {
        return Ok(false);
    }
    for resource in response.resources() {
        let resource = resource?;
        if resource.name == watched && xds_scan::load_assignment_has_port(resource.body, port)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a benchmark's proxies are and look for.
pub trait Scenario: Send + Sync + 'static {
    /// The node proxy `k` sends.
    fn node(&self, k: usize) -> Bytes;
    /// Whether `message`, a response proxy `k` has just handled (and ACKed), carries the
    /// change `target` waits for.
    fn converged(&self, k: usize, message: &[u8], target: Target) -> anyhow::Result<bool>;
}

/// Proxies connected to one server, each a task.
pub struct Fleet {
    pub tracker: Arc<Tracker>,
    tasks: JoinSet<()>,
    sync_start: u64,
}

/// What a proxy shares with the run.
struct Shared<S> {
    tracker: Arc<Tracker>,
    interner: Arc<Interner>,
    semaphore: Arc<Semaphore>,
    scenario: S,
}

impl Fleet {
    /// Connects `proxies` proxies to the ADS server at `ads` ([`CONNECT_CONCURRENCY`] of them
    /// syncing at once); a proxy that fails is recorded in the tracker.
    pub fn connect(proxies: usize, ads: SocketAddr, scenario: impl Scenario) -> Self {
        let tracker = Arc::new(Tracker::new(proxies));
        let shared = Arc::new(Shared {
            tracker: tracker.clone(),
            interner: Arc::new(Interner::new()),
            semaphore: Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
            scenario,
        });
        let mut tasks = JoinSet::new();
        let sync_start = tracker.now();
        for index in 0..proxies {
            let shared = shared.clone();
            tasks.spawn(async move {
                if let Err(e) = run_proxy(index, ads, shared.clone()).await {
                    shared
                        .tracker
                        .failed(index, format!("proxy {index}: {e:#}"));
                }
            });
        }
        Self {
            tracker,
            tasks,
            sync_start,
        }
    }

    /// Waits until every proxy has synced or failed (at most [`SYNC_TIMEOUT`]) while `process`
    /// (the server `name`) runs; how many synced, and the first connect → last sync in ms.
    /// An error when none did.
    pub async fn wait_synced(
        &self,
        name: &str,
        process: &mut ChildProcess,
    ) -> anyhow::Result<(usize, f64)> {
        let tracker = &self.tracker;
        let proxies = tracker.proxies();
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
                    server = name,
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
            tracker.last_synced().saturating_sub(self.sync_start),
        ));
        info!(server = name, synced, sync_ms, errors = ?tracker.errors(), "proxies synced");
        ensure!(
            synced > 0,
            "no proxy synced with {name}: {:?}; log tail:\n{}",
            tracker.errors(),
            process.log_tail(20)
        );
        Ok((synced, sync_ms))
    }

    /// Disconnects every proxy.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn run_proxy<S: Scenario>(
    index: usize,
    ads: SocketAddr,
    shared: Arc<Shared<S>>,
) -> anyhow::Result<()> {
    let Shared {
        tracker,
        interner,
        scenario,
        ..
    } = &*shared;
    let permit = shared.semaphore.clone().acquire_owned().await?;
    tracker.started(index);
    let connection = capstan_load::proxy::stream::connect(ads).await?;
    let mut proxy = DeltaProxy::new(scenario.node(index), interner.empty());
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
        if scenario.converged(index, &message, target)? {
            tracker.converged(index, target.generation);
        }
    }
}
