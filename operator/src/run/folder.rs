//! Folder mode: the Istio YAML in one directory, watched; a rescan hands the index the
//! objects the changed files add, change or drop (a restart of the watcher, a `reset` of
//! everything).
//!
//! The watcher task and the push queue are supervised: a watcher that dies is restarted, a
//! queue that dies cannot be, and while either is down `/readyz` says so, as it does while
//! the folder cannot be watched or read (the last good config keeps being served meanwhile).

mod supervise;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capstan_crds::{Kind, ObjectKey};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::RunArgs;
use super::{Serving, bind};
use crate::index::{Changes, Event, IstioRecord, Record, RecordKey, Tag};
use crate::reconcile::Reconciler;
use crate::source::folder::{FolderSource, SETTLE_WINDOW};
use crate::source::watch::FolderWatch;
use supervise::Readiness;

/// How often the folder is rescanned without any change notification: the backstop for
/// notifications that never come (an overflowing inotify queue, a network or FUSE file
/// system, a symlink swapped further up the path than the folder's parent). A rescan lists
/// the folder and hashes its files, cheap even for hundreds of files, so a missed change
/// goes unserved for at most 10 s at little cost.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// While the folder cannot be watched (deleted, not yet recreated), how often to try again:
/// a recreated folder is picked up within a second even if its parent is not watched.
const REWATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long startup waits for files still being written: one still changing after this is
/// written continuously (a log, a runaway generator), not config worth keeping every proxy
/// waiting for; it is read once it settles.
const STARTUP_SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The parts of folder mode `/readyz` names when they fail.
const WATCHER_TASK: &str = "the config folder watcher";
const FOLDER_WATCH: &str = "the config folder watch";
const FOLDER_READ: &str = "the config folder";
const PUSH_QUEUE: &str = "the push queue";

pub async fn run(args: &RunArgs, dir: &Path, mut serving: Serving) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.is_dir(),
        "--config-dir {}: not a directory",
        dir.display()
    );
    let source = FolderSource::new(dir.to_path_buf()).allow_empty(args.allow_empty_config);
    let debounce = Duration::from_millis(args.debounce_ms);
    // Watch before the first scan so no change slips in between.
    let watch = FolderWatch::new(dir, debounce)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("watching {}", dir.display()))?;
    let monitoring = bind(args.monitoring_addr, "the monitoring server").await?;
    let monitor = serving.monitor(monitoring);
    let reconciler = serving.reconciler(&args.domain_suffix, None);
    let mut folder = Folder {
        source,
        reconciler,
        unsettled: Vec::new(),
    };
    folder
        .first_load()
        .await
        .with_context(|| format!("reading {}", dir.display()))?;

    let readiness = Readiness::new(serving.ready.clone());
    let queue = serving
        .queue_task
        .take()
        .map(|task| tokio::spawn(supervise::watch_task(PUSH_QUEUE, task, readiness.clone())));
    let folder = Arc::new(Mutex::new(folder));
    let cloud_map_folder = folder.clone();
    let mut first_watch = Some(watch);
    let dir = dir.to_path_buf();
    let watcher = tokio::spawn(supervise::restarting(
        WATCHER_TASK,
        readiness.clone(),
        move || {
            // The first run takes over the watch made at startup; a restart starts afresh.
            let restarted = first_watch.is_none();
            let watch = first_watch
                .take()
                .unwrap_or_else(|| FolderWatch::unwatched(&dir, debounce));
            follow(
                dir.clone(),
                watch,
                folder.clone(),
                readiness.clone(),
                restarted,
            )
        },
    ));
    // Cloud Map services (in-memory mode) join the folder's objects in the one index.
    let cloud_map = serving.cloud_map.take().map(|feed| {
        let folder = cloud_map_folder;
        tokio::spawn(super::cloud_map::feed(feed.events, move |batch| {
            let folder = folder.clone();
            async move {
                let mut folder = folder.lock().await;
                let mut changes = Changes::default();
                for event in batch {
                    changes.merge(folder.reconciler.handle(event));
                }
                folder.reconciler.reconcile(changes).await;
            }
        }))
    });
    let result = serving.serve_ads().await;
    if let Some(cloud_map) = cloud_map {
        cloud_map.abort();
    }
    // The queue's supervisor first: stopping the watcher drops the last handle on the queue,
    // and its task ending then is shutdown, not a failure.
    if let Some(queue) = queue {
        queue.abort();
    }
    watcher.abort();
    monitor.abort();
    result
}

