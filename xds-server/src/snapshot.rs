//! Immutable, versioned sets of resources, and the updates that derive one from another.
//!
//! A snapshot holds, per type, a persistent ordered map from resource name to [`Entry`]. A new
//! snapshot shares everything it did not change with its predecessor, so applying an update
//! costs time proportional to the update, not to the mesh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imbl::OrdMap;

use crate::proxy::{ProxyInfo, Selector};
use crate::resource::{Resource, type_url};
use crate::visibility::Visibility;

/// Number of resource types; type indices follow [`type_url::PUSH_ORDER`].
pub const TYPES: usize = type_url::PUSH_ORDER.len();

/// Index of a served type URL in [`type_url::PUSH_ORDER`].
pub fn type_index(type_url: &str) -> Option<usize> {
    type_url::PUSH_ORDER.iter().position(|t| *t == type_url)
}

/// Every variant of one named resource: one per selector, most specific first. A proxy gets
/// the first variant whose selector matches it. Variants for one workload address (a sidecar's
/// inbound listener: one per workload, thousands of them) are kept apart, by address, so that
/// finding or changing one costs the same however many there are.
///
/// Apart from its variants, an entry may be hidden from some proxies ([`Visibility`]): those
/// get no variant at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    variants: Arc<[(Selector, Resource)]>,
    by_address: imbl::HashMap<Arc<str>, Arc<[(Selector, Resource)]>>,
    visibility: Option<Visibility>,
}

impl Entry {
    fn new(all: Vec<(Selector, Resource)>) -> Self {
        let mut by_address: imbl::HashMap<Arc<str>, Arc<[(Selector, Resource)]>> =
            imbl::HashMap::new();
        let mut variants = Vec::new();
        for (selector, resource) in all {
            match selector.address.clone() {
                Some(address) => {
                    let mut same: Vec<_> = by_address
                        .get(&address)
                        .map(|v| v.to_vec())
                        .unwrap_or_default();
                    same.push((selector, resource));
                    by_address.insert(address, sorted(same).into());
                }
                None => variants.push((selector, resource)),
            }
        }
        Self {
            variants: sorted(variants).into(),
            by_address,
            visibility: None,
        }
    }

    fn with_visibility(mut self, visibility: Option<Visibility>) -> Self {
        self.visibility = visibility;
        self
    }

    /// Who may see the entry at all; `None`: every proxy a variant selects.
    pub fn visibility(&self) -> Option<&Visibility> {
        self.visibility.as_ref()
    }

    /// The variant `proxy` receives, if any selects it and the entry is not hidden from it.
    pub fn for_proxy(&self, proxy: &ProxyInfo) -> Option<&Resource> {
        if self.visibility.as_ref().is_some_and(|v| !v.allows(proxy)) {
            return None;
        }
        // An address selector outranks any other (see `Selector::specificity`).
        let own = proxy
            .address
            .as_ref()
            .and_then(|a| self.by_address.get(a))
            .into_iter()
            .flat_map(|v| v.iter());
        own.chain(self.variants.iter())
            .find(|(selector, _)| selector.matches(proxy))
            .map(|(_, r)| r)
    }

    /// The variants not for one workload address, most specific first.
    pub fn variants(&self) -> &[(Selector, Resource)] {
        &self.variants
    }

    /// Every variant, those for one workload address included (in no particular order).
    pub fn all_variants(&self) -> impl Iterator<Item = &(Selector, Resource)> {
        self.variants
            .iter()
            .chain(self.by_address.values().flat_map(|v| v.iter()))
    }

    /// Whether some proxies see something else than others under this name.
    pub fn is_scoped(&self) -> bool {
        self.visibility.is_some()
            || !self.by_address.is_empty()
            || !matches!(&*self.variants, [(selector, _)] if *selector == Selector::all())
    }

    fn with(&self, selector: Selector, resource: Resource) -> Option<Self> {
        if let Some(address) = selector.address.clone() {
            let mut same: Vec<_> = self
                .by_address
                .get(&address)
                .map(|v| v.to_vec())
                .unwrap_or_default();
            replace(&mut same, selector, resource)?;
            let mut next = self.clone();
            next.by_address.insert(address, sorted(same).into());
            return Some(next);
        }
        let mut variants: Vec<_> = self.variants.to_vec();
        replace(&mut variants, selector, resource)?;
        Some(Self {
            variants: sorted(variants).into(),
            by_address: self.by_address.clone(),
            visibility: self.visibility.clone(),
        })
    }

