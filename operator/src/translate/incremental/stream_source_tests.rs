//! `tcp` and `tls` routes told apart by the caller in capture mode: a match's
//! `sourceNamespace` and `sourceLabels` and the VirtualService's `exportTo` give the sidecars
//! they name listeners of their own, which compose with the TLS port's fallthrough chain per
//! outbound traffic policy and with `Sidecar` scopes; built incrementally as a full build.

use capstan_crds::Kind;
use capstan_xds::ProxyInfo;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::capture_tests;
use super::tests::{capture, check_with, delete, istio, served_to};
use super::*;
use crate::model::sidecar_scope::fixtures::{sidecar, sidecar_proxy};
use prost::Message;

/// A ServiceEntry `name.bookinfo` on `address`, TCP on 5432.
fn tcp_entry(name: &str, address: &str) -> String {
    capture_tests::tcp_entry(name, 5432, address, &["10.0.0.5"])
}

/// An HTTPS ServiceEntry `name.example.com` on 443.
pub(super) fn tls_entry(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.6}}]
"
    )
}

/// db's VirtualService (bookinfo): front's sidecars to db2, the rest to db; exported as `export_to`.
fn db_routes(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  exportTo: {export_to}
  tcp:
  - match: [{{sourceNamespace: front}}]
    route: [{{destination: {{host: db2.bookinfo.svc.cluster.local}}}}]
  - route: [{{destination: {{host: db.bookinfo.svc.cluster.local}}}}]
"
    )
}

/// secure.example.com's VirtualService sending its connections to other.example.com,
/// exported to `export_to` only.
fn secure_routes(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.com]
  exportTo: {export_to}
  tls:
  - match: [{{sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: other.example.com}}}}]
"
    )
}

fn registry_only(namespace: &str) -> String {
    format!(
        "{}  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n",
        sidecar("default", namespace, None, "[\"*/*\"]")
    )
}

#[test]
fn stream_routes_by_namespace_update_as_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("db", "240.0.0.5")),
            istio(&tcp_entry("db2", "240.0.0.6")),
            istio(&db_routes("[\"*\"]")),
            istio(&tls_entry("secure")),
            istio(&tls_entry("other")),
            istio(&secure_routes("[front]")),
            istio(&registry_only("front")),
            istio(&registry_only("web")),
            istio(&db_routes("[bookinfo, front]")),
            istio(&secure_routes("[\"*\"]")),
            delete(Kind::Sidecar, "web", "default"),
            istio(&secure_routes("[web]")),
            delete(Kind::VirtualService, "bookinfo", "db"),
            delete(Kind::Sidecar, "front", "default"),
            delete(Kind::VirtualService, "shop", "secure"),
        ],
    );
}

/// The listener `name` a full build of `yamls` serves a sidecar of `namespace`.
fn listener(yamls: &[String], namespace: &str, name: &str) -> Listener {
    labelled_listener(yamls, namespace, &[], name)
}

/// [`listener`] for a sidecar with `labels`.
pub(super) fn labelled_listener(
    yamls: &[String],
    namespace: &str,
    labels: &[(&str, &str)],
    name: &str,
) -> Listener {
    let proxy: ProxyInfo = sidecar_proxy(namespace, labels);
    served_to::<Listener>(capture(), yamls, type_url::LISTENER, &proxy)
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("{name} is served"))
}

/// Each filter chain of `listener`: its name and the cluster its TCP proxy sends to.
pub(super) fn chains(listener: &Listener) -> Vec<(String, String)> {
    listener
        .filter_chains
        .iter()
        .map(|chain| {
            let proxy = match &chain.filters[0].config_type {
                Some(FilterConfig::TypedConfig(any)) => TcpProxy::decode(any.value.as_slice()),
                other => panic!("{other:?}"),
            }
            .expect("a tcp_proxy");
            let Some(ClusterSpecifier::Cluster(cluster)) = proxy.cluster_specifier else {
                panic!("one cluster");
            };
            (chain.name.clone(), cluster)
        })
        .collect()
}

#[test]
fn each_namespace_gets_the_stream_routes_it_is_meant_to() {
    let yamls = [
        tcp_entry("db", "240.0.0.5"),
        tcp_entry("db2", "240.0.0.6"),
        db_routes("[bookinfo, front]"),
        tls_entry("secure"),
        tls_entry("other"),
        secure_routes("[front]"),
        registry_only("front"),
    ];
    let db = "outbound|5432||db.bookinfo.svc.cluster.local".to_string();
    let db2 = "outbound|5432||db2.bookinfo.svc.cluster.local".to_string();
    let tcp = |ns: &str| chains(&listener(&yamls, ns, "240.0.0.5_5432"))[0].1.clone();
    assert_eq!(tcp("front"), db2, "sourceNamespace: front");
    assert_eq!(tcp("bookinfo"), db, "exported, no match");
    assert_eq!(tcp("web"), db, "not exported: the service itself");

    let secure = "outbound|443||secure.example.com".to_string();
    let other = "outbound|443||other.example.com".to_string();
    let tls = |ns: &str| chains(&listener(&yamls, ns, "0.0.0.0_443"));
    let own = |name: &str| (name.to_string(), name.to_string());
    // front: routed, and its REGISTRY_ONLY closes names no service has.
    assert_eq!(
        tls("front"),
        vec![
            own(&other),
            (secure.clone(), other.clone()),
            own("BlackHoleCluster")
        ]
    );
    assert_eq!(
        tls("web"),
        vec![own(&other), own(&secure), own("PassthroughCluster")]
    );
}

