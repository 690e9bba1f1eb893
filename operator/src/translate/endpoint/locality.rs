//! Locality-aware load balancing: istiod rewrites a load assignment for each proxy, relative
//! to the proxy's locality (failover priorities, or `distribute` weights) and labels
//! (`failoverPriority`). capstan builds one variant per place a proxy can be told apart by —
//! each prefix of an endpoint's locality and of the rules' `from`, each prefix of an
//! endpoint's values of the `failoverPriority` labels — and the cache hands each proxy the
//! variant of its most specific match. A variant equal to the one its proxies would get anyway
//! is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_xds::Selector;
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::model::traffic_policy::LocalityLb;

/// Which proxies a variant is for: those carrying these label values and whose locality
/// starts with this prefix (`[]`, `[region]`, `[region, zone]` or all three parts).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct VariantKey {
    pub labels: Vec<(String, String)>,
    pub locality: Vec<String>,
    /// The namespace whose proxies a DestinationRule exported by name applies to.
    pub namespace: Option<String>,
    /// Gateway proxies only, or sidecars only (none: either).
    pub role: Option<capstan_xds::Role>,
}

impl VariantKey {
    pub fn selector(&self) -> Selector {
        let parts: Vec<&str> = self.locality.iter().map(String::as_str).collect();
        Selector {
            labels: self.labels.iter().cloned().collect(),
            namespace: self.namespace.as_deref().map(Into::into),
            role: self.role,
            ..Selector::locality(&parts)
        }
    }

    /// The key for every proxy of `scope`.
    pub fn in_scope(scope: &crate::translate::RuleScope<'_>) -> Self {
        Self::default().scoped(scope)
    }

    /// This key narrowed to the proxies of `scope`.
    pub fn scoped(mut self, scope: &crate::translate::RuleScope<'_>) -> Self {
        self.namespace = scope.namespace.clone();
        if let Some(selector) = scope.workload {
            let mut labels: BTreeMap<String, String> = self.labels.into_iter().collect();
            // A workload label wins over a failover-priority label of the same key.
            labels.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.labels = labels.into_iter().collect();
        }
        self
    }

    /// This key narrowed to the gateway proxies a Gateway `selector` picks; `None` where a
    /// label of the key asks another value of the same label (no proxy would match).
    pub fn for_gateways(mut self, selector: &BTreeMap<String, String>) -> Option<Self> {
        let mut labels: BTreeMap<String, String> = self.labels.into_iter().collect();
        for (k, v) in selector {
            if labels
                .insert(k.clone(), v.clone())
                .is_some_and(|old| old != *v)
            {
                return None;
            }
        }
        self.labels = labels.into_iter().collect();
        self.role = Some(capstan_xds::Role::Router);
        Some(self)
    }
}

/// A variant's proxies and the load assignment they get.
pub type Variant = (VariantKey, ClusterLoadAssignment);

/// The labels of each endpoint of a load assignment, group by group (none: not known, as for
/// DNS clusters, where istiod does not apply `failoverPriority` either).
pub type EndpointLabels = [Vec<Arc<BTreeMap<String, String>>>];

/// Whether the locality rules change anything: `distribute` always does; failover needs
/// outlier detection (without it Envoy never leaves the first priority), as in istiod.
pub fn applies(rules: &LocalityLb, outlier_detection: bool) -> bool {
    !rules.distribute.is_empty() || outlier_detection
}

/// Whether the cluster must weigh localities (Envoy ignores locality weights otherwise), as
/// istiod's `applyLocalityLoadBalancer` decides.
pub fn weighs_localities(rules: &LocalityLb, outlier_detection: bool) -> bool {
    !rules.distribute.is_empty()
        || (outlier_detection && !(rules.failover.is_empty() && rules.failover_priority.is_empty()))
}

