//! The task that owns the index: applies the sources' events, rebuilds what they changed and
//! hands the result to the push queue, and tells the status writer what each Istio object's
//! condition should say.
//!
//! A change rebuilds only what depends on it: the model re-reads the changed objects and the
//! hosts they claim ([`Mesh::update`]), translation rebuilds those hosts' resources
//! ([`Translator::update`]), and an endpoint change rebuilds only the load assignments of the
//! services it names. Each goes to the cache as an `Update`. Only the first sync builds
//! everything (and replaces the snapshot).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use capstan_crds::ObjectKey;
use capstan_xds::{PushQueue, SnapshotBuilder, Update};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::index::{Changes, Event, Index, IstioRecord, RecordKey};
use crate::model::{Mesh, Problem, unsupported};
use crate::pod_localities::PodLocalities;
use crate::status::writer::{StatusItem, StatusSet, StatusWriter};
use crate::status::{ConditionStatus, Desired, Reason};
use crate::translate::{self, Translator};

/// The longest condition message written; the rest is cut (a status is no place for an
/// unbounded list of errors).
const MAX_MESSAGE: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

/// How often and how long the index's changes took to rebuild.
#[derive(Clone)]
pub struct ReconcileMetrics {
    reconciles: Family<ScopeLabel, Counter>,
    seconds: Family<ScopeLabel, Histogram>,
    folder_change: Histogram,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
            folder_change: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

impl ReconcileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Rebuilds of proxy config, by scope: full (everything), objects (what changed config objects claim) or endpoints (load assignments of the services that changed)",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Time to rebuild and hand proxy config to the push queue, by scope",
            self.seconds.clone(),
        );
        registry.register(
            "folder_change_seconds",
            "From a change in the config folder being noticed to the proxy config it makes being handed to the push queue: rescan, parse and rebuild, after the settle window for a file still being written",
            self.folder_change.clone(),
        );
    }

    /// A folder change noticed at `noticed` is now with the push queue.
    pub fn observe_folder_change(&self, noticed: Instant) {
        self.folder_change.observe(noticed.elapsed().as_secs_f64());
    }

    fn observe(&self, scope: &str, started: Instant) {
        let label = ScopeLabel {
            scope: scope.to_string(),
        };
        self.reconciles.get_or_create(&label).inc();
        self.seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The index, the model and translation, kept in step: what [`Reconciler`] runs, without
/// the push queue and status, so tests and benchmarks drive exactly the same code.
pub struct Pipeline {
    pub index: Index,
    pub mesh: Mesh,
    pub translator: Translator,
    domain_suffix: String,
}

impl Pipeline {
    pub fn new(options: translate::Options, domain_suffix: &str) -> Self {
        let mut mesh = Mesh::new(domain_suffix);
        mesh.sidecar_scopes
            .set_root_namespace(&options.root_namespace);
        mesh.settings = options.mesh_settings.clone();
        Self {
            index: Index::new(),
            mesh,
            translator: Translator::new(options),
            domain_suffix: domain_suffix.to_string(),
        }
    }

    /// Builds the model and every resource anew from the index.
    pub fn full(&mut self) -> SnapshotBuilder {
        let root_namespace = self.mesh.sidecar_scopes.root_namespace().to_string();
        let settings = self.mesh.settings.clone();
        self.mesh = Mesh::new(&self.domain_suffix);
        self.mesh.sidecar_scopes.set_root_namespace(&root_namespace);
        self.mesh.settings = settings;
        self.mesh
            .update(&self.index, &crate::model::everything(&self.index));
        self.translator.full(&self.mesh)
    }

    /// Rebuilds what `changes` (from the index) names: the objects' hosts, then the load
    /// assignments of services whose endpoints alone changed.
    pub fn update(&mut self, changes: &Changes) -> Update {
        let mut update = Update::new();
        let mut rebuilt_hosts = BTreeSet::new();
        if changes.config() {
            let affected = self.mesh.update(&self.index, &changes.objects);
            update.merge(self.translator.update(&self.mesh, &affected));
            rebuilt_hosts = affected.hosts;
        }
        for id in &changes.endpoints {
            let host = crate::model::kube::host(id, &self.domain_suffix);
            // A host rebuilt above already has its endpoints.
            if rebuilt_hosts.contains(&host)
                || self.mesh.refresh_endpoints(&self.index, id).is_none()
            {
                continue;
            }
            update.merge(self.translator.endpoints(&self.mesh, &host));
        }
        for id in &changes.cloud_map_endpoints {
            let Some(host) = self.mesh.refresh_cloud_map_endpoints(&self.index, id) else {
                continue;
            };
            if !rebuilt_hosts.contains(&host) {
                update.merge(self.translator.endpoints(&self.mesh, &host));
            }
        }
        update
    }
}

pub struct Reconciler {
    pipeline: Pipeline,
    /// Problems after the last rebuild, per object: status and the warning log read them.
    problems: BTreeMap<ObjectKey, Vec<Problem>>,
    /// Objects of kinds not translated yet, each reported once.
    untranslated: BTreeSet<ObjectKey>,
    /// Whether a first complete build was done (later changes are incremental).
    built: bool,
    /// Every Istio object's condition as it should be, kept up to date object by object and
    /// handed to the status writer whole (a persistent map: publishing copies nothing).
    statuses: StatusSet,
    queue: PushQueue,
    status: Option<StatusWriter>,
    metrics: ReconcileMetrics,
    pod_localities: Arc<PodLocalities>,
}

impl Reconciler {
    pub fn new(
        options: translate::Options,
        domain_suffix: String,
        queue: PushQueue,
        status: Option<StatusWriter>,
        metrics: ReconcileMetrics,
    ) -> Self {
        Self {
            pipeline: Pipeline::new(options, &domain_suffix),
            problems: BTreeMap::new(),
            untranslated: BTreeSet::new(),
            built: false,
            statuses: StatusSet::new(),
            queue,
            status,
            metrics,
            pod_localities: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &ReconcileMetrics {
        &self.metrics
    }

    /// Applies one source event to the index; nothing is rebuilt until [`Self::reconcile`].
    pub fn handle(&mut self, event: Event) -> Changes {
        self.pod_localities.observe(&event);
        self.pipeline.index.handle(event)
    }

    /// Where pods run, kept from the events [`Self::handle`] gets: the cache's resolver for
    /// proxies that send no locality.
    pub fn pod_localities(&self) -> Arc<PodLocalities> {
        self.pod_localities.clone()
    }

    /// Rebuilds what `changes` names and queues it for the proxies.
    pub async fn reconcile(&mut self, changes: Changes) {
        if !self.built {
            if !changes.is_empty() {
                self.rebuild().await;
            }
            return;
        }
        let started = Instant::now();
        let update = self.pipeline.update(&changes);
        // The proxies first: problems and statuses are bookkeeping they need not wait for.
        if !update.is_empty() {
            self.queue.submit(update).await;
        }
        let mut statuses: BTreeSet<ObjectKey> = changes.statuses.clone();
        if changes.config() {
            statuses.extend(self.report_problems(changes.objects.iter()));
            statuses.extend(changes.objects.iter().filter_map(|k| match k {
                RecordKey::Istio(key) => Some(key.clone()),
                _ => None,
            }));
        }
        let scope = if changes.config() {
            "objects"
        } else {
            "endpoints"
        };
        if changes.config()
            || !changes.endpoints.is_empty()
            || !changes.cloud_map_endpoints.is_empty()
        {
            self.metrics.observe(scope, started);
        }
        if !statuses.is_empty() {
            self.refresh_statuses(&statuses);
            self.publish_status();
        }
    }

    /// Builds the mesh and every resource anew and replaces the snapshot (the cache sends
    /// proxies only the difference).
    pub async fn rebuild(&mut self) {
        let started = Instant::now();
        let resources = self.pipeline.full();
        self.built = true;
        let keys: Vec<RecordKey> = self
            .pipeline
            .index
            .istio_records()
            .map(|r| RecordKey::Istio(r.key.clone()))
            .collect();
        self.report_problems(keys.iter());
        let all: Vec<ObjectKey> = self
            .pipeline
            .index
            .istio_records()
            .map(|r| r.key.clone())
            .collect();
        self.refresh_statuses(&all);
        self.publish_status();
        let count = resources.len();
        let applied = self.queue.replace(resources).await;
        self.metrics.observe("full", started);
        match applied {
            Some(applied) => info!(
                version = applied.version,
                resources = count,
                changed = %applied.summary(),
                "new config"
            ),
            None => debug!("config changed but the proxies' config did not"),
        }
    }

    /// Gathers the model's and translation's problems by object and warns about those not
    /// seen before; reports each object of a kind not translated yet once (`changed`: the
    /// objects that may have become or stopped being one). Returns the objects whose
    /// problems changed.
    fn report_problems<'a>(
        &mut self,
        changed: impl Iterator<Item = &'a RecordKey>,
    ) -> BTreeSet<ObjectKey> {
        let mut problems: BTreeMap<ObjectKey, Vec<Problem>> = BTreeMap::new();
        let pipeline = &self.pipeline;
        for problem in pipeline
            .mesh
            .problems()
            .chain(pipeline.translator.problems())
        {
            problems
                .entry(problem.object.clone())
                .or_default()
                .push(problem.clone());
        }
        for (key, list) in &problems {
            let before = self.problems.get(key);
            for problem in list
                .iter()
                .filter(|p| !before.is_some_and(|b| b.contains(p)))
            {
                warn!("{problem}");
            }
        }
        let differ: BTreeSet<ObjectKey> = problems
            .keys()
            .chain(self.problems.keys())
            .filter(|k| problems.get(*k) != self.problems.get(*k))
            .cloned()
            .collect();
        self.problems = problems;
        for key in changed {
            let RecordKey::Istio(key) = key else {
                continue;
            };
            if unsupported::kind_is_translated(key.kind) {
                continue;
            }
            let served = self
                .pipeline
                .index
                .istio(key)
                .is_some_and(|r| r.object.is_some());
            if !served {
                self.untranslated.remove(key);
            } else if self.untranslated.insert(key.clone()) {
                warn!("{key}: {}", unsupported::kind_message(key.kind));
            }
        }
        differ
    }

    /// Recomputes the conditions of `keys` (an object gone is dropped).
    fn refresh_statuses<'a>(&mut self, keys: impl IntoIterator<Item = &'a ObjectKey>) {
        if self.status.is_none() {
            return;
        }
        for key in keys {
            match self.pipeline.index.istio(key) {
                Some(record) => {
                    let item = StatusItem {
                        key: key.clone(),
                        desired: desired(record, self.problems.get(key)),
                        observed: record.observed.clone(),
                        status: record.status.clone(),
                        resource_version: record.resource_version.clone(),
                    };
                    self.statuses.insert(key.clone(), item);
                }
                None => {
                    self.statuses.remove(key);
                }
            }
        }
    }

    /// Hands the status writer every Istio object's condition (it writes only differences,
    /// and only on the leader).
    pub fn publish_status(&self) {
        if let Some(writer) = &self.status {
            writer.publish(self.statuses.clone());
        }
    }

    pub fn index(&self) -> &Index {
        &self.pipeline.index
    }
}

/// What an object's `Reconciled` condition should say.
pub fn desired(record: &IstioRecord, problems: Option<&Vec<Problem>>) -> Desired {
    let (status, reason, message) = if !record.errors.is_empty() {
        let served = if record.object.is_some() {
            "the last valid version is still served"
        } else {
            "nothing of it is served"
        };
        (
            ConditionStatus::False,
            Reason::Invalid,
            format!("{}; {served}", record.errors.join("; ")),
        )
    } else if !unsupported::kind_is_translated(record.key.kind) {
        (
            ConditionStatus::False,
            Reason::NotSupported,
            unsupported::kind_message(record.key.kind),
        )
    } else if let Some(problems) = problems.filter(|p| !p.is_empty()) {
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        (
            ConditionStatus::False,
            Reason::PartiallyApplied,
            text.join("; "),
        )
    } else {
        (
            ConditionStatus::True,
            Reason::Accepted,
            "served to proxies".to_string(),
        )
    };
    Desired {
        generation: record.generation,
        status,
        reason,
        message: truncate(message),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}
