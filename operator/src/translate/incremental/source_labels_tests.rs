//! `sourceLabels` matches: the route variants per label class, which sidecar reads which (as
//! the snapshot picks a proxy's variant by its namespace and labels), with and without a
//! workload `Sidecar` scope, built incrementally as a full build.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;

use super::tests::{
    assert_routes_decode_as_route_configurations, check, delete, istio, outbound_routes_served,
};
use super::*;
use crate::index::Index;

const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}, {address: 10.0.0.3, labels: {version: v3}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.1.1}]
";

/// reviews: productpage's sidecars go to v2, those of `version: canary` workloads to v3,
/// everyone else to v1.
const BY_LABELS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews.bookinfo.svc.cluster.local, subset: v2}}]
  - match: [{sourceLabels: {version: canary}}]
    route: [{destination: {host: reviews.bookinfo.svc.cluster.local, subset: v3}}]
  - route: [{destination: {host: reviews.bookinfo.svc.cluster.local, subset: v1}}]
";

/// ratings: `app: productpage` workloads of namespace `front` only get the delay.
const RATINGS_BY_SOURCE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  http:
  - name: front-productpage
    match: [{sourceLabels: {app: productpage}, sourceNamespace: front}]
    route: [{destination: {host: ratings.bookinfo.svc.cluster.local}}]
  - name: rest
    route: [{destination: {host: ratings.bookinfo.svc.cluster.local}}]
";

/// productpage's sidecars see reviews only.
const SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage, namespace: bookinfo}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: [./reviews.bookinfo.svc.cluster.local]}]
";

const V1: &str = "outbound|9080|v1|reviews.bookinfo.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.bookinfo.svc.cluster.local";
const V3: &str = "outbound|9080|v3|reviews.bookinfo.svc.cluster.local";

/// The mesh of `documents`, checked: no problems, and without a `Sidecar`, the route variants
/// decode as the one-piece generator builds them (it does not scope).
fn mesh_of(documents: &[&str]) -> Mesh {
    let mut index = Index::new();
    for document in documents.iter().flat_map(|d| d.split("---\n")) {
        index.handle(istio(document));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    if mesh.sidecar_scopes.is_empty() {
        assert_routes_decode_as_route_configurations(&mesh);
    }
    mesh
}

/// The (route name, cluster) pairs of `host`'s virtual host in `config`.
fn routes_to(config: &RouteConfiguration, host: &str) -> Vec<(String, String)> {
    config
        .virtual_hosts
        .iter()
        .filter(|vh| vh.name.starts_with(host))
        .flat_map(|vh| &vh.routes)
        .filter_map(|r| match &r.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => Some((r.name.clone(), c.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn clusters(mesh: &Mesh, namespace: &str, labels: &[(&str, &str)]) -> Vec<String> {
    routes_to(&outbound_routes_served(mesh, namespace, labels), "reviews.")
        .into_iter()
        .map(|(_, cluster)| cluster)
        .collect()
}

#[test]
fn each_sidecar_reads_the_matches_its_labels_select() {
    let mesh = mesh_of(&[REVIEWS, BY_LABELS]);
    assert_eq!(clusters(&mesh, "bookinfo", &[]), [V1]);
    assert_eq!(clusters(&mesh, "bookinfo", &[("app", "details")]), [V1]);
    assert_eq!(
        clusters(&mesh, "bookinfo", &[("app", "productpage"), ("pod", "x")]),
        [V2, V1]
    );
    assert_eq!(
        clusters(&mesh, "elsewhere", &[("app", "productpage")]),
        [V2, V1],
        "a namespace without a variant of its own"
    );
    assert_eq!(
        clusters(&mesh, "bookinfo", &[("version", "canary")]),
        [V3, V1]
    );
    assert_eq!(
        clusters(
            &mesh,
            "bookinfo",
            &[("app", "productpage"), ("version", "canary")]
        ),
        [V2, V3, V1],
        "both selectors pick it: both matches, in order"
    );
}

#[test]
fn label_classes_of_several_virtual_services_combine() {
    let mesh = mesh_of(&[REVIEWS, BY_LABELS, RATINGS_BY_SOURCE]);
    let names = |namespace: &str, labels: &[(&str, &str)]| -> Vec<String> {
        let config = outbound_routes_served(&mesh, namespace, labels);
        routes_to(&config, "ratings.")
            .into_iter()
            .map(|(name, _)| name)
            .chain(
                routes_to(&config, "reviews.")
                    .into_iter()
                    .map(|(_, cluster)| cluster),
            )
            .collect()
    };
    let productpage = [("app", "productpage")];
    assert_eq!(
        names("front", &productpage),
        ["front-productpage", "rest", V2, V1]
    );
    assert_eq!(names("bookinfo", &productpage), ["rest", V2, V1]);
    assert_eq!(
        names("front", &[("app", "productpage"), ("version", "canary")]),
        ["front-productpage", "rest", V2, V3, V1]
    );
    assert_eq!(names("front", &[]), ["rest", V1]);
}

#[test]
fn a_workload_scope_and_label_classes_combine() {
    // The productpage Sidecar sees reviews only; ratings' routes are not its own.
    let mesh = mesh_of(&[REVIEWS, BY_LABELS, SIDECAR]);
    let config = outbound_routes_served(&mesh, "bookinfo", &[("app", "productpage")]);
    assert_eq!(routes_to(&config, "ratings."), []);
    assert_eq!(
        clusters(&mesh, "bookinfo", &[("app", "productpage")]),
        [V2, V1]
    );
    assert_eq!(
        clusters(
            &mesh,
            "bookinfo",
            &[("app", "productpage"), ("version", "canary")]
        ),
        [V2, V3, V1]
    );
    let canary = outbound_routes_served(&mesh, "bookinfo", &[("version", "canary")]);
    assert_eq!(routes_to(&canary, "ratings.").len(), 1, "not scoped");
}

#[test]
fn source_labels_updates_match_a_full_build() {
    check(
        REVIEWS
            .split("---\n")
            .chain([BY_LABELS, RATINGS_BY_SOURCE, SIDECAR])
            .map(istio)
            .chain([
                delete(Kind::VirtualService, "bookinfo", "reviews"),
                istio(BY_LABELS),
                delete(Kind::Sidecar, "bookinfo", "productpage"),
                delete(Kind::VirtualService, "bookinfo", "ratings"),
            ])
            .collect(),
    );
}