/// The variants of `base` for every place a proxy can be that changes what it gets; the
/// first is for every proxy, the others narrow it. `labels` are the endpoints' labels, when
/// known.
pub fn variants(
    base: &ClusterLoadAssignment,
    labels: Option<&EndpointLabels>,
    rules: &LocalityLb,
) -> Vec<Variant> {
    let by_labels = !rules.failover_priority.is_empty() && rules.distribute.is_empty();
    let label_prefixes = match labels {
        Some(labels) if by_labels => label_prefixes(base, labels, &rules.failover_priority),
        _ => BTreeSet::from([Vec::new()]),
    };
    // With `failoverPriority` alone, a proxy's locality does not matter.
    let locality_prefixes = if by_labels && rules.failover.is_empty() {
        BTreeSet::from([Vec::new()])
    } else {
        locality_prefixes(base, rules)
    };
    let keys: Vec<VariantKey> = label_prefixes
        .iter()
        .flat_map(|labels| {
            locality_prefixes.iter().map(|locality| VariantKey {
                labels: labels.clone(),
                locality: locality.clone(),
                namespace: None,
                role: None,
            })
        })
        .collect();
    // Along one dimension, the variant a proxy would otherwise get is its nearest ancestor;
    // across two, which one it is depends on both, so every combination is kept.
    let one_dimension = label_prefixes.len() == 1 || locality_prefixes.len() == 1;
    let mut emitted: BTreeMap<VariantKey, ClusterLoadAssignment> = BTreeMap::new();
    for key in keys {
        let proxy_labels: BTreeMap<String, String> = key.labels.iter().cloned().collect();
        let proxy = Proxy {
            locality: locality_of(&key.locality),
            labels: capstan_xds::Locality {
                region: key.locality.first().cloned().unwrap_or_default(),
                zone: key.locality.get(1).cloned().unwrap_or_default(),
                subzone: key.locality.get(2).cloned().unwrap_or_default(),
            }
            .with_topology_labels(proxy_labels),
        };
        let assignment = relative_to(base, labels, &proxy, rules);
        let inherited = ancestors(&key).find_map(|a| emitted.get(&a));
        if !one_dimension || key == VariantKey::default() || inherited != Some(&assignment) {
            emitted.insert(key, assignment);
        }
    }
    emitted.into_iter().collect()
}

/// `key`'s ancestors along its one dimension, nearest first.
fn ancestors(key: &VariantKey) -> impl Iterator<Item = VariantKey> + '_ {
    let labels = (0..key.labels.len()).rev().map(|len| VariantKey {
        labels: key.labels[..len].to_vec(),
        ..key.clone()
    });
    let localities = (0..key.locality.len()).rev().map(|len| VariantKey {
        locality: key.locality[..len].to_vec(),
        ..key.clone()
    });
    labels.chain(localities)
}

/// Every prefix of the values endpoints have for the `failoverPriority` labels a proxy's own
/// labels decide (those with `=value` are the same for every proxy).
fn label_prefixes(
    base: &ClusterLoadAssignment,
    labels: &EndpointLabels,
    priority: &[String],
) -> BTreeSet<Vec<(String, String)>> {
    let keys: Vec<&str> = priority
        .iter()
        .filter(|p| !p.contains('='))
        .map(String::as_str)
        .collect();
    let mut prefixes = BTreeSet::from([Vec::new()]);
    for (group, group_labels) in base.endpoints.iter().zip(labels) {
        for endpoint in group_labels {
            let endpoint = with_topology(endpoint, group.locality.as_ref());
            let mut prefix = Vec::new();
            for key in &keys {
                let Some(value) = endpoint.get(*key).filter(|v| !v.is_empty()) else {
                    break;
                };
                prefix.push((key.to_string(), value.clone()));
                prefixes.insert(prefix.clone());
            }
        }
    }
    prefixes
}

/// Every locality prefix a proxy can have that the endpoints or rules tell apart.
fn locality_prefixes(base: &ClusterLoadAssignment, rules: &LocalityLb) -> BTreeSet<Vec<String>> {
    let mut prefixes: BTreeSet<Vec<String>> = BTreeSet::from([Vec::new()]);
    for locality in base.endpoints.iter().filter_map(|e| e.locality.as_ref()) {
        let parts = [&locality.region, &locality.zone, &locality.sub_zone];
        let known = parts.iter().take_while(|p| !p.is_empty()).count();
        for len in 1..=known {
            prefixes.insert(parts[..len].iter().map(|p| p.to_string()).collect());
        }
    }
    for (from, _) in &rules.failover {
        prefixes.insert(vec![from.clone()]);
    }
    for (from, _) in &rules.distribute {
        let literal: Vec<String> = from
            .split('/')
            .take(3)
            .take_while(|p| !p.is_empty() && *p != "*")
            .map(str::to_string)
            .collect();
        prefixes.insert(literal);
    }
    prefixes
}

