use capstan_crds::Kind;

use super::*;
use crate::index::{Event, RecordKey, istio_event as istio};
use crate::translate::test_support::destination_rule;

fn entry(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {}, namespace: bookinfo}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
",
        host.replace(['.', '*'], "-").trim_matches('-')
    )
}

fn rule(namespace: &str, name: &str, host: &str) -> String {
    let subsets = format!("  subsets: [{{name: {name}, labels: {{rule: {name}}}}}]\n");
    destination_rule(namespace, name, host, &subsets)
}

/// Which rule (namespace/name) applies to each host, after `events` one by one.
fn applied(events: Vec<Event>, hosts: &[&str]) -> (Vec<String>, Vec<String>) {
    let reads: Vec<(&str, Option<&str>)> = hosts.iter().map(|h| (*h, None)).collect();
    read_after(events, &reads)
}

/// The rule (namespace/name, or "none") the proxies of each namespace read for each host of
/// `reads` after `events`, one by one; and the problems.
fn read_after(events: Vec<Event>, reads: &[(&str, Option<&str>)]) -> (Vec<String>, Vec<String>) {
    let mut index = Index::new();
    let mut mesh = Mesh::new("cluster.local");
    for event in events {
        let changes = index.handle(event);
        mesh.update(&index, &changes.objects);
    }
    let rules = reads
        .iter()
        .map(|(host, namespace)| {
            mesh.rule_for(host, *namespace)
                .map_or("none".to_string(), |r| r.origin.to_string())
        })
        .collect();
    let problems = mesh.problems().map(|p| p.to_string()).collect();
    (rules, problems)
}

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";
const EXTERNAL: &str = "api.example.com";

#[test]
fn a_host_no_rule_names_takes_the_most_specific_wildcard_rule() {
    let services = || [REVIEWS, RATINGS, EXTERNAL].map(|h| istio(&entry(h)));
    let mut events: Vec<Event> = services().into();
    events.extend([
        istio(&rule("istio-system", "mesh", "*.local")),
        istio(&rule(
            "bookinfo",
            "bookinfo",
            "*.bookinfo.svc.cluster.local",
        )),
        istio(&rule("istio-system", "everything", "*")),
    ]);
    let (rules, problems) = applied(events, &[REVIEWS, RATINGS, EXTERNAL]);
    assert_eq!(
        rules,
        [
            "DestinationRule bookinfo/bookinfo",
            "DestinationRule istio-system/mesh",
            "DestinationRule istio-system/everything"
        ]
    );
    assert!(problems.is_empty(), "{problems:?}");

    // A rule naming the host wins; a second one for the same wildcard is reported once;
    // a service added later, and a rule deleted, are followed.
    let (rules, problems) = applied(
        vec![
            istio(&rule("istio-system", "mesh", "*.local")),
            istio(&rule("istio-system", "zz-mesh", "*.local")),
            istio(&entry(REVIEWS)),
            istio(&rule("bookinfo", "reviews", REVIEWS)),
            istio(&entry(RATINGS)),
            Event::Delete(RecordKey::Istio(ObjectKey {
                kind: Kind::DestinationRule,
                namespace: "bookinfo".into(),
                name: "reviews".into(),
            })),
            istio(&rule("bookinfo", "reviews-again", REVIEWS)),
        ],
        &[REVIEWS, RATINGS],
    );
    assert_eq!(
        rules,
        [
            "DestinationRule bookinfo/reviews-again",
            "DestinationRule istio-system/mesh"
        ]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("istio-system/zz-mesh") && problems[0].contains("*.local"),
        "{problems:?}"
    );

    let (rules, _) = applied(
        vec![
            istio(&entry(RATINGS)),
            istio(&rule("istio-system", "mesh", "*.local")),
            Event::Delete(RecordKey::Istio(ObjectKey {
                kind: Kind::DestinationRule,
                namespace: "istio-system".into(),
                name: "mesh".into(),
            })),
        ],
        &[RATINGS],
    );
    assert_eq!(rules, ["none"]);
}

/// [`read_after`] for `host` by the proxies of each of `clients`.
fn read_by(events: Vec<Event>, host: &str, clients: &[Option<&str>]) -> (Vec<String>, Vec<String>) {
    let reads: Vec<(&str, Option<&str>)> = clients.iter().map(|ns| (host, *ns)).collect();
    read_after(events, &reads)
}

fn exported(namespace: &str, name: &str, host: &str, export_to: &str) -> String {
    let rest = format!(
        "  exportTo: {export_to}\n  subsets: [{{name: {name}, labels: {{rule: {name}}}}}]\n"
    );
    destination_rule(namespace, name, host, &rest)
}

