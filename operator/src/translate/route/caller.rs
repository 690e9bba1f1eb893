//! Who a sidecar's routes are built for. A VirtualService match may name its callers by
//! namespace (`sourceNamespace`) and by workload labels (`sourceLabels`), so sidecars that
//! differ in either may need routes of their own. The labels that matter are the unions of the
//! `sourceLabels` selectors a workload can satisfy together: one route variant per such union
//! ("label class"), and a sidecar reads the variant of the largest union its labels include.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use crate::model::VirtualService;
use crate::model::routing::HttpMatch;

/// Workload labels, as a `sourceLabels` selector or the union of several.
pub type Labels = BTreeMap<String, String>;

/// Beyond this many label classes, selectors that would add more are not combined: a
/// sidecar matching them reads the routes of a smaller class. Bounds what hostile config
/// (many selectors over distinct keys, 2^n unions) can make translation build.
pub const MAX_LABEL_CLASSES: usize = 64;

/// The sidecars routes are built for: those of `namespace` (`None`: of any namespace no match
/// or export names) whose labels include `labels` (a label class; empty: any labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Caller {
    pub namespace: Option<String>,
    pub labels: Labels,
}

impl Caller {
    pub fn new(namespace: Option<&str>, labels: &Labels) -> Self {
        Self {
            namespace: namespace.map(str::to_string),
            labels: labels.clone(),
        }
    }

    /// Any sidecar of a namespace no match names, whatever its labels.
    pub fn anyone() -> Self {
        Self::default()
    }

    /// Whether the match's source conditions hold for these sidecars.
    pub fn selects(&self, m: &HttpMatch) -> bool {
        let namespace = m
            .source_namespace
            .as_ref()
            .is_none_or(|wanted| self.namespace.as_ref() == Some(wanted));
        namespace && includes(&self.labels, &m.source_labels)
    }
}

/// Whether `labels` has every label of `selector`.
pub fn includes(labels: &Labels, selector: &Labels) -> bool {
    crate::model::service::labels_include(labels, selector)
}

/// The `sourceLabels` selectors of `vs`'s HTTP matches that narrow sidecars' routes (a match
/// naming its own `gateways` is not narrowed by source, as with istiod).
pub fn source_selectors(vs: &VirtualService) -> BTreeSet<Labels> {
    vs.http
        .iter()
        .flat_map(|h| &h.matches)
        .filter(|m| m.gateways.is_empty() && !m.source_labels.is_empty())
        .map(|m| m.source_labels.clone())
        .collect()
}

/// Every union of `selectors` one workload can satisfy at once (no label with two values),
/// the empty one first; at most [`MAX_LABEL_CLASSES`].
pub fn label_classes<'a>(selectors: impl IntoIterator<Item = &'a Labels>) -> Vec<Labels> {
    let mut classes: BTreeSet<Labels> = BTreeSet::from([Labels::new()]);
    for selector in selectors {
        let joined: Vec<Labels> = classes
            .iter()
            .filter_map(|class| union(class, selector))
            .filter(|class| !classes.contains(class))
            .collect();
        for class in joined {
            if classes.len() >= MAX_LABEL_CLASSES {
                warn!(
                    limit = MAX_LABEL_CLASSES,
                    "sourceLabels and workloadSelector selectors combine into more label \
                     classes than the limit; a sidecar matching several of them gets the \
                     routes of fewer"
                );
                return classes.into_iter().collect();
            }
            classes.insert(class);
        }
    }
    classes.into_iter().collect()
}

/// The label class of `labels` among `selectors`: the union of those it includes.
pub fn class_of<'a>(selectors: impl IntoIterator<Item = &'a Labels>, labels: &Labels) -> Labels {
    let mut class = Labels::new();
    for selector in selectors {
        if includes(labels, selector) {
            class.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    class
}

/// `a` and `b` together, unless they give one label two values.
pub fn union(a: &Labels, b: &Labels) -> Option<Labels> {
    let mut out = a.clone();
    for (k, v) in b {
        match out.get(k) {
            Some(existing) if existing != v => return None,
            Some(_) => {}
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn classes_are_the_unions_one_workload_can_carry() {
        let app = labels(&[("app", "a")]);
        let other_app = labels(&[("app", "b")]);
        let version = labels(&[("version", "v1")]);
        let classes = label_classes([&app, &other_app, &version]);
        assert_eq!(
            classes,
            vec![
                Labels::new(),
                app.clone(),
                labels(&[("app", "a"), ("version", "v1")]),
                other_app.clone(),
                labels(&[("app", "b"), ("version", "v1")]),
                version.clone(),
            ]
        );
        let workload = labels(&[("app", "a"), ("version", "v1"), ("pod", "x")]);
        assert_eq!(
            class_of([&app, &other_app, &version], &workload),
            labels(&[("app", "a"), ("version", "v1")])
        );
        assert_eq!(
            class_of([&other_app], &workload),
            Labels::new(),
            "a selector the workload lacks adds nothing"
        );
    }

    #[test]
    fn classes_are_bounded() {
        let selectors: Vec<Labels> = (0..20)
            .map(|i| labels(&[(&format!("k{i}"), "v")]))
            .collect();
        assert_eq!(label_classes(&selectors).len(), MAX_LABEL_CLASSES);
    }

    #[test]
    fn a_caller_selects_matches_by_namespace_and_labels() {
        let m = HttpMatch {
            source_labels: labels(&[("app", "a")]),
            source_namespace: Some("front".into()),
            ..HttpMatch::default()
        };
        let a = labels(&[("app", "a")]);
        assert!(Caller::new(Some("front"), &a).selects(&m));
        assert!(!Caller::new(Some("back"), &a).selects(&m));
        assert!(!Caller::new(Some("front"), &Labels::new()).selects(&m));
        assert!(!Caller::anyone().selects(&m));
        assert!(Caller::anyone().selects(&HttpMatch::default()));
    }
}
