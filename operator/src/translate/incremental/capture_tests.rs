//! Capture-mode sidecar listeners built incrementally end up exactly as a full build: ports
//! gained and lost, TCP services with and without addresses, workloads moving.

use capstan_crds::Kind;

use super::tests::{capture, check_with, delete, istio, service};
use super::*;

/// A ServiceEntry `name.bookinfo`, TCP on `port` at `addresses` (YAML list items).
pub(super) fn tcp_entry(name: &str, port: u32, addresses: &str, endpoints: &[&str]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|a| format!("  - {{address: {a}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [{addresses}]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
{endpoints}"
    )
}

#[test]
fn capture_listeners_follow_services_and_workloads() {
    check_with(
        capture(),
        vec![
            service("reviews", &[("http", 9080)]),
            istio(&tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.1"])),
            // A second address and a workload moving.
            istio(&tcp_entry(
                "db",
                5432,
                "240.0.0.5, 240.0.0.6",
                &["10.0.0.2"],
            )),
            // Another TCP service on the port, with an address of its own, then claiming
            // the same one (reported, not routed).
            istio(&tcp_entry("db2", 5432, "240.0.0.7", &["10.0.0.2"])),
            istio(&tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.3"])),
            // A TCP service without an address on an HTTP port (reported).
            istio(&tcp_entry("legacy", 9080, "", &["10.0.0.4"]).replace("  addresses: []\n", "")),
            delete(Kind::ServiceEntry, "bookinfo", "legacy"),
            delete(Kind::ServiceEntry, "bookinfo", "db"),
            delete(Kind::ServiceEntry, "bookinfo", "db2"),
        ],
    );
}

fn https_entry(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: DNS
"
    )
}

fn stream_vs(kind: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local, secure.example.com]
  {kind}:
{body}"
    )
}

#[test]
fn capture_stream_routes_follow_virtual_services_and_destinations() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.1"])),
            istio(&tcp_entry("db2", 5433, "240.0.0.8", &["10.0.0.2"])),
            istio(&https_entry("secure")),
            istio(&https_entry("other")),
            // A tcp route: db's listener sends to db2.
            istio(&stream_vs(
                "tcp",
                "  - route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]\n",
            )),
            // db2's only port changes: the route's cluster follows.
            istio(&tcp_entry("db2", 6543, "240.0.0.8", &["10.0.0.2"])),
            // A tls route instead, by SNI.
            istio(&stream_vs(
                "tls",
                "  - match: [{sniHosts: [secure.example.com]}]\n    \
                 route: [{destination: {host: other.example.com}}]\n",
            )),
            delete(Kind::VirtualService, "bookinfo", "routes"),
            delete(Kind::ServiceEntry, "bookinfo", "other"),
        ],
    );
}

/// Ports without a declared protocol: a detecting listener per address (or on 0.0.0.0 when
/// nothing else has the port), left to the HTTP listener on a port HTTP services share.
#[test]
fn undeclared_protocol_listeners_follow_services() {
    let undeclared = |name: &str, port: u32, addresses: &str, endpoints: &[&str]| {
        tcp_entry(name, port, addresses, endpoints).replace(", protocol: TCP", "")
    };
    check_with(
        capture(),
        vec![
            service("reviews", &[("http", 9080)]),
            istio(&undeclared("legacy", 7070, "240.0.0.9", &["10.0.0.1"])),
            istio(&undeclared("bare", 7171, "", &["10.0.0.2"]).replace("  addresses: []\n", "")),
            // Without an address on reviews' HTTP port: the HTTP listener serves it.
            istio(&undeclared("shared", 9080, "", &["10.0.0.3"]).replace("  addresses: []\n", "")),
            istio(&undeclared("legacy", 7070, "240.0.0.9", &["10.0.0.4"])),
            delete(Kind::ServiceEntry, "bookinfo", "shared"),
            delete(Kind::ServiceEntry, "bookinfo", "legacy"),
        ],
    );
}

