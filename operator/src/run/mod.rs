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
use capstan_xds::{PushQueue, SnapshotCache};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

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
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = capstan_xds::Metrics::new();
    let mut registry = prometheus_client::registry::Registry::with_prefix("capstan");
    metrics.register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::default();
    reconcile_metrics.register(&mut registry);
    let cache = SnapshotCache::with_metrics(metrics);
    let (queue, _queue_task) = PushQueue::start(
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

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))
}

impl Serving {
    /// Starts the monitoring server (before the first config: `/readyz` says what is awaited).
    pub fn monitor(&mut self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let registry = std::mem::take(&mut self.registry);
        tokio::spawn(crate::monitoring::serve(
            listener,
            self.cache.clone(),
            registry,
            self.ready.subscribe(),
        ))
    }

    /// Marks capstan ready and serves ADS until a shutdown signal.
    pub async fn serve_ads(self) -> anyhow::Result<()> {
        let addr = self.ads.local_addr()?;
        self.ready.send_replace(ReadyState::ready());
        // Tests and the demo wait for this line: from now on the ADS port answers.
        info!(%addr, "ADS server listening on {addr}");
        capstan_xds::ads::serve(self.ads, self.cache, shutdown_signal())
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
