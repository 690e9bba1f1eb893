use bytes::Bytes;

use super::*;
use crate::proxy::Role;
use crate::test_support::res;

fn names(changed: &[Arc<str>]) -> Vec<&str> {
    changed.iter().map(|n| n.as_ref()).collect()
}

const CDS: usize = 0;
const LDS: usize = 2;

#[test]
fn updates_record_only_effective_changes() {
    let mut u = Update::new();
    u.put(res(type_url::CLUSTER, "a", b"1"))
        .put(res(type_url::CLUSTER, "b", b"1"));
    let (s1, changed) = Snapshot::default().apply(u).expect("changed");
    assert_eq!(s1.version(), 1);
    assert_eq!(names(&changed[CDS]), vec!["a", "b"]);

    // Same content again: nothing changes, no new version.
    let mut same = Update::new();
    same.put(res(type_url::CLUSTER, "a", b"1"));
    assert!(s1.apply(same).is_none());

    let mut u = Update::new();
    u.put(res(type_url::CLUSTER, "a", b"2"))
        .remove(type_url::CLUSTER, "b")
        .remove(type_url::CLUSTER, "never-existed");
    let (s2, changed) = s1.apply(u).expect("changed");
    assert_eq!(names(&changed[CDS]), vec!["a", "b"]);
    assert!(s2.get(CDS, "b").is_none());
    assert_eq!(s2.len(CDS), 1);
    // The predecessor is untouched.
    assert_eq!(s1.len(CDS), 2);
}

#[test]
fn update_to_a_full_set_diffs_per_resource() {
    let mut b = SnapshotBuilder::new();
    b.add(res(type_url::CLUSTER, "a", b"1"))
        .add(res(type_url::CLUSTER, "b", b"1"))
        .add(res(type_url::LISTENER, "l", b"1"));
    let (s1, _) = Snapshot::default()
        .apply(Snapshot::default().update_to(b))
        .expect("first");

    let mut b = SnapshotBuilder::new();
    b.add(res(type_url::CLUSTER, "a", b"2"))
        .add(res(type_url::CLUSTER, "c", b"1"))
        .add(res(type_url::LISTENER, "l", b"1"));
    let (s2, changed) = s1.apply(s1.update_to(b)).expect("changed");
    assert_eq!(names(&changed[CDS]), vec!["a", "b", "c"]);
    assert!(changed[LDS].is_empty(), "unchanged listener is not touched");
    assert!(s2.get(CDS, "b").is_none());

    let mut same = SnapshotBuilder::new();
    same.add(res(type_url::CLUSTER, "a", b"2"))
        .add(res(type_url::CLUSTER, "c", b"1"))
        .add(res(type_url::LISTENER, "l", b"1"));
    assert!(s2.apply(s2.update_to(same)).is_none());
}

#[test]
fn proxies_get_their_most_specific_variant() {
    let mut u = Update::new();
    u.put(res(type_url::LISTENER, "l", b"everyone"))
        .put_for(
            Selector::namespace("ns1"),
            res(type_url::LISTENER, "l", b"ns1"),
        )
        .put_for(
            Selector::role(Role::Router),
            res(type_url::LISTENER, "l", b"gateways"),
        )
        .put_for(
            Selector::namespace("ns2"),
            res(type_url::LISTENER, "only-ns2", b"x"),
        );
    let (s, _) = Snapshot::default().apply(u).expect("changed");
    let proxy = |role, ns: &str| ProxyInfo {
        role,
        namespace: Some(ns.into()),
        ..ProxyInfo::default()
    };
    let body = |p: &ProxyInfo| -> Vec<Bytes> { s.view(LDS, p).map(|r| r.body()).collect() };
    assert_eq!(
        body(&proxy(Role::Sidecar, "ns1")),
        vec![Bytes::from_static(b"ns1")]
    );
    assert_eq!(
        body(&proxy(Role::Sidecar, "ns3")),
        vec![Bytes::from_static(b"everyone")]
    );
    assert_eq!(
        body(&proxy(Role::Router, "ns3")),
        vec![Bytes::from_static(b"gateways")]
    );
    assert_eq!(body(&proxy(Role::Sidecar, "ns2")).len(), 2);

    // Removing one variant leaves the others.
    let mut u = Update::new();
    u.remove_for(Selector::namespace("ns1"), type_url::LISTENER, "l");
    let (s, changed) = s.apply(u).expect("changed");
    assert_eq!(names(&changed[LDS]), vec!["l"]);
    let ns1 = proxy(Role::Sidecar, "ns1");
    assert_eq!(
        s.view(LDS, &ns1).map(|r| r.body()).collect::<Vec<_>>(),
        vec![Bytes::from_static(b"everyone")]
    );
}

