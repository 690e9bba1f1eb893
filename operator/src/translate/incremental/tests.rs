//! The incremental path must build exactly what a full build of the same index builds.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{SnapshotCache, TYPES};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::route_variants::variant_selector;
use super::*;
use crate::index::{
    Event, Health, Index, KubeService, KubeServicePort, NsName, Record, RecordKey, SliceEndpoint,
    SliceRecord,
};
use crate::reconcile::Pipeline;
use crate::translate::sidecar::fallback_virtual_host;
use prost::Message;

pub(super) use crate::translate::test_support::{capture_options as capture, options};

pub(super) use crate::index::istio_event as istio;

pub(super) fn delete(kind: capstan_crds::Kind, namespace: &str, name: &str) -> Event {
    Event::Delete(RecordKey::Istio(ObjectKey {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    }))
}

pub(super) fn service(name: &str, ports: &[(&str, u32)]) -> Event {
    Event::Apply(Record::Service(KubeService {
        id: NsName::new("bookinfo", name),
        ports: ports
            .iter()
            .map(|(n, p)| KubeServicePort {
                name: n.to_string(),
                port: *p,
                protocol: capstan_crds::Protocol::of_kubernetes_port(None, n),
                target_port: 0,
            })
            .collect(),
        headless: false,
        cluster_ips: Vec::new(),
        export_to: Vec::new(),
        external_name: None,
        selector: Default::default(),
    }))
}

fn slice(service: &str, addresses: &[&str]) -> Event {
    Event::Apply(Record::Slice(SliceRecord {
        id: NsName::new("bookinfo", format!("{service}-1")),
        service: service.into(),
        ports: std::sync::Arc::new(BTreeMap::from([("http".to_string(), 8080)])),
        endpoints: addresses
            .iter()
            .map(|a| SliceEndpoint {
                address: (*a).into(),
                health: Health::Ready,
                pod: None,
                node: None,
                zone: None,
            })
            .collect(),
    }))
}

/// Every resource of a snapshot: (type, name) → [(selector, version)].
pub(super) fn contents(cache: &SnapshotCache) -> BTreeMap<(usize, String), Vec<(String, u64)>> {
    let state = cache.current();
    let mut out = BTreeMap::new();
    for i in 0..TYPES {
        for (name, entry) in state.snapshot.entries(i) {
            let mut variants: Vec<(String, u64)> = entry
                .all_variants()
                .map(|(selector, r)| (format!("{selector:?}"), r.version()))
                .collect();
            variants.sort();
            // Who may see it at all (Sidecar scoping), as one more line.
            if let Some(visibility) = entry.visibility() {
                variants.push((format!("visibility {:?}", visibility.rules()), 0));
            }
            out.insert((i, name.to_string()), variants);
        }
    }
    out
}

fn problems<'a>(found: impl Iterator<Item = &'a Problem>) -> BTreeSet<String> {
    found.map(ToString::to_string).collect()
}

/// Applies each event incrementally, through the reconciler's pipeline, and compares with a
/// full build of the same index after every step.
/// The resources of `type_url` a full build of `yamls` with `options` serves `proxy`.
pub(super) fn served_to<M: Message + Default>(
    options: Options,
    yamls: &[String],
    type_url: &str,
    proxy: &capstan_xds::ProxyInfo,
) -> Vec<M> {
    let mut pipeline = Pipeline::new(options, "cluster.local");
    for yaml in yamls {
        pipeline.index.handle(istio(yaml));
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let state = cache.current();
    let index = capstan_xds::type_index(type_url).expect("a served type");
    state
        .snapshot
        .view(index, proxy)
        .map(|r| M::decode(r.body().clone()).expect("decodes"))
        .collect()
}

/// The outbound routes (`outbound_http`) a sidecar of `namespace` with `labels` is served by
/// a full build of `mesh`.
pub(super) fn outbound_routes_served(
    mesh: &Mesh,
    namespace: &str,
    labels: &[(&str, &str)],
) -> RouteConfiguration {
    let cache = SnapshotCache::new();
    cache.replace(Translator::new(options()).full(mesh));
    let state = cache.current();
    let proxy = crate::model::sidecar_scope::fixtures::sidecar_proxy(namespace, labels);
    let index = capstan_xds::type_index(type_url::ROUTE).expect("a served type");
    let resource = state
        .snapshot
        .view(index, &proxy)
        .find(|r| r.name() == crate::translate::OUTBOUND_HTTP)
        .cloned()
        .expect("every sidecar gets the routes");
    RouteConfiguration::decode(resource.body()).expect("decodes")
}

pub(super) fn check(steps: Vec<Event>) {
    check_with(options(), steps);
}

/// [`check`] with other translation options.
pub(super) fn check_with(options: Options, steps: Vec<Event>) {
    let mut pipeline = Pipeline::new(options.clone(), "cluster.local");
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    for (step, event) in steps.into_iter().enumerate() {
        let described = format!("{event:?}");
        let changes = pipeline.index.handle(event);
        cache.apply(pipeline.update(&changes));

        let (mut full_mesh, model_problems) = Mesh::build(&pipeline.index, "cluster.local");
        full_mesh.settings = options.mesh_settings.clone();
        let mut full = Translator::new(options.clone());
        let expected = SnapshotCache::new();
        expected.replace(full.full(&full_mesh));
        assert_eq!(
            contents(&cache),
            contents(&expected),
            "step {step} ({described}): incremental and full builds differ"
        );
        assert_eq!(
            problems(
                pipeline
                    .mesh
                    .problems()
                    .chain(pipeline.translator.problems())
            ),
            problems(model_problems.iter().chain(full.problems())),
            "step {step}: problems differ"
        );
    }
}

const REVIEWS_SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
";

const REVIEWS_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

fn reviews_vs(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"
    )
}

