//! Wakes the folder source when files in its directory change.

use std::path::Path;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Notifications of changes under a directory, delivered in quiet-separated bursts.
pub struct FolderWatch {
    // Dropping the watcher stops the notifications.
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    quiet: Duration,
}

impl FolderWatch {
    pub fn new(dir: &Path, quiet: Duration) -> notify::Result<Self> {
        // One pending wake-up is enough: every wake-up rescans the whole folder.
        let (tx, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(event) => !event.kind.is_access(),
                    // A lost event is recovered by rescanning.
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self {
            _watcher: watcher,
            events,
            quiet,
        })
    }

    /// Waits for a change, then for the burst it starts to go quiet (editors write a file in
    /// several steps). Returns `false` when no more changes can come.
    pub async fn changed(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        while let Ok(Some(())) = timeout(self.quiet, self.events.recv()).await {}
        true
    }
}
