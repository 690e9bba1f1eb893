//! Recent snapshot changes, so a stream that is a few versions behind can catch up by looking
//! only at what changed instead of comparing everything it subscribes to.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use imbl::Vector;

use crate::snapshot::{ChangedNames, TYPES};

/// How many versions of changes are kept. A stream further behind than this compares its
/// whole view once, which is correct, only slower.
pub const HISTORY: usize = 256;

/// The names one version changed, and when it was made.
#[derive(Debug)]
pub struct ChangeSet {
    pub version: u64,
    pub created: Instant,
    pub names: ChangedNames,
}

/// The last [`HISTORY`] change sets, oldest first, with consecutive versions. Cloning is
/// cheap (a persistent vector).
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: Vector<Arc<ChangeSet>>,
}

/// What changed in one type since a version.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// These names changed (possibly none).
    Names(BTreeSet<Arc<str>>),
    /// The history does not reach back that far: compare everything.
    Unknown,
}

impl History {
    pub(crate) fn push(&mut self, set: ChangeSet) {
        self.entries.push_back(Arc::new(set));
        while self.entries.len() > HISTORY {
            self.entries.pop_front();
        }
    }

    /// The names of type `index` that changed after version `from` up to the newest.
    pub fn since(&self, index: usize, from: u64) -> Since {
        let Some(oldest) = self.entries.front() else {
            return if from == 0 {
                Since::Names(BTreeSet::new())
            } else {
                Since::Unknown
            };
        };
        if from + 1 < oldest.version {
            return Since::Unknown;
        }
        let skip = usize::try_from((from + 1).saturating_sub(oldest.version)).unwrap_or(usize::MAX);
        let mut names = BTreeSet::new();
        if index < TYPES {
            for set in self.entries.iter().skip(skip) {
                names.extend(set.names[index].iter().cloned());
            }
        }
        Since::Names(names)
    }

    /// When version `version` was made, if it is still in the history.
    pub fn created(&self, version: u64) -> Option<Instant> {
        let oldest = self.entries.front()?.version;
        let index = usize::try_from(version.checked_sub(oldest)?).ok()?;
        self.entries.get(index).map(|s| s.created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(version: u64, cds: &[&str]) -> ChangeSet {
        let mut names: ChangedNames = Default::default();
        names[0] = cds.iter().map(|n| Arc::from(*n)).collect();
        ChangeSet {
            version,
            created: Instant::now(),
            names,
        }
    }

    fn names(since: Since) -> Vec<String> {
        match since {
            Since::Names(n) => n.iter().map(|s| s.to_string()).collect(),
            Since::Unknown => panic!("unknown"),
        }
    }

    #[test]
    fn unions_the_changes_after_a_version() {
        let mut h = History::default();
        h.push(set(1, &["a"]));
        h.push(set(2, &["b"]));
        h.push(set(3, &["a", "c"]));
        assert_eq!(names(h.since(0, 0)), vec!["a", "b", "c"]);
        assert_eq!(names(h.since(0, 1)), vec!["a", "b", "c"]);
        assert_eq!(names(h.since(0, 2)), vec!["a", "c"]);
        assert!(names(h.since(0, 3)).is_empty());
        assert!(names(h.since(1, 0)).is_empty(), "other types unchanged");
        assert!(h.created(2).is_some());
        assert!(h.created(4).is_none());
    }

    #[test]
    fn too_old_is_unknown() {
        let mut h = History::default();
        for v in 1..=(HISTORY as u64 + 10) {
            h.push(set(v, &["x"]));
        }
        assert_eq!(h.since(0, 1), Since::Unknown);
        assert_eq!(names(h.since(0, HISTORY as u64 + 9)), vec!["x"]);
        assert!(h.created(1).is_none());
    }

    #[test]
    fn the_oldest_kept_version_bounds_what_is_known() {
        let mut h = History::default();
        let last = HISTORY as u64 + 10;
        for v in 1..=last {
            h.push(set(v, &[&format!("n{v}")]));
        }
        let oldest = last - HISTORY as u64 + 1;
        assert!(h.created(oldest).is_some());
        assert!(h.created(oldest - 1).is_none(), "evicted");
        // A proxy at oldest - 1 needs oldest onwards: all kept.
        let from_just_before = names(h.since(0, oldest - 1));
        assert_eq!(from_just_before.len(), HISTORY);
        assert!(from_just_before.contains(&format!("n{oldest}")));
        // A proxy at oldest - 2 would also need oldest - 1, which is gone.
        assert_eq!(h.since(0, oldest - 2), Since::Unknown);
        // From oldest itself, its own changes are already held.
        let from_oldest = names(h.since(0, oldest));
        assert_eq!(from_oldest.len(), HISTORY - 1);
        assert!(!from_oldest.contains(&format!("n{oldest}")));
    }
}
