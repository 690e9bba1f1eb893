//! The outbound traffic policy: what capture-mode sidecars do with what no service has, per
//! `Sidecar` and mesh mode, built incrementally as a full build; and what direct mode says.

use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::tests::{check_with, delete, istio, options, served_to};
use super::*;
use crate::model::sidecar_scope::OutboundMode;
use crate::model::sidecar_scope::fixtures::{
    service_entry as entry, sidecar, sidecar_proxy as proxy,
};
use crate::reconcile::Pipeline;
use crate::translate::OUTBOUND_HTTP;
use prost::Message;

fn capture(mesh_mode: OutboundMode) -> Options {
    Options {
        sidecar_listeners: ListenerMode::Capture,
        outbound_traffic_policy: mesh_mode,
        mesh_settings: Default::default(),
        ..options()
    }
}

/// `sidecar` with an outbound traffic policy of `mode`.
fn with_mode(sidecar: String, mode: &str) -> String {
    format!("{sidecar}  outboundTrafficPolicy: {{mode: {mode}}}\n")
}

/// An HTTPS ServiceEntry `secure.example.com` on 443: the port's TLS listener.
fn https_entry() -> String {
    "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: web}
spec:
  hosts: [secure.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
"
    .to_string()
}

/// shop's Sidecars: `REGISTRY_ONLY` for the namespace, `ALLOW_ANY` for its `app: open`
/// workloads.
fn shop_sidecars() -> [String; 2] {
    [
        with_mode(
            sidecar("default", "shop", None, "[\"*/*\"]"),
            "REGISTRY_ONLY",
        ),
        with_mode(
            sidecar("open", "shop", Some("app: open"), "[\"./*\"]"),
            "ALLOW_ANY",
        ),
    ]
}

fn steps() -> Vec<crate::index::Event> {
    let [locked, open] = shop_sidecars();
    vec![
        istio(&entry("cart", "shop")),
        istio(&entry("front", "web")),
        istio(&https_entry()),
        istio(&locked),
        istio(&open),
        // The root default sets the mode of every namespace without a Sidecar.
        istio(&with_mode(
            sidecar("default", "istio-system", None, "[\"*/*\"]"),
            "REGISTRY_ONLY",
        )),
        istio(&sidecar("default", "shop", None, "[\"*/*\"]")),
        // The TLS port goes and comes back while Sidecars set modes.
        delete(Kind::ServiceEntry, "web", "secure"),
        istio(&https_entry()),
        istio(&through_proxy(sidecar("proxied", "web", None, "[\"*/*\"]"))),
        delete(Kind::Sidecar, "istio-system", "default"),
        delete(Kind::Sidecar, "shop", "open"),
        delete(Kind::Sidecar, "shop", "default"),
    ]
}

#[test]
fn outbound_policy_updates_match_a_full_build() {
    check_with(capture(OutboundMode::AllowAny), steps());
    check_with(capture(OutboundMode::RegistryOnly), steps());
}

/// What a full build of `yamls` serves `proxy` for what no service has: virtualOutbound's
/// cluster, and the route configuration's last virtual host and the cluster it routes to
/// (empty for a direct response).
fn unknown_destinations(
    options: Options,
    yamls: &[String],
    proxy: &ProxyInfo,
) -> (String, String, String) {
    let listener = served_to::<Listener>(options.clone(), yamls, type_url::LISTENER, proxy)
        .into_iter()
        .find(|l| l.name == "virtualOutbound")
        .expect("virtualOutbound is served");
    let chain = &listener.filter_chains[0];
    let proxy_config = match &chain.filters[0].config_type {
        Some(FilterConfig::TypedConfig(any)) => TcpProxy::decode(any.value.as_slice()),
        other => panic!("{other:?}"),
    }
    .expect("a tcp_proxy");
    let Some(ClusterSpecifier::Cluster(cluster)) = proxy_config.cluster_specifier else {
        panic!("one cluster");
    };
    let routes = served_to::<RouteConfiguration>(options, yamls, type_url::ROUTE, proxy)
        .into_iter()
        .next()
        .expect("a port's route configuration is served");
    let last = routes.virtual_hosts.last().expect("virtual hosts");
    assert_eq!(last.domains, vec!["*"]);
    let routed = match &last.routes[0].action {
        Some(Action::Route(action)) => match &action.cluster_specifier {
            Some(RouteCluster::Cluster(c)) => c.clone(),
            other => panic!("{other:?}"),
        },
        _ => String::new(),
    };
    (cluster, last.name.clone(), routed)
}

#[test]
fn what_no_service_has_goes_where_each_sidecars_mode_says() {
    let [locked, open] = shop_sidecars();
    let yamls = [entry("cart", "shop"), entry("front", "web"), locked, open];
    let passthrough = "PassthroughCluster".to_string();
    let passed = (passthrough.clone(), "allow_any".to_string(), passthrough);
    let blocked = (
        "BlackHoleCluster".to_string(),
        "block_all".to_string(),
        String::new(),
    );
    let allow_any = capture(OutboundMode::AllowAny);
    let of = |options: &Options, ns: &str, labels: &[(&str, &str)]| {
        unknown_destinations(options.clone(), &yamls, &proxy(ns, labels))
    };
    assert_eq!(of(&allow_any, "web", &[]), passed);
    assert_eq!(of(&allow_any, "shop", &[]), blocked);
    assert_eq!(of(&allow_any, "shop", &[("app", "open")]), passed);
    // The mesh's mode decides for sidecars no Sidecar sets one for.
    let registry_only = capture(OutboundMode::RegistryOnly);
    assert_eq!(of(&registry_only, "web", &[]), blocked);
    assert_eq!(of(&registry_only, "bookinfo", &[]), blocked);
    assert_eq!(of(&registry_only, "shop", &[("app", "open")]), passed);
}

/// Where a full build of `yamls` has `proxy` send a name no service has on the TLS port 443:
/// the cluster of the listener's last filter chain.
fn tls_fallthrough(options: Options, yamls: &[String], proxy: &ProxyInfo) -> String {
    let listener = served_to::<Listener>(options, yamls, type_url::LISTENER, proxy)
        .into_iter()
        .find(|l| l.name == "0.0.0.0_443")
        .expect("the TLS port's listener");
    let last = listener.filter_chains.last().expect("filter chains");
    assert!(
        last.filter_chain_match.is_none(),
        "the last chain takes every name: {last:?}"
    );
    last.name.clone()
}

#[test]
fn tls_names_no_service_has_go_where_each_sidecars_mode_says() {
    let [locked, open] = shop_sidecars();
    let yamls = [
        entry("cart", "shop"),
        https_entry(),
        locked,
        open,
        through_proxy(sidecar("default", "web", None, "[\"*/*\"]")),
    ];
    let of = |mode: OutboundMode, ns: &str, labels: &[(&str, &str)]| {
        tls_fallthrough(capture(mode), &yamls, &proxy(ns, labels))
    };
    assert_eq!(
        of(OutboundMode::AllowAny, "bookinfo", &[]),
        "PassthroughCluster"
    );
    assert_eq!(of(OutboundMode::AllowAny, "shop", &[]), "BlackHoleCluster");
    assert_eq!(
        of(OutboundMode::AllowAny, "shop", &[("app", "open")]),
        "PassthroughCluster"
    );
    assert_eq!(
        of(OutboundMode::RegistryOnly, "bookinfo", &[]),
        "BlackHoleCluster"
    );
    // As istiod: an egress proxy takes only what reaches virtualOutbound.
    assert_eq!(of(OutboundMode::AllowAny, "web", &[]), "PassthroughCluster");
}

/// `sidecar` sending what no service has to the egress proxy `squid.shop` on 3128.
fn through_proxy(sidecar: String) -> String {
    format!(
        "{sidecar}  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {{host: squid.shop.svc.cluster.local, port: {{number: 3128}}}}\n"
    )
}

#[test]
fn an_egress_proxy_takes_what_no_service_has() {
    let yamls = [
        entry("cart", "shop"),
        entry("front", "web"),
        through_proxy(sidecar("default", "web", None, "[\"*/*\"]")),
    ];
    let proxy_cluster = "outbound|3128||squid.shop.svc.cluster.local".to_string();
    let of =
        |ns: &str| unknown_destinations(capture(OutboundMode::AllowAny), &yamls, &proxy(ns, &[]));
    assert_eq!(
        of("web"),
        (
            proxy_cluster.clone(),
            "allow_any".to_string(),
            proxy_cluster
        )
    );
    let passthrough = "PassthroughCluster".to_string();
    assert_eq!(
        of("shop"),
        (passthrough.clone(), "allow_any".to_string(), passthrough)
    );
}

#[test]
fn direct_mode_reports_an_outbound_policy_and_serves_no_fallback() {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    for yaml in [
        entry("cart", "shop"),
        with_mode(sidecar("default", "shop", None, "[\"*/*\"]"), "ALLOW_ANY"),
    ] {
        pipeline.index.handle(istio(&yaml));
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let problems: Vec<String> = pipeline
        .translator
        .problems()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect();
    assert_eq!(
        problems,
        vec!["Sidecar shop/default spec.outboundTrafficPolicy"]
    );
    let state = cache.current();
    let index = type_index(type_url::ROUTE).expect("a served type");
    let routes = state
        .snapshot
        .view(index, &proxy("shop", &[]))
        .find(|r| r.name() == OUTBOUND_HTTP)
        .map(|r| RouteConfiguration::decode(r.body().clone()).expect("decodes"))
        .expect("routes");
    assert!(
        routes
            .virtual_hosts
            .iter()
            .all(|vh| !vh.domains.contains(&"*".to_string())),
        "{routes:?}"
    );
}
