//! Which DestinationRule applies to a service host, for the proxies of each namespace, as
//! istiod looks it up: the rule of the proxy's own namespace, else one the service's
//! namespace exports to it, else one the root namespace exports to it (a proxy of the root
//! namespace reads only the rules there exported to `.` as its own). Among one namespace's
//! rules the most specific host wins: one naming the host, else the longest wildcard
//! covering it (`*.bookinfo.svc.cluster.local` before `*.local` before `*`), first by name.
//! A rule of another namespace (not the proxy's, the service's or the root) applies to
//! nobody else. Rules naming one host in one namespace that lose are reported on that host;
//! those of a wildcard host, once, when the wildcard host itself is refreshed.
//!
//! A rule with a `workloadSelector` stands apart, as in istiod's sidecar scope: it applies to
//! the proxies of its own namespace carrying its labels, and to them it is the rule, before
//! any other; it is never exported and never another namespace's.

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::{IstioObject, ObjectKey};

use super::{DestinationRule, Mesh, Problem, Subset, Topic, hostname, service, traffic_policy};
use crate::index::Index;
use service::ExportTo;

/// The DestinationRules of one host, per namespace of the proxies reading them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRules {
    /// The rule of proxies of a namespace not in `by_namespace`.
    pub everyone: Option<DestinationRule>,
    /// The namespaces whose proxies read another rule (or none).
    pub by_namespace: BTreeMap<String, Option<DestinationRule>>,
    /// Per namespace, its rules with a `workloadSelector`, by name: the first selecting a
    /// proxy of that namespace is the proxy's rule, whatever the others say.
    pub by_workload: BTreeMap<String, Vec<DestinationRule>>,
}

impl HostRules {
    /// The rule the proxies of `namespace` read.
    pub fn for_namespace(&self, namespace: Option<&str>) -> Option<&DestinationRule> {
        match namespace.and_then(|ns| self.by_namespace.get(ns)) {
            Some(rule) => rule.as_ref(),
            None => self.everyone.as_ref(),
        }
    }

    /// The rule the proxies of `namespace` carrying `labels` read: the rule of their
    /// namespace selecting them (the one with the most selector labels; with as many, the
    /// one whose labels sort first, as their clusters), else [`Self::for_namespace`].
    pub fn for_workload(
        &self,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Option<&DestinationRule> {
        let selecting = namespace
            .and_then(|ns| self.by_workload.get(ns))
            .into_iter()
            .flatten()
            .filter_map(|rule| {
                let selector = rule.workload_selector.as_ref()?;
                service::labels_include(labels, selector).then_some((selector, rule))
            })
            .min_by_key(|(selector, _)| (std::cmp::Reverse(selector.len()), *selector));
        match selecting {
            Some((_, rule)) => Some(rule),
            None => self.for_namespace(namespace),
        }
    }

    /// Per namespace, the `workloadSelector`s of its rules.
    pub fn workload_selectors(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
        self.by_workload.iter().flat_map(|(ns, rules)| {
            rules
                .iter()
                .filter_map(move |r| Some((ns.as_str(), r.workload_selector.as_ref()?)))
        })
    }
}

impl Mesh {
    /// Decides which DestinationRule applies to `host` now, per namespace; the losers among
    /// one namespace's rules naming the host are reported.
    pub(super) fn refresh_rule(&mut self, index: &Index, host: &str) {
        let exact: Vec<ObjectKey> = self
            .rule_claimants
            .get(host)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let topic = Topic::Host(host.to_string());
        for key in &exact {
            if let Some(topics) = self.problems.get_mut(key) {
                topics.remove(&topic);
            }
        }
        let mut rules = self.rules_by_namespace(index, host, &exact, &topic);
        let mut by_workload: BTreeMap<String, Vec<DestinationRule>> = BTreeMap::new();
        for (ns, list) in &mut rules {
            let (selecting, rest): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|r| r.workload_selector.is_some());
            *list = rest;
            if !selecting.is_empty() {
                by_workload.insert(ns.clone(), selecting);
            }
        }
        rules.retain(|_, list| !list.is_empty());
        let root = self.sidecar_scopes.root_namespace().to_string();
        let service_namespace = self.services.get(host).map(|s| s.namespace().to_string());
        let choose = |client: Option<&str>| {
            choose(&rules, client, service_namespace.as_deref(), &root).cloned()
        };
        let everyone = choose(None);
        // The namespaces whose proxies may read another rule: those with rules of their own,
        // those a rule is exported to by name, and the root namespace.
        let mut named: BTreeSet<&str> = rules.keys().map(String::as_str).collect();
        named.insert(&root);
        for rule in rules.values().flatten() {
            if let ExportTo::Namespaces(set) = &rule.export_to {
                named.extend(set.iter().map(String::as_str));
            }
        }
        let origin = |rule: &Option<DestinationRule>| rule.as_ref().map(|r| r.origin.clone());
        let by_namespace: BTreeMap<String, Option<DestinationRule>> = named
            .into_iter()
            .map(|ns| (ns.to_string(), choose(Some(ns))))
            .filter(|(_, rule)| origin(rule) != origin(&everyone))
            .collect();
        if everyone.is_none() && by_namespace.is_empty() && by_workload.is_empty() {
            self.destination_rules.remove(host);
        } else {
            let rules = HostRules {
                everyone,
                by_namespace,
                by_workload,
            };
            self.destination_rules.insert(host.to_string(), rules);
        }
    }