/// A TCP service's address listeners are seen by the sidecars that see the service: under a
/// Sidecar or `exportTo` that hides it, its listener is gone too, so the connection goes
/// where the outbound traffic policy says instead of to a cluster the sidecar lacks.
#[test]
fn tcp_listeners_are_scoped_with_their_service() {
    use crate::model::sidecar_scope::fixtures::{sidecar, sidecar_proxy};
    let db = || tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.1"]);
    let hidden = || db().replace("  resolution", "  exportTo: [\".\"]\n  resolution");
    let steps = || {
        vec![
            istio(&db()),
            istio(&tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.2"])),
            istio(&sidecar("default", "web", None, "[\"web/*\"]")),
            // A change to db2 rebuilds the port's listeners, db's among them.
            istio(&tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.3"])),
            istio(&hidden()),
            // A TCP service without an address gets 0.0.0.0 once the HTTP service sharing
            // its port is gone: a new listener, though it did not change.
            service("front", &[("http", 6000)]),
            istio(&tcp_entry("bare", 6000, "", &["10.0.0.4"]).replace("  addresses: []\n", "")),
            crate::index::Event::Delete(crate::index::RecordKey::Service(
                crate::index::NsName::new("bookinfo", "front"),
            )),
            // And back: the shared HTTP listener of the same name is everyone's again.
            service("front", &[("http", 6000)]),
            delete(Kind::Sidecar, "web", "default"),
            istio(&db()),
        ]
    };
    check_with(capture(), steps());

    let mut pipeline = crate::reconcile::Pipeline::new(capture(), "cluster.local");
    for event in steps().into_iter().take(3) {
        pipeline.index.handle(event);
    }
    let cache = capstan_xds::SnapshotCache::new();
    cache.replace(pipeline.full());
    let state = cache.current();
    let listeners = |ns: &str| -> Vec<String> {
        let index = capstan_xds::type_index(type_url::LISTENER).expect("a served type");
        state
            .snapshot
            .view(index, &sidecar_proxy(ns, &[]))
            .map(|r| r.name().to_string())
            .filter(|n| n.ends_with("_5432"))
            .collect()
    };
    assert_eq!(listeners("bookinfo"), ["240.0.0.5_5432", "240.0.0.6_5432"]);
    assert!(listeners("web").is_empty(), "{:?}", listeners("web"));
}

/// CIDR addresses: filter chains by destination on the port's `0.0.0.0` listener — one of
/// their own (ending with the fallthrough chain), the TLS services' or the HTTP services'.
#[test]
fn cidr_addresses_update_as_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("vpc-db", 5432, "10.8.0.0/16", &["10.8.0.5"])),
            istio(&tcp_entry(
                "onprem-db",
                5432,
                "192.168.0.0/24, 240.0.0.9",
                &["192.168.0.7"],
            )),
            // The same range again: reported, not routed.
            istio(&tcp_entry("copy", 5432, "10.8.0.0/16", &["10.8.0.6"])),
            // On an HTTP port, and on a TLS port.
            service("reviews", &[("http", 9080)]),
            istio(&tcp_entry("metrics", 9080, "10.9.0.0/16", &["10.9.0.1"])),
            istio(&https_entry("secure")),
            istio(&tcp_entry("vault", 443, "10.10.0.0/16", &["10.10.0.1"])),
            delete(Kind::ServiceEntry, "bookinfo", "secure"),
            delete(Kind::ServiceEntry, "bookinfo", "vpc-db"),
            delete(Kind::ServiceEntry, "bookinfo", "copy"),
            delete(Kind::ServiceEntry, "bookinfo", "onprem-db"),
        ],
    );
}

#[test]
fn a_cidr_address_takes_the_connections_to_its_range() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    use super::tests::served_to;
    use crate::model::sidecar_scope::fixtures::sidecar_proxy;

    let yamls = [
        tcp_entry("vpc-db", 5432, "10.8.0.0/16", &["10.8.0.5"]),
        tcp_entry("metrics", 9080, "10.9.0.0/16", &["10.9.0.1"]),
        tcp_entry("reviews", 9080, "240.0.0.3", &["10.0.0.3"])
            .replace("name: tcp, protocol: TCP", "name: http, protocol: HTTP"),
    ];
    let listeners = served_to::<Listener>(
        capture(),
        &yamls,
        type_url::LISTENER,
        &sidecar_proxy("bookinfo", &[]),
    );
    let chains = |name: &str| -> Vec<(String, Vec<String>)> {
        let listener = listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name} is served"));
        listener
            .filter_chains
            .iter()
            .map(|c| {
                let ranges = c
                    .filter_chain_match
                    .iter()
                    .flat_map(|m| &m.prefix_ranges)
                    .map(|r| {
                        let len = r.prefix_len.as_ref().map_or(0, |l| l.value);
                        format!("{}/{len}", r.address_prefix)
                    })
                    .collect();
                (c.name.clone(), ranges)
            })
            .collect()
    };
    let range_chain = |range: &str, host: &str| {
        (
            format!("{range}|{host}.bookinfo.svc.cluster.local"),
            vec![range.to_string()],
        )
    };
    // A port of CIDR addresses alone: its own listener, the rest where the policy says.
    assert_eq!(
        chains("0.0.0.0_5432"),
        vec![
            range_chain("10.8.0.0/16", "vpc-db"),
            ("PassthroughCluster".to_string(), vec![])
        ]
    );
    // On an HTTP port: a chain beside the HTTP one.
    let http = chains("0.0.0.0_9080");
    assert_eq!(http.len(), 2, "{http:?}");
    assert_eq!(http[1], range_chain("10.9.0.0/16", "metrics"));
}