/// Where a variant's proxies are and what labels they carry.
struct Proxy {
    locality: Locality,
    labels: BTreeMap<String, String>,
}

fn locality_of(prefix: &[String]) -> Locality {
    let part = |i: usize| prefix.get(i).cloned().unwrap_or_default();
    Locality {
        region: part(0),
        zone: part(1),
        sub_zone: part(2),
    }
}

/// `base` as `proxy` sees it, as istiod's `ApplyLocalityLoadBalancer`: `distribute`; else
/// `failoverPriority` (then the `failover` rules, if any, within each of its priorities);
/// else failover by locality.
fn relative_to(
    base: &ClusterLoadAssignment,
    labels: Option<&EndpointLabels>,
    proxy: &Proxy,
    rules: &LocalityLb,
) -> ClusterLoadAssignment {
    let mut out = base.clone();
    for group in &mut out.endpoints {
        group.load_balancing_weight = Some(UInt32Value {
            value: group_weight(group),
        });
    }
    if !rules.distribute.is_empty() {
        apply_distribute(&mut out, &proxy.locality, &rules.distribute);
    } else if !rules.failover_priority.is_empty() {
        if let Some(labels) = labels {
            apply_failover_priority(&mut out, labels, &proxy.labels, &rules.failover_priority);
        }
        if !rules.failover.is_empty() {
            apply_failover(&mut out, &proxy.locality, &rules.failover);
        }
    } else {
        apply_failover(&mut out, &proxy.locality, &rules.failover);
    }
    out
}

/// An endpoint's labels with its locality's topology labels added where it has none (as
/// istiod augments them).
fn with_topology(
    labels: &BTreeMap<String, String>,
    locality: Option<&Locality>,
) -> BTreeMap<String, String> {
    let locality = locality.cloned().unwrap_or_default();
    capstan_xds::Locality {
        region: locality.region,
        zone: locality.zone,
        subzone: locality.sub_zone,
    }
    .with_topology_labels(labels.clone())
}

/// Splits each locality by how many of the `priority` labels, in order, an endpoint shares
/// with the proxy (`name=value`: with that value): all of them first, none last. (istiod
/// skips proxies without any label; every sidecar has some, so capstan does not.)
fn apply_failover_priority(
    out: &mut ClusterLoadAssignment,
    labels: &EndpointLabels,
    proxy: &BTreeMap<String, String>,
    priority: &[String],
) {
    let wanted: Vec<(&str, Option<&str>)> = priority
        .iter()
        .map(|p| match p.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (p.as_str(), None),
        })
        .collect();
    let lowest = u32::try_from(wanted.len()).unwrap_or(u32::MAX);
    let mut split = Vec::new();
    for (group, group_labels) in out.endpoints.iter().zip(labels) {
        let endpoint_labels: Vec<BTreeMap<String, String>> = group_labels
            .iter()
            .map(|l| with_topology(l, group.locality.as_ref()))
            .collect();
        let mut by_priority: BTreeMap<u32, LocalityLbEndpoints> = BTreeMap::new();
        for (endpoint, own) in group.lb_endpoints.iter().zip(&endpoint_labels) {
            let mismatch = wanted.iter().position(|(name, value)| {
                let proxy_value = value.or_else(|| proxy.get(*name).map(String::as_str));
                proxy_value.unwrap_or_default() != own.get(*name).map_or("", String::as_str)
            });
            let p = mismatch.map_or(0, |j| lowest - u32::try_from(j).unwrap_or(0));
            let part = by_priority.entry(p).or_insert_with(|| LocalityLbEndpoints {
                lb_endpoints: Vec::new(),
                priority: p,
                ..group.clone()
            });
            part.lb_endpoints.push(endpoint.clone());
        }
        for mut part in by_priority.into_values() {
            part.load_balancing_weight = Some(UInt32Value {
                value: group_weight(&part),
            });
            split.push(part);
        }
    }
    out.endpoints = split;
    compact(out);
}