#[test]
fn a_builder_applies_puts_and_removes_in_order() {
    let ns1 = Selector::namespace("ns1");
    let mut u = Update::new();
    u.put(res(type_url::CLUSTER, "a", b"1"))
        .put_for(ns1.clone(), res(type_url::CLUSTER, "a", b"ns1"))
        .put(res(type_url::CLUSTER, "b", b"1"))
        .put(res(type_url::CLUSTER, "c", b"1"))
        .remove_for(ns1.clone(), type_url::CLUSTER, "a")
        .remove(type_url::CLUSTER, "b")
        .remove(type_url::CLUSTER, "never-existed");
    let mut built = SnapshotBuilder::new();
    built.apply(u);
    assert_eq!(built.len(), 2, "{built:?}");
    let (s, _) = Snapshot::default()
        .apply({
            let mut all = Update::new();
            for (name, variants) in &built.types[CDS] {
                for (selector, r) in variants {
                    assert_eq!(&**name, r.name());
                    all.put_for(selector.clone(), r.clone());
                }
            }
            all
        })
        .expect("changed");
    assert!(s.get(CDS, "b").is_none());
    let a = s.get(CDS, "a").expect("a stays for everyone");
    assert_eq!(a.variants().len(), 1);
    assert_eq!(a.variants()[0].0, Selector::all());
}

#[test]
fn workload_variants_are_found_by_address() {
    let proxy = |address: &str| ProxyInfo {
        role: Role::Sidecar,
        address: Some(address.into()),
        ..ProxyInfo::default()
    };
    let mut u = Update::new();
    u.put_for(
        Selector::role(Role::Sidecar),
        res(type_url::LISTENER, "in", b"none"),
    );
    for i in 0..1000 {
        let address = format!("10.0.{}.{}", i / 250, i % 250);
        u.put_for(
            Selector::workload(&address),
            Resource::from_bytes(type_url::LISTENER, "in", Bytes::from(address.clone())),
        );
    }
    let (s1, _) = Snapshot::default().apply(u).expect("changed");
    let body = |s: &Snapshot, p: &ProxyInfo| s.resource_for(LDS, "in", p).map(|r| r.body());
    assert_eq!(body(&s1, &proxy("10.0.3.7")), Some(Bytes::from("10.0.3.7")));
    assert_eq!(
        body(&s1, &proxy("10.9.9.9")),
        Some(Bytes::from_static(b"none"))
    );
    let router = ProxyInfo {
        role: Role::Router,
        address: Some("10.0.3.7".into()),
        ..ProxyInfo::default()
    };
    assert_eq!(
        body(&s1, &router),
        None,
        "a workload selector is for sidecars"
    );
    assert!(s1.get(LDS, "in").expect("entry").is_scoped());
    assert_eq!(
        s1.get(LDS, "in").expect("entry").all_variants().count(),
        1001
    );

    // The same content again changes nothing; a new one, or a removal, only that workload.
    let mut same = Update::new();
    same.put_for(
        Selector::workload("10.0.3.7"),
        res(type_url::LISTENER, "in", b"10.0.3.7"),
    );
    assert!(s1.apply(same).is_none());
    let mut u = Update::new();
    u.put_for(
        Selector::workload("10.0.3.7"),
        res(type_url::LISTENER, "in", b"new"),
    )
    .remove_for(Selector::workload("10.0.0.1"), type_url::LISTENER, "in")
    .remove_for(Selector::workload("10.77.0.1"), type_url::LISTENER, "in");
    let (s2, changed) = s1.apply(u).expect("changed");
    assert_eq!(names(&changed[LDS]), vec!["in"]);
    assert_eq!(
        body(&s2, &proxy("10.0.3.7")),
        Some(Bytes::from_static(b"new"))
    );
    assert_eq!(
        body(&s2, &proxy("10.0.0.1")),
        Some(Bytes::from_static(b"none"))
    );
    assert_eq!(body(&s1, &proxy("10.0.0.1")), Some(Bytes::from("10.0.0.1")));
    // Removing every variant removes the entry.
    let mut u = Update::new();
    u.remove(type_url::LISTENER, "in");
    let (s3, _) = s2.apply(u).expect("changed");
    assert!(s3.get(LDS, "in").is_none());
}

