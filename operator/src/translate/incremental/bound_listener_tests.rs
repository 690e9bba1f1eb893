//! `Sidecar` listeners with `captureMode: NONE`: a listener on a socket of its own for the
//! sidecars whose scope binds it — egress ones routed through their port's route
//! configuration, ingress ones with their port's inbound chains; built incrementally as a
//! full build.

use capstan_crds::Kind;
use capstan_xds::ProxyInfo;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use prost::Message;

use super::tests::{capture, check_with, delete, istio, options, served_to};
use super::*;
use crate::index::Index;
use crate::model::sidecar_scope::fixtures::{service_entry, sidecar_proxy as proxy, sidecar_with};

/// `namespace`'s Sidecar (for workloads with `selector`, if given) binding an HTTP egress
/// listener on 127.0.0.1:`port` to its namespace's services.
fn binding(namespace: &str, selector: Option<&str>, port: u32) -> String {
    let egress = format!(
        "  egress:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    captureMode: NONE
    hosts: [./*]
  - hosts: [./*]
"
    );
    let name = if selector.is_some() { "app" } else { "default" };
    sidecar_with(name, namespace, selector, &egress)
}

fn mesh_yamls(extra: &[String]) -> Vec<String> {
    let mut yamls = vec![
        service_entry("reviews", "bookinfo"),
        service_entry("front", "web"),
    ];
    yamls.extend(extra.iter().cloned());
    yamls
}

fn listener_names(options: Options, yamls: &[String], proxy: &ProxyInfo) -> Vec<String> {
    served_to::<Listener>(options, yamls, type_url::LISTENER, proxy)
        .into_iter()
        .map(|l| l.name)
        .collect()
}

fn route_name_of(listener: &Listener) -> String {
    let filter = &listener.filter_chains[0].filters[0];
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        panic!("a typed config");
    };
    let manager = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    match manager.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bound_egress_listener_is_served_to_the_sidecars_its_scope_covers() {
    let yamls = mesh_yamls(&[binding("bookinfo", None, 80)]);
    let bookinfo = proxy("bookinfo", &[]);
    let listeners = served_to::<Listener>(capture(), &yamls, type_url::LISTENER, &bookinfo);
    let bound = listeners
        .iter()
        .find(|l| l.name == "127.0.0.1_80")
        .expect("the bound listener");
    assert_eq!(
        bound.bind_to_port, None,
        "a socket of its own (Envoy's default)"
    );
    assert_eq!(route_name_of(bound), "80");
    let routes = served_to::<RouteConfiguration>(capture(), &yamls, type_url::ROUTE, &bookinfo);
    let port_80 = routes.iter().find(|r| r.name == "80").expect("route 80");
    assert!(
        (port_80.virtual_hosts.iter()).any(|vh| vh.domains.contains(&"reviews".to_string())),
        "{port_80:?}"
    );
    // Another namespace's sidecars, and a workload whose own Sidecar binds nothing, do not.
    assert!(
        !listener_names(capture(), &yamls, &proxy("web", &[])).contains(&"127.0.0.1_80".into())
    );
    let mut with_own = yamls.clone();
    with_own.push(sidecar_with(
        "app",
        "bookinfo",
        Some("app: ratings"),
        "  egress: [{hosts: [./*]}]\n",
    ));
    let ratings = proxy("bookinfo", &[("app", "ratings")]);
    assert!(!listener_names(capture(), &with_own, &ratings).contains(&"127.0.0.1_80".into()));
    assert!(listener_names(capture(), &with_own, &bookinfo).contains(&"127.0.0.1_80".into()));
}

/// A port no service has still gets its route configuration (the fallback alone), so the
/// listener is served complete.
#[test]
fn a_bound_port_without_services_has_a_route_configuration() {
    let yamls = mesh_yamls(&[binding("bookinfo", None, 7070)]);
    let routes = served_to::<RouteConfiguration>(
        capture(),
        &yamls,
        type_url::ROUTE,
        &proxy("bookinfo", &[]),
    );
    let config = routes
        .iter()
        .find(|r| r.name == "7070")
        .expect("route 7070");
    assert_eq!(config.virtual_hosts.len(), 1, "the fallback: {config:?}");
}

#[test]
fn direct_mode_reports_a_bound_egress_listener_and_serves_none() {
    let mut index = Index::new();
    for yaml in mesh_yamls(&[binding("bookinfo", None, 80)]) {
        index.handle(istio(&yaml));
    }
    let (mesh, _) = Mesh::build(&index, "cluster.local");
    let mut translator = Translator::new(options());
    translator.full(&mesh);
    let problems: Vec<String> = translator
        .problems()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect();
    assert_eq!(problems, ["Sidecar bookinfo/default spec.egress"]);
    let yamls = mesh_yamls(&[binding("bookinfo", None, 80)]);
    let names = listener_names(options(), &yamls, &proxy("bookinfo", &[]));
    assert_eq!(names, [crate::translate::OUTBOUND_HTTP]);
}

#[test]
fn bound_egress_listeners_built_incrementally_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&service_entry("reviews", "bookinfo")),
            istio(&binding("bookinfo", None, 80)),
            istio(&binding("bookinfo", Some("app: ratings"), 9090)),
            // Port 80 → 7070: no service there.
            istio(&binding("bookinfo", None, 7070)),
            delete(Kind::Sidecar, "bookinfo", "app"),
            istio(&binding("istio-system", None, 80)),
            delete(Kind::Sidecar, "bookinfo", "default"),
            delete(Kind::Sidecar, "istio-system", "default"),
        ],
    );
}

/// `namespace`'s Sidecar (for workloads with `selector`, if given) with an HTTP ingress
/// listener on 127.0.0.1:`port` of its own, to the app on 127.0.0.1:8080.
fn binding_ingress(namespace: &str, selector: Option<&str>, port: u32) -> String {
    let ingress = format!(
        "  ingress:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    captureMode: NONE
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8080
"
    );
    let name = if selector.is_some() { "app" } else { "default" };
    sidecar_with(name, namespace, selector, &ingress)
}

#[test]
fn a_bound_ingress_listener_has_its_port_chains_on_a_socket_of_its_own() {
    let yamls = mesh_yamls(&[binding_ingress("bookinfo", None, 9080)]);
    let bookinfo = proxy("bookinfo", &[]);
    let listeners = served_to::<Listener>(capture(), &yamls, type_url::LISTENER, &bookinfo);
    let bound = listeners
        .iter()
        .find(|l| l.name == "127.0.0.1_9080")
        .expect("the bound ingress listener");
    assert_eq!(
        bound.bind_to_port, None,
        "a socket of its own (Envoy's default)"
    );
    assert!(
        bound
            .listener_filters
            .iter()
            .all(|f| !f.name.contains("original_dst")),
        "{bound:?}"
    );
    let [chain] = &bound.filter_chains[..] else {
        panic!("one chain: {bound:?}");
    };
    let on = chain.filter_chain_match.as_ref();
    assert!(on.is_none_or(|m| m.destination_port.is_none()), "{chain:?}");
    assert_eq!(
        chain.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    // virtualInbound no longer takes the port.
    let inbound = listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .expect("virtualInbound");
    assert!(
        inbound.filter_chains.iter().all(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .is_none_or(|p| p.value != 9080)
        }),
        "{inbound:?}"
    );
    assert!(
        !listener_names(capture(), &yamls, &proxy("web", &[])).contains(&"127.0.0.1_9080".into())
    );
}

#[test]
fn bound_ingress_listeners_built_incrementally_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&service_entry("reviews", "bookinfo")),
            istio(&binding_ingress("bookinfo", None, 9080)),
            istio(&binding_ingress("bookinfo", Some("app: ratings"), 9080)),
            istio(&binding_ingress("bookinfo", None, 9090)),
            delete(Kind::Sidecar, "bookinfo", "app"),
            istio(&binding("bookinfo", None, 80)),
            delete(Kind::Sidecar, "bookinfo", "default"),
        ],
    );
}

/// A ServiceEntry whose host is another host's short name: two virtual hosts claim one
/// domain, and the routes are built the slow way.
const ALIAS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alias, namespace: web}
spec:
  hosts: [reviews.bookinfo]
  ports: [{number: 80, name: http}]
  resolution: DNS
";

#[test]
fn the_slow_route_assembly_serves_a_bound_port_without_services_too() {
    let yamls = mesh_yamls(&[binding("bookinfo", None, 7070), ALIAS.to_string()]);
    let routes = served_to::<RouteConfiguration>(
        capture(),
        &yamls,
        type_url::ROUTE,
        &proxy("bookinfo", &[]),
    );
    let config = routes
        .iter()
        .find(|r| r.name == "7070")
        .expect("route 7070");
    assert_eq!(config.virtual_hosts.len(), 1, "the fallback: {config:?}");
    check_with(
        capture(),
        vec![
            istio(&service_entry("reviews", "bookinfo")),
            istio(&binding("bookinfo", None, 7070)),
            istio(ALIAS),
            istio(&binding("bookinfo", None, 7071)),
            delete(Kind::ServiceEntry, "web", "alias"),
        ],
    );
}
