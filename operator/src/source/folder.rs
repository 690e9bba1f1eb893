//! The folder source: Istio objects from the `*.yaml`/`*.yml` files of one directory, and the
//! `v1` Secrets among them that gateways read their certificates from (`credentialName`).
//!
//! A file that is not valid YAML keeps serving its last good content; a document that does
//! not parse or validate keeps serving the last good version of that same object (same kind,
//! namespace and name) if there was one, and is left out otherwise. Every problem is
//! reported with file, line, document, object and field.
//!
//! Writers are not atomic: a file being written in place is empty or cut short, and a cut
//! YAML file is often still valid YAML with fewer objects or fewer routes. So new content
//! replaces a file's last good content only once the file has settled (not modified for
//! [`SETTLE_WINDOW`]); a file that disappears keeps its objects until no file has
//! disappeared for that long, and then the removals land together (`rm -r` of the folder or
//! `rm *.yaml` unlinks one file at a time, and a scan between two unlinks would serve routes
//! without their services); a file that cannot be inspected or read (a dangling symlink,
//! denied) keeps its last good content; and a scan that finds no objects at all where some
//! were served keeps the last good config unless empty config is allowed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use capstan_crds::IstioObject;
use capstan_crds::object::ObjectKey;

use crate::index::{NsName, SecretRecord};

/// How long a file must go unmodified before its new content replaces the old. A writer that
/// truncates a file and writes it again (a shell redirection, a template pipeline, an editor
/// saving in place) leaves it empty or cut short in between, and such writers stall for tens
/// to a few hundred milliseconds under load; half a second covers that while an edit still
/// reaches the proxies well within a second. A file renamed into place whole is delayed only
/// if it was written less than this before the rename.
pub const SETTLE_WINDOW: Duration = Duration::from_millis(500);

/// The shortest wait before re-reading an unsettled file: file times are coarser than the
/// clock, so a re-read due "now" can still find the file a hair too young; this keeps such
/// re-reads from spinning.
const RECHECK_FLOOR: Duration = Duration::from_millis(10);

/// What a scan found wrong, one line per problem, ready for the log.
pub type Problems = Vec<String>;

/// The outcome of one scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The objects added, changed or dropped by the files that changed (what is served as
    /// each is [`FolderSource::served`]).
    pub affected: BTreeSet<ObjectKey>,
    /// Whether the files that changed had or have Secrets.
    pub secrets_changed: bool,
    /// Problems met in files that changed since the last scan.
    pub problems: Problems,
    /// Files with new content that has not settled yet: they keep their last good content.
    pub unsettled: Vec<PathBuf>,
    /// When to scan again so that the unsettled files are read once they settle.
    pub rescan_after: Option<Duration>,
    /// How many files were read: those whose metadata left open that they had changed.
    pub files_read: usize,
}

impl ScanReport {
    /// Whether the served objects or Secrets changed.
    pub fn changed(&self) -> bool {
        !self.affected.is_empty() || self.secrets_changed
    }

    /// Records that `path` keeps its last good content for another `wait`.
    fn unsettled(&mut self, path: &Path, wait: Duration) {
        self.unsettled.push(path.to_path_buf());
        self.rescan_after = Some(self.rescan_after.map_or(wait, |w| w.min(wait)));
    }
}

#[derive(Debug, Default)]
struct FileState {
    /// Hash of the content last parsed, to skip files that did not change.
    fingerprint: Option<u64>,
    /// The file's metadata when its content was last read and found to be the content
    /// served, if it can vouch for that content: while it matches, the file is not read.
    stamp: Option<Stamp>,
    /// The objects this file serves: its last good content.
    objects: Vec<IstioObject>,
    /// The TLS Secrets it serves, likewise.
    secrets: Vec<SecretRecord>,
    /// New content waiting to settle: its hash, and when it was first seen.
    pending: Option<(u64, Instant)>,
    /// When a scan first found the file missing: it keeps serving until no file has gone
    /// missing for the settle window.
    missing_since: Option<Instant>,
    /// The inspection or read problem last reported, so that a lasting one is reported once.
    reported: Option<String>,
}

impl FileState {
    fn count(&self) -> usize {
        self.objects.len() + self.secrets.len()
    }
}

#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Where each object served is defined among `files`.
    definitions: Definitions,
    settle: Duration,
    allow_empty: bool,
}

