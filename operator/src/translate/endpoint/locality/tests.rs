use envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;

fn group(locality: &str, endpoints: usize) -> LocalityLbEndpoints {
    let mut parts = locality.split('/').map(str::to_string);
    LocalityLbEndpoints {
        locality: Some(Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            sub_zone: parts.next().unwrap_or_default(),
        }),
        lb_endpoints: vec![LbEndpoint::default(); endpoints],
        ..Default::default()
    }
}

fn base(groups: &[(&str, usize)]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: groups.iter().map(|(l, n)| group(l, *n)).collect(),
        ..Default::default()
    }
}

fn prefix(text: &str) -> Vec<String> {
    text.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Each locality's priority in the variant a proxy at `at` gets (its longest prefix).
fn priorities(variants: &[Variant], at: &str) -> Vec<(String, u32)> {
    let at = prefix(at);
    let (_, cla) = variants
        .iter()
        .filter(|(k, _)| k.labels.is_empty() && at.starts_with(&k.locality))
        .max_by_key(|(k, _)| k.locality.len())
        .expect("the root variant matches every proxy");
    cla.endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            (format!("{}/{}", l.region, l.zone), g.priority)
        })
        .collect()
}

fn weights(variants: &[Variant], at: &str) -> Vec<(String, u32)> {
    let at = prefix(at);
    let (_, cla) = variants
        .iter()
        .filter(|(k, _)| k.labels.is_empty() && at.starts_with(&k.locality))
        .max_by_key(|(k, _)| k.locality.len())
        .expect("root");
    cla.endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            let w = g.load_balancing_weight.as_ref().map_or(0, |w| w.value);
            (format!("{}/{}", l.region, l.zone), w)
        })
        .collect()
}

fn pairs(items: &[(&str, u32)]) -> Vec<(String, u32)> {
    items.iter().map(|(l, p)| (l.to_string(), *p)).collect()
}

#[test]
fn failover_prefers_the_zone_then_the_region_then_the_rest() {
    let cla = base(&[("east/a", 2), ("east/b", 1), ("west/c", 1)]);
    let v = variants(&cla, None, &LocalityLb::default());
    assert_eq!(
        priorities(&v, "east/a"),
        pairs(&[("east/a", 0), ("east/b", 1), ("west/c", 2)])
    );
    assert_eq!(
        priorities(&v, "east/b"),
        pairs(&[("east/a", 1), ("east/b", 0), ("west/c", 2)])
    );
    // A zone without endpoints of its own: the region's variant.
    assert_eq!(
        priorities(&v, "east/z"),
        pairs(&[("east/a", 0), ("east/b", 0), ("west/c", 1)])
    );
    assert_eq!(
        priorities(&v, "west/c"),
        pairs(&[("east/a", 1), ("east/b", 1), ("west/c", 0)])
    );
    // A proxy without a locality prefers none.
    assert_eq!(
        priorities(&v, ""),
        pairs(&[("east/a", 0), ("east/b", 0), ("west/c", 0)])
    );
    // Locality weights are the endpoint counts.
    assert_eq!(
        weights(&v, "east/a"),
        pairs(&[("east/a", 2), ("east/b", 1), ("west/c", 1)])
    );
}

#[test]
fn a_failover_rule_puts_its_region_before_the_others() {
    let cla = base(&[("east/a", 1), ("north/n", 1), ("west/w", 1)]);
    let rules = LocalityLb {
        failover: vec![("east".into(), "west".into())],
        ..Default::default()
    };
    let v = variants(&cla, None, &rules);
    assert_eq!(
        priorities(&v, "east/a"),
        pairs(&[("east/a", 0), ("north/n", 2), ("west/w", 1)])
    );
    // The rule is for proxies in `east` only.
    assert_eq!(
        priorities(&v, "north/n"),
        pairs(&[("east/a", 1), ("north/n", 0), ("west/w", 1)])
    );
}

