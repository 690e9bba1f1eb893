//! Wakes the folder source when files in its directory change, and keeps watching when the
//! directory itself is replaced: deleted and recreated, or (git-sync style) a symlink to it
//! repointed at another directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long a change after a quiet spell waits for others close behind it: one command's
/// changes (`rm *.yaml`, a `cp` of several files, a `mv` of several) arrive microseconds
/// apart, and reading the folder between them would serve a state nobody meant, such as
/// routes without the services they send to. Files written in place wait out the settle
/// window anyway; this only has to cover one command's system calls, and every millisecond
/// of it is added to every edit (tokio's timer rounds it up to the next millisecond tick).
const LEADING_GRACE: Duration = Duration::from_millis(1);

/// Notifications of changes in a directory: a change after a quiet spell at once, the rest of
/// its burst once that has gone quiet.
pub struct FolderWatch {
    dir: PathBuf,
    quiet: Duration,
    /// When [`FolderWatch::changed`] last returned.
    woke: Option<Instant>,
    tx: mpsc::Sender<()>,
    events: mpsc::Receiver<()>,
    /// Watches the directory's parent for the directory's own name being replaced. Dropping a
    /// watcher stops its notifications.
    parent: Option<RecommendedWatcher>,
    /// Watches the directory (a symlink's target at the time), and which directory that was.
    folder: Option<(RecommendedWatcher, Identity)>,
    /// Set when the watched directory itself is removed or moved: its watch is dead even if a
    /// directory recreated at once gets the same inode back.
    gone: Arc<AtomicBool>,
}

/// Which directory a path leads to: a recreated directory or a repointed symlink is another.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    target: PathBuf,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FolderWatch {
    /// Watches `dir`; fails if it cannot be watched now.
    pub fn new(dir: &Path, quiet: Duration) -> Result<Self, String> {
        let mut watch = Self::unwatched(dir, quiet);
        watch.ensure()?;
        Ok(watch)
    }

    /// A watch on `dir` that starts watching at the first [`FolderWatch::ensure`].
    pub fn unwatched(dir: &Path, quiet: Duration) -> Self {
        // One pending wake-up is enough: every wake-up rescans the whole folder.
        let (tx, events) = mpsc::channel(1);
        Self {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            quiet,
            woke: None,
            tx,
            events,
            parent: None,
            folder: None,
            gone: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Watches the directory `dir` leads to now, if that is not the one watched; returns
    /// whether it started a new watch, or why it cannot watch.
    pub fn ensure(&mut self) -> Result<bool, String> {
        if self.parent.is_none() {
            // Without the parent's watch a replaced folder is still found by the caller's
            // periodic rescan, just later; so this is worth retrying but not failing for.
            self.parent = self.watch_parent().ok();
        }
        let current = match identity(&self.dir) {
            Ok(current) => current,
            Err(err) => {
                self.folder = None;
                return Err(format!("cannot watch {}: {err}", self.dir.display()));
            }
        };
        let gone = self.gone.swap(false, Ordering::SeqCst);
        if !gone
            && self
                .folder
                .as_ref()
                .is_some_and(|(_, watched)| *watched == current)
        {
            return Ok(false);
        }
        // The identity is taken before the watch starts: a swap in between then reads as a
        // change at the next check, never the other way round.
        let (dir, gone) = (self.dir.clone(), self.gone.clone());
        let watcher = watcher(self.tx.clone(), move |event| {
            let itself = event.paths.contains(&dir);
            if itself
                && matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                )
            {
                gone.store(true, Ordering::SeqCst);
            }
            true
        })
        .and_then(|mut watcher| {
            watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match watcher {
            Ok(watcher) => {
                self.folder = Some((watcher, current));
                Ok(true)
            }
            Err(err) => {
                self.folder = None;
                Err(format!("cannot watch {}: {err}", self.dir.display()))
            }
        }
    }

    fn watch_parent(&self) -> notify::Result<RecommendedWatcher> {
        let (Some(parent), Some(name)) = (self.dir.parent(), self.dir.file_name()) else {
            return Err(notify::Error::generic("the folder has no parent"));
        };
        let name = name.to_os_string();
        // The parent may be busy (say, /tmp): only events about the folder's name count.
        let mut watcher = watcher(self.tx.clone(), move |event| {
            event.paths.is_empty() || event.paths.iter().any(|p| p.file_name() == Some(&name))
        })?;
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    /// Waits for a change, then makes sure the directory now at the path is the one watched.
    /// A change after a quiet spell returns almost at once ([`LEADING_GRACE`]): a file
    /// renamed into place (git-sync, a ConfigMap volume, an atomic writer) is complete, and
    /// one still being written is left for later by the folder's settle window. A change
    /// during a burst (editors write a file in several steps) waits for the burst to go
    /// quiet, so a burst costs two reads of the folder at most. Returns when the change was
    /// noticed.
    pub async fn changed(&mut self) -> Instant {
        // `self` holds a sender: the channel never closes.
        let _ = self.events.recv().await;
        let noticed = Instant::now();
        let wait = if self.woke.is_some_and(|at| at.elapsed() < self.quiet) {
            self.quiet
        } else {
            LEADING_GRACE.min(self.quiet)
        };
        while let Ok(Some(())) = timeout(wait, self.events.recv()).await {}
        self.woke = Some(Instant::now());
        // A failure is reported by the caller's own `ensure`.
        let _ = self.ensure();
        noticed
    }
}

/// A watcher waking `tx` on every event but reads that `relevant` accepts.
fn watcher(
    tx: mpsc::Sender<()>,
    relevant: impl Fn(&notify::Event) -> bool + Send + 'static,
) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let wake = match event {
            Ok(event) => !event.kind.is_access() && relevant(&event),
            // A lost event is recovered by rescanning.
            Err(_) => true,
        };
        if wake {
            let _ = tx.try_send(());
        }
    })
}

fn identity(dir: &Path) -> std::io::Result<Identity> {
    let target = std::fs::canonicalize(dir)?;
    let meta = std::fs::metadata(&target)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(Identity {
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        },
        target,
    })
}

#[cfg(test)]
mod tests;
