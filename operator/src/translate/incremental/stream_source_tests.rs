//! `tcp` and `tls` routes told apart by the caller's namespace in capture mode: a match's
//! `sourceNamespace` and the VirtualService's `exportTo` give the sidecars of the namespaces
//! they name listeners of their own, which compose with the TLS port's fallthrough chain per
//! outbound traffic policy; built incrementally as a full build.

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
fn tls_entry(name: &str) -> String {
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
    let proxy: ProxyInfo = sidecar_proxy(namespace, &[]);
    served_to::<Listener>(capture(), yamls, type_url::LISTENER, &proxy)
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("{name} is served"))
}

/// Each filter chain of `listener`: its name and the cluster its TCP proxy sends to.
fn chains(listener: &Listener) -> Vec<(String, String)> {
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