impl FolderSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            definitions: Definitions::default(),
            settle: SETTLE_WINDOW,
            allow_empty: false,
        }
    }

    /// How long a file must go unmodified before its new content is used (zero: at once).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Whether a scan finding no objects may replace a config that had some.
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many objects the folder serves (before duplicates are dropped).
    pub fn object_count(&self) -> usize {
        count(&self.files)
    }

    /// Re-reads the folder: only files whose metadata leaves open that they changed are read
    /// ([`Stamp`]), only those whose bytes changed are parsed, and only the objects they add,
    /// change or drop are reported (`affected`), so an edit costs work in proportion to the
    /// files it touched.
    pub fn scan(&mut self) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let paths = yaml_files(&self.dir)?;
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut missing = Vec::new();
        let mut newly_missing = Vec::new();
        let mut last_missed: Option<Instant> = None;
        for (path, state) in self.files.iter_mut() {
            if paths.contains(path) {
                continue;
            }
            if self.settle.is_zero() || state.count() == 0 {
                gone.push(path.clone());
                continue;
            }
            if state.missing_since.is_none() {
                state.missing_since = Some(now);
                newly_missing.push(path.clone());
            }
            last_missed = last_missed.max(state.missing_since);
            missing.push(path.clone());
        }
        // Removals land together, once the last of them is a settle window old: the unlinks
        // of one `rm` spread over several scans are still served as one change.
        if let Some(last) = last_missed {
            let gone_for = now.saturating_duration_since(last);
            if gone_for >= self.settle {
                gone.append(&mut missing);
            }
            let wait = self.settle.saturating_sub(gone_for).max(RECHECK_FLOOR);
            for path in &missing {
                report.unsettled(path, wait);
            }
        }
        let mut fresh = Vec::new();
        let mut back = Vec::new();
        for path in paths {
            let state = self.files.entry(path.clone()).or_default();
            if state.missing_since.take().is_some() {
                back.push(path.clone());
            }
            match scan_file(self.settle, &path, state, &mut report) {
                FileScan::Kept => {}
                FileScan::Fresh(content) => fresh.push((path, content)),
                FileScan::NotAFile => gone.push(path),
            }
        }
        let before = count(&self.files);
        let dropped: usize = gone
            .iter()
            .chain(fresh.iter().map(|(path, _)| path))
            .filter_map(|path| self.files.get(path))
            .map(FileState::count)
            .sum();
        let added: usize = fresh.iter().map(|(_, content)| content.count()).sum();
        if before > 0 && before - dropped + added == 0 && !self.allow_empty {
            report.problems.push(format!(
                "{}: no objects left in the folder (it served {before}); keeping the last good \
                 config (run with --allow-empty-config to serve an empty one)",
                self.dir.display()
            ));
            return Ok(report);
        }
        for path in gone {
            if let Some(old) = self.files.remove(&path) {
                self.definitions.remove(&path, &old.objects);
                report
                    .affected
                    .extend(old.objects.iter().map(IstioObject::key));
                report.secrets_changed |= !old.secrets.is_empty();
            }
        }
        for (path, content) in fresh {
            let state = self.files.entry(path.clone()).or_default();
            report
                .affected
                .extend(changed_keys(&state.objects, &content.objects));
            report.secrets_changed |= state.secrets != content.secrets;
            self.definitions.remove(&path, &state.objects);
            self.definitions.add(&path, &content.objects);
            state.fingerprint = Some(content.fingerprint);
            state.stamp = content.stamp;
            state.objects = content.objects;
            state.secrets = content.secrets;
        }
        let precedence_moved = newly_missing.iter().chain(&back);
        self.report_precedence_changes(precedence_moved, &mut report);
        Ok(report)
    }

    /// A missing file's objects give way to other files' definitions of them at once (an
    /// object moved to another file, a file renamed), and take precedence again by name if
    /// the file comes back in time: for `paths`, files that went missing or came back,
    /// reports the keys and Secrets another present file also defines, whose served
    /// definition that changes.
    fn report_precedence_changes<'a>(
        &self,
        paths: impl Iterator<Item = &'a PathBuf>,
        report: &mut ScanReport,
    ) {
        for path in paths {
            let Some(state) = self.files.get(path) else {
                continue;
            };
            let other_present = |p: &Path| p != path && !self.missing(p);
            for object in &state.objects {
                let key = object.key();
                if self.definitions.of(&key).any(|(p, _)| other_present(p)) {
                    report.affected.insert(key);
                }
            }
            report.secrets_changed |= state.secrets.iter().any(|secret| {
                (self.present_files())
                    .filter(|(p, _)| *p != path)
                    .any(|(_, other)| other.secrets.iter().any(|s| s.id == secret.id))
            });
        }
    }

    /// Whether `path` went missing and still serves, waiting out the settle window.
    fn missing(&self, path: &Path) -> bool {
        self.files
            .get(path)
            .is_some_and(|state| state.missing_since.is_some())
    }

    fn present_files(&self) -> impl Iterator<Item = (&PathBuf, &FileState)> {
        self.files.iter().filter(|(_, s)| s.missing_since.is_none())
    }

    /// The files in the order their definitions win: present files by name, then missing
    /// ones (which serve only what no present file defines, and are never reported as
    /// repeating it).
    fn files_by_precedence(&self) -> impl Iterator<Item = (&PathBuf, &FileState, bool)> {
        let missing = self.files.iter().filter(|(_, s)| s.missing_since.is_some());
        self.present_files()
            .map(|(p, s)| (p, s, false))
            .chain(missing.map(|(p, s)| (p, s, true)))
    }

    /// The object served as `key`: its first definition, in the first file that has one
    /// (a file gone missing only if no other file has one).
    pub fn served(&self, key: &ObjectKey) -> Option<&IstioObject> {
        let (path, positions) = self
            .definitions
            .of(key)
            .find(|(path, _)| !self.missing(path))
            .or_else(|| self.definitions.of(key).next())?;
        self.files.get(path)?.objects.get(*positions.first()?)
    }

    /// The repeated definitions of `keys`, as [`Self::objects`] reports them.
    pub fn duplicates_of<'a>(&self, keys: impl IntoIterator<Item = &'a ObjectKey>) -> Problems {
        let mut problems = Vec::new();
        for key in keys {
            let mut first: Option<&Path> = None;
            let present = self.definitions.of(key).filter(|(p, _)| !self.missing(p));
            for (path, positions) in present {
                for _ in positions {
                    match first {
                        None => first = Some(path),
                        Some(first) => problems.push(duplicate(path, key, first)),
                    }
                }
            }
        }
        problems
    }

    /// Every object served, each (kind, namespace, name) once: where two files define the
    /// same object, the first file by name wins and the other is reported (see
    /// [`Self::served`] for files gone missing).
    pub fn objects(&self) -> (Vec<&IstioObject>, Problems) {
        let mut seen: HashMap<ObjectKey, &Path> = HashMap::new();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (path, state, missing) in self.files_by_precedence() {
            for object in &state.objects {
                let key = object.key();
                match seen.get(&key) {
                    Some(_) if missing => {}
                    Some(first) => problems.push(duplicate(path, &key, first)),
                    None => {
                        seen.insert(key, path);
                        out.push(object);
                    }
                }
            }
        }
        (out, problems)
    }

    /// Every TLS Secret served, each once, as [`Self::objects`] has it.
    pub fn secrets(&self) -> (Vec<&SecretRecord>, Problems) {
        let mut seen: HashMap<&NsName, &Path> = HashMap::new();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (path, state, missing) in self.files_by_precedence() {
            for secret in &state.secrets {
                match seen.get(&secret.id) {
                    Some(_) if missing => {}
                    Some(first) => problems.push(format!(
                        "{}: Secret {} is also defined in {}; using that one",
                        path.display(),
                        secret.id,
                        first.display()
                    )),
                    None => {
                        seen.insert(&secret.id, path);
                        out.push(secret);
                    }
                }
            }
        }
        (out, problems)
    }
}