fn sidecar_in(namespace: &str) -> ProxyInfo {
    ProxyInfo {
        role: Role::Sidecar,
        namespace: Some(namespace.into()),
        ..ProxyInfo::default()
    }
}

fn sidecars_of(namespace: &str) -> Selector {
    Selector {
        role: Some(Role::Sidecar),
        namespace: Some(namespace.into()),
        ..Selector::default()
    }
}

#[test]
fn hidden_entries_are_absent_for_those_they_are_hidden_from() {
    // Sidecars see the cluster only in "shop"; gateways see it whatever the rules say.
    let hidden = Visibility::new([
        (Selector::role(Role::Sidecar), false),
        (sidecars_of("shop"), true),
    ]);
    let mut u = Update::new();
    u.put(res(type_url::CLUSTER, "c", b"1"))
        .put_for(sidecars_of("shop"), res(type_url::CLUSTER, "c", b"shop"))
        .set_visibility(type_url::CLUSTER, "c", Some(hidden.clone()))
        // Nothing to hide: ignored.
        .set_visibility(type_url::CLUSTER, "absent", Some(hidden.clone()));
    let (s1, changed) = Snapshot::default().apply(u).expect("changed");
    assert_eq!(names(&changed[CDS]), vec!["c"]);
    assert!(s1.get(CDS, "absent").is_none());
    let body = |s: &Snapshot, p: &ProxyInfo| s.resource_for(CDS, "c", p).map(|r| r.body());
    assert_eq!(
        body(&s1, &sidecar_in("shop")),
        Some(Bytes::from_static(b"shop"))
    );
    assert_eq!(body(&s1, &sidecar_in("web")), None);
    assert_eq!(s1.view(CDS, &sidecar_in("web")).count(), 0);
    let gateway = ProxyInfo {
        role: Role::Router,
        ..sidecar_in("web")
    };
    assert_eq!(body(&s1, &gateway), Some(Bytes::from_static(b"1")));
    assert!(
        !s1.is_uniform(CDS),
        "a hidden entry is not the same for everyone"
    );

    // A new variant keeps the visibility; setting the same one again changes nothing.
    let mut u = Update::new();
    u.put(res(type_url::CLUSTER, "c", b"2"))
        .set_visibility(type_url::CLUSTER, "c", Some(hidden));
    let (s2, changed) = s1.apply(u).expect("changed");
    assert_eq!(names(&changed[CDS]), vec!["c"]);
    assert_eq!(body(&s2, &sidecar_in("web")), None);
    assert_eq!(body(&s2, &gateway), Some(Bytes::from_static(b"2")));

    // Shown to everyone again: the name changes, and the type is uniform once more.
    let mut u = Update::new();
    u.remove_for(sidecars_of("shop"), type_url::CLUSTER, "c")
        .set_visibility(type_url::CLUSTER, "c", None);
    let (s3, changed) = s2.apply(u).expect("changed");
    assert_eq!(names(&changed[CDS]), vec!["c"]);
    assert_eq!(
        body(&s3, &sidecar_in("web")),
        Some(Bytes::from_static(b"2"))
    );
    assert!(s3.is_uniform(CDS));
}

#[test]
fn a_full_set_carries_visibility_and_diffs_on_it() {
    let build = |hidden_from: Option<&str>| {
        let mut b = SnapshotBuilder::new();
        b.add(res(type_url::CLUSTER, "a", b"1"))
            .add(res(type_url::CLUSTER, "b", b"1"));
        if let Some(ns) = hidden_from {
            b.set_visibility(
                type_url::CLUSTER,
                "a",
                Visibility::new([(sidecars_of(ns), false)]),
            );
        }
        b
    };
    let (s1, _) = Snapshot::default()
        .apply(Snapshot::default().update_to(build(Some("web"))))
        .expect("first");
    assert!(s1.resource_for(CDS, "a", &sidecar_in("web")).is_none());
    assert!(s1.resource_for(CDS, "a", &sidecar_in("shop")).is_some());
    assert!(s1.apply(s1.update_to(build(Some("web")))).is_none());

    let (s2, changed) = s1.apply(s1.update_to(build(None))).expect("changed");
    assert_eq!(
        names(&changed[CDS]),
        vec!["a"],
        "only the entry whose visibility changed"
    );
    assert!(s2.resource_for(CDS, "a", &sidecar_in("web")).is_some());
}