    fn without(&self, selector: &Selector) -> Option<Option<Self>> {
        let mut next = self.clone();
        match &selector.address {
            Some(address) => {
                let same = self.by_address.get(address)?;
                let kept: Vec<_> = same
                    .iter()
                    .filter(|(s, _)| s != selector)
                    .cloned()
                    .collect();
                if kept.len() == same.len() {
                    return None;
                }
                if kept.is_empty() {
                    next.by_address.remove(address);
                } else {
                    next.by_address.insert(address.clone(), kept.into());
                }
            }
            None => {
                let kept: Vec<_> = self
                    .variants
                    .iter()
                    .filter(|(s, _)| s != selector)
                    .cloned()
                    .collect();
                if kept.len() == self.variants.len() {
                    return None;
                }
                next.variants = kept.into();
            }
        }
        Some((!next.variants.is_empty() || !next.by_address.is_empty()).then_some(next))
    }
}

/// Most specific first; equal ones in selector order, so the order never depends on history.
fn sorted(mut variants: Vec<(Selector, Resource)>) -> Vec<(Selector, Resource)> {
    variants.sort_by(|(a, _), (b, _)| b.specificity().cmp(&a.specificity()).then_with(|| a.cmp(b)));
    variants
}

/// Puts `resource` as `selector`'s variant; `None` when that variant is already the same.
fn replace(
    variants: &mut Vec<(Selector, Resource)>,
    selector: Selector,
    resource: Resource,
) -> Option<()> {
    match variants.iter_mut().find(|(s, _)| *s == selector) {
        Some((_, existing)) if existing.version() == resource.version() => return None,
        Some((_, existing)) => *existing = resource,
        None => variants.push((selector, resource)),
    }
    Some(())
}

