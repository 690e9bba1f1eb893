//! Sidecar egress scoping: what scoped sidecars are served (clusters, load assignments and
//! virtual hosts of the services they see, nothing else), built incrementally as a full build.

use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, Role, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::tests::{check, check_with, delete, istio, options};
use super::*;
use crate::index::Index;
use crate::model::sidecar_scope::fixtures::{
    service_entry as entry, sidecar, sidecar_proxy as proxy, sidecar_with,
};
use crate::translate::OUTBOUND_HTTP;
use prost::Message;

const ROUTE_CART: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: web}
spec:
  hosts: [front.web.svc.cluster.local]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
";

const CART_SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
";

#[test]
fn scoping_updates_match_a_full_build() {
    check(vec![
        istio(&entry("cart", "shop")),
        istio(&entry("front", "web")),
        istio(&entry("telemetry", "istio-system")),
        istio(&sidecar("default", "web", None, "[\"./*\"]")),
        // The VirtualService makes cart a destination web's scope names.
        istio(ROUTE_CART),
        istio(CART_SUBSETS),
        istio(&sidecar(
            "default",
            "istio-system",
            None,
            "[\"./*\", \"istio-system/*\"]",
        )),
        istio(&sidecar("admin", "web", Some("app: admin"), "[\"*/*\"]")),
        istio(&entry("basket", "shop")),
        // The route now sends to basket: web's sidecars see basket, not cart.
        istio(&ROUTE_CART.replace("cart.shop", "basket.shop")),
        istio(&entry("cart", "shop").replace("  resolution", "  exportTo: [web]\n  resolution")),
        istio(&entry("front", "web").replace("80", "8080")),
        delete(Kind::VirtualService, "web", "front"),
        delete(Kind::Sidecar, "web", "default"),
        delete(Kind::Sidecar, "istio-system", "default"),
        delete(Kind::Sidecar, "web", "admin"),
    ]);
}

/// The names of `type_url` a full build of `mesh` serves `proxy`, and its virtual hosts.
fn served(mesh: &Mesh, proxy: &ProxyInfo, type_url: &str) -> Vec<String> {
    let cache = SnapshotCache::new();
    cache.replace(Translator::new(options()).full(mesh));
    let state = cache.current();
    let index = type_index(type_url).expect("a served type");
    let resources: Vec<_> = state.snapshot.view(index, proxy).cloned().collect();
    if type_url != type_url::ROUTE {
        return resources.iter().map(|r| r.name().to_string()).collect();
    }
    let routes = resources
        .iter()
        .find(|r| r.name() == OUTBOUND_HTTP)
        .expect("every sidecar gets the routes");
    RouteConfiguration::decode(routes.body())
        .expect("decodes")
        .virtual_hosts
        .into_iter()
        .map(|vh| vh.name)
        .collect()
}