#[test]
fn incremental_updates_match_a_full_build() {
    use capstan_crds::Kind;
    check(vec![
        istio(REVIEWS_SE),
        istio(REVIEWS_DR),
        istio(&reviews_vs("v1")),
        istio(&reviews_vs("v2")),
        // A Kubernetes Service and its endpoints.
        service("ratings", &[("http", 9080)]),
        slice("ratings", &["10.1.0.1", "10.1.0.2"]),
        slice("ratings", &["10.1.0.3"]),
        // A VirtualService routing to ratings without a port: it reads ratings' ports, so
        // a port change of ratings must rebuild its routes.
        istio(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: bookinfo}
spec:
  hosts: [details.bookinfo.svc.cluster.local]
  http: [{route: [{destination: {host: ratings}}]}]
",
        ),
        istio(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: bookinfo}
spec:
  hosts: [details.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.2.0.1}]
",
        ),
        // details' routes named ratings' only port: a new number changes them.
        service("ratings", &[("http", 9090)]),
        service("ratings", &[("http", 9090), ("http-admin", 9091)]),
        // A second ServiceEntry for a host a Service owns: reported, then gone.
        istio(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-copy, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.3.0.1}]
",
        ),
        Event::Delete(RecordKey::Service(NsName::new("bookinfo", "ratings"))),
        delete(Kind::ServiceEntry, "bookinfo", "ratings-copy"),
        // A wildcard VirtualService, and an external service it covers.
        istio(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: web}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
",
        ),
        istio(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: web}
spec:
  hosts: ['*.example.com']
  http: [{route: [{destination: {host: api.example.com}}], timeout: 3s}]
",
        ),
        // A host that is another host's short name: two claims on one domain.
        istio(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alias, namespace: web}
spec:
  hosts: [reviews.bookinfo]
  ports: [{number: 9080, name: http}]
  resolution: DNS
",
        ),
        delete(Kind::ServiceEntry, "web", "alias"),
        // A VirtualService for a host nobody has, then the host arrives.
        istio(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: later, namespace: web}
spec:
  hosts: [later.example.com]
  http: [{route: [{destination: {host: later.example.com}}]}]
",
        ),
        istio(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: later, namespace: web}
spec:
  hosts: [later.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
",
        ),
        delete(Kind::DestinationRule, "bookinfo", "reviews"),
        delete(Kind::VirtualService, "bookinfo", "reviews"),
        delete(Kind::VirtualService, "web", "wild"),
        delete(Kind::ServiceEntry, "bookinfo", "reviews"),
    ]);
}

