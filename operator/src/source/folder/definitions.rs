//! Where each object is defined in the folder: the files (in name order) and positions in
//! each, kept as files change, so that finding the object served as a key and its repeated
//! definitions costs work in proportion to that key's definitions, not to the folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use capstan_crds::IstioObject;
use capstan_crds::object::ObjectKey;

#[derive(Debug, Default)]
pub(super) struct Definitions {
    /// Each key's definitions: the files defining it, first by name, and the positions of
    /// its definitions among each file's objects.
    by_key: HashMap<ObjectKey, BTreeMap<PathBuf, Vec<usize>>>,
}

impl Definitions {
    /// Records the objects `path` now holds, in order.
    pub(super) fn add(&mut self, path: &Path, objects: &[IstioObject]) {
        for (position, object) in objects.iter().enumerate() {
            self.by_key
                .entry(object.key())
                .or_default()
                .entry(path.to_path_buf())
                .or_default()
                .push(position);
        }
    }

    /// Forgets the objects `path` held.
    pub(super) fn remove(&mut self, path: &Path, objects: &[IstioObject]) {
        for object in objects {
            let key = object.key();
            if let Some(files) = self.by_key.get_mut(&key) {
                files.remove(path);
                if files.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// The definitions of `key`: each file defining it, first by name, with the positions
    /// of its definitions among the file's objects.
    pub(super) fn of(&self, key: &ObjectKey) -> impl Iterator<Item = (&Path, &[usize])> {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .map(|(path, positions)| (path.as_path(), positions.as_slice()))
    }
}
