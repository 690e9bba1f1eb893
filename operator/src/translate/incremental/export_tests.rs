//! Which proxies reach which services: a service's `exportTo` (the namespaces whose proxies get
//! its virtual hosts), and AUTO_PASSTHROUGH gateways (every service under their hosts). Built
//! incrementally as a full build, and as the one-piece generator builds them.

use std::collections::BTreeSet;

use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::tests::{assert_routes_decode_as_route_configurations, check, delete, istio, options};
use super::*;
use crate::index::Index;
use crate::translate::OUTBOUND_HTTP;
use prost::Message;

fn entry(name: &str, namespace: &str, export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local, {name}.example.com]
  exportTo: {export_to}
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
"
    )
}

#[test]
fn export_to_updates_match_a_full_build() {
    check(vec![
        istio(&entry("billing", "finance", "[.]")),
        istio(&entry("shared", "finance", "[\"*\"]")),
        istio(&entry("billing", "finance", "[shop, marketing]")),
        istio(&entry("ledger", "audit", "[\"~\"]")),
        istio(&entry("billing", "finance", "[.]")),
        delete(Kind::ServiceEntry, "finance", "billing"),
    ]);
}

/// The resources of `type_url` a full build of `mesh` serves proxies of `namespace`.
fn served(mesh: &Mesh, namespace: Option<&str>, type_url: &str) -> Vec<capstan_xds::Resource> {
    let cache = SnapshotCache::new();
    cache.replace(Translator::new(options()).full(mesh));
    let state = cache.current();
    let proxy = ProxyInfo {
        namespace: namespace.map(Into::into),
        ..ProxyInfo::default()
    };
    let index = type_index(type_url).expect("a served type");
    state.snapshot.view(index, &proxy).cloned().collect()
}

/// The outbound route configuration proxies of `namespace` get.
fn routes(mesh: &Mesh, namespace: Option<&str>) -> RouteConfiguration {
    let served = served(mesh, namespace, type_url::ROUTE);
    let resource = served
        .iter()
        .find(|r| r.name() == OUTBOUND_HTTP)
        .expect("every proxy gets the routes");
    RouteConfiguration::decode(resource.body()).expect("decodes")
}

/// The virtual host names proxies of `namespace` get.
fn seen(mesh: &Mesh, namespace: Option<&str>) -> Vec<String> {
    routes(mesh, namespace)
        .virtual_hosts
        .into_iter()
        .map(|vh| vh.name)
        .collect()
}

#[test]
fn only_the_namespaces_a_service_is_exported_to_see_it() {
    let mut index = Index::new();
    for yaml in [
        entry("billing", "finance", "[.]"),
        entry("shared", "finance", "[\"*\"]"),
        entry("promo", "marketing", "[shop]"),
        entry("ledger", "audit", "[\"~\"]"),
    ] {
        index.handle(istio(&yaml));
    }
    let (mesh, _) = Mesh::build(&index, "cluster.local");
    assert_routes_decode_as_route_configurations(&mesh);
    // Each entry's two hosts: outside the cluster first, then by namespace.
    let hosts = |names: &[&str]| -> Vec<String> {
        let external = names
            .iter()
            .map(|n| format!("{}.example.com:80", n.split('.').next().unwrap_or_default()));
        let mut external: Vec<String> = external.collect();
        external.sort();
        let local = names.iter().map(|n| format!("{n}.svc.cluster.local:80"));
        external.into_iter().chain(local).collect()
    };
    assert_eq!(
        seen(&mesh, Some("finance")),
        hosts(&["billing.finance", "shared.finance"])
    );
    assert_eq!(
        seen(&mesh, Some("shop")),
        hosts(&["shared.finance", "promo.marketing"])
    );
    assert_eq!(
        seen(&mesh, Some("marketing")),
        hosts(&["shared.finance"]),
        "`shop` only"
    );
    assert_eq!(seen(&mesh, Some("elsewhere")), hosts(&["shared.finance"]));
    assert_eq!(seen(&mesh, None), hosts(&["shared.finance"]));
    assert_eq!(
        seen(&mesh, Some("audit")),
        hosts(&["shared.finance"]),
        "`~`: not even its own"
    );
}