/// db's VirtualService: the sidecars labelled `app: reports` to db2 (of namespace `only`, if
/// set), every other to db.
fn db_by_labels(only: Option<&str>) -> String {
    let namespace = only.map_or(String::new(), |ns| format!(", sourceNamespace: {ns}"));
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
  - match: [{{sourceLabels: {{app: reports}}{namespace}}}]
    route: [{{destination: {{host: db2.bookinfo.svc.cluster.local}}}}]
  - route: [{{destination: {{host: db.bookinfo.svc.cluster.local}}}}]
"
    )
}

/// secure.example.com's VirtualService: connections of sidecars labelled `tier: batch` to
/// other.example.com.
const SECURE_BY_LABELS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{sniHosts: [secure.example.com], sourceLabels: {tier: batch}}]
    route: [{destination: {host: other.example.com}}]
";

/// A `Sidecar` for the workloads of `namespace` labelled `app: reports`, seeing only
/// secure.example.com and REGISTRY_ONLY.
fn reports_scope(namespace: &str) -> String {
    format!(
        "{}  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n",
        sidecar(
            "reports",
            namespace,
            Some("app: reports"),
            "[\"shop/secure.example.com\", \"./*\"]"
        )
    )
}

#[test]
fn source_labels_pick_the_sidecars_whose_workloads_have_them() {
    let yamls = [
        tcp_entry("db", "240.0.0.5"),
        tcp_entry("db2", "240.0.0.6"),
        db_by_labels(None),
        tls_entry("secure"),
        tls_entry("other"),
        SECURE_BY_LABELS.to_string(),
        registry_only("front"),
    ];
    let db = "outbound|5432||db.bookinfo.svc.cluster.local".to_string();
    let db2 = "outbound|5432||db2.bookinfo.svc.cluster.local".to_string();
    let tcp = |ns: &str, labels: &[(&str, &str)]| {
        chains(&labelled_listener(&yamls, ns, labels, "240.0.0.5_5432"))[0]
            .1
            .clone()
    };
    assert_eq!(tcp("bookinfo", &[]), db);
    assert_eq!(tcp("bookinfo", &[("app", "reports")]), db2);
    assert_eq!(tcp("web", &[("app", "reports"), ("version", "v1")]), db2);
    assert_eq!(tcp("web", &[("app", "billing")]), db);

    let secure = "outbound|443||secure.example.com".to_string();
    let other = "outbound|443||other.example.com".to_string();
    let own = |name: &str| (name.to_string(), name.to_string());
    let tls = |ns: &str, labels: &[(&str, &str)]| {
        chains(&labelled_listener(&yamls, ns, labels, "0.0.0.0_443"))
    };
    let routed = (secure.clone(), other.clone());
    assert_eq!(
        tls("web", &[("tier", "batch")]),
        vec![own(&other), routed.clone(), own("PassthroughCluster")]
    );
    assert_eq!(
        tls("web", &[]),
        vec![own(&other), own(&secure), own("PassthroughCluster")]
    );
    // front's REGISTRY_ONLY (a variant by namespace) and the label's route (a variant by
    // labels) both hold for a batch sidecar of front.
    assert_eq!(
        tls("front", &[("tier", "batch")]),
        vec![own(&other), routed, own("BlackHoleCluster")]
    );
    assert_eq!(
        tls("front", &[]),
        vec![own(&other), own(&secure), own("BlackHoleCluster")]
    );
}

/// A scope by workload labels hides a service's chain from the sidecars it picks (archive;
/// other stays, as the scope's VirtualService sends there), whose other chains the routes'
/// labels decide: both hold for a sidecar both pick.
#[test]
fn source_labels_compose_with_a_workload_scope() {
    let yamls = [
        tls_entry("secure"),
        tls_entry("other"),
        tls_entry("archive"),
        SECURE_BY_LABELS.to_string(),
        reports_scope("web"),
    ];
    let secure = "outbound|443||secure.example.com".to_string();
    let other = "outbound|443||other.example.com".to_string();
    let archive = "outbound|443||archive.example.com".to_string();
    let own = |name: &str| (name.to_string(), name.to_string());
    let routed = (secure.clone(), other.clone());
    let tls =
        |labels: &[(&str, &str)]| chains(&labelled_listener(&yamls, "web", labels, "0.0.0.0_443"));
    assert_eq!(
        tls(&[("app", "reports"), ("tier", "batch")]),
        vec![own(&other), routed.clone(), own("BlackHoleCluster")]
    );
    assert_eq!(
        tls(&[("app", "reports")]),
        vec![own(&other), own(&secure), own("BlackHoleCluster")]
    );
    assert_eq!(
        tls(&[("tier", "batch")]),
        vec![
            own(&archive),
            own(&other),
            routed,
            own("PassthroughCluster")
        ]
    );
}

#[test]
fn stream_routes_by_labels_update_as_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("db", "240.0.0.5")),
            istio(&tcp_entry("db2", "240.0.0.6")),
            istio(&db_by_labels(None)),
            istio(&tls_entry("secure")),
            istio(&tls_entry("other")),
            istio(&tls_entry("archive")),
            istio(SECURE_BY_LABELS),
            istio(&registry_only("front")),
            istio(&reports_scope("web")),
            istio(&db_by_labels(Some("front"))),
            istio(&secure_routes("[front]")),
            delete(Kind::Sidecar, "front", "default"),
            istio(SECURE_BY_LABELS),
            delete(Kind::VirtualService, "bookinfo", "db"),
            delete(Kind::Sidecar, "web", "reports"),
            delete(Kind::VirtualService, "shop", "secure"),
        ],
    );
}
