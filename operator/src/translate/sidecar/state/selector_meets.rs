//! Sets of sidecars a listener's variants are put for, closed under meets: where several
//! variants select one sidecar, the most specific is the one it reads, so the sidecars two
//! sets share (a namespace's and a label selector's, say) need a variant made for both.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::Selector;
use tracing::warn;

use crate::translate::route::union;

/// Beyond this many, selectors are not joined further (a sidecar several pick may then read
/// a less specific variant); bounds what hostile config can make a put cost.
const MAX_SELECTORS: usize = 1024;

/// `selectors` with the meet of every two one sidecar can satisfy together, until none is
/// missing: where several select a sidecar, the most specific is the one it reads, and it
/// must be made for everything that selects it.
pub(super) fn with_meets(mut selectors: BTreeSet<Selector>) -> BTreeSet<Selector> {
    loop {
        let missing = missing_meets(&selectors);
        if missing.is_empty() {
            return selectors;
        }
        if selectors.len() + missing.len() > MAX_SELECTORS {
            warn!(
                limit = MAX_SELECTORS,
                "sidecar variants of a listener exceed the limit; some sidecars matching \
                 several read a less specific one"
            );
            return selectors;
        }
        selectors.extend(missing);
    }
}

/// The meets of `selectors` it lacks. Sets of two namespaces share no sidecar, so only the
/// sets of one namespace are paired, and those of no namespace with every other: a mesh of
/// many namespaces, each with its own policies, pairs few.
fn missing_meets(selectors: &BTreeSet<Selector>) -> BTreeSet<Selector> {
    let mut by_namespace: BTreeMap<Option<&str>, Vec<&Selector>> = BTreeMap::new();
    for selector in selectors {
        let namespace = selector.namespace.as_deref();
        by_namespace.entry(namespace).or_default().push(selector);
    }
    let anywhere = by_namespace.get(&None).cloned().unwrap_or_default();
    let mut missing = BTreeSet::new();
    let mut pair = |a: &Selector, b: &Selector| {
        if let Some(both) = meet(a, b).filter(|m| !selectors.contains(m)) {
            missing.insert(both);
        }
    };
    for (namespace, group) in &by_namespace {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                pair(a, b);
            }
            if namespace.is_some() {
                for b in &anywhere {
                    pair(a, b);
                }
            }
        }
    }
    missing
}

/// The sidecars both `a` and `b` select, if one can be selected by both and it is neither
/// of them (one inside the other meets as the inner one, there already). Checked before
/// anything is copied: most pairs share no sidecar.
fn meet(a: &Selector, b: &Selector) -> Option<Selector> {
    fn either<T: Clone + PartialEq>(a: &Option<T>, b: &Option<T>) -> Result<Option<T>, ()> {
        match (a, b) {
            (Some(x), Some(y)) if x != y => Err(()),
            (x, y) => Ok(x.clone().or_else(|| y.clone())),
        }
    }
    fn conflict<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
        matches!((a, b), (Some(x), Some(y)) if x != y)
    }
    if a.locality != b.locality
        || a.address != b.address
        || conflict(&a.role, &b.role)
        || conflict(&a.namespace, &b.namespace)
    {
        return None;
    }
    let clash = |(k, v): (&String, &String)| b.labels.get(k).is_some_and(|w| w != v);
    if a.labels.iter().any(clash) {
        return None;
    }
    let within = |inner: &Selector, outer: &Selector| {
        (outer.role.is_none() || outer.role == inner.role)
            && (outer.namespace.is_none() || outer.namespace == inner.namespace)
            && crate::model::service::labels_include(&inner.labels, &outer.labels)
    };
    if within(a, b) || within(b, a) {
        return None;
    }
    Some(Selector {
        role: either(&a.role, &b.role).ok()?,
        namespace: either(&a.namespace, &b.namespace).ok()?,
        labels: union(&a.labels, &b.labels)?,
        ..a.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_xds::Role;

    fn sidecars(namespace: Option<&str>, labels: &[(&str, &str)]) -> Selector {
        let mut selector = Selector::role(Role::Sidecar);
        selector.namespace = namespace.map(Into::into);
        selector.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        selector
    }

    #[test]
    fn sets_that_share_sidecars_get_their_meet() {
        let front = sidecars(Some("front"), &[]);
        let back = sidecars(Some("back"), &[]);
        let batch = sidecars(None, &[("tier", "batch")]);
        let web = sidecars(None, &[("tier", "web")]);
        let closed = with_meets(BTreeSet::from([
            front.clone(),
            back.clone(),
            batch.clone(),
            web.clone(),
        ]));
        let expected = BTreeSet::from([
            front,
            back,
            batch,
            web,
            sidecars(Some("front"), &[("tier", "batch")]),
            sidecars(Some("front"), &[("tier", "web")]),
            sidecars(Some("back"), &[("tier", "batch")]),
            sidecars(Some("back"), &[("tier", "web")]),
        ]);
        // Two namespaces, or two values of one label, share no sidecar.
        assert_eq!(closed, expected);
    }

    #[test]
    fn a_set_inside_another_is_their_meet() {
        let front = sidecars(Some("front"), &[]);
        let batch = sidecars(Some("front"), &[("tier", "batch")]);
        let closed = with_meets(BTreeSet::from([front.clone(), batch.clone()]));
        assert_eq!(closed, BTreeSet::from([front, batch]));
    }
}