/// An AUTO_PASSTHROUGH gateway forwards to every service under its hosts: one arriving later
/// gets its chains without anything else changing.
#[test]
fn auto_passthrough_gateways_follow_services_arriving_under_their_hosts() {
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: eastwest, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: [\"*.local\"]
";
    let internal = |name, namespace| {
        let yaml = entry(name, namespace, "[\"*\"]");
        yaml.replace("  resolution:", "  location: MESH_INTERNAL\n  resolution:")
    };
    check(vec![
        istio(gateway),
        istio(&internal("billing", "finance")),
        istio(&internal("ledger", "audit")),
        delete(Kind::ServiceEntry, "finance", "billing"),
    ]);
}

/// The SNI-DNAT clusters and load assignments an AUTO_PASSTHROUGH server gives the services
/// under its hosts come with the server, follow the services' rules and endpoints, and go
/// with it; incremental builds match full ones at every step.
#[test]
fn sni_dnat_clusters_come_and_go_with_auto_passthrough_servers() {
    let gateway = |hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: eastwest, namespace: istio-system}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    tls: {{mode: AUTO_PASSTHROUGH}}
    hosts: [\"{hosts}\"]
"
        )
    };
    let internal = REVIEWS.replace("  resolution:", "  location: MESH_INTERNAL\n  resolution:");
    let rule = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews.bookinfo.svc.cluster.local
  trafficPolicy: {{tls: {{mode: {tls}}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
"
        )
    };
    let steps: Vec<(crate::index::Event, &[&str])> = vec![
        (
            istio(internal.split("---\n").next().expect("the entry")),
            &[],
        ),
        (istio(&gateway("*.local")), &[""]),
        (istio(&rule("ISTIO_MUTUAL")), &["", "v1"]),
        (istio(&gateway("*.example.com")), &[]),
        (istio(&gateway("*.bookinfo.svc.cluster.local")), &["", "v1"]),
        (delete(Kind::Gateway, "istio-system", "eastwest"), &[]),
    ];
    check(steps.iter().map(|(e, _)| e.clone()).collect());

    let mut pipeline = crate::reconcile::Pipeline::new(options(), "cluster.local");
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    for (step, (event, subsets)) in steps.into_iter().enumerate() {
        let changes = pipeline.index.handle(event);
        cache.apply(pipeline.update(&changes));
        let state = cache.current();
        let gateway = ProxyInfo {
            role: capstan_xds::Role::Router,
            labels: [("istio".to_string(), "eastwestgateway".to_string())].into(),
            ..ProxyInfo::default()
        };
        for type_url in [type_url::CLUSTER, type_url::ENDPOINT] {
            let index = type_index(type_url).expect("a served type");
            let names = |proxy: &ProxyInfo| -> Vec<String> {
                (state.snapshot.view(index, proxy))
                    .map(|r| r.name().to_string())
                    .filter(|n| n.starts_with("outbound_."))
                    .collect()
            };
            let expected: Vec<String> = subsets
                .iter()
                .map(|s| format!("outbound_.9080_.{s}_.reviews.bookinfo.svc.cluster.local"))
                .collect();
            assert_eq!(names(&gateway), expected, "step {step}: {type_url}");
            let sidecar = names(&ProxyInfo::default());
            assert!(
                sidecar.is_empty(),
                "step {step}: a sidecar gets {sidecar:?}"
            );
        }
    }
}

const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