#[test]
fn one_virtual_service_change_rebuilds_only_the_routes() {
    let mut index = Index::new();
    for event in [
        istio(REVIEWS_SE),
        istio(REVIEWS_DR),
        istio(&reviews_vs("v1")),
    ] {
        index.handle(event);
    }
    let (mut mesh, _) = Mesh::build(&index, "cluster.local");
    let mut translator = Translator::new(options());
    let cache = SnapshotCache::new();
    cache.replace(translator.full(&mesh));
    let changes = index.handle(istio(&reviews_vs("v2")));
    let affected = mesh.update(&index, &changes.objects);
    assert!(affected.hosts.is_empty(), "{affected:?}");
    let update = translator.update(&mesh, &affected);
    // The two variants of `outbound_http` (bookinfo's and everyone else's), nothing else.
    assert_eq!(update.len(), 2);
    let applied = cache.apply(update).expect("the routes changed");
    let changed: BTreeMap<&str, usize> = capstan_xds::type_url::PUSH_ORDER
        .iter()
        .map(|t| capstan_xds::type_url::short(t))
        .zip(applied.changed)
        .collect();
    assert_eq!(changed["cds"], 0);
    assert_eq!(changed["eds"], 0);
    assert_eq!(changed["rds"], 1);
}

#[test]
fn many_hosts_are_built_in_parallel_with_the_same_result() {
    let mut index = Index::new();
    for i in 0..(PARALLEL_HOSTS + 44) {
        index.handle(istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}, namespace: ns-{}}}
spec:
  hosts: [svc-{i}.example.com]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 10.9.{}.{}}}]
",
            i % 7,
            i / 250,
            i % 250
        )));
    }
    let (mesh, _) = Mesh::build(&index, "cluster.local");
    let hosts: BTreeSet<String> = mesh.services.keys().cloned().collect();
    let built = build_hosts(&mesh, &hosts);
    let names = |r: &HostResources| -> Vec<(String, u64)> {
        r.clusters
            .iter()
            .chain(&r.assignments)
            .map(|(_, a)| a)
            .map(|x| (x.name().to_string(), x.version()))
            .collect()
    };
    assert_eq!(built.len(), hosts.len());
    for ((host, resources), expected) in built.iter().zip(&hosts) {
        assert_eq!(*host, expected.as_str(), "hosts keep their order");
        let one = host_resources(&mesh, &mesh.services[expected.as_str()]);
        assert_eq!(names(resources), names(&one));
        assert_eq!(resources.clusters.len(), 1);
    }
    // The virtual hosts are built in parallel too.
    assert_routes_decode_as_route_configurations(&mesh);
}

#[test]
fn assembled_route_variants_decode_as_the_route_configurations() {
    let mut index = Index::new();
    for event in [
        istio(REVIEWS_SE),
        istio(REVIEWS_DR),
        istio(&reviews_vs("v1")),
        service("ratings", &[("http", 9080), ("http-admin", 9090)]),
    ] {
        index.handle(event);
    }
    let (mesh, _) = Mesh::build(&index, "cluster.local");
    assert_routes_decode_as_route_configurations(&mesh);
}

/// Every route variant a full build serves, in direct mode (one route configuration) and in
/// capture mode (one per port, ending with the fallback), decodes as the configuration the
/// one-piece generator builds for that namespace.
pub(super) fn assert_routes_decode_as_route_configurations(mesh: &Mesh) {
    for mode in [ListenerMode::Direct, ListenerMode::Capture] {
        let options = Options {
            sidecar_listeners: mode,
            ..options()
        };
        let mut translator = Translator::new(options.clone());
        let cache = SnapshotCache::new();
        cache.replace(translator.full(mesh));
        let state = cache.current();
        let route_type = capstan_xds::type_index(type_url::ROUTE).expect("a served type");
        let (expected, _) = route::route_configurations(mesh, options.route_layout(), []);
        let served: usize = state
            .snapshot
            .entries(route_type)
            .map(|(_, entry)| entry.variants().len())
            .sum();
        assert_eq!(served, expected.len(), "{mode:?}");
        let modes = translator.outbound_modes(mesh);
        for (caller, mut config) in expected {
            let entry = state
                .snapshot
                .get(route_type, &config.name)
                .unwrap_or_else(|| panic!("{mode:?}: {} is not served", config.name));
            let selector = variant_selector(caller.namespace.as_deref(), &caller.labels);
            let (_, resource) = entry
                .variants()
                .iter()
                .find(|(s, _)| *s == selector)
                .unwrap_or_else(|| panic!("{mode:?}: no variant for {caller:?}"));
            if mode == ListenerMode::Capture {
                let fallback = fallback_virtual_host(modes.for_proxies(&selector));
                config.virtual_hosts.push(fallback);
            }
            let decoded =
                RouteConfiguration::decode(resource.body()).expect("a RouteConfiguration");
            assert_eq!(decoded, config, "{mode:?}: variant {caller:?}");
        }
    }
}