/// Renumbers priorities 0..N in their order, without gaps (Envoy's rule).
fn compact(out: &mut ClusterLoadAssignment) {
    let levels: BTreeSet<u32> = out.endpoints.iter().map(|g| g.priority).collect();
    for group in &mut out.endpoints {
        let rank = levels.range(..group.priority).count();
        group.priority = u32::try_from(rank).unwrap_or(u32::MAX);
    }
}

/// A locality's weight: the sum of its endpoints' (1 each when unset).
fn group_weight(group: &LocalityLbEndpoints) -> u32 {
    group
        .lb_endpoints
        .iter()
        .map(|e| {
            e.load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value.max(1))
        })
        .fold(0u32, u32::saturating_add)
}

/// How far an endpoint's locality is from the proxy's: 0 same subzone, 1 same zone, 2 same
/// region, 3 elsewhere.
fn distance(proxy: &Locality, endpoint: Option<&Locality>) -> u32 {
    let empty = Locality::default();
    let endpoint = endpoint.unwrap_or(&empty);
    if proxy.region != endpoint.region {
        3
    } else if proxy.zone != endpoint.zone {
        2
    } else if proxy.sub_zone != endpoint.sub_zone {
        1
    } else {
        0
    }
}

/// Priorities by distance, within any priority already given; another region comes after
/// the `to` region of a rule whose `from` is the proxy's region. Then renumbered.
fn apply_failover(
    out: &mut ClusterLoadAssignment,
    proxy: &Locality,
    failover: &[(String, String)],
) {
    let rule = failover.iter().find(|(from, _)| *from == proxy.region);
    for group in &mut out.endpoints {
        let d = distance(proxy, group.locality.as_ref());
        let d = match rule {
            Some((_, to)) if d == 3 => {
                let region = group.locality.as_ref().map(|l| l.region.as_str());
                if region == Some(to.as_str()) { 3 } else { 4 }
            }
            _ => d,
        };
        group.priority = group.priority.saturating_mul(5).saturating_add(d);
    }
    compact(out);
}

/// Whether `locality` is one `pattern` (`region/zone/subzone`, `*` for any part, missing parts
/// match anything) names.
fn matches(locality: Option<&Locality>, pattern: &str) -> bool {
    let empty = Locality::default();
    let locality = locality.unwrap_or(&empty);
    let mut parts = pattern.splitn(3, '/');
    let region = parts.next().unwrap_or_default();
    let zone = parts.next().unwrap_or("*");
    let subzone = parts.next().unwrap_or("*");
    let part = |want: &str, has: &str| want == "*" || want == has;
    part(region, &locality.region)
        && (zone.is_empty() || part(zone, &locality.zone))
        && (subzone.is_empty() || part(subzone, &locality.sub_zone))
}

/// The first rule whose `from` names the proxy's locality splits traffic over its `to`
/// localities: each gets its share of the weight, divided among the localities a wildcard
/// covers by their own weight; localities no `to` names get nothing.
fn apply_distribute(
    out: &mut ClusterLoadAssignment,
    proxy: &Locality,
    distribute: &[(String, Vec<(String, u32)>)],
) {
    let Some((_, to)) = distribute
        .iter()
        .find(|(from, _)| matches(Some(proxy), from))
    else {
        return;
    };
    let mut unclaimed: BTreeSet<usize> = (0..out.endpoints.len()).collect();
    let mut weights: BTreeMap<usize, u32> = BTreeMap::new();
    for (pattern, share) in to {
        let claimed: Vec<usize> = unclaimed
            .iter()
            .copied()
            .filter(|&i| matches(out.endpoints[i].locality.as_ref(), pattern))
            .collect();
        let total: u64 = claimed
            .iter()
            .map(|&i| u64::from(group_weight(&out.endpoints[i])))
            .sum();
        for i in claimed {
            unclaimed.remove(&i);
            let own = u64::from(group_weight(&out.endpoints[i]));
            let weight = (own * u64::from(*share)).div_ceil(total.max(1));
            weights.insert(i, u32::try_from(weight).unwrap_or(u32::MAX));
        }
    }
    let mut index = 0;
    out.endpoints.retain_mut(|group| {
        let keep = weights.get(&index).copied();
        index += 1;
        match keep {
            Some(weight) if weight > 0 => {
                group.load_balancing_weight = Some(UInt32Value { value: weight });
                true
            }
            _ => false,
        }
    });
}

#[cfg(test)]
mod tests;
