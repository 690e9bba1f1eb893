//! `capstan run`: a source (a YAML folder, or a Kubernetes API server) → index → model →
//! translation → push queue → cache → ADS.

mod args;
mod folder;
mod kube;

pub use args::RunArgs;
pub use kube::KubeArgs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use capstan_xds::net::ConnectionLimits;
use capstan_xds::net::grpc::GrpcLimits;
use capstan_xds::{PushQueue, SnapshotCache};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::monitoring::ReadyState;
use crate::reconcile::{ReconcileMetrics, Reconciler};
use crate::translate;

/// What every mode shares: the cache and its push queue, metrics, the bound ports.
pub(crate) struct Serving {
    pub cache: SnapshotCache,
    pub queue: PushQueue,
    pub registry: prometheus_client::registry::Registry,
    pub reconcile_metrics: ReconcileMetrics,
    pub options: translate::Options,
    pub ads: TcpListener,
    pub ready: watch::Sender<ReadyState>,
    pub ads_limits: GrpcLimits,
    pub monitoring_limits: ConnectionLimits,
    /// The push queue's task, for a mode to supervise (taken by the folder mode).
    pub queue_task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = capstan_xds::Metrics::new();
    let mut registry = prometheus_client::registry::Registry::with_prefix("capstan");
    metrics.register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::default();
    reconcile_metrics.register(&mut registry);
    let cache = SnapshotCache::with_metrics(metrics);
    let (queue, queue_task) = PushQueue::start(
        cache.clone(),
        Duration::from_millis(args.push_quiet_ms),
        Duration::from_millis(args.push_max_delay_ms),
    );
    // Bound before anything is read, so a port in use fails at once; the ADS port accepts
    // proxies only once the first complete config is in the cache.
    let ads = bind(args.xds_addr, "the ADS server").await?;
    let (ready, _) = watch::channel(ReadyState::waiting(vec!["the first config".into()]));
    let serving = Serving {
        cache,
        queue,
        registry,
        reconcile_metrics,
        options: translate::Options {
            outbound_bind: args.outbound_bind.clone(),
            outbound_port: args.outbound_port,
        },
        ads,
        ready,
        ads_limits: ads_limits(&args),
        monitoring_limits: monitoring_limits(&args),
        queue_task: Some(queue_task),
    };
    match (&args.config_dir, args.kube.kubernetes()) {
        (Some(dir), false) => folder::run(&args, dir, serving).await,
        (None, true) => kube::run(&args, serving).await,
        (Some(_), true) => anyhow::bail!(
            "--config-dir and --kubeconfig/--in-cluster choose different sources; give one"
        ),
        (None, false) => anyhow::bail!(
            "no config source: give --config-dir DIR (a folder of Istio YAML) or --kubeconfig FILE / --in-cluster (a Kubernetes API server)"
        ),
    }
}

/// The ADS server's limits from the flags, its connection cap lowered to what the open-file
/// limit leaves beside the monitoring server's.
fn ads_limits(args: &RunArgs) -> GrpcLimits {
    let wanted = ConnectionLimits {
        max_connections: count(args.xds_max_connections),
        max_per_ip: count(args.xds_max_connections_per_ip),
    };
    let (connections, lowered) = wanted.within_fd_limit(count(args.monitoring_max_connections));
    if lowered {
        warn!(
            wanted = wanted.max_connections,
            cap = connections.max_connections,
            "--xds-max-connections lowered to what the open-file limit (ulimit -n) allows"
        );
    }
    GrpcLimits {
        connections,
        max_streams_per_connection: args.xds_max_streams_per_connection.max(1),
        first_request_timeout: Duration::from_millis(args.xds_first_request_timeout_ms.into()),
        max_connection_age: (args.xds_max_connection_age_secs > 0)
            .then(|| Duration::from_secs(args.xds_max_connection_age_secs.into())),
    }
}

/// A count from a flag (flags are u32 to keep `RunArgs` small).
fn count(flag: u32) -> usize {
    usize::try_from(flag).unwrap_or(usize::MAX)
}

fn monitoring_limits(args: &RunArgs) -> ConnectionLimits {
    let wanted = ConnectionLimits {
        max_connections: count(args.monitoring_max_connections),
        max_per_ip: count(args.monitoring_max_connections_per_ip),
    };
    let (limits, lowered) = wanted.within_fd_limit(0);
    if lowered {
        warn!(
            wanted = wanted.max_connections,
            cap = limits.max_connections,
            "--monitoring-max-connections lowered to what the open-file limit (ulimit -n) allows"
        );
    }
    limits
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))
}

impl Serving {
    /// Starts the monitoring server (before the first config: `/readyz` says what is awaited).
    pub fn monitor(&mut self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let registry = std::mem::take(&mut self.registry);
        tokio::spawn(crate::monitoring::serve_with(
            listener,
            self.monitoring_limits,
            self.cache.clone(),
            registry,
            self.ready.subscribe(),
        ))
    }

    /// Marks capstan ready and serves ADS until a shutdown signal.
    pub async fn serve_ads(self) -> anyhow::Result<()> {
        let addr = self.ads.local_addr()?;
        // Only the wait is over: a part that already failed keeps capstan not ready.
        self.ready.send_modify(|state| state.waiting_for.clear());
        // Tests and the demo wait for this line: from now on the ADS port answers.
        info!(%addr, "ADS server listening on {addr}");
        capstan_xds::ads::serve_with(self.ads, self.cache, &self.ads_limits, shutdown_signal())
            .await
            .context("ADS server")?;
        info!("stopped");
        Ok(())
    }

    pub fn reconciler(
        &self,
        domain_suffix: &str,
        status: Option<crate::status::writer::StatusWriter>,
    ) -> Reconciler {
        Reconciler::new(
            self.options.clone(),
            domain_suffix.to_string(),
            self.queue.clone(),
            status,
            self.reconcile_metrics.clone(),
        )
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
}
