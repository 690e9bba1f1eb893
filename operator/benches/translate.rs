//! What translating a Kubernetes mesh costs: N Services across 10 namespaces, 10 endpoints
//! each (EndpointSlices and Pods labelled `version: v1`/`v2`), a DestinationRule with subsets
//! v1/v2 and a VirtualService (a header match and a weighted split) per Service, at
//! N = 100, 1,000 and 3,000. Run with `cargo bench -p capstan --bench translate` (or
//! `make bench`).
//!
//! - full translation: `Mesh::build` + `translate::build` (every resource encoded), what the
//!   first sync costs;
//! - one VirtualService changed: what `Reconciler::reconcile` does for it — the record applied
//!   to the index, `Mesh::update` re-reading it, `Translator::update` rebuilding what it
//!   affects, the cache applying the update;
//! - one EndpointSlice changed: the same for an endpoint change — the slice applied, the
//!   service's endpoints re-read (`Mesh::refresh_endpoints`), its load assignments rebuilt and
//!   encoded (`Translator::endpoints`) and applied to the cache;
//! - the same in capture mode (`--sidecar-listeners capture`): each of the slice's 10 pods'
//!   `virtualInbound` is rebuilt too, among N × 10 workloads' (the cost must not grow with N);
//! - both changes again with a root-namespace default `Sidecar` (`./*`, `istio-system/*`), so
//!   that every service is hidden from nine namespaces' sidecars and every namespace's route
//!   variant is a scoped one;
//! - capture mode with one AuthorizationPolicy per service (selecting its pods; principals,
//!   methods, paths and a header condition), N = 1,000 being Istio's "1,000 policies": the full
//!   translation against the same mesh without policies, and one policy edited (its 10 pods'
//!   `virtualInbound` rebuilt, no other workload's);
//! - one EndpointSlice changed again with an east-west gateway (an AUTO_PASSTHROUGH server
//!   covering `*.local`): each service's SNI-DNAT load assignments are rebuilt with its own;
//! - one WorkloadEntry's address changed where every Service has a selector (N / 10 of them
//!   in its namespace): only the Service whose selector its labels meet is rebuilt;
//! - capture mode with N / 10 external HTTPS ServiceEntries on 443 (one filter chain each, by
//!   SNI, in the port's one listener), without and with the root `Sidecar`: one entry's host
//!   renamed, so the port's listener is rebuilt, and with the scope each namespace's sidecars
//!   get it with only the chains of what they see.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use capstan::index::{
    Health, Index, IstioRecord, KubeService, KubeServicePort, NsName, PodRecord, Record,
    SliceEndpoint, SliceRecord,
};
use capstan::model::Mesh;
use capstan::reconcile::Pipeline;
use capstan::translate;
use capstan_xds::SnapshotCache;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const NAMESPACES: usize = 10;
const ENDPOINTS: usize = 10;
const DOMAIN: &str = "cluster.local";
const SIZES: [usize; 3] = [100, 1_000, 3_000];

fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn options() -> translate::Options {
    translate::Options {
        outbound_bind: "0.0.0.0".into(),
        outbound_port: 15001,
        sidecar_listeners: Default::default(),
        root_namespace: "istio-system".into(),
        outbound_traffic_policy: Default::default(),
        mesh_settings: Default::default(),
    }
}

fn service(i: usize) -> Record {
    service_selecting(i, BTreeMap::new())
}

/// Service `i` with `selector`: a Service with one picks WorkloadEntries too.
fn service_selecting(i: usize, selector: BTreeMap<String, String>) -> Record {
    Record::Service(KubeService {
        id: NsName::new(namespace(i), service_name(i)),
        ports: vec![KubeServicePort {
            name: "http".into(),
            port: 80,
            protocol: capstan_crds::Protocol::parse("http"),
            target_port: 8080,
        }],
        headless: false,
        cluster_ips: Vec::new(),
        export_to: Vec::new(),
        external_name: None,
        selector,
    })
}

fn pod_name(i: usize, j: usize) -> String {
    format!("svc-{i}-{j}")
}