/// A complete, immutable configuration: every resource of every type at one version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    version: u64,
    types: [OrdMap<Arc<str>, Entry>; TYPES],
    /// Per type, how many entries are scoped (see [`Entry::is_scoped`]).
    scoped: [usize; TYPES],
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The entry named `name` of type `index`.
    pub fn get(&self, index: usize, name: &str) -> Option<&Entry> {
        self.types.get(index)?.get(name)
    }

    /// The variant of resource `name` of type `index` that `proxy` receives, if any.
    pub fn resource_for(&self, index: usize, name: &str, proxy: &ProxyInfo) -> Option<&Resource> {
        self.get(index, name)?.for_proxy(proxy)
    }

    /// Every entry of type `index`, ordered by name.
    pub fn entries(&self, index: usize) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.types.get(index).into_iter().flat_map(|m| m.iter())
    }

    /// The resources of type `index` that `proxy` receives, ordered by name.
    pub fn view<'a>(
        &'a self,
        index: usize,
        proxy: &'a ProxyInfo,
    ) -> impl Iterator<Item = &'a Resource> {
        self.entries(index)
            .filter_map(move |(_, e)| e.for_proxy(proxy))
    }

    pub fn len(&self, index: usize) -> usize {
        self.types.get(index).map_or(0, OrdMap::len)
    }

    /// Whether every proxy sees the same resources of type `index`.
    pub fn is_uniform(&self, index: usize) -> bool {
        self.scoped.get(index).is_some_and(|n| *n == 0)
    }

    /// Replaces the entry `name` of type `index` (`None`: removes it), keeping count of
    /// scoped entries.
    fn set_entry(&mut self, index: usize, name: Arc<str>, entry: Option<Entry>) {
        let old = match entry {
            Some(entry) => {
                if entry.is_scoped() {
                    self.scoped[index] += 1;
                }
                self.types[index].insert(name, entry)
            }
            None => self.types[index].remove(&name),
        };
        if old.is_some_and(|e| e.is_scoped()) {
            self.scoped[index] -= 1;
        }
    }

    /// Applies `update`. Returns the new snapshot and, per type, the names whose entries
    /// changed; `None` when the update changes nothing.
    pub(crate) fn apply(&self, update: Update) -> Option<(Snapshot, ChangedNames)> {
        let mut next = self.clone();
        let mut changed: ChangedNames = Default::default();
        for change in update.changes {
            match change {
                Change::Put(selector, resource) => {
                    let Some(index) = type_index(resource.type_url()) else {
                        continue;
                    };
                    let name = resource.name_arc().clone();
                    let entry = match next.types[index].get(&name) {
                        Some(existing) => existing.with(selector, resource),
                        None => Some(Entry::new(vec![(selector, resource)])),
                    };
                    if let Some(entry) = entry {
                        next.set_entry(index, name.clone(), Some(entry));
                        changed[index].push(name);
                    }
                }
                Change::Remove {
                    index,
                    name,
                    selector,
                } => {
                    let outcome = match (&selector, next.types[index].get(&name)) {
                        (_, None) => None,
                        (None, Some(_)) => Some(None),
                        (Some(selector), Some(existing)) => existing.without(selector),
                    };
                    if let Some(entry) = outcome {
                        next.set_entry(index, name.clone(), entry);
                        changed[index].push(name);
                    }
                }
                Change::Visibility {
                    index,
                    name,
                    visibility,
                } => {
                    // Hiding what does not exist hides nothing: translation sets the
                    // visibility with the variants it puts.
                    let Some(existing) = next.types[index].get(&name) else {
                        continue;
                    };
                    if existing.visibility != visibility {
                        let entry = existing.clone().with_visibility(visibility);
                        next.set_entry(index, name.clone(), Some(entry));
                        changed[index].push(name);
                    }
                }
            }
        }
        for names in &mut changed {
            names.sort();
            names.dedup();
        }
        if changed.iter().all(Vec::is_empty) {
            return None;
        }
        next.version = self.version + 1;
        Some((next, changed))
    }

    /// The update that turns this snapshot into exactly `target`. Costs time proportional to
    /// the size of both; translators that know what changed should build an [`Update`].
    pub(crate) fn update_to(&self, target: SnapshotBuilder) -> Update {
        let mut update = Update::new();
        for (index, wanted) in target.types.into_iter().enumerate() {
            let current = &self.types[index];
            let visible = &target.visibility[index];
            for (name, variants) in &wanted {
                let variants: Vec<(Selector, Resource)> = variants
                    .iter()
                    .map(|(s, r)| (s.clone(), r.clone()))
                    .collect();
                let visibility = visible.get(name).cloned();
                let entry = Entry::new(variants.clone()).with_visibility(visibility.clone());
                if current.get(name) != Some(&entry) {
                    // Replace the whole entry: drop it, then put every variant.
                    if current.contains_key(name) {
                        update.changes.push(Change::Remove {
                            index,
                            name: name.clone(),
                            selector: None,
                        });
                    }
                    for (selector, resource) in variants {
                        update.put_for(selector, resource);
                    }
                    if visibility.is_some() {
                        update.changes.push(Change::Visibility {
                            index,
                            name: name.clone(),
                            visibility,
                        });
                    }
                }
            }
            for name in current.keys() {
                if !wanted.contains_key(name) {
                    update.changes.push(Change::Remove {
                        index,
                        name: name.clone(),
                        selector: None,
                    });
                }
            }
        }
        update
    }
}

/// Per type index, the names an update changed (sorted).
pub type ChangedNames = [Vec<Arc<str>>; TYPES];

#[derive(Debug, Clone)]
enum Change {
    Put(Selector, Resource),
    Remove {
        index: usize,
        name: Arc<str>,
        /// `None`: every variant.
        selector: Option<Selector>,
    },
    /// Sets who may see an existing entry (`None`: whoever its variants select).
    Visibility {
        index: usize,
        name: Arc<str>,
        visibility: Option<Visibility>,
    },
}

/// A batch of changes to the served resources, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct Update {
    changes: Vec<Change>,
}

impl Update {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `resource` for every proxy.
    pub fn put(&mut self, resource: Resource) -> &mut Self {
        self.put_for(Selector::all(), resource)
    }

    /// Adds or replaces the variant of `resource` for the proxies `selector` matches.
    pub fn put_for(&mut self, selector: Selector, resource: Resource) -> &mut Self {
        self.changes.push(Change::Put(selector, resource));
        self
    }

