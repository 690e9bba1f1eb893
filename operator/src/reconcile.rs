//! The task that owns the index: applies the sources' events, rebuilds what they changed and
//! hands the result to the push queue, and tells the status writer what each Istio object's
//! condition should say.
//!
//! An endpoint change rebuilds only the load assignments of the services it names and goes
//! to the cache as an `Update`; any other change rebuilds the mesh and replaces the snapshot,
//! which the cache diffs, so proxies receive only what really changed either way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use capstan_crds::ObjectKey;
use capstan_xds::{PushQueue, Resource, Update};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::index::{Changes, Event, Index, IstioRecord, NsName};
use crate::model::{Mesh, Problem, unsupported};
use crate::status::writer::{StatusItem, StatusWriter};
use crate::status::{ConditionStatus, Desired, Reason};
use crate::translate;

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
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
        }
    }
}

impl ReconcileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Rebuilds of proxy config, by scope: full (the mesh) or endpoints (load assignments of the services that changed)",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Time to rebuild and hand proxy config to the push queue, by scope",
            self.seconds.clone(),
        );
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

pub struct Reconciler {
    index: Index,
    mesh: Mesh,
    /// Problems of the last full build, per object: status and the warning log read them.
    problems: BTreeMap<ObjectKey, Vec<Problem>>,
    options: translate::Options,
    domain_suffix: String,
    queue: PushQueue,
    status: Option<StatusWriter>,
    metrics: ReconcileMetrics,
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
            index: Index::new(),
            mesh: Mesh::default(),
            problems: BTreeMap::new(),
            options,
            domain_suffix,
            queue,
            status,
            metrics,
        }
    }

    /// Applies one source event to the index; nothing is rebuilt until [`Self::reconcile`].
    pub fn handle(&mut self, event: Event) -> Changes {
        self.index.handle(event)
    }

    /// Rebuilds what `changes` names and queues it for the proxies.
    pub async fn reconcile(&mut self, changes: Changes) {
        if changes.config {
            self.rebuild().await;
        } else if !changes.endpoints.is_empty() {
            self.refresh_endpoints(&changes.endpoints).await;
        }
        if changes.config || changes.status {
            self.publish_status();
        }
    }

    /// Rebuilds the mesh and every resource; the cache sends proxies only the difference.
    pub async fn rebuild(&mut self) {
        let started = Instant::now();
        let (mesh, model_problems) = Mesh::build(&self.index, &self.domain_suffix);
        let (resources, translate_problems) = translate::build(&mesh, &self.options);
        let mut problems: BTreeMap<ObjectKey, Vec<Problem>> = BTreeMap::new();
        for problem in model_problems.into_iter().chain(translate_problems) {
            problems
                .entry(problem.object.clone())
                .or_default()
                .push(problem);
        }
        // Warn about what is new: a rebuild for an unrelated change repeats nothing.
        for (key, list) in &problems {
            let before = self.problems.get(key);
            for problem in list
                .iter()
                .filter(|p| !before.is_some_and(|b| b.contains(p)))
            {
                warn!("{problem}");
            }
        }
        // Objects of kinds not translated yet are reported once each, like any problem.
        for record in self.index.istio_records() {
            if !unsupported::kind_is_translated(record.key.kind) && record.object.is_some() {
                problems.entry(record.key.clone()).or_default();
            }
        }
        self.report_untranslated(&problems);
        self.problems = problems;
        self.mesh = mesh;
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

    fn report_untranslated(&self, problems: &BTreeMap<ObjectKey, Vec<Problem>>) {
        for key in problems.keys() {
            if !unsupported::kind_is_translated(key.kind) && !self.problems.contains_key(key) {
                warn!(
                    "{key}: capstan does not translate {} yet; it is validated and not applied",
                    key.kind
                );
            }
        }
    }

    /// Rebuilds the load assignments of the Kubernetes Services in `ids`.
    async fn refresh_endpoints(&mut self, ids: &BTreeSet<NsName>) {
        let started = Instant::now();
        let mut update = Update::new();
        for id in ids {
            let Some(service) = self.mesh.refresh_endpoints(&self.index, id) else {
                continue;
            };
            let service = service.clone();
            for (name, assignment) in translate::load_assignments_of(&self.mesh, &service) {
                if let Some(resource) = Resource::encode(name, &assignment) {
                    update.put(resource);
                }
            }
        }
        if !update.is_empty() {
            self.queue.submit(update).await;
        }
        self.metrics.observe("endpoints", started);
    }

    /// Hands the status writer every Istio object's condition (it writes only differences,
    /// and only on the leader).
    pub fn publish_status(&self) {
        let Some(writer) = &self.status else {
            return;
        };
        let items = self
            .index
            .istio_records()
            .map(|record| StatusItem {
                key: record.key.clone(),
                desired: desired(record, self.problems.get(&record.key)),
                observed: record.observed.clone(),
                status: record.status.clone(),
            })
            .collect();
        writer.publish(items);
    }

    pub fn index(&self) -> &Index {
        &self.index
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
            format!(
                "capstan validates {} but does not apply it to proxies yet",
                record.key.kind
            ),
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