/// A port's shared listeners are scoped chain by chain: a sidecar that does not see a TLS
/// service (a `Sidecar`'s egress hosts, its `exportTo`, an egress listener's port) or a CIDR
/// address's service gets the listener without its chain, so the connection goes where its
/// outbound traffic policy says. Built incrementally as a full build.
#[test]
fn shared_chains_are_scoped_with_their_service() {
    use crate::model::sidecar_scope::fixtures::{sidecar, sidecar_with};
    let partner = || https_entry("partner").replace("namespace: bookinfo", "namespace: web");
    let hidden =
        || https_entry("secure").replace("  resolution", "  exportTo: [\".\"]\n  resolution");
    let web_only = || sidecar("default", "web", None, "[\"web/*\"]");
    check_with(
        capture(),
        vec![
            istio(&https_entry("secure")),
            istio(&partner()),
            istio(&tcp_entry("vault", 443, "10.10.0.0/16", &["10.10.0.1"])),
            service("reviews", &[("http", 9080)]),
            istio(&tcp_entry("metrics", 9080, "10.9.0.0/16", &["10.9.0.1"])),
            istio(&web_only()),
            istio(&hidden()),
            istio(&https_entry("secure")),
            // One workload of bookinfo scoped apart.
            istio(&sidecar(
                "cart",
                "bookinfo",
                Some("app: cart"),
                "[\"web/*\"]",
            )),
            // Hosts on one port only.
            istio(&sidecar_with(
                "default",
                "web",
                None,
                "  egress: [{port: {number: 443, protocol: HTTPS, name: https}, hosts: [\"*/*\"]}]\n",
            )),
            istio(&web_only()),
            delete(Kind::Sidecar, "web", "default"),
            delete(Kind::ServiceEntry, "bookinfo", "vault"),
            delete(Kind::Sidecar, "bookinfo", "cart"),
            istio(&hidden()),
        ],
    );
}

