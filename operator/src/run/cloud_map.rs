//! Starting the Cloud Map source for `capstan run --cloud-map-config`.

use tokio::sync::{mpsc, watch};
use tracing::info;

use super::RunArgs;
use crate::index::Event;
use crate::source::cloud_map::{self, CloudMapConfig, CloudMapMetrics, Mode, SyncState, api, poll};

/// Events the poller has sent and the mode has not yet taken. A poll sends one event per
/// changed service; a full one waits here rather than growing without bound.
const QUEUE: usize = 1024;

/// The running Cloud Map source.
pub struct CloudMapFeed {
    pub mode: Mode,
    pub mesh_namespace: String,
    pub events: mpsc::Receiver<Event>,
    /// Whether Cloud Map's polls succeed (the materialised mode writes it as a condition).
    pub sync: watch::Receiver<SyncState>,
}

/// Reads the Cloud Map config, if given, and starts polling.
pub async fn start(
    args: &RunArgs,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Option<CloudMapFeed>> {
    let Some(path) = &args.cloud_map_config else {
        return Ok(None);
    };
    let config = CloudMapConfig::read(path)?;
    anyhow::ensure!(
        config.mode == Mode::InMemory || args.kube.kubernetes(),
        "{}: mode: materialize writes ServiceEntries to a cluster; give --kubeconfig or --in-cluster, or use mode: in-memory",
        path.display()
    );
    let metrics = CloudMapMetrics::default();
    metrics.register(registry);
    let api = api::SdkApi::new(config.region.as_deref(), config.endpoint.as_deref(), None).await;
    let (tx, events) = mpsc::channel(QUEUE);
    let (sync_tx, sync) = watch::channel(SyncState::synced());
    info!(
        namespaces = ?config.namespaces,
        mode = ?config.mode,
        interval = ?config.interval,
        "polling AWS Cloud Map"
    );
    let feed = CloudMapFeed {
        mode: config.mode,
        mesh_namespace: config.mesh_namespace.clone(),
        events,
        sync,
    };
    tokio::spawn(cloud_map::run(
        poll::Poller::new(api, config),
        tx,
        sync_tx,
        metrics,
    ));
    Ok(Some(feed))
}

/// Hands the index each batch of Cloud Map events and rebuilds what they changed (the
/// in-memory mode), until the source stops.
pub async fn feed<F, Fut>(mut events: mpsc::Receiver<Event>, mut apply: F)
where
    F: FnMut(Vec<Event>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(event) = events.recv().await {
        let mut batch = vec![event];
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        apply(batch).await;
    }
}