#[test]
fn a_change_reassembles_only_its_own_namespace() {
    let service_in = |namespace: &str, name: &str| {
        Event::Apply(Record::Service(KubeService {
            id: NsName::new(namespace, name),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 80,
                protocol: Some(capstan_crds::Protocol::Http),
                target_port: 8080,
            }],
            headless: false,
            cluster_ips: Vec::new(),
            export_to: Vec::new(),
            external_name: None,
            selector: Default::default(),
        }))
    };
    let vs = |path: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a, namespace: one}}
spec:
  hosts: [a]
  http:
  - match: [{{uri: {{prefix: {path}}}}}]
    route: [{{destination: {{host: a}}}}]
"
        ))
    };
    let mut index = Index::new();
    for event in [
        service_in("one", "a"),
        service_in("one", "a2"),
        service_in("two", "b"),
        service_in("two", "b2"),
        vs("/v1"),
    ] {
        index.handle(event);
    }
    let (mut mesh, _) = Mesh::build(&index, "cluster.local");
    let mut translator = Translator::new(options());
    translator.full(&mesh);
    let segment = |t: &Translator, ns: &str| {
        let group = Group {
            route: RouteName::Shared,
            namespace: Some(ns.to_string()),
        };
        let s = t.segments[&group].forms(&Labels::new());
        (s.own.clone(), s.other.clone())
    };
    let (one_own, one_other) = segment(&translator, "one");
    let (two_own, two_other) = segment(&translator, "two");

    let changes = index.handle(vs("/v2"));
    let affected = mesh.update(&index, &changes.objects);
    let update = translator.update(&mesh, &affected);
    assert_eq!(
        update.len(),
        3,
        "a variant per namespace and one for the rest"
    );

    // The other namespace's group is the same pieces, not rebuilt; the changed one is new.
    let (own, other) = segment(&translator, "two");
    assert!(own.ptr_eq(&two_own) && other.ptr_eq(&two_other));
    let (own, other) = segment(&translator, "one");
    assert!(!own.ptr_eq(&one_own) && !other.ptr_eq(&one_other));
    assert_ne!(own.hash(), one_own.hash());
    assert_routes_decode_as_route_configurations(&mesh);
}

pub(super) const INGRESS: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
";

pub(super) fn shop_vs(gateways: &str, subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: bookinfo}}
spec:
  hosts: [shop.example.com]
  gateways: {gateways}
  http:
  - match: [{{uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, subset: {subset}}}}}]
  - route: [{{destination: {{host: ratings}}}}]
"
    )
}

/// Gateways are rebuilt on a change of a Gateway, of a VirtualService bound to one (before or
/// after the change) and of a service their routes read; each step must equal a full build.
#[test]
fn gateway_updates_match_a_full_build() {
    use capstan_crds::Kind;
    check(vec![
        istio(REVIEWS_SE),
        istio(REVIEWS_DR),
        service("ratings", &[("http", 9080)]),
        istio(&shop_vs("[istio-system/ingress]", "v1")),
        istio(INGRESS),
        istio(&shop_vs("[istio-system/ingress]", "v2")),
        // The route to ratings names no port: a new port of ratings changes it.
        service("ratings", &[("http", 9090)]),
        // Unbound from the gateway (sidecars only), then bound again.
        istio(&shop_vs("[mesh]", "v2")),
        istio(&shop_vs("[istio-system/ingress, mesh]", "v1")),
        istio(&INGRESS.replace("8080", "8081")),
        delete(Kind::Gateway, "istio-system", "ingress"),
        delete(Kind::VirtualService, "bookinfo", "shop"),
    ]);
}

fn workload_entry(name: &str, app: &str, address: &str) -> Event {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: vms}}
spec: {{address: {address}, labels: {{app: {app}}}}}
"
    ))
}

/// WorkloadEntries are endpoints of the ServiceEntries selecting them: adding, relabelling
/// and deleting one, and changing the selector, must each equal a full build.
#[test]
fn workload_entry_updates_match_a_full_build() {
    use capstan_crds::Kind;
    let entry = |app: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: billing, namespace: vms}}
spec:
  hosts: [billing.vms.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {app}}}}}