fn count(files: &BTreeMap<PathBuf, FileState>) -> usize {
    files.values().map(FileState::count).sum()
}

/// A repeated definition of `key` in `path`, after the one in `first` that is served.
fn duplicate(path: &Path, key: &ObjectKey, first: &Path) -> String {
    if path == first {
        format!(
            "{}: {key} is defined twice in this file; using the first",
            path.display()
        )
    } else {
        format!(
            "{}: {key} is also defined in {}; using that one",
            path.display(),
            first.display()
        )
    }
}

/// The keys whose served object differs between two versions of one file's objects (the
/// first definition of each), or that are defined a different number of times (a repeat to
/// report, or no longer to report).
fn changed_keys(old: &[IstioObject], new: &[IstioObject]) -> BTreeSet<ObjectKey> {
    fn by_key(objects: &[IstioObject]) -> HashMap<ObjectKey, (&IstioObject, usize)> {
        let mut out: HashMap<ObjectKey, (&IstioObject, usize)> = HashMap::new();
        for object in objects {
            out.entry(object.key()).or_insert((object, 0)).1 += 1;
        }
        out
    }
    let (old, new) = (by_key(old), by_key(new));
    let mut changed: BTreeSet<ObjectKey> = old
        .iter()
        .filter(|(key, was)| new.get(*key) != Some(*was))
        .map(|(key, _)| key.clone())
        .collect();
    changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
    changed
}

