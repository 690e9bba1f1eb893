//! `Sidecar` egress listeners with `captureMode: NONE` on TLS and TCP ports: a listener on a
//! socket of its own carrying the listener's services on that port (by SNI, or one TCP
//! service), for the sidecars whose scope binds it; rebuilt when those services or their
//! routes change, as a full build.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use prost::Message;

use super::tests::{capture, check_with, delete, istio, served_to};
use super::*;
use crate::index::Index;
use crate::model::sidecar_scope::fixtures::{sidecar_proxy as proxy, sidecar_with};

/// A ServiceEntry `name` in `namespace` with one port, `number` of `protocol`.
fn entry(name: &str, namespace: &str, number: u32, protocol: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  ports: [{{number: {number}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
"
    )
}

/// `namespace`'s Sidecar binding an egress listener on 127.0.0.1:`port` of `protocol` to
/// `hosts`.
fn binding(namespace: &str, port: u32, protocol: &str, hosts: &str) -> String {
    let egress = format!(
        "  egress:
  - port: {{number: {port}, name: p, protocol: {protocol}}}
    captureMode: NONE
    hosts: {hosts}
  - hosts: [./*]
"
    );
    sidecar_with("default", namespace, None, &egress)
}

fn bound_listener(yamls: &[String], namespace: &str, name: &str) -> Option<Listener> {
    served_to::<Listener>(capture(), yamls, type_url::LISTENER, &proxy(namespace, &[]))
        .into_iter()
        .find(|l| l.name == name)
}

/// The cluster each chain's TCP proxy sends to, with the chain's server names.
fn chain_clusters(listener: &Listener) -> Vec<(Vec<String>, String)> {
    listener
        .filter_chains
        .iter()
        .map(|chain| {
            let names = (chain.filter_chain_match.as_ref())
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            let Some(FilterConfig::TypedConfig(any)) = &chain.filters[0].config_type else {
                panic!("a typed config: {chain:?}");
            };
            let proxy = TcpProxy::decode(any.value.as_slice()).expect("a TCP proxy");
            let cluster = match proxy.cluster_specifier {
                Some(ClusterSpecifier::Cluster(cluster)) => cluster,
                other => panic!("{other:?}"),
            };
            (names, cluster)
        })
        .collect()
}

/// A TCP port carries the listener's one service; a second one on the port is reported, and
/// the first by name is carried, as istiod keeps one service's chain.
#[test]
fn a_bound_tcp_listener_carries_the_first_service_its_hosts_name_on_the_port() {
    let mut yamls = vec![
        entry("db", "bookinfo", 5432, "TCP"),
        entry("reviews", "bookinfo", 9080, "HTTP"),
        binding("bookinfo", 5432, "TCP", "[./*]"),
    ];
    let bound = bound_listener(&yamls, "bookinfo", "127.0.0.1_5432").expect("bound");
    assert_eq!(bound.bind_to_port, None, "a socket of its own");
    assert!(bound.listener_filters.is_empty(), "{bound:?}");
    assert_eq!(
        chain_clusters(&bound),
        [(
            vec![],
            "outbound|5432||db.bookinfo.svc.cluster.local".to_string()
        )]
    );
    // Not to another namespace's sidecars.
    assert_eq!(bound_listener(&yamls, "web", "127.0.0.1_5432"), None);

    yamls.push(entry("cache", "bookinfo", 5432, "TCP"));
    let bound = bound_listener(&yamls, "bookinfo", "127.0.0.1_5432").expect("bound");
    assert_eq!(
        chain_clusters(&bound),
        [(
            vec![],
            "outbound|5432||cache.bookinfo.svc.cluster.local".to_string()
        )]
    );
    let mut index = Index::new();
    for yaml in &yamls {
        index.handle(istio(yaml));
    }
    let (mesh, _) = Mesh::build(&index, "cluster.local");
    let mut translator = Translator::new(capture());
    translator.full(&mesh);
    let problems: Vec<String> = translator
        .problems()
        .map(|p| format!("{} {}: {}", p.object, p.field, p.message))
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("Sidecar bookinfo/default spec.egress[0]")
                && p.contains("cache.bookinfo.svc.cluster.local's")
                && p.contains("not db.bookinfo.svc.cluster.local")),
        "{problems:?}"
    );
}

/// db and db-replica on 5432, a listener bound to db alone, and db's VirtualService with
/// `tcp` routes `routes` (YAML list items).
fn db_routed(routes: &str) -> Vec<String> {
    vec![
        entry("db", "bookinfo", 5432, "TCP"),
        entry("db-replica", "bookinfo", 5432, "TCP"),
        binding("bookinfo", 5432, "TCP", "[./db.bookinfo.svc.cluster.local]"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
{routes}"
        ),
    ]
}

/// A VirtualService's `tcp` route for the host sends the bound listener's connections where
/// it sends the captured ones.
#[test]
fn a_bound_tcp_listener_follows_the_hosts_tcp_routes() {
    let yamls =
        db_routed("  - route: [{destination: {host: db-replica.bookinfo.svc.cluster.local}}]\n");
    let bound = bound_listener(&yamls, "bookinfo", "127.0.0.1_5432").expect("bound");
    assert_eq!(
        chain_clusters(&bound),
        [(
            vec![],
            "outbound|5432||db-replica.bookinfo.svc.cluster.local".to_string()
        )]
    );
}

/// A `tcp` route matching `destinationSubnets` holds where the subnet has the listener's own
/// address (what each connection to it is destined to), as on istiod's listener.
#[test]
fn a_bound_tcp_listeners_destination_is_its_own_address() {
    let yamls = db_routed(
        "  - match: [{destinationSubnets: [127.0.0.0/8]}]
    route: [{destination: {host: db-replica.bookinfo.svc.cluster.local}}]
  - route: [{destination: {host: db.bookinfo.svc.cluster.local}}]
",
    );
    let bound = bound_listener(&yamls, "bookinfo", "127.0.0.1_5432").expect("bound");
    let [subnet, rest] = &bound.filter_chains[..] else {
        panic!("two chains: {bound:?}");
    };
    let ranges = &subnet
        .filter_chain_match
        .as_ref()
        .expect("a match")
        .prefix_ranges;
    assert_eq!(ranges.len(), 1, "{subnet:?}");
    assert_eq!(ranges[0].address_prefix, "127.0.0.0");
    assert_eq!(rest.filter_chain_match, None, "{rest:?}");
    let clusters: Vec<String> = chain_clusters(&bound).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        clusters,
        [
            "outbound|5432||db-replica.bookinfo.svc.cluster.local",
            "outbound|5432||db.bookinfo.svc.cluster.local"
        ]
    );
}

/// A TLS port carries each of the listener's services on it by SNI.
#[test]
fn a_bound_tls_listener_routes_each_service_by_server_name() {
    let yamls = vec![
        entry("api", "bookinfo", 443, "TLS"),
        entry("auth", "bookinfo", 443, "HTTPS"),
        entry("api", "web", 443, "TLS"),
        binding("bookinfo", 443, "TLS", "[./*]"),
    ];
    let bound = bound_listener(&yamls, "bookinfo", "127.0.0.1_443").expect("bound");
    assert_eq!(bound.bind_to_port, None, "a socket of its own");
    assert!(
        (bound.listener_filters.iter()).any(|f| f.name.contains("tls_inspector")),
        "{bound:?}"
    );
    let by_sni = |host: &str| (vec![host.to_string()], format!("outbound|443||{host}"));
    assert_eq!(
        chain_clusters(&bound),
        [
            by_sni("api.bookinfo.svc.cluster.local"),
            by_sni("auth.bookinfo.svc.cluster.local")
        ]
    );
}

/// The root namespace's default binding a TCP port to `./*`: each namespace's sidecars get
/// the listener carrying their own namespace's service (as istiod reads `.` for each proxy),
/// a namespace without one gets none, and one with a `Sidecar` of its own gets what that says.
#[test]
fn the_root_default_binds_each_namespaces_own_service() {
    let mut yamls = vec![
        entry("db", "bookinfo", 5432, "TCP"),
        entry("db", "web", 5432, "TCP"),
        binding("istio-system", 5432, "TCP", "[./*]"),
    ];
    let carried = |yamls: &[String], namespace: &str| {
        bound_listener(yamls, namespace, "127.0.0.1_5432").map(|l| chain_clusters(&l))
    };
    let to = |host: &str| Some(vec![(vec![], format!("outbound|5432||{host}"))]);
    assert_eq!(
        carried(&yamls, "bookinfo"),
        to("db.bookinfo.svc.cluster.local")
    );
    assert_eq!(carried(&yamls, "web"), to("db.web.svc.cluster.local"));
    assert_eq!(carried(&yamls, "other"), None);

    yamls.push(sidecar_with(
        "default",
        "web",
        None,
        "  egress: [{hosts: [./*]}]\n",
    ));
    assert_eq!(carried(&yamls, "web"), None);
    assert_eq!(
        carried(&yamls, "bookinfo"),
        to("db.bookinfo.svc.cluster.local")
    );
}

#[test]
fn bound_stream_listeners_built_incrementally_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&entry("db", "bookinfo", 5432, "TCP")),
            istio(&binding("bookinfo", 5432, "TCP", "[./*]")),
            // A service comes to the port, and its route; then goes.
            istio(&entry("cache", "bookinfo", 5432, "TCP")),
            istio(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cache, namespace: bookinfo}
spec:
  hosts: [cache.bookinfo.svc.cluster.local]
  tcp:
  - route: [{destination: {host: db.bookinfo.svc.cluster.local}}]
",
            ),
            delete(Kind::VirtualService, "bookinfo", "cache"),
            delete(Kind::ServiceEntry, "bookinfo", "cache"),
            istio(&entry("api", "bookinfo", 443, "TLS")),
            istio(&binding("bookinfo", 443, "TLS", "[./*]")),
            istio(&entry("auth", "bookinfo", 443, "TLS")),
            delete(Kind::ServiceEntry, "bookinfo", "api"),
            istio(&binding("istio-system", 5432, "TCP", "[bookinfo/*]")),
            delete(Kind::Sidecar, "bookinfo", "default"),
            // The root default naming each namespace's own: namespaces come and go.
            istio(&binding("istio-system", 5432, "TCP", "[./*]")),
            istio(&entry("db", "web", 5432, "TCP")),
            istio(&binding("web", 5432, "TCP", "[./*]")),
            delete(Kind::Sidecar, "web", "default"),
            delete(Kind::ServiceEntry, "web", "db"),
            delete(Kind::ServiceEntry, "bookinfo", "db"),
        ],
    );
}
