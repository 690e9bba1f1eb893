//! What a file's metadata says about its content, so that a rescan reads only the files that
//! may have changed instead of every byte of the folder.
//!
//! A write, a truncation, a rename or a `chmod` sets a file's change time (`ctime`), which no
//! user can set back, and a file swapped in by rename (git-sync, a ConfigMap volume's
//! symlink) is another inode. So a file whose device, inode, size, modification time and
//! change time all match what they were when it was read holds what was read then — unless it
//! was changed within the granularity of file times right after that read. File times come
//! from a coarse clock, so a stamp is trusted only when the file was last changed well before
//! it was read ([`RACY`]); a file read sooner than that after a change is read again next time.

use std::fs::Metadata;
use std::time::{Duration, SystemTime};

/// How long before a read a file must have last changed for its stamp to be trusted: far more
/// than the coarse clock's tick (a jiffy, at most 10 ms) and any lag between it and
/// `SystemTime::now`.
const RACY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    /// The stamp of a file with `meta`, read at `read_at`; `None` when it cannot vouch for
    /// the content (changed too recently, or a platform without these times).
    pub(super) fn trusted(meta: &Metadata, read_at: SystemTime) -> Option<Self> {
        let stamp = Self::of(meta)?;
        let (secs, nanos) = stamp.changed;
        let changed_at = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(secs).ok()?,
            u32::try_from(nanos).ok()?,
        ))?;
        let old_enough = read_at
            .duration_since(changed_at)
            .is_ok_and(|age| age >= RACY);
        old_enough.then_some(stamp)
    }

    /// Whether a file with `meta` now still holds what was read when this stamp was taken.
    pub(super) fn matches(&self, meta: &Metadata) -> bool {
        Self::of(meta).as_ref() == Some(self)
    }

    #[cfg(unix)]
    fn of(meta: &Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    #[cfg(not(unix))]
    fn of(_meta: &Metadata) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_vouched_for_only_once_it_was_changed_well_before_the_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "a: 1").expect("write");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(Stamp::trusted(&meta, SystemTime::now()), None);
        let later = SystemTime::now() + RACY;
        let stamp = Stamp::trusted(&meta, later).expect("old enough by then");
        assert!(stamp.matches(&meta));
        std::fs::write(&path, "a: 10").expect("write");
        assert!(!stamp.matches(&std::fs::metadata(&path).expect("metadata")));
    }
}