/// As istiod: the client's own namespace first, then the service's namespace, then the root
/// namespace; a rule of any other namespace is its own namespace's only.
#[test]
fn each_namespace_reads_its_own_rule_then_the_services_then_the_roots() {
    let clients = [
        None,
        Some("bookinfo"),
        Some("shop"),
        Some("team-a"),
        Some("istio-system"),
    ];
    let (rules, problems) = read_by(
        vec![
            istio(&entry(REVIEWS)),
            istio(&rule("team-a", "reviews", REVIEWS)),
            istio(&rule("bookinfo", "reviews", REVIEWS)),
            istio(&rule("istio-system", "mesh", "*.local")),
        ],
        REVIEWS,
        &clients,
    );
    assert_eq!(
        rules,
        [
            "DestinationRule bookinfo/reviews",
            "DestinationRule bookinfo/reviews",
            "DestinationRule bookinfo/reviews",
            "DestinationRule team-a/reviews",
            "DestinationRule bookinfo/reviews",
        ],
        "team-a's rule is team-a's; the root namespace's proxies read the service's first"
    );
    assert!(problems.is_empty(), "{problems:?}");

    // The service's rule kept to its namespace: everyone else falls back to the root's.
    let (rules, _) = read_by(
        vec![
            istio(&entry(REVIEWS)),
            istio(&exported("bookinfo", "reviews", REVIEWS, "[.]")),
            istio(&rule("istio-system", "mesh", "*.local")),
        ],
        REVIEWS,
        &clients,
    );
    assert_eq!(
        rules,
        [
            "DestinationRule istio-system/mesh",
            "DestinationRule bookinfo/reviews",
            "DestinationRule istio-system/mesh",
            "DestinationRule istio-system/mesh",
            "DestinationRule istio-system/mesh",
        ]
    );
}

#[test]
fn root_namespace_proxies_read_the_root_rules_kept_to_it_first() {
    let clients = [None, Some("istio-system"), Some("shop")];
    let (rules, _) = read_by(
        vec![
            istio(&entry(REVIEWS)),
            istio(&rule("bookinfo", "reviews", REVIEWS)),
            istio(&exported("istio-system", "gateways", "*.local", "[.]")),
        ],
        REVIEWS,
        &clients,
    );
    assert_eq!(
        rules,
        [
            "DestinationRule bookinfo/reviews",
            "DestinationRule istio-system/gateways",
            "DestinationRule bookinfo/reviews",
        ]
    );
    // A public and a kept rule for one host in the root namespace are no conflict.
    let (rules, problems) = read_by(
        vec![
            istio(&entry(RATINGS)),
            istio(&exported("istio-system", "gateways", "*.local", "[.]")),
            istio(&rule("istio-system", "mesh", "*.local")),
        ],
        RATINGS,
        &clients,
    );
    assert_eq!(
        rules,
        [
            "DestinationRule istio-system/mesh",
            "DestinationRule istio-system/gateways",
            "DestinationRule istio-system/mesh",
        ]
    );
    assert!(problems.is_empty(), "{problems:?}");
    // A rule exported to some namespaces: theirs; others read the next in line (none here).
    // (The entry, so the service, is bookinfo's.)
    let (rules, _) = read_by(
        vec![
            istio(&entry(RATINGS)),
            istio(&exported("bookinfo", "ratings", RATINGS, "[shop]")),
        ],
        RATINGS,
        &[None, Some("bookinfo"), Some("shop"), Some("other")],
    );
    assert_eq!(
        rules,
        [
            "none",
            "DestinationRule bookinfo/ratings",
            "DestinationRule bookinfo/ratings",
            "none"
        ],
        "its own namespace reads it as its own, exported or not"
    );
}

/// A rule with a `workloadSelector` stands beside its namespace's plain rule (neither is
/// reported), is kept for its namespace's selected workloads, and is never another
/// namespace's rule nor the rule of proxies the lookup does not know the labels of.
#[test]
fn a_rule_selecting_workloads_stands_apart() {
    let selecting = destination_rule(
        "bookinfo",
        "for-productpage",
        REVIEWS,
        "  workloadSelector: {matchLabels: {app: productpage}}\n",
    );
    let mut index = Index::new();
    let mut mesh = Mesh::new("cluster.local");
    for event in [
        istio(&entry(REVIEWS)),
        istio(&rule("bookinfo", "plain", REVIEWS)),
        istio(&selecting),
    ] {
        let changes = index.handle(event);
        mesh.update(&index, &changes.objects);
    }
    let problems: Vec<String> = mesh.problems().map(|p| p.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    let rules = mesh.destination_rules.get(REVIEWS).expect("rules");
    let origin = |r: Option<&DestinationRule>| r.map(|r| r.origin.to_string());
    assert_eq!(
        origin(rules.for_namespace(Some("bookinfo"))),
        Some("DestinationRule bookinfo/plain".to_string())
    );
    assert_eq!(
        origin(rules.for_namespace(Some("shop"))),
        Some("DestinationRule bookinfo/plain".to_string())
    );
    let selecting: Vec<String> = rules.by_workload["bookinfo"]
        .iter()
        .map(|r| r.origin.to_string())
        .collect();
    assert_eq!(selecting, ["DestinationRule bookinfo/for-productpage"]);
    assert_eq!(rules.by_workload.len(), 1);

    // Without the plain rule, the selecting one is still nobody else's.
    let changes = index.handle(Event::Delete(RecordKey::Istio(ObjectKey {
        kind: Kind::DestinationRule,
        namespace: "bookinfo".into(),
        name: "plain".into(),
    })));
    mesh.update(&index, &changes.objects);
    let rules = mesh.destination_rules.get(REVIEWS).expect("rules");
    assert!(rules.everyone.is_none() && rules.for_namespace(Some("bookinfo")).is_none());
    assert_eq!(rules.by_workload["bookinfo"].len(), 1);
}