"
        ))
    };
    check(vec![
        workload_entry("vm-1", "billing", "10.0.5.1"),
        entry("billing"),
        workload_entry("vm-2", "payroll", "10.0.5.2"),
        workload_entry("vm-2", "billing", "10.0.5.2"),
        workload_entry("vm-1", "billing", "10.0.5.9"),
        // Relabelled away: the host its old labels met loses it.
        workload_entry("vm-2", "payroll", "10.0.5.2"),
        delete(Kind::WorkloadEntry, "vms", "vm-1"),
        entry("payroll"),
        delete(Kind::ServiceEntry, "vms", "billing"),
        workload_entry("vm-3", "billing", "10.0.5.3"),
    ]);
}

/// A Kubernetes Service with a selector takes the WorkloadEntries it picks (istiod's VMs
/// behind a Service name): adding, relabelling and deleting an entry, and changing the
/// selector, must each equal a full build.
#[test]
fn workload_entries_selected_by_a_kubernetes_service_match_a_full_build() {
    use crate::index::{KubeService, KubeServicePort, NsName, Record};
    use capstan_crds::Kind;
    let billing = |app: &str| {
        Event::Apply(Record::Service(KubeService {
            id: NsName::new("vms", "billing"),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 8080,
                protocol: None,
                target_port: 18080,
            }],
            headless: false,
            cluster_ips: vec!["10.96.0.20".into()],
            export_to: Vec::new(),
            external_name: None,
            selector: BTreeMap::from([("app".to_string(), app.to_string())]),
        }))
    };
    check(vec![
        workload_entry("vm-1", "billing", "10.0.5.1"),
        billing("billing"),
        workload_entry("vm-2", "payroll", "10.0.5.2"),
        workload_entry("vm-2", "billing", "10.0.5.2"),
        workload_entry("vm-1", "billing", "10.0.5.9"),
        // Relabelled away: the Service its old labels met loses it.
        workload_entry("vm-2", "payroll", "10.0.5.2"),
        delete(Kind::WorkloadEntry, "vms", "vm-1"),
        billing("payroll"),
        workload_entry("vm-3", "payroll", "10.0.5.3"),
        workload_entry("vm-3", "billing", "10.0.5.3"),
    ]);
}

fn billing_pod(name: &str, app: &str, ip: Option<&str>, ready: bool) -> Event {
    use crate::index::{NsName, PodRecord, Record};
    Event::Apply(Record::Pod(PodRecord {
        id: NsName::new("vms", name),
        labels: std::sync::Arc::new(BTreeMap::from([("app".to_string(), app.to_string())])),
        service_account: "billing".into(),
        node: None,
        ip: ip.map(Into::into),
        ready,
    }))
}

/// Pods are endpoints of the ServiceEntries of their namespace selecting them, as in Istio:
/// a pod getting an address, turning ready and not, relabelled and deleted, and a selector
/// added after the pods, must each equal a full build.
#[test]
fn selected_pod_updates_match_a_full_build() {
    use crate::index::{NsName, RecordKey};
    let entry = istio(&crate::model::workloads::billing_entry());
    check(vec![
        billing_pod("billing-a", "billing", Some("10.0.6.1"), true),
        entry,
        billing_pod("billing-b", "billing", None, false),
        billing_pod("billing-b", "billing", Some("10.0.6.2"), false),
        billing_pod("billing-b", "billing", Some("10.0.6.2"), true),
        billing_pod("billing-a", "payroll", Some("10.0.6.1"), true),
        Event::Delete(RecordKey::Pod(NsName::new("vms", "billing-b"))),
        workload_entry("vm-1", "billing", "10.0.5.1"),
    ]);
}

/// A root VirtualService's delegating route takes the delegate's routes: editing, deleting
/// and restoring the delegate, and editing the root, must each equal a full build (for the
/// sidecars and the gateway the root is bound to).
#[test]
fn delegate_updates_match_a_full_build() {
    use capstan_crds::Kind;
    let root = |prefix: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-root, namespace: bookinfo}}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/ingress]
  http:
  - match: [{{uri: {{prefix: {prefix}}}}}]
    delegate: {{name: reviews-team, namespace: team}}
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"
        ))
    };
    let child = |subset: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-team, namespace: team}}
