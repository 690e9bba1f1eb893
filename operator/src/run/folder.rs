//! Folder mode: the Istio YAML in one directory, watched; each rescan is a `reset` of the
//! Istio kinds in the index.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use capstan_crds::Kind;
use tracing::{error, warn};

use super::RunArgs;
use super::{Serving, bind};
use crate::index::{Event, IstioRecord, Record, Tag};
use crate::reconcile::Reconciler;
use crate::source::folder::FolderSource;
use crate::source::watch::FolderWatch;

pub async fn run(args: &RunArgs, dir: &Path, mut serving: Serving) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.is_dir(),
        "--config-dir {}: not a directory",
        dir.display()
    );
    let mut source = FolderSource::new(dir.to_path_buf());
    // Watch before the first scan so no change slips in between.
    let mut watch = FolderWatch::new(dir, Duration::from_millis(args.debounce_ms))
        .with_context(|| format!("watching {}", dir.display()))?;
    let monitoring = bind(args.monitoring_addr, "the monitoring server").await?;
    let monitor = serving.monitor(monitoring);
    let mut reconciler = serving.reconciler(&args.domain_suffix, None);
    refresh(&mut source, &mut reconciler)
        .await
        .with_context(|| format!("reading {}", dir.display()))?;

    let watcher = tokio::spawn(async move {
        while watch.changed().await {
            if let Err(err) = refresh(&mut source, &mut reconciler).await {
                error!(dir = %source.dir().display(), %err, "cannot read the config folder; serving the last good config");
            }
        }
    });
    let result = serving.serve_ads().await;
    watcher.abort();
    monitor.abort();
    result
}

/// Rescans the folder and, if the objects changed, rebuilds.
async fn refresh(source: &mut FolderSource, reconciler: &mut Reconciler) -> std::io::Result<()> {
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
    let records = objects
        .into_iter()
        .map(|o| Record::Istio(IstioRecord::valid(o.clone())))
        .collect();
    let tags = Kind::ALL.iter().map(|k| Tag::Istio(*k)).collect();
    let changes = reconciler.handle(Event::Reset(tags, records));
    reconciler.reconcile(changes).await;
    Ok(())
}
