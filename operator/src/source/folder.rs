//! The folder source: Istio objects from the `*.yaml`/`*.yml` files of one directory.
//!
//! A file that is not valid YAML keeps serving its last good content; a document that does
//! not parse or validate keeps serving the last good version of that same object (same kind,
//! namespace and name) if there was one, and is left out otherwise. Every problem is
//! reported with file, line, document, object and field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use capstan_crds::IstioObject;
use capstan_crds::object::ObjectKey;
use capstan_crds::parse::{DocumentError, parse_documents};

/// What a scan found wrong, one line per problem, ready for the log.
pub type Problems = Vec<String>;

#[derive(Debug, Default)]
struct FileState {
    /// Hash of the content last parsed, to skip files that did not change.
    fingerprint: Option<u64>,
    /// The objects this file serves: its last good content.
    objects: Vec<IstioObject>,
}

#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl FolderSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the folder. Returns whether the served objects changed, and the problems met
    /// in files that changed since the last scan.
    pub fn scan(&mut self) -> io::Result<(bool, Problems)> {
        let mut problems = Vec::new();
        let present = yaml_files(&self.dir)?;
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        let mut changed = self.files.len() != before;
        for path in present {
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    problems.push(format!(
                        "{}: cannot read: {err}; keeping its last good content",
                        path.display()
                    ));
                    continue;
                }
            };
            let fingerprint = xxhash_rust::xxh3::xxh3_64(&text);
            let state = self.files.entry(path.clone()).or_default();
            if state.fingerprint == Some(fingerprint) {
                continue;
            }
            state.fingerprint = Some(fingerprint);
            let text = String::from_utf8_lossy(&text);
            let objects = load(&path, &text, &state.objects, &mut problems);
            if objects != state.objects {
                state.objects = objects;
                changed = true;
            }
        }
        Ok((changed, problems))
    }

    /// Every object served, each (kind, namespace, name) once: where two files define the
    /// same object, the first file by name wins and the other is reported.
    pub fn objects(&self) -> (Vec<&IstioObject>, Problems) {
        let mut seen: HashMap<ObjectKey, &Path> = HashMap::new();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (path, state) in &self.files {
            for object in &state.objects {
                let key = object.key();
                match seen.get(&key) {
                    Some(first) if *first != path.as_path() => problems.push(format!(
                        "{}: {key} is also defined in {}; using that one",
                        path.display(),
                        first.display()
                    )),
                    Some(_) => problems.push(format!(
                        "{}: {key} is defined twice in this file; using the first",
                        path.display()
                    )),
                    None => {
                        seen.insert(key, path);
                        out.push(object);
                    }
                }
            }
        }
        (out, problems)
    }
}

/// The YAML files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> io::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // Editors' hidden swap and backup files are not config.
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if is_yaml && !hidden && path.is_file() {
            out.insert(path);
        }
    }
    Ok(out)
}

/// The objects `text` serves, given what the file served before.
fn load(
    path: &Path,
    text: &str,
    previous: &[IstioObject],
    problems: &mut Problems,
) -> Vec<IstioObject> {
    let name = path.display().to_string();
    let documents = match parse_documents(&name, text) {
        Ok(documents) => documents,
        Err(err) => {
            problems.push(format!(
                "error: {err}; keeping the file's last good content"
            ));
            return previous.to_vec();
        }
    };
    let last_good = |key: &ObjectKey| previous.iter().find(|o| &o.key() == key).cloned();
    let mut objects = Vec::new();
    for document in documents {
        match document {
            Ok(document) => {
                let errors = document.validate();
                if errors.is_empty() {
                    objects.push(document.object);
                    continue;
                }
                let key = document.object.key();
                let kept = last_good(&key);
                for error in &errors {
                    let line = document
                        .line_of(&error.field)
                        .map(|l| format!(":{l}"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "error: {name}{line}: document {} ({key}): {}: {}; {}",
                        document.index + 1,
                        error.field,
                        error.message,
                        keeping(kept.is_some()),
                    ));
                }
                objects.extend(kept);
            }
            Err(err) => {
                let kept = document_key(&err).and_then(|key| last_good(&key));
                problems.push(format!("error: {err}; {}", keeping(kept.is_some())));
                objects.extend(kept);
            }
        }
    }
    objects
}

fn keeping(kept: bool) -> &'static str {
    if kept {
        "keeping the object's last good version"
    } else {
        "the object is skipped"
    }
}

/// The identity of the object a broken document meant to define, when it can be read.
fn document_key(err: &DocumentError) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind: err.kind.as_deref()?.parse().ok()?,
        namespace: err
            .namespace
            .clone()
            .unwrap_or_else(|| capstan_crds::object::DEFAULT_NAMESPACE.to_string()),
        name: err.name.clone()?,
    })
}

#[cfg(test)]
mod tests;