/// The names of the filter chains of listener `name` as `proxy` is served it from `yamls`.
fn chain_names(yamls: &[String], proxy: &capstan_xds::ProxyInfo, name: &str) -> Vec<String> {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let listeners =
        super::tests::served_to::<Listener>(capture(), yamls, type_url::LISTENER, proxy);
    let listener = listeners.iter().find(|l| l.name == name);
    let listener = listener.unwrap_or_else(|| panic!("{name} is served"));
    listener
        .filter_chains
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn a_sidecar_gets_the_chains_of_the_services_it_sees() {
    use crate::model::sidecar_scope::fixtures::{sidecar, sidecar_proxy};

    let yamls = [
        https_entry("secure"),
        https_entry("partner").replace("namespace: bookinfo", "namespace: web"),
        tcp_entry("vault", 443, "10.10.0.0/16", &["10.10.0.1"]),
        tcp_entry("reviews", 9080, "240.0.0.3", &["10.0.0.3"])
            .replace("name: tcp, protocol: TCP", "name: http, protocol: HTTP"),
        tcp_entry("metrics", 9080, "10.9.0.0/16", &["10.9.0.1"]),
        sidecar("default", "web", None, "[\"web/*\"]"),
        sidecar("cart", "bookinfo", Some("app: cart"), "[\"web/*\"]"),
    ];
    let chains = |proxy, name: &str| chain_names(&yamls, &proxy, name);
    let secure = "outbound|443||secure.example.com";
    let partner = "outbound|443||partner.example.com";
    let vault = "10.10.0.0/16|vault.bookinfo.svc.cluster.local";
    let metrics = "10.9.0.0/16|metrics.bookinfo.svc.cluster.local";
    let everything = vec![partner, secure, vault, "PassthroughCluster"];
    assert_eq!(
        chains(sidecar_proxy("bookinfo", &[]), "0.0.0.0_443"),
        everything
    );
    assert_eq!(
        chains(sidecar_proxy("other", &[]), "0.0.0.0_443"),
        everything
    );
    // Web's own service only; the rest passes through, as ALLOW_ANY says.
    assert_eq!(
        chains(sidecar_proxy("web", &[]), "0.0.0.0_443"),
        [partner, "PassthroughCluster"]
    );
    assert_eq!(
        chains(sidecar_proxy("bookinfo", &[("app", "cart")]), "0.0.0.0_443"),
        [partner, "PassthroughCluster"]
    );
    // The HTTP port's CIDR chain too (the HTTP chain first, and no fallthrough chain).
    let http = chains(sidecar_proxy("bookinfo", &[]), "0.0.0.0_9080");
    assert_eq!(http.len(), 2, "{http:?}");
    assert_eq!(http[1], metrics);
    assert_eq!(chains(sidecar_proxy("web", &[]), "0.0.0.0_9080").len(), 1);

    // A service exported to its own namespace only: no other namespace gets its chain.
    let yamls = [
        https_entry("secure").replace("  resolution", "  exportTo: [\".\"]\n  resolution"),
        https_entry("partner").replace("namespace: bookinfo", "namespace: web"),
    ];
    let chains = |proxy| chain_names(&yamls, &proxy, "0.0.0.0_443");
    assert_eq!(
        chains(sidecar_proxy("bookinfo", &[])),
        [partner, secure, "PassthroughCluster"]
    );
    assert_eq!(
        chains(sidecar_proxy("other", &[])),
        [partner, "PassthroughCluster"]
    );
}

/// A TLS route for one namespace's sidecars (`sourceNamespace`) and a scope hiding a service
/// from them: their listener both routes as their namespace reads it and lacks the hidden
/// chain; a VirtualService's destination is seen where its host is (as istiod infers it).
#[test]
fn a_namespace_route_and_a_scope_combine_in_the_shared_listener() {
    use crate::model::sidecar_scope::fixtures::{sidecar, sidecar_proxy};
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: partner, namespace: web}
spec:
  hosts: [partner.example.com]
  tls:
  - match: [{sniHosts: [partner.example.com], sourceNamespace: web}]
    route: [{destination: {host: secure.example.com}}]
";
    let yamls = [
        https_entry("secure"),
        https_entry("partner").replace("namespace: bookinfo", "namespace: web"),
        https_entry("vault"),
        vs.to_string(),
        sidecar("default", "web", None, "[\"web/*\"]"),
    ];
    let listener = |proxy| {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        let listeners =
            super::tests::served_to::<Listener>(capture(), &yamls, type_url::LISTENER, &proxy);
        listeners
            .into_iter()
            .find(|l| l.name == "0.0.0.0_443")
            .expect("served")
    };
    // The chain's filters as text (the tcp_proxy's cluster name is in its encoded config).
    let routed = |l: &envoy_types::pb::envoy::config::listener::v3::Listener, chain: &str| {
        use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
        let chain = l
            .filter_chains
            .iter()
            .find(|c| c.name == chain)
            .expect("chain");
        let configs = chain.filters.iter().filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(String::from_utf8_lossy(&any.value)),
            _ => None,
        });
        configs.collect::<Vec<_>>().join(" ")
    };
    let web = listener(sidecar_proxy("web", &[]));
    let names: Vec<&str> = web.filter_chains.iter().map(|c| c.name.as_str()).collect();
    // vault is hidden; secure is seen through the VirtualService web's scope names.
    assert_eq!(
        names,
        [
            "outbound|443||partner.example.com",
            "outbound|443||secure.example.com",
            "PassthroughCluster"
        ]
    );
    assert!(
        routed(&web, "outbound|443||partner.example.com")
            .contains("outbound|443||secure.example.com"),
        "web's partner chain goes to secure"
    );
    let bookinfo = listener(sidecar_proxy("bookinfo", &[]));
    assert_eq!(
        bookinfo.filter_chains.len(),
        4,
        "{:?}",
        bookinfo.filter_chains
    );
    assert!(
        !routed(&bookinfo, "outbound|443||partner.example.com").contains("secure"),
        "bookinfo's partner chain goes to partner"
    );
}