    /// Per namespace, its rules for `host`, most specific first: the first naming it
    /// (`exact`, the later ones reported), then those claiming wildcards covering it, longest
    /// first.
    fn rules_by_namespace(
        &mut self,
        index: &Index,
        host: &str,
        exact: &[ObjectKey],
        topic: &Topic,
    ) -> BTreeMap<String, Vec<DestinationRule>> {
        let mut out: BTreeMap<String, Vec<DestinationRule>> = BTreeMap::new();
        for key in exact {
            let Some(rule) = read_rule(index, key, host) else {
                continue;
            };
            let rules = out.entry(key.namespace.clone()).or_default();
            // One exported as another is never read; one exported otherwise may be, by the
            // proxies it is exported to (istiod merges such rules; capstan takes the first).
            let alike = |r: &&DestinationRule| {
                r.export_to == rule.export_to && r.workload_selector == rule.workload_selector
            };
            match rules.iter().find(alike) {
                None => rules.push(rule),
                Some(existing) => {
                    let problem = Problem {
                        object: key.clone(),
                        field: "spec.host".into(),
                        message: format!(
                            "host {host} already has {} in this namespace, exported and \
                             selecting alike; this rule is ignored",
                            existing.origin
                        ),
                    };
                    self.report(key, topic.clone(), problem);
                }
            }
        }
        let mut patterns: Vec<&String> = self
            .wildcard_rules
            .iter()
            .filter(|p| *p != host && hostname::matches(p, host))
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for pattern in patterns {
            for key in self
                .rule_claimants
                .get(pattern.as_str())
                .into_iter()
                .flatten()
            {
                if let Some(rule) = read_rule(index, key, host) {
                    out.entry(key.namespace.clone()).or_default().push(rule);
                }
            }
        }
        out
    }

    /// The services the wildcard DestinationRule host `pattern` covers (not itself: a
    /// ServiceEntry may have that very host, and a rule naming it is its own).
    pub(super) fn covered_by_rule<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        self.services
            .keys()
            .filter(move |h| *h != pattern && hostname::matches(pattern, h))
            .cloned()
    }
}

/// The rule proxies of `client` (`None`: a namespace no rule names) read, from each
/// namespace's rules for the host, most specific first.
fn choose<'a>(
    rules: &'a BTreeMap<String, Vec<DestinationRule>>,
    client: Option<&str>,
    service_namespace: Option<&str>,
    root: &str,
) -> Option<&'a DestinationRule> {
    let of = |ns: &str| rules.get(ns).into_iter().flatten();
    let private = |ns: &str, rule: &DestinationRule| {
        rule.export_to == ExportTo::Namespaces(BTreeSet::from([ns.to_string()]))
    };
    let own = match client {
        // The root namespace's rules are everyone's; its proxies read as their own only
        // those kept to it.
        Some(ns) if ns == root => of(ns).find(|r| private(ns, r)),
        Some(ns) => of(ns).next(),
        None => None,
    };
    // A namespace's most specific rule exported beyond it, if exported to the client.
    let exported = |ns: &str| {
        of(ns)
            .find(|r| !private(ns, r))
            .filter(|r| r.export_to.includes(client))
    };
    own.or_else(|| service_namespace.and_then(exported))
        .or_else(|| exported(root))
}

/// DestinationRule `key` as the rule of `host`.
fn read_rule(index: &Index, key: &ObjectKey, host: &str) -> Option<DestinationRule> {
    let Some(IstioObject::DestinationRule(dr)) = index.istio(key).and_then(|r| r.object.as_deref())
    else {
        return None;
    };
    Some(DestinationRule {
        host: host.to_string(),
        origin: key.clone(),
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
            })
            .collect(),
        traffic_policy: traffic_policy::Policies::from_api(&dr.spec).map(std::sync::Arc::new),
        export_to: ExportTo::parse(&dr.spec.export_to, &key.namespace),
        workload_selector: dr
            .spec
            .workload_selector
            .as_ref()
            .map(|s| s.match_labels.clone()),
    })
}

#[cfg(test)]
mod tests;