/// What one file's scan found.
enum FileScan {
    /// Nothing new to serve: the same bytes, new bytes still settling, or a file that
    /// cannot be read (its last good content stays).
    Kept,
    /// New content, settled and read: served unless the scan is given up.
    Fresh(Content),
    /// Not a file after all (a directory named `*.yaml`): it serves nothing.
    NotAFile,
}

struct Content {
    fingerprint: u64,
    stamp: Option<Stamp>,
    objects: Vec<IstioObject>,
    secrets: Vec<SecretRecord>,
}

impl Content {
    fn count(&self) -> usize {
        self.objects.len() + self.secrets.len()
    }
}

/// Scans one file, recording in `state` what it reported and what is settling; its new
/// content, if any, is returned, not yet served.
fn scan_file(
    settle: Duration,
    path: &Path,
    state: &mut FileState,
    report: &mut ScanReport,
) -> FileScan {
    let read_at = SystemTime::now();
    let before = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return FileScan::NotAFile,
        Err(err) => {
            // Not the same as deleted: a dangling symlink mid-swap, a denied directory.
            unreadable(state, path, "cannot inspect", &err, report);
            return FileScan::Kept;
        }
    };
    if state.stamp.is_some_and(|stamp| stamp.matches(&before)) {
        state.reported = None;
        return FileScan::Kept;
    }
    report.files_read += 1;
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            unreadable(state, path, "cannot read", &err, report);
            return FileScan::Kept;
        }
    };
    state.reported = None;
    let fingerprint = xxhash_rust::xxh3::xxh3_64(&bytes);
    if state.fingerprint == Some(fingerprint) {
        state.pending = None;
        state.stamp = Stamp::trusted(&before, read_at);
        return FileScan::Kept;
    }
    let after = std::fs::metadata(path).ok();
    let stamp = Stamp::trusted(&before, read_at)
        .filter(|stamp| after.as_ref().is_some_and(|after| stamp.matches(after)));
    if let Some(wait) = settling(settle, state, fingerprint, &before, after.as_ref()) {
        report.unsettled(path, wait);
        return FileScan::Kept;
    }
    state.pending = None;
    let text = String::from_utf8_lossy(&bytes);
    let previous = (&state.objects[..], &state.secrets[..]);
    let (objects, secrets) = load(path, &text, previous, &mut report.problems);
    FileScan::Fresh(Content {
        fingerprint,
        stamp,
        objects,
        secrets,
    })
}

/// How much longer new content (hash `fingerprint`, file metadata `before` and `after`
/// reading it) must wait to settle; `None` once it has.
fn settling(
    settle: Duration,
    state: &mut FileState,
    fingerprint: u64,
    before: &Metadata,
    after: Option<&Metadata>,
) -> Option<Duration> {
    if settle.is_zero() {
        return None;
    }
    let first_seen = match state.pending {
        Some((pending, since)) if pending == fingerprint => since,
        _ => Instant::now(),
    };
    state.pending = Some((fingerprint, first_seen));
    let still_writing = after.is_none_or(|after| {
        after.len() != before.len() || after.modified().ok() != before.modified().ok()
    });
    if still_writing {
        return Some(settle);
    }
    // By its modification time, or (for a time in the future or none at all) by how long
    // this process has seen the same content.
    let age = before
        .modified()
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok());
    let unchanged_for = first_seen.elapsed();
    let settled_for = age.map_or(unchanged_for, |age| age.max(unchanged_for));
    (settled_for < settle).then(|| (settle - settled_for).max(RECHECK_FLOOR))
}

/// Keeps the file's last good content and reports why, once per distinct problem.
fn unreadable(
    state: &mut FileState,
    path: &Path,
    what: &str,
    err: &io::Error,
    report: &mut ScanReport,
) {
    let keeping = if state.fingerprint.is_some() {
        "keeping its last good content"
    } else {
        "it serves nothing until it can be read"
    };
    let problem = format!("{}: {what}: {err}; {keeping}", path.display());
    if state.reported.as_ref() != Some(&problem) {
        report.problems.push(problem.clone());
        state.reported = Some(problem);
    }
}

/// The YAML files directly in `dir`, sorted; whether each is a readable file is for the
/// caller to find out.
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
        if is_yaml && !hidden {
            out.insert(path);
        }
    }
    Ok(out)
}

mod definitions;
mod load;
mod stamp;

use definitions::Definitions;
use load::load;
use stamp::Stamp;

#[cfg(test)]
mod tests;