#[test]
fn scoped_sidecars_get_only_what_they_see() {
    let mut index = Index::new();
    for yaml in [
        entry("cart", "shop"),
        entry("front", "web"),
        entry("telemetry", "istio-system"),
        CART_SUBSETS.to_string(),
        sidecar(
            "default",
            "istio-system",
            None,
            "[\"./*\", \"istio-system/*\"]",
        ),
        sidecar("admin", "web", Some("app: admin"), "[\"*/*\"]"),
    ] {
        index.handle(istio(&yaml));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    // By name.
    let cart = [
        "outbound|80|v1|cart.shop.svc.cluster.local",
        "outbound|80||cart.shop.svc.cluster.local",
    ];
    let front = "outbound|80||front.web.svc.cluster.local";
    let telemetry = "outbound|80||telemetry.istio-system.svc.cluster.local";

    let web = proxy("web", &[]);
    for type_url in [type_url::CLUSTER, type_url::ENDPOINT] {
        assert_eq!(served(&mesh, &web, type_url), vec![front, telemetry]);
    }
    assert_eq!(
        served(&mesh, &web, type_url::ROUTE),
        // By namespace, as unscoped routes are.
        vec![
            "telemetry.istio-system.svc.cluster.local:80",
            "front.web.svc.cluster.local:80"
        ]
    );
    let shop = proxy("shop", &[]);
    let mut expected: Vec<&str> = cart.to_vec();
    expected.push(telemetry);
    assert_eq!(served(&mesh, &shop, type_url::CLUSTER), expected);
    // The admin workload's own scope sees everything; so do gateways, never scoped.
    let admin = proxy("web", &[("app", "admin")]);
    let gateway = ProxyInfo {
        role: Role::Router,
        ..proxy("web", &[])
    };
    for everything in [&admin, &gateway] {
        assert_eq!(served(&mesh, everything, type_url::CLUSTER).len(), 4);
    }
    assert_eq!(served(&mesh, &admin, type_url::ROUTE).len(), 3);
}

/// `--root-namespace`: a Sidecar there without selector is the default; one in
/// `istio-system` is then only that namespace's.
#[test]
fn the_root_namespace_is_the_configured_one() {
    let options = Options {
        root_namespace: "mesh-root".into(),
        ..options()
    };
    let mut pipeline = crate::reconcile::Pipeline::new(options, "cluster.local");
    for yaml in [
        entry("cart", "shop"),
        entry("front", "web"),
        sidecar("default", "mesh-root", None, "[\"./*\"]"),
        sidecar("default", "istio-system", None, "[\"*/*\"]"),
    ] {
        pipeline.index.handle(istio(&yaml));
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let state = cache.current();
    let clusters = |proxy: &ProxyInfo| -> Vec<String> {
        let index = type_index(type_url::CLUSTER).expect("a served type");
        state
            .snapshot
            .view(index, proxy)
            .map(|r| r.name().to_string())
            .collect()
    };
    assert_eq!(
        clusters(&proxy("web", &[])),
        vec!["outbound|80||front.web.svc.cluster.local"]
    );
    assert_eq!(clusters(&proxy("istio-system", &[])).len(), 2);
}

/// cart in shop, HTTP on 80 and 9080, and a database in shop at 10.9.0.1, TCP on 5432 and
/// 5433.
const TWO_PORTS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 9080, name: http-alt, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.9.0.1]
  ports: [{number: 5432, name: tcp, protocol: TCP}, {number: 5433, name: tcp-replica, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
";

/// web's Sidecar: shop's services on 9080 and 5432 only, its own namespace's on every port.
fn port_scoped_sidecar() -> String {
    sidecar_with(
        "default",
        "web",
        None,
        "  egress:
  - port: {number: 9080, name: http-alt, protocol: HTTP}
    hosts: [shop/*]
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: [shop/*]
  - hosts: [./*]
",
    )
}

/// An egress listener with a port: its hosts' routes and listeners on that port only; their
/// clusters on every port (istiod gives a sidecar the clusters of every service its scope
/// imports, whatever the listener's port).
#[test]
fn an_egress_listener_port_scopes_routes_and_listeners_by_port() {
    let mut index = Index::new();
    let documents = TWO_PORTS.split("---\n").map(str::to_string);
    for yaml in documents.chain([entry("front", "web"), port_scoped_sidecar()]) {
        index.handle(istio(&yaml));
    }
    let (mesh, problems) = Mesh::build(&index, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    let web = proxy("web", &[]);
    assert_eq!(
        served(&mesh, &web, type_url::ROUTE),
        vec![
            "cart.shop.svc.cluster.local:9080",
            "front.web.svc.cluster.local:80"
        ]
    );
    let clusters = served(&mesh, &web, type_url::CLUSTER);
    assert!(
        clusters.contains(&"outbound|80||cart.shop.svc.cluster.local".to_string())
            && clusters.contains(&"outbound|9080||cart.shop.svc.cluster.local".to_string()),
        "{clusters:?}"
    );
    // Capture mode: the database's listener on 5432 is web's, the one on 5433 not.
    let cache = SnapshotCache::new();
    let capture = Options {
        sidecar_listeners: crate::translate::sidecar::ListenerMode::Capture,
        ..options()
    };
    cache.replace(Translator::new(capture).full(&mesh));
    let listeners = type_index(type_url::LISTENER).expect("LDS");
    let names: Vec<String> = (cache.current().snapshot.view(listeners, &web))
        .map(|r| r.name().to_string())
        .collect();
    assert!(
        names.contains(&"10.9.0.1_5432".to_string())
            && !names.contains(&"10.9.0.1_5433".to_string()),
        "{names:?}"
    );
    // A sidecar of shop (unscoped) sees both.
    let shop = proxy("shop", &[]);
    let names: Vec<String> = (cache.current().snapshot.view(listeners, &shop))
        .map(|r| r.name().to_string())
        .collect();
    assert!(names.contains(&"10.9.0.1_5433".to_string()), "{names:?}");
}

#[test]
fn egress_port_updates_match_a_full_build() {
    let steps = || {
        vec![
            istio(TWO_PORTS.split("---\n").next().expect("cart")),
            istio(TWO_PORTS.split("---\n").nth(1).expect("db")),
            istio(&entry("front", "web")),
            istio(&port_scoped_sidecar()),
            istio(&port_scoped_sidecar().replace("number: 5432", "number: 5433")),
            istio(
                &TWO_PORTS
                    .split("---\n")
                    .nth(1)
                    .expect("db")
                    .replace("5433", "5434"),
            ),
            istio(&sidecar("default", "web", None, "[\"./*\"]")),
            istio(&port_scoped_sidecar()),
            delete(Kind::Sidecar, "web", "default"),
        ]
    };
    check(steps());
    check_with(
        Options {
            sidecar_listeners: crate::translate::sidecar::ListenerMode::Capture,
            ..options()
        },
        steps(),
    );
}