/// Endpoint `j` of service `i`: 10.244.0.0/16, as in `capstan-kube-bench`.
fn address(i: usize, j: usize) -> String {
    let k = i * ENDPOINTS + j;
    format!("10.244.{}.{}", (k / 250) % 256, k % 250 + 1)
}

fn slice(i: usize, port: u32) -> Record {
    let endpoints = (0..ENDPOINTS)
        .map(|j| SliceEndpoint {
            address: address(i, j).into(),
            health: Health::Ready,
            pod: Some(pod_name(i, j)),
            node: None,
            zone: None,
        })
        .collect();
    Record::Slice(SliceRecord {
        id: NsName::new(namespace(i), format!("svc-{i}-abcde")),
        service: service_name(i),
        ports: Arc::new(BTreeMap::from([("http".to_string(), port)])),
        endpoints,
    })
}

fn pod(i: usize, j: usize) -> Record {
    let version = if j < ENDPOINTS / 2 { "v1" } else { "v2" };
    Record::Pod(PodRecord {
        id: NsName::new(namespace(i), pod_name(i, j)),
        labels: Arc::new(BTreeMap::from([
            ("app".to_string(), service_name(i)),
            ("version".to_string(), version.to_string()),
        ])),
        service_account: service_name(i).into(),
        node: None,
        // Behind EndpointSlices, which carry the address and readiness the mesh reads.
        ip: None,
        ready: true,
    })
}

fn istio(yaml: &str) -> Record {
    let document = capstan_crds::parse_single("bench.yaml", yaml).expect("valid YAML");
    let errors = document.validate();
    assert!(errors.is_empty(), "invalid bench object: {errors:?}");
    Record::Istio(IstioRecord::valid(document.object))
}

fn destination_rule(i: usize) -> Record {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: {ns}, generation: 1}}
spec:
  host: svc-{i}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        ns = namespace(i)
    ))
}

/// The VirtualService of service `i`; `generation` and the weight of v2 vary for changes.
fn virtual_service(i: usize, generation: i64, v2_weight: u32) -> Record {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: {ns}, generation: {generation}}}
spec:
  hosts: [svc-{i}]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: svc-{i}, subset: v2}}
  - route:
    - destination: {{host: svc-{i}, subset: v1}}
      weight: {v1_weight}
    - destination: {{host: svc-{i}, subset: v2}}
      weight: {v2_weight}
",
        ns = namespace(i),
        v1_weight = 100 - v2_weight,
    ))
}

/// The index of a mesh of `n` services, filled through `apply` as the watchers do.
fn index(n: usize) -> Index {
    let mut index = Index::new();
    for i in 0..n {
        index.apply(service(i));
        for j in 0..ENDPOINTS {
            index.apply(pod(i, j));
        }
        index.apply(slice(i, 8080));
        index.apply(destination_rule(i));
        index.apply(virtual_service(i, 1, 10));
    }
    index
}

