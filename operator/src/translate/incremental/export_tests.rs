//! Which proxies reach which services: a service's `exportTo` (the namespaces whose proxies get
//! its virtual hosts), and AUTO_PASSTHROUGH gateways (every service under their hosts). Built
//! incrementally as a full build, and as the one-piece generator builds them.

use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::tests::{assert_routes_decode_as_route_configurations, check, delete, istio, options};
use super::*;
use crate::index::Index;

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

/// The virtual host names proxies of `namespace` get.
fn seen(mesh: &Mesh, namespace: Option<&str>) -> Vec<String> {
    let cache = SnapshotCache::new();
    cache.replace(Translator::new(options()).full(mesh));
    let state = cache.current();
    let proxy = ProxyInfo {
        namespace: namespace.map(Into::into),
        ..ProxyInfo::default()
    };
    let index = type_index(type_url::ROUTE).expect("RDS");
    let resource = state
        .snapshot
        .resource_for(index, OUTBOUND_HTTP, &proxy)
        .expect("every proxy gets the routes");
    RouteConfiguration::decode(resource.body())
        .expect("decodes")
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
    check(vec![
        istio(gateway),
        istio(&entry("billing", "finance", "[\"*\"]")),
        istio(&entry("ledger", "audit", "[\"*\"]")),
        delete(Kind::ServiceEntry, "finance", "billing"),
    ]);
}
