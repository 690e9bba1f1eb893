//! `capstan run`: folder source → model → translation → cache → ADS.

use std::time::Duration;

use anyhow::Context;
use capstan_xds::{PushQueue, SnapshotCache};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::RunArgs;
use crate::model::Mesh;
use crate::source::folder::FolderSource;
use crate::source::watch::FolderWatch;
use crate::translate;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let dir = &args.config_dir;
    anyhow::ensure!(
        dir.is_dir(),
        "--config-dir {}: not a directory",
        dir.display()
    );
    let options = translate::Options {
        outbound_bind: args.outbound_bind.clone(),
        outbound_port: args.outbound_port,
    };
    let metrics = capstan_xds::Metrics::new();
    let mut registry = prometheus_client::registry::Registry::with_prefix("capstan");
    metrics.register(&mut registry);
    let cache = SnapshotCache::with_metrics(metrics);
    let mut source = FolderSource::new(dir.clone());
    // Watch before the first scan so no change slips in between.
    let mut watch = FolderWatch::new(dir, Duration::from_millis(args.debounce_ms))
        .with_context(|| format!("watching {}", dir.display()))?;
    let (queue, _queue_task) = PushQueue::start(
        cache.clone(),
        Duration::from_millis(args.push_quiet_ms),
        Duration::from_millis(args.push_max_delay_ms),
    );
    refresh(&mut source, &queue, &options, &args.domain_suffix)
        .await
        .with_context(|| format!("reading {}", dir.display()))?;

    let listener = TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("binding the ADS server to {}", args.xds_addr))?;
    let monitoring = TcpListener::bind(args.monitoring_addr)
        .await
        .with_context(|| format!("binding the monitoring server to {}", args.monitoring_addr))?;
    // Both ports are bound: what this line announces answers from now on.
    info!(addr = %listener.local_addr()?, "ADS server listening on {}", listener.local_addr()?);
    let monitor = tokio::spawn(crate::monitoring::serve(
        monitoring,
        cache.clone(),
        registry,
    ));
    let server = tokio::spawn(capstan_xds::ads::serve(
        listener,
        cache.clone(),
        shutdown_signal(),
    ));

    let domain_suffix = args.domain_suffix.clone();
    let watcher = tokio::spawn(async move {
        while watch.changed().await {
            if let Err(err) = refresh(&mut source, &queue, &options, &domain_suffix).await {
                error!(dir = %source.dir().display(), %err, "cannot read the config folder; serving the last good config");
            }
        }
    });
    let result = server.await.context("ADS server task")?;
    watcher.abort();
    monitor.abort();
    result.context("ADS server")?;
    info!("stopped");
    Ok(())
}

/// Rescans the folder and, if the objects changed, translates and sets a new snapshot.
async fn refresh(
    source: &mut FolderSource,
    queue: &PushQueue,
    options: &translate::Options,
    domain_suffix: &str,
) -> std::io::Result<()> {
    let (changed, problems) = source.scan()?;
    for problem in &problems {
        warn!("{problem}");
    }
    if !changed {
        return Ok(());
    }
    let (objects, duplicates) = source.objects();
    for problem in &duplicates {
        warn!("{problem}");
    }
    let (mesh, model_problems) = Mesh::build(objects.iter().copied(), domain_suffix);
    let (resources, translate_problems) = translate::build(&mesh, options);
    for problem in model_problems.iter().chain(&translate_problems) {
        warn!("{problem}");
    }
    let count = resources.len();
    match queue.replace(resources).await {
        Some(applied) => {
            info!(version = applied.version, resources = count, changed = %applied.summary(), "new config")
        }
        None => info!("config files changed but the proxies' config did not"),
    }
    Ok(())
}

async fn shutdown_signal() {
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