/// [`index`] with Istio's recommended mesh default `Sidecar`: each namespace's sidecars see
/// their own namespace's services and the root namespace's.
fn scoped_index(n: usize) -> Index {
    let mut index = index(n);
    index.apply(istio(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: [\"./*\", \"istio-system/*\"]}]
",
    ));
    index
}

/// [`index`] with an east-west gateway: an AUTO_PASSTHROUGH server covering every service
/// (`*.local`), so each has SNI-DNAT clusters and load assignments too.
fn east_west_index(n: usize) -> Index {
    let mut index = index(n);
    index.apply(istio(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: [\"*.local\"]
    tls: {mode: AUTO_PASSTHROUGH}
",
    ));
    index
}

/// An AuthorizationPolicy for service `i`'s pods: GET on `/api/*` for the next service's
/// account, with a header condition; `generation` changes the path.
fn authorization_policy(i: usize, generation: i64) -> Record {
    istio(&format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: svc-{i}, namespace: {ns}, generation: {generation}}}
spec:
  selector: {{matchLabels: {{app: svc-{i}}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{next_ns}/sa/svc-{next}]}}}}]
    to: [{{operation: {{methods: [GET], paths: [/api/v{generation}/*]}}}}]
    when: [{{key: 'request.headers[x-user]', values: ['alice*']}}]
",
        ns = namespace(i),
        next = i + 1,
        next_ns = namespace(i + 1),
    ))
}

/// [`index`] with one AuthorizationPolicy per service.
fn authorized_index(n: usize) -> Index {
    let mut index = index(n);
    for i in 0..n {
        index.apply(authorization_policy(i, 1));
    }
    index
}

/// [`index`] whose Services select their pods (`app: svc-<i>`), as Kubernetes Services do,
/// and so also WorkloadEntries with that label: N / 10 of them in each namespace.
fn selecting_index(n: usize) -> Index {
    let mut index = index(n);
    for i in 0..n {
        let selector = BTreeMap::from([("app".to_string(), service_name(i))]);
        index.apply(service_selecting(i, selector));
        index.apply(workload_entry(i, 1));
    }
    index
}

/// A VM of service `i` (`app: svc-<i>`), its address moving with `generation`.
fn workload_entry(i: usize, generation: i64) -> Record {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vm-{i}, namespace: {ns}, generation: {generation}}}
spec:
  address: 10.10.{a}.{b}
  labels: {{app: svc-{i}, version: v1}}
",
        ns = namespace(i),
        a = generation % 200,
        b = i % 250 + 1,
    ))
}

fn one_workload_entry_changed(c: &mut Criterion) {
    let name = "one WorkloadEntry changed, Services selecting";
    config_changed(c, name, options(), selecting_index, |n, generation| {
        workload_entry(n / 2, generation)
    });
}

/// An external HTTPS ServiceEntry `ext-<i>` on 443 in service `i`'s namespace, its host
/// `ext-<i>-<generation>.example.com`.
fn tls_entry(i: usize, generation: i64) -> Record {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-{i}, namespace: {ns}, generation: {generation}}}
spec:
  hosts: [ext-{i}-{generation}.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: DNS
",
        ns = namespace(i),
    ))
}

/// [`index`] with an HTTPS ServiceEntry on 443 for every tenth service.
fn tls_index(n: usize) -> Index {
    let mut index = index(n);
    for i in (0..n).step_by(10) {
        index.apply(tls_entry(i, 1));
    }
    index
}

/// [`tls_index`] with the root `Sidecar` of [`scoped_index`].
fn scoped_tls_index(n: usize) -> Index {
    let mut index = scoped_index(n);
    for i in (0..n).step_by(10) {
        index.apply(tls_entry(i, 1));
    }
    index
}

fn one_tls_entry_renamed(c: &mut Criterion) {
    for (name, index) in [
        (
            "one TLS ServiceEntry renamed, capture mode",
            tls_index as fn(usize) -> Index,
        ),
        (
            "one TLS ServiceEntry renamed, capture mode, Sidecar-scoped",
            scoped_tls_index,
        ),
    ] {
        config_changed(c, name, capture_options(), index, |n, generation| {
            tls_entry(n / 2, generation)
        });
    }
}

fn capture_options() -> translate::Options {
    translate::Options {
        sidecar_listeners: translate::ListenerMode::Capture,
        ..options()
    }
}

fn full_translation_with_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("full translation, capture mode");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for n in [1_000, 3_000] {
        for (label, index) in [
            ("no policies", index(n)),
            ("a policy per service", authorized_index(n)),
        ] {
            group.bench_with_input(BenchmarkId::new(label, n), &index, |b, index| {
                b.iter(|| {
                    let (mesh, _) = Mesh::build(index, DOMAIN);
                    black_box(translate::build(&mesh, &capture_options()))
                })
            });
        }
    }
    group.finish();
}

fn one_authorization_policy_changed(c: &mut Criterion) {
    let mut group = c.benchmark_group("one AuthorizationPolicy changed, capture mode");
    group.warm_up_time(Duration::from_secs(1));
    for n in [1_000, 3_000] {
        let mut pipeline = Pipeline::new(capture_options(), DOMAIN);
        pipeline.index = authorized_index(n);
        let cache = SnapshotCache::new();
        cache.replace(pipeline.full());
        let changed = n / 2;
        report_policy_edit(&mut pipeline, &cache, changed);
        let mut generation = 2;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                generation += 1;
                let changes = pipeline
                    .index
                    .apply(authorization_policy(changed, generation));
                let update = pipeline.update(&changes);
                assert!(update.len() >= ENDPOINTS, "the service's pods' listeners");
                black_box(cache.apply(update))
            })
        });
    }
    group.finish();
}

/// Prints, once, what one policy edit changes: the listeners whose bytes differ afterwards
/// (the pods the policy selects, and no other), and their size.
fn report_policy_edit(pipeline: &mut Pipeline, cache: &SnapshotCache, changed: usize) {
    let listeners = capstan_xds::type_index(capstan_xds::type_url::LISTENER).expect("listeners");
    let versions = |cache: &SnapshotCache| -> BTreeMap<String, (u64, usize)> {
        let state = cache.current();
        state
            .snapshot
            .entries(listeners)
            .flat_map(|(name, entry)| {
                entry.all_variants().map(move |(selector, r)| {
                    (format!("{name} {selector}"), (r.version(), r.body().len()))
                })
            })
            .collect()
    };
    let before = versions(cache);
    let changes = pipeline.index.apply(authorization_policy(changed, 2));
    cache.apply(pipeline.update(&changes));
    let after = versions(cache);
    let differing: Vec<(&String, usize)> = after
        .iter()
        .filter(|(k, v)| before.get(*k).map(|b| b.0) != Some(v.0))
        .map(|(k, v)| (k, v.1))
        .collect();
    let bytes: usize = differing.iter().map(|(_, len)| len).sum();
    eprintln!(
        "one AuthorizationPolicy edited among {} workloads' listeners: {} listener variants \
         changed, {bytes} bytes; e.g. {:?}",
        after.len(),
        differing.len(),
        differing.first()
    );
}

fn full_translation(c: &mut Criterion) {
    let mut group = c.benchmark_group("full translation");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let index = index(n);
        let (mesh, problems) = Mesh::build(&index, DOMAIN);
        assert!(problems.is_empty(), "model problems: {problems:?}");
        let (resources, problems) = translate::build(&mesh, &options());
        assert!(problems.is_empty(), "translation problems: {problems:?}");
        // Per service: 3 clusters (whole, v1, v2), 3 load assignments; 1 listener and
        // 11 route configurations (one per namespace with services, one for the rest).
        assert!(resources.len() >= 6 * n, "{} resources", resources.len());
        group.bench_with_input(BenchmarkId::from_parameter(n), &index, |b, index| {
            b.iter(|| {
                let (mesh, _) = Mesh::build(index, DOMAIN);
                black_box(translate::build(&mesh, &options()))
            })
        });
    }
    group.finish();
}

fn one_virtual_service_changed(c: &mut Criterion) {
    virtual_service_changed(c, "one VirtualService changed", options(), index);
}

fn one_virtual_service_changed_scoped(c: &mut Criterion) {
    virtual_service_changed(
        c,
        "one VirtualService changed, Sidecar-scoped",
        options(),
        scoped_index,
    );
}

/// Capture mode: the route configurations are per port.
fn one_virtual_service_changed_capture(c: &mut Criterion) {
    virtual_service_changed(
        c,
        "one VirtualService changed, capture mode",
        capture_options(),
        index,
    );
}

/// A `Sidecar` for service `i`'s pods with one ingress listener, on port 8080 to the app on
/// `127.0.0.1:<8080 + generation % 2>`.
fn ingress_sidecar(i: usize, generation: i64) -> Record {
    istio(&format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: svc-{i}, namespace: {ns}, generation: {generation}}}
spec:
  workloadSelector: {{labels: {{app: svc-{i}}}}}
  ingress:
  - port: {{number: 8080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{port}
",
        ns = namespace(i),
        port = 8080 + generation % 2,
    ))
}

/// Capture mode: one workload's Sidecar ingress listener edited; the other workloads'
/// inbound sides are not rebuilt.
fn one_ingress_sidecar_changed(c: &mut Criterion) {
    config_changed(
        c,
        "one Sidecar ingress listener changed, capture mode",
        capture_options(),
        index,
        |n, generation| ingress_sidecar(n / 2, generation),
    );
}

fn virtual_service_changed(
    c: &mut Criterion,
    name: &str,
    options: translate::Options,
    index: fn(usize) -> Index,
) {
    config_changed(c, name, options, index, |n, generation| {
        let weight = if generation % 2 == 0 { 20 } else { 10 };
        virtual_service(n / 2, generation, weight)
    });
}

/// Group `name`: per size, a pipeline on `index(n)` built in full, then one object replaced
/// per iteration by `change(n, generation)` and translated incrementally.
fn config_changed(
    c: &mut Criterion,
    name: &str,
    options: translate::Options,
    index: fn(usize) -> Index,
    change: impl Fn(usize, i64) -> Record,
) {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let mut pipeline = Pipeline::new(options.clone(), DOMAIN);
        pipeline.index = index(n);
        let cache = SnapshotCache::new();
        cache.replace(pipeline.full());
        let mut generation = 1;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                generation += 1;
                let changes = pipeline.index.apply(change(n, generation));
                assert!(changes.config());
                // What Reconciler::reconcile does for a config change: the model re-reads the
                // changed objects, translation rebuilds what they affect, the cache applies it.
                let update = pipeline.update(&changes);
                assert!(!update.is_empty());
                black_box(cache.apply(update))
            })
        });
    }
    group.finish();
}

fn one_endpoint_slice_changed(c: &mut Criterion) {
    endpoint_slice_changed(c, "one EndpointSlice changed", options(), index, 3);
}

fn one_endpoint_slice_changed_scoped(c: &mut Criterion) {
    // And the three load assignments' visibility set again.
    let name = "one EndpointSlice changed, Sidecar-scoped";
    endpoint_slice_changed(c, name, options(), scoped_index, 6);
}

fn one_endpoint_slice_changed_east_west(c: &mut Criterion) {
    // And the SNI-DNAT load assignments of the same three clusters.
    let name = "one EndpointSlice changed, east-west gateway";
    endpoint_slice_changed(c, name, options(), east_west_index, 6);
}

fn one_endpoint_slice_changed_capture(c: &mut Criterion) {
    let capture = translate::Options {
        sidecar_listeners: translate::ListenerMode::Capture,
        ..options()
    };
    // Also the 10 pods' inbound listeners (their port changed).
    let name = "one EndpointSlice changed, capture mode";
    endpoint_slice_changed(c, name, capture, index, 13);
}

fn endpoint_slice_changed(
    c: &mut Criterion,
    name: &str,
    options: translate::Options,
    index: fn(usize) -> Index,
    puts: usize,
) {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let mut pipeline = Pipeline::new(options.clone(), DOMAIN);
        pipeline.index = index(n);
        let cache = SnapshotCache::new();
        cache.replace(pipeline.full());
        let changed = n / 2;
        let mut port = 8080;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                port = if port == 8080 { 8081 } else { 8080 };
                let changes = pipeline.index.apply(slice(changed, port));
                // What Reconciler::reconcile does for an endpoint change.
                let update = pipeline.update(&changes);
                assert!(
                    update.len() >= puts,
                    "whole, v1 and v2 load assignments (and listeners)"
                );
                black_box(cache.apply(update))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    full_translation,
    one_virtual_service_changed,
    one_virtual_service_changed_capture,
    one_endpoint_slice_changed,
    one_endpoint_slice_changed_east_west,
    one_endpoint_slice_changed_capture,
    one_virtual_service_changed_scoped,
    one_endpoint_slice_changed_scoped,
    full_translation_with_policies,
    one_authorization_policy_changed,
    one_tls_entry_renamed,
    one_ingress_sidecar_changed,
    one_workload_entry_changed
);
criterion_main!(benches);