fn by_source(namespace: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  http:
  - match: [{{sourceNamespace: {namespace}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]
"
    )
}

/// reviews with its subsets and `virtual_service`, checked: no problems, and the route
/// variants decode as the one-piece generator builds them.
fn reviews_mesh(virtual_service: &str) -> Mesh {
    let mut index = Index::new();
    for document in REVIEWS.split("---\n").chain([virtual_service]) {
        index.handle(istio(document));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    assert_routes_decode_as_route_configurations(&mesh);
    mesh
}

/// [`check`] of `steps` after reviews' ServiceEntry and DestinationRule are applied.
fn check_after_reviews(steps: impl IntoIterator<Item = crate::index::Event>) {
    check(REVIEWS.split("---\n").map(istio).chain(steps).collect());
}

const WHOLE: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const V1: &str = "outbound|9080|v1|reviews.bookinfo.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.bookinfo.svc.cluster.local";

/// The clusters the routes of `reviews` send proxies of `namespace` to, in order.
fn reviews_clusters(mesh: &Mesh, namespace: Option<&str>) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    routes(mesh, namespace)
        .virtual_hosts
        .iter()
        .filter(|vh| vh.name.starts_with("reviews."))
        .flat_map(|vh| &vh.routes)
        .filter_map(|r| match &r.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn source_namespace_matches_route_only_their_namespaces_sidecars() {
    let mesh = reviews_mesh(&by_source("shop"));
    let (v1, v2) = (V1, V2);
    assert_eq!(reviews_clusters(&mesh, Some("shop")), vec![v2, v1]);
    assert_eq!(reviews_clusters(&mesh, Some("bookinfo")), vec![v1]);
    assert_eq!(reviews_clusters(&mesh, Some("elsewhere")), vec![v1]);
    assert_eq!(reviews_clusters(&mesh, None), vec![v1]);
    // The namespace the service lives in, too.
    let mesh = reviews_mesh(&by_source("bookinfo"));
    assert_eq!(reviews_clusters(&mesh, Some("bookinfo")), vec![v2, v1]);
    assert_eq!(reviews_clusters(&mesh, Some("shop")), vec![v1]);
}

#[test]
fn source_namespace_updates_match_a_full_build() {
    check_after_reviews([
        istio(&by_source("shop")),
        istio(&by_source("bookinfo")),
        istio(&by_source("marketing")),
        delete(Kind::VirtualService, "bookinfo", "reviews"),
    ]);
}

fn exported_vs(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  exportTo: {export_to}
  http:
  - match: [{{sourceNamespace: shop}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
"
    )
}

#[test]
fn a_virtual_service_routes_only_the_sidecars_it_is_exported_to() {
    let mesh = reviews_mesh(&exported_vs("[.]"));
    let (whole, v1, v2) = (WHOLE, V1, V2);
    assert_eq!(reviews_clusters(&mesh, Some("bookinfo")), vec![v2]);
    // `shop` is named by a match, but the VirtualService is not exported there.
    assert_eq!(reviews_clusters(&mesh, Some("shop")), vec![whole]);
    assert_eq!(reviews_clusters(&mesh, Some("elsewhere")), vec![whole]);
    assert_eq!(reviews_clusters(&mesh, None), vec![whole]);

    let mesh = reviews_mesh(&exported_vs("[., shop]"));
    assert_eq!(reviews_clusters(&mesh, Some("shop")), vec![v1, v2]);
    assert_eq!(reviews_clusters(&mesh, Some("elsewhere")), vec![whole]);
}

#[test]
fn virtual_service_export_to_updates_match_a_full_build() {
    check_after_reviews([
        istio(&exported_vs("[.]")),
        istio(&exported_vs("[., shop]")),
        istio(&exported_vs("[\"*\"]")),
        istio(&exported_vs("[\"~\"]")),
        delete(Kind::VirtualService, "bookinfo", "reviews"),
    ]);
}

fn exported_dr(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews.bookinfo.svc.cluster.local
  exportTo: {export_to}
  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"
    )
}

/// The clusters of reviews proxies of `namespace` get, with their load balancer.
fn reviews_cluster_policies(mesh: &Mesh, namespace: Option<&str>) -> Vec<(String, i32)> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    served(mesh, namespace, type_url::CLUSTER)
        .iter()
        .filter(|r| r.name().contains("reviews"))
        .map(|r| {
            let cluster = Cluster::decode(r.body()).expect("decodes");
            (cluster.name, cluster.lb_policy)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn a_destination_rule_applies_only_to_the_namespaces_it_is_exported_to() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    let service_entry = REVIEWS.split("---\n").next().expect("the ServiceEntry");
    let mut index = Index::new();
    for document in [service_entry, exported_dr("[.]").as_str()] {
        index.handle(istio(document));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    let name = |subset: &str| format!("outbound|9080|{subset}|reviews.bookinfo.svc.cluster.local");
    let random = LbPolicy::Random as i32;
    let least_request = LbPolicy::LeastRequest as i32;
    // Its own namespace: the rule's subsets and policy.
    assert_eq!(
        reviews_cluster_policies(&mesh, Some("bookinfo")),
        // By name: `|v1|` and `|v2|` sort before `||`.
        vec![
            (name("v1"), random),
            (name("v2"), random),
            (name(""), random)
        ]
    );
    // Anyone else: the service as if there were no rule (istiod's defaults, no subsets).
    for other in [Some("shop"), None] {
        assert_eq!(
            reviews_cluster_policies(&mesh, other),
            vec![(name(""), least_request)],
            "{other:?}"
        );
    }
}

#[test]
fn destination_rule_export_to_updates_match_a_full_build() {
    let service_entry = REVIEWS.split("---\n").next().expect("the ServiceEntry");
    check(vec![
        istio(service_entry),
        istio(&exported_dr("[.]")),
        istio(&exported_dr("[., shop]")),
        istio(&exported_dr("[\"*\"]")),
        istio(&exported_dr("[shop]")),
        delete(Kind::DestinationRule, "bookinfo", "reviews"),
    ]);
}