spec:
  http:
  - match: [{{uri: {{prefix: /reviews/v}}, headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: {subset}}}}}]
  - match: [{{uri: {{prefix: /elsewhere}}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
"
        ))
    };
    check(vec![
        istio(REVIEWS_SE),
        istio(REVIEWS_DR),
        istio(INGRESS),
        root("/reviews"),
        child("v2"),
        child("v1"),
        root("/"),
        delete(Kind::VirtualService, "team", "reviews-team"),
        child("v2"),
        delete(Kind::VirtualService, "bookinfo", "reviews-root"),
    ]);
}

fn gateway_secret(name: &str, entries: &[(&str, &str)]) -> Event {
    secret_in("istio-system", name, entries)
}

/// Secret `namespace/name` with `entries`, arriving or changing.
pub(super) fn secret_in(namespace: &str, name: &str, entries: &[(&str, &str)]) -> Event {
    Event::Apply(Record::Secret(crate::index::SecretRecord {
        id: NsName::new(namespace, name),
        secret_type: String::new(),
        data: entries
            .iter()
            .map(|(k, v)| (k.to_string(), std::sync::Arc::from(v.as_bytes())))
            .collect(),
    }))
}

/// A self-signed certificate for `name` and its key, PEM.
pub(super) fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    (
        params.self_signed(&key).expect("cert").pem(),
        key.serialize_pem(),
    )
}

const CREDENTIAL_INGRESS: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ['shop.example.com']
    tls: {mode: MUTUAL, credentialName: shop-cert}
";

/// Gateways read Secrets: a Secret arriving, changing, going, and its `-cacert` companion
/// doing the same, must each equal a full build.
#[test]
fn gateway_secret_updates_match_a_full_build() {
    let (cert, key) = pem_pair("shop.example.com");
    let (other_cert, other_key) = pem_pair("shop.example.com");
    let secret_delete =
        |name: &str| Event::Delete(RecordKey::Secret(NsName::new("istio-system", name)));
    check(vec![
        istio(REVIEWS_SE),
        istio(&shop_vs("[istio-system/ingress]", "v1")),
        istio(CREDENTIAL_INGRESS),
        gateway_secret("shop-cert", &[("tls.crt", &cert), ("tls.key", &key)]),
        gateway_secret("shop-cert-cacert", &[("ca.crt", &cert)]),
        gateway_secret(
            "shop-cert",
            &[("tls.crt", &other_cert), ("tls.key", &other_key)],
        ),
        gateway_secret("shop-cert", &[("tls.crt", "broken"), ("tls.key", &key)]),
        gateway_secret(
            "shop-cert",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &cert)],
        ),
        secret_delete("shop-cert-cacert"),
        // A Secret no Gateway reads costs the gateways nothing, but is still a no-op.
        gateway_secret("unrelated", &[("tls.crt", &cert), ("tls.key", &key)]),
        secret_delete("shop-cert"),
    ]);
}

/// A new certificate changes the Secret resource alone: Envoy rotates it without a listener
/// change.
#[test]
fn a_secret_change_updates_only_the_served_secret() {
    let (cert, key) = pem_pair("shop.example.com");
    let (new_cert, new_key) = pem_pair("shop.example.com");
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    for event in [
        istio(REVIEWS_SE),
        istio(&shop_vs("[istio-system/ingress]", "v1")),
        istio(&CREDENTIAL_INGRESS.replace("MUTUAL", "SIMPLE")),
        gateway_secret("shop-cert", &[("tls.crt", &cert), ("tls.key", &key)]),
    ] {
        let changes = pipeline.index.handle(event);
        cache.apply(pipeline.update(&changes));
    }
    let before = contents(&cache);
    let secret_type = capstan_xds::type_index(capstan_xds::type_url::SECRET).expect("SDS");
    let listener_type = capstan_xds::type_index(capstan_xds::type_url::LISTENER).expect("LDS");
    assert!(before.contains_key(&(secret_type, "kubernetes://shop-cert".to_string())));
    assert!(before.contains_key(&(listener_type, "0.0.0.0_8443".to_string())));

    let changes = pipeline.index.handle(gateway_secret(
        "shop-cert",
        &[("tls.crt", &new_cert), ("tls.key", &new_key)],
    ));
    let applied = cache
        .apply(pipeline.update(&changes))
        .expect("the new certificate is served");
    let mut changed = [0; TYPES];
    changed[secret_type] = 1;
    assert_eq!(applied.changed, changed, "{}", applied.summary());
}
