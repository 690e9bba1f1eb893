//! Kubernetes mode: the watchers of `source::kube` feed the index; proxies are served once
//! every kind has been listed; the elected replica writes status conditions.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use super::RunArgs;
use super::{Serving, bind};
use crate::index::{Changes, Event, Tag};
use crate::monitoring::ReadyState;
use crate::reconcile::Reconciler;
use crate::source::cloud_map::{Mode, materialize};
use crate::source::kube::{self as source, KubeSource, SYNC_REPORT_AFTER, WatchMetrics};
use crate::status::lease::{Elector, LeaseConfig};
use crate::status::writer::StatusWriter;

/// The most events applied before the proxies' config is rebuilt: a burst (a re-list, a
/// `kubectl apply` of many objects) costs one rebuild, but a long one cannot starve pushes.
const MAX_BATCH: usize = 4096;

pub async fn run(args: &RunArgs, mut serving: Serving) -> anyhow::Result<()> {
    let client = args.kube.client().await?;
    let watch_metrics = WatchMetrics::default();
    watch_metrics.register(&mut serving.registry);
    let monitoring = bind(args.monitoring_addr, "the monitoring server").await?;
    let monitor = serving.monitor(monitoring);

    // Held for the life of the process: a closed channel would read as "not leader".
    let (always_leader, always) = tokio::sync::watch::channel(true);
    let _always_leader = always_leader;
    // Who writes: the elected replica (status, materialised Cloud Map ServiceEntries).
    let mut writer_leader = always;
    let (status, elector) = if args.kube.write_status {
        // Renew deadline and retry period scale with the lease, as client-go's defaults do.
        let config = LeaseConfig::new(args.kube.namespace.clone(), args.kube.identity())
            .with_lease_duration(Duration::from_secs(args.kube.lease_duration_secs));
        let (leader, elector) = if args.kube.leader_elect {
            let (leader, task) = Elector::start(client.clone(), config);
            (leader, Some(task))
        } else {
            // The only replica: always the writer.
            (writer_leader.clone(), None)
        };
        writer_leader = leader.clone();
        let (writer, _task) = StatusWriter::start(client.clone(), leader);
        (Some(writer), elector)
    } else {
        (None, None)
    };
    let reconciler = serving.reconciler(&args.domain_suffix, status);
    let source = source::start(client.clone(), watch_metrics);
    info!(
        kinds = source.tags.len(),
        "watching the Kubernetes API server"
    );

    // In-memory Cloud Map events join the watchers'; materialised ones are written to the
    // cluster and come back through the ServiceEntry watch.
    let cloud_map = match serving.cloud_map.take() {
        Some(feed) if feed.mode == Mode::Materialize => {
            tokio::spawn(materialize::run(
                client.clone(),
                feed.mesh_namespace,
                feed.events,
                feed.sync,
                writer_leader,
            ));
            None
        }
        Some(feed) => Some(feed.events),
        None => None,
    };
    let feeder = tokio::spawn(feed(source, cloud_map, reconciler, serving.ready.clone()));
    // The feeder marks readiness through `ready`; ADS waits for it.
    let mut ready = serving.ready.subscribe();
    let waited = ready
        .wait_for(|state| state.waiting_for.is_empty())
        .await
        .is_ok();
    anyhow::ensure!(
        waited,
        "the Kubernetes source stopped before its first sync"
    );
    let result = serving.serve_ads().await;
    feeder.abort();
    monitor.abort();
    if let Some(elector) = elector {
        elector.release().await;
    }
    result
}

/// Applies the watchers' events to the index, in batches, and rebuilds after each batch once
/// every kind has been listed. Until then nothing is served: a proxy never sees a partial mesh.
async fn feed(
    mut source: KubeSource,
    mut cloud_map: Option<mpsc::Receiver<Event>>,
    mut reconciler: Reconciler,
    ready: tokio::sync::watch::Sender<ReadyState>,
) {
    let all: BTreeSet<Tag> = source.tags.iter().copied().collect();
    let mut listed: BTreeSet<Tag> = BTreeSet::new();
    let mut synced = false;
    let mut report_at = Instant::now() + SYNC_REPORT_AFTER;
    let mut pending = Changes::default();
    let started = std::time::Instant::now();
    loop {
        let event = tokio::select! {
            event = source.events.recv() => event,
            Some(event) = recv(&mut cloud_map) => Some(event),
            _ = sleep_until(report_at), if !synced => {
                let missing: Vec<String> = all.difference(&listed).map(Tag::to_string).collect();
                warn!(
                    waiting_for = ?missing,
                    "not serving proxies yet: these kinds have not been listed (is the CRD installed, and does capstan's RBAC allow list/watch?)"
                );
                report_at = Instant::now() + SYNC_REPORT_AFTER;
                continue;
            }
        };
        let Some(event) = event else {
            warn!("the Kubernetes watchers stopped");
            return;
        };
        let mut batch = vec![event];
        while batch.len() < MAX_BATCH {
            match source.events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        for event in batch {
            if let Event::Reset(tags, _) = &event {
                listed.extend(tags.iter().copied());
            }
            pending.merge(reconciler.handle(event));
        }
        if !synced {
            if !listed.is_superset(&all) {
                let missing = all.difference(&listed).map(Tag::to_string).collect();
                ready.send_replace(ReadyState::waiting(missing));
                continue;
            }
            synced = true;
            pending = Changes::default();
            reconciler.rebuild().await;
            info!(
                after = ?started.elapsed(),
                objects = ?reconciler.index().counts(),
                "every kind listed; serving proxies"
            );
            ready.send_replace(ReadyState::ready());
            continue;
        }
        reconciler.reconcile(std::mem::take(&mut pending)).await;
    }
}

/// The next event of an optional source (none: never).
async fn recv(events: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// How to reach the API server, and how this replica takes part in status writing.
#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Kubernetes mode: watch the API server of this kubeconfig (its current context).
    #[arg(long, conflicts_with = "in_cluster")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubernetes mode with the pod's own service account (inside a cluster).
    #[arg(long)]
    pub in_cluster: bool,
    /// The namespace capstan runs in; its leader-election Lease lives there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// This replica's name in the Lease [default: $POD_NAME, else <hostname>_<random>].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Elect one replica (Lease `capstan-leader`) to write status; `false`: this replica
    /// always writes (run only one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a leader's Lease holds without renewal before another replica takes over.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Write a `Reconciled` condition on every Istio object.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub write_status: bool,
}

impl KubeArgs {
    pub fn kubernetes(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster
    }

    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(crate::status::lease::default_identity)
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client(self.kubeconfig.as_deref()).await
    }
}

/// A client from the kubeconfig at `path`, or (none) from the pod's service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("--in-cluster: no service account here (not running in a pod?)")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}