    /// Removes every variant of the resource `name` of `type_url`.
    pub fn remove(&mut self, type_url: &str, name: &str) -> &mut Self {
        if let Some(index) = type_index(type_url) {
            self.changes.push(Change::Remove {
                index,
                name: name.into(),
                selector: None,
            });
        }
        self
    }

    /// Removes the variant of `name` for `selector`.
    pub fn remove_for(&mut self, selector: Selector, type_url: &str, name: &str) -> &mut Self {
        if let Some(index) = type_index(type_url) {
            self.changes.push(Change::Remove {
                index,
                name: name.into(),
                selector: Some(selector),
            });
        }
        self
    }

    /// Sets who may see the resource `name` of `type_url` (`None`: every proxy a variant
    /// selects). Applies to the resource as it is once the update's puts and removes before
    /// this change are done; a resource removed later loses it.
    pub fn set_visibility(
        &mut self,
        type_url: &str,
        name: &str,
        visibility: Option<Visibility>,
    ) -> &mut Self {
        if let Some(index) = type_index(type_url) {
            self.changes.push(Change::Visibility {
                index,
                name: name.into(),
                // Hiding from no one is the same as no rules: one form for both, so that
                // entries compare equal.
                visibility: visibility.filter(|v| !v.is_everyone()),
            });
        }
        self
    }

    /// Appends `other`'s changes after this update's (later changes win).
    pub fn merge(&mut self, other: Update) {
        self.changes.extend(other.changes);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

/// The variants of each resource of one type, by name.
/// Per name, its variants by selector: replacing one costs the same however many there are
/// (a sidecar's inbound listener has one per workload).
type Variants = BTreeMap<Arc<str>, HashMap<Selector, Resource>>;

/// Collects the complete set of resources for a snapshot.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    types: [Variants; TYPES],
    /// Per type, the resources hidden from some proxies.
    visibility: [BTreeMap<Arc<str>, Visibility>; TYPES],
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a resource for every proxy.
    pub fn add(&mut self, resource: Resource) -> &mut Self {
        self.add_for(Selector::all(), resource)
    }

    /// Adds the variant of a resource for the proxies `selector` matches; a later variant with
    /// the same selector replaces an earlier one.
    pub fn add_for(&mut self, selector: Selector, resource: Resource) -> &mut Self {
        let Some(index) = type_index(resource.type_url()) else {
            return self;
        };
        self.types[index]
            .entry(resource.name_arc().clone())
            .or_default()
            .insert(selector, resource);
        self
    }

    /// Applies `update`'s puts and removes, in order, to what is collected so far.
    pub fn apply(&mut self, update: Update) -> &mut Self {
        for change in update.changes {
            match change {
                Change::Put(selector, resource) => {
                    self.add_for(selector, resource);
                }
                Change::Remove {
                    index,
                    name,
                    selector,
                } => {
                    let Some(variants) = self.types[index].get_mut(&name) else {
                        continue;
                    };
                    match selector {
                        Some(selector) => {
                            variants.remove(&selector);
                        }
                        None => variants.clear(),
                    }
                    if variants.is_empty() {
                        self.types[index].remove(&name);
                        self.visibility[index].remove(&name);
                    }
                }
                Change::Visibility {
                    index,
                    name,
                    visibility,
                } => {
                    if !self.types[index].contains_key(&name) {
                        continue;
                    }
                    match visibility {
                        Some(v) => self.visibility[index].insert(name, v),
                        None => self.visibility[index].remove(&name),
                    };
                }
            }
        }
        self
    }

    /// Sets who may see the resource `name` of `type_url`, once added (see
    /// [`Update::set_visibility`]).
    pub fn set_visibility(
        &mut self,
        type_url: &str,
        name: &str,
        visibility: Visibility,
    ) -> &mut Self {
        let mut update = Update::new();
        update.set_visibility(type_url, name, Some(visibility));
        self.apply(update)
    }

    pub fn len(&self) -> usize {
        self.types
            .iter()
            .map(|t| t.values().map(HashMap::len).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Extend<Resource> for SnapshotBuilder {
    fn extend<I: IntoIterator<Item = Resource>>(&mut self, iter: I) {
        for resource in iter {
            self.add(resource);
        }
    }
}

#[cfg(test)]
mod tests;
