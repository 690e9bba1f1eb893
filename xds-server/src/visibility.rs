//! Which proxies may see a resource at all, whatever variant they would get.
//!
//! Istio's `Sidecar` resource narrows what a namespace's (or a workload's) proxies receive:
//! a service outside its egress hosts is not sent to them. That is a property of the
//! service, not of any one variant of its cluster (a cluster can have variants by
//! DestinationRule `exportTo`, by locality, ...), so it is kept beside the variants rather
//! than multiplied into them.

use std::sync::Arc;

use crate::proxy::{ProxyInfo, Selector};

/// Rules deciding who sees a resource: the most specific rule whose selector matches a proxy
/// decides; a proxy that no rule matches sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Visibility {
    rules: Arc<[(Selector, bool)]>,
}

impl Visibility {
    /// `rules` as (selector, visible); for one selector given twice, the last one counts.
    pub fn new(rules: impl IntoIterator<Item = (Selector, bool)>) -> Self {
        let mut kept: Vec<(Selector, bool)> = Vec::new();
        for (selector, visible) in rules {
            match kept.iter_mut().find(|(s, _)| *s == selector) {
                Some(rule) => rule.1 = visible,
                None => kept.push((selector, visible)),
            }
        }
        // Most specific first; equal ones in selector order, so the order never depends on
        // how the rules were given.
        kept.sort_by(|(a, _), (b, _)| b.specificity().cmp(&a.specificity()).then_with(|| a.cmp(b)));
        Self { rules: kept.into() }
    }

    /// Whether `proxy` may see the resource.
    pub fn allows(&self, proxy: &ProxyInfo) -> bool {
        self.rules
            .iter()
            .find(|(selector, _)| selector.matches(proxy))
            .is_none_or(|(_, visible)| *visible)
    }

    /// Whether every proxy sees the resource (no rule hides it from anyone).
    pub fn is_everyone(&self) -> bool {
        self.rules.iter().all(|(_, visible)| *visible)
    }

    /// The rules, most specific first.
    pub fn rules(&self) -> &[(Selector, bool)] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Role;

    fn sidecar(namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
        ProxyInfo {
            role: Role::Sidecar,
            namespace: Some(namespace.into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ProxyInfo::default()
        }
    }

    fn in_namespace(namespace: &str, labels: &[(&str, &str)]) -> Selector {
        Selector {
            role: Some(Role::Sidecar),
            namespace: Some(namespace.into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Selector::default()
        }
    }

    #[test]
    fn the_most_specific_matching_rule_decides() {
        // A mesh-wide default hides; one namespace shows; one workload there hides again.
        let v = Visibility::new([
            (in_namespace("shop", &[("app", "cart")]), false),
            (Selector::role(Role::Sidecar), false),
            (in_namespace("shop", &[]), true),
        ]);
        assert!(!v.allows(&sidecar("other", &[])));
        assert!(v.allows(&sidecar("shop", &[])));
        assert!(v.allows(&sidecar("shop", &[("app", "web")])));
        assert!(!v.allows(&sidecar("shop", &[("app", "cart")])));
        // Gateways are not sidecars: no rule matches them.
        let gateway = ProxyInfo {
            role: Role::Router,
            ..sidecar("other", &[])
        };
        assert!(v.allows(&gateway));
        assert!(!v.is_everyone());
    }

    #[test]
    fn rules_given_in_any_order_are_the_same_visibility() {
        let a = Visibility::new([
            (Selector::role(Role::Sidecar), false),
            (in_namespace("shop", &[]), true),
        ]);
        let b = Visibility::new([
            (in_namespace("shop", &[]), true),
            (Selector::role(Role::Sidecar), true),
            (Selector::role(Role::Sidecar), false),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.rules().len(), 2);
        assert!(Visibility::new([(in_namespace("shop", &[]), true)]).is_everyone());
    }
}