#[test]
fn a_failover_rule_from_a_region_without_endpoints_gets_its_own_variant() {
    let cla = base(&[("north/n", 1), ("west/w", 1)]);
    let rules = LocalityLb {
        failover: vec![("east".into(), "west".into())],
        ..Default::default()
    };
    let v = variants(&cla, None, &rules);
    assert!(v.iter().any(|(k, _)| k.locality == prefix("east")));
    assert_eq!(
        priorities(&v, "east/q"),
        pairs(&[("north/n", 1), ("west/w", 0)])
    );
}

#[test]
fn one_locality_needs_no_variants() {
    let v = variants(&base(&[("east/a", 3)]), None, &LocalityLb::default());
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, VariantKey::default());
}

#[test]
fn distribute_splits_by_the_first_matching_rule() {
    let cla = base(&[("east/a", 1), ("east/b", 3), ("west/c", 1)]);
    let rules = LocalityLb {
        distribute: vec![
            (
                "east/a/*".into(),
                vec![("east/a".into(), 80), ("east/b".into(), 20)],
            ),
            ("east/*".into(), vec![("east/*".into(), 100)]),
        ],
        ..Default::default()
    };
    let v = variants(&cla, None, &rules);
    assert_eq!(
        weights(&v, "east/a"),
        pairs(&[("east/a", 80), ("east/b", 20)]),
        "west is named by no `to` and gets nothing"
    );
    // east/* over two localities: by their own weights (1 and 3 endpoints), rounded up.
    assert_eq!(
        weights(&v, "east/b"),
        pairs(&[("east/a", 25), ("east/b", 75)])
    );
    // No rule for west: every locality at its own weight, and priorities untouched.
    assert_eq!(
        weights(&v, "west/c"),
        pairs(&[("east/a", 1), ("east/b", 3), ("west/c", 1)])
    );
    assert_eq!(
        priorities(&v, "west/c"),
        pairs(&[("east/a", 0), ("east/b", 0), ("west/c", 0)])
    );
}

#[test]
fn when_the_rules_apply() {
    let none = LocalityLb::default();
    assert!(!applies(&none, false), "failover needs outlier detection");
    assert!(applies(&none, true));
    assert!(!weighs_localities(&none, true));
    let distribute = LocalityLb {
        distribute: vec![("east/*".into(), vec![("east/*".into(), 100)])],
        ..Default::default()
    };
    assert!(applies(&distribute, false));
    assert!(weighs_localities(&distribute, false));
    let failover = LocalityLb {
        failover: vec![("east".into(), "west".into())],
        ..Default::default()
    };
    assert!(weighs_localities(&failover, true));
    assert!(!weighs_localities(&failover, false));
    let by_label = LocalityLb {
        failover_priority: vec!["topology.kubernetes.io/zone".into()],
        ..Default::default()
    };
    assert!(applies(&by_label, true));
    assert!(!applies(&by_label, false));
    assert!(weighs_localities(&by_label, true));
}

#[test]
fn patterns() {
    let l = |s: &str| super::locality_of(&prefix(s));
    assert!(matches(Some(&l("east/a/r1")), "east/*"));
    assert!(matches(Some(&l("east/a/r1")), "east"));
    assert!(matches(Some(&l("east/a/r1")), "*"));
    assert!(matches(Some(&l("east/a/r1")), "east/a/r1"));
    assert!(!matches(Some(&l("east/a/r1")), "east/b/*"));
    assert!(!matches(Some(&l("west/a")), "east/*"));
    assert!(!matches(None, "east/*"));
}

type Labels = Vec<Vec<Arc<BTreeMap<String, String>>>>;

/// Groups by locality, each endpoint with its `version` label.
fn labelled(groups: &[(&str, &[&str])]) -> (ClusterLoadAssignment, Labels) {
    let cla = base(
        &groups
            .iter()
            .map(|(l, v)| (*l, v.len()))
            .collect::<Vec<_>>(),
    );
    let labels = groups
        .iter()
        .map(|(_, versions)| {
            versions
                .iter()
                .map(|v| Arc::new(BTreeMap::from([("version".to_string(), v.to_string())])))
                .collect()
        })
        .collect();
    (cla, labels)
}

