//! The hash key of a DestinationRule selecting workloads (`workloadSelector`) on the routes
//! of the sidecars it selects, as istiod looks a proxy's rule up: the selected read its key,
//! the rest of its namespace and other namespaces their own rule's; built incrementally as a
//! full build.

use capstan_crds::Kind;

use super::tests::{check, delete, istio, outbound_routes_served};
use super::*;
use crate::index::Index;
use crate::translate::test_support::hash_keys;

const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]
";

/// bookinfo's rule for reviews: hashing on `x-ns`.
const NAMESPACE_RULE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-ns}}}
  subsets: [{name: v1, labels: {version: v1}}]
";

/// A rule for bookinfo's `app: productpage` sidecars: hashing on `x-user`.
const SELECTING: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-productpage, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  workloadSelector: {matchLabels: {app: productpage}}
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets: [{name: v1, labels: {version: v1}}]
";

/// A narrower one, for productpage's canaries: hashing on a cookie.
const NARROWER: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-canaries, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  workloadSelector: {matchLabels: {app: productpage, track: canary}}
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 0s}}}}
";

/// reviews by subset v1 for jason, the whole service for the rest.
const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews.bookinfo.svc.cluster.local, subset: v1}}]
  - route: [{destination: {host: reviews.bookinfo.svc.cluster.local}}]
";

fn mesh_of(documents: &[&str]) -> Mesh {
    let mut index = Index::new();
    for document in documents {
        index.handle(istio(document));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    mesh
}

/// Per route of reviews' virtual host, as a sidecar of `namespace` with `labels` is served
/// it by a full build: the keys its requests are hashed by.
fn keys(mesh: &Mesh, namespace: &str, labels: &[(&str, &str)]) -> Vec<Vec<String>> {
    let config = outbound_routes_served(mesh, namespace, labels);
    config
        .virtual_hosts
        .iter()
        .filter(|vh| vh.name.starts_with("reviews."))
        .flat_map(|vh| &vh.routes)
        .map(hash_keys)
        .collect()
}

#[test]
fn the_default_route_hashes_by_the_rule_that_selects_the_sidecar() {
    let mesh = mesh_of(&[REVIEWS, NAMESPACE_RULE, SELECTING]);
    let productpage = [("app", "productpage"), ("pod", "x")];
    assert_eq!(keys(&mesh, "bookinfo", &productpage), [["x-user"]]);
    assert_eq!(keys(&mesh, "bookinfo", &[("app", "details")]), [["x-ns"]]);
    // The rule selects in its own namespace only; elsewhere bookinfo's exported rule applies.
    assert_eq!(keys(&mesh, "shop", &productpage), [["x-ns"]]);
    // Without a namespace rule, the unselected hash by nothing.
    let mesh = mesh_of(&[REVIEWS, SELECTING]);
    assert_eq!(keys(&mesh, "bookinfo", &productpage), [["x-user"]]);
    assert_eq!(keys(&mesh, "bookinfo", &[]), [[] as [String; 0]]);
}

#[test]
fn virtual_service_routes_hash_by_the_rule_that_selects_the_sidecar_the_narrowest_first() {
    let mesh = mesh_of(&[REVIEWS, NAMESPACE_RULE, SELECTING, NARROWER, VS]);
    let x_user = vec!["x-user".to_string()];
    assert_eq!(
        keys(&mesh, "bookinfo", &[("app", "productpage")]),
        [x_user.clone(), x_user]
    );
    // Both select a canary: the one with more labels is its rule, and its top-level key
    // applies to subset v1 too, which it does not name (as istiod).
    let cookie = vec!["cookie session".to_string()];
    assert_eq!(
        keys(
            &mesh,
            "bookinfo",
            &[("app", "productpage"), ("track", "canary")]
        ),
        [cookie.clone(), cookie]
    );
    let x_ns = vec!["x-ns".to_string()];
    assert_eq!(keys(&mesh, "bookinfo", &[]), [x_ns.clone(), x_ns.clone()]);
    assert_eq!(
        keys(&mesh, "shop", &[("app", "productpage")]),
        [x_ns.clone(), x_ns]
    );
}

#[test]
fn selecting_rule_hash_updates_match_a_full_build() {
    check(vec![
        istio(REVIEWS),
        istio(SELECTING),
        istio(NAMESPACE_RULE),
        istio(VS),
        istio(NARROWER),
        delete(Kind::VirtualService, "bookinfo", "reviews"),
        delete(Kind::DestinationRule, "bookinfo", "reviews-for-productpage"),
        istio(VS),
        delete(Kind::DestinationRule, "bookinfo", "reviews-for-canaries"),
    ]);
}