/// Rescans the folder on every change notification, on a timer as a backstop, and when
/// files waiting to settle are due; keeps the watch on whatever directory `dir` leads to.
async fn follow(
    dir: PathBuf,
    mut watch: FolderWatch,
    folder: Arc<Mutex<Folder>>,
    readiness: Readiness,
    restarted: bool,
) {
    // A restart re-applies the whole folder: the task that died may have died mid-update.
    let mut force = restarted;
    // When the oldest change not yet served was noticed.
    let mut noticed = None;
    loop {
        let watching = watch.ensure();
        let tick = if watching.is_ok() {
            RESCAN_INTERVAL
        } else {
            REWATCH_INTERVAL
        };
        readiness.set(FOLDER_WATCH, watching.err());
        let rescan_after = match folder.lock().await.refresh(force, &mut noticed).await {
            Ok(rescan_after) => {
                readiness.set(FOLDER_READ, None);
                rescan_after
            }
            Err(err) => {
                readiness.set(
                    FOLDER_READ,
                    Some(format!(
                        "cannot read {}: {err}; serving the last good config",
                        dir.display()
                    )),
                );
                None
            }
        };
        force = false;
        readiness.set(WATCHER_TASK, None);
        let wait = rescan_after.map_or(tick, |after| after.min(tick));
        tokio::select! {
            at = watch.changed() => noticed = noticed.or(Some(at)),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The folder source and what it feeds.
struct Folder {
    source: FolderSource,
    reconciler: Reconciler,
    /// The files last reported as waiting to settle, to report each wait once.
    unsettled: Vec<PathBuf>,
}

impl Folder {
    /// The first config: waits (up to [`STARTUP_SETTLE_LIMIT`]) for files being written, so
    /// that the first proxies do not get half a file.
    async fn first_load(&mut self) -> std::io::Result<()> {
        let give_up = Instant::now() + STARTUP_SETTLE_LIMIT;
        while let Some(after) = self.refresh(false, &mut None).await? {
            if Instant::now() + after > give_up {
                warn!(
                    files = ?self.unsettled,
                    "still being written after {STARTUP_SETTLE_LIMIT:?}; serving without them until they settle"
                );
                break;
            }
            tokio::time::sleep(after).await;
        }
        Ok(())
    }

    /// Rescans the folder and, if the objects changed (or `force`), rebuilds; the change
    /// `noticed` (when it was) is timed to the push queue once served, which for a file still
    /// being written is after the settle window. Returns when to rescan for files still
    /// settling.
    async fn refresh(
        &mut self,
        force: bool,
        noticed: &mut Option<std::time::Instant>,
    ) -> std::io::Result<Option<Duration>> {
        let report = self.source.scan()?;
        for problem in &report.problems {
            warn!("{problem}");
        }
        if report.unsettled != self.unsettled && !report.unsettled.is_empty() {
            let files: Vec<String> = report
                .unsettled
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            info!(
                "{}: modified or removed within the last {SETTLE_WINDOW:?}; serving the last good content until the folder settles",
                files.join(", ")
            );
        }
        let changed = report.changed();
        self.unsettled = report.unsettled;
        let changes = if force {
            self.reset()
        } else if changed {
            self.apply(&report.affected, report.secrets_changed)
        } else {
            if self.unsettled.is_empty() {
                // Nothing changed and nothing waits: the change noticed made no difference.
                *noticed = None;
            }
            return Ok(report.rescan_after);
        };
        self.reconciler.reconcile(changes).await;
        if let Some(at) = noticed.take() {
            self.reconciler.metrics().observe_folder_change(at);
        }
        Ok(report.rescan_after)
    }

    /// Hands the index every object and Secret served, for it to compare with what it has.
    fn reset(&mut self) -> Changes {
        let (objects, duplicates) = self.source.objects();
        let (secrets, duplicate_secrets) = self.source.secrets();
        for problem in duplicates.iter().chain(&duplicate_secrets) {
            warn!("{problem}");
        }
        let records = objects
            .into_iter()
            .map(|o| Record::Istio(IstioRecord::valid(o.clone())))
            .chain(secrets.into_iter().map(|s| Record::Secret(s.clone())))
            .collect();
        let tags = Kind::ALL
            .iter()
            .map(|k| Tag::Istio(*k))
            .chain([Tag::Secret])
            .collect();
        self.reconciler.handle(Event::Reset(tags, records))
    }

    /// Hands the index what is now served as each of `affected` (or its deletion), and every
    /// Secret when the files that changed had or have some: an edit costs work in proportion
    /// to the objects it touched, not to the folder.
    fn apply(&mut self, affected: &BTreeSet<ObjectKey>, secrets_changed: bool) -> Changes {
        let mut changes = Changes::default();
        for key in affected {
            let event = match self.source.served(key) {
                Some(object) => Event::Apply(Record::Istio(IstioRecord::valid(object.clone()))),
                None => Event::Delete(RecordKey::Istio(key.clone())),
            };
            changes.merge(self.reconciler.handle(event));
        }
        for problem in self.source.duplicates_of(affected) {
            warn!("{problem}");
        }
        if secrets_changed {
            let (secrets, duplicates) = self.source.secrets();
            for problem in &duplicates {
                warn!("{problem}");
            }
            let records = secrets.into_iter().map(|s| Record::Secret(s.clone()));
            let event = Event::Reset(vec![Tag::Secret], records.collect());
            changes.merge(self.reconciler.handle(event));
        }
        changes
    }
}