/// (locality, endpoint count, priority) of the variant whose key is `key`.
fn split(variants: &[Variant], key: &VariantKey) -> Vec<(String, usize, u32)> {
    let (_, cla) = variants
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no variant {key:?} in {variants:?}"));
    cla.endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            (
                format!("{}/{}", l.region, l.zone),
                g.lb_endpoints.len(),
                g.priority,
            )
        })
        .collect()
}

fn version(v: &str) -> Vec<(String, String)> {
    vec![("version".to_string(), v.to_string())]
}

#[test]
fn failover_priority_prefers_endpoints_sharing_the_proxys_labels() {
    let (cla, labels) = labelled(&[("east/a", &["v1", "v2"]), ("west/c", &["v1"])]);
    let rules = LocalityLb {
        failover_priority: vec!["version".into()],
        ..Default::default()
    };
    let v = variants(&cla, Some(&labels), &rules);
    let keys: Vec<&VariantKey> = v.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let v1 = VariantKey {
        labels: version("v1"),
        ..Default::default()
    };
    assert_eq!(
        split(&v, &v1),
        vec![
            ("east/a".to_string(), 1, 0),
            ("east/a".to_string(), 1, 1),
            ("west/c".to_string(), 1, 0)
        ]
    );
    let v2 = VariantKey {
        labels: version("v2"),
        ..Default::default()
    };
    assert_eq!(
        split(&v, &v2),
        vec![
            ("east/a".to_string(), 1, 0),
            ("east/a".to_string(), 1, 1),
            ("west/c".to_string(), 1, 1)
        ],
        "within a locality, the better priority first"
    );
    // A proxy without the label shares it with none: one priority.
    assert!(
        split(&v, &VariantKey::default())
            .iter()
            .all(|(_, _, p)| *p == 0)
    );
    assert_eq!(
        v1.selector().labels.get("version").map(String::as_str),
        Some("v1")
    );
}

#[test]
fn failover_priority_on_topology_labels_and_a_fixed_value() {
    let (cla, labels) = labelled(&[
        ("east/a", &["v1"]),
        ("east/b", &["v2"]),
        ("west/c", &["v2"]),
    ]);
    // The zone label comes from each endpoint's locality; `version=v2` is the same for all.
    let rules = LocalityLb {
        failover_priority: vec!["topology.kubernetes.io/region".into(), "version=v2".into()],
        ..Default::default()
    };
    let v = variants(&cla, Some(&labels), &rules);
    let east = VariantKey {
        labels: vec![("topology.kubernetes.io/region".into(), "east".into())],
        ..Default::default()
    };
    // Same region and v2 first, then same region, then the rest.
    assert_eq!(
        split(&v, &east),
        vec![
            ("east/a".to_string(), 1, 1),
            ("east/b".to_string(), 1, 0),
            ("west/c".to_string(), 1, 2)
        ]
    );
}

#[test]
fn failover_priority_with_failover_rules_keeps_both_dimensions() {
    let (cla, labels) = labelled(&[
        ("east/a", &["v1"]),
        ("west/c", &["v1"]),
        ("north/n", &["v2"]),
    ]);
    let rules = LocalityLb {
        failover_priority: vec!["version".into()],
        failover: vec![("east".into(), "north".into())],
        ..Default::default()
    };
    let v = variants(&cla, Some(&labels), &rules);
    let key = VariantKey {
        labels: version("v1"),
        locality: vec!["east".into(), "a".into()],
        ..Default::default()
    };
    // v1 first (east before west: same region), then v2 in north.
    assert_eq!(
        split(&v, &key),
        vec![
            ("east/a".to_string(), 1, 0),
            ("west/c".to_string(), 1, 1),
            ("north/n".to_string(), 1, 2)
        ]
    );
    // Every combination of the two is kept: 3 label prefixes × 7 locality prefixes.
    assert_eq!(
        v.len(),
        3 * 7,
        "{:?}",
        v.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}
