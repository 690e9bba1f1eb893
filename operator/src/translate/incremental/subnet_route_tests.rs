//! `destinationSubnets` on `tcp` and `tls` matches in capture mode: filter chains matched by
//! destination ahead of the chain for the rest, each range on a listener once; built
//! incrementally as a full build.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::capture_tests::tcp_entry;
use super::stream_source_tests::{chains, labelled_listener, tls_entry};
use super::tests::{capture, check_with, delete, istio};
use crate::reconcile::Pipeline;

const DB: &str = "outbound|5432||db.bookinfo.svc.cluster.local";
const DB2: &str = "outbound|5432||db2.bookinfo.svc.cluster.local";

/// VirtualService `name` for `host` (of bookinfo) with `routes` (YAML lines of `tcp`).
fn tcp_routes(name: &str, host: &str, routes: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{host}.bookinfo.svc.cluster.local]
  tcp:
{routes}"
    )
}

/// db's connections to 10.1.0.0/16 and 10.2.0.7 to db2, the rest to db.
fn db_by_subnet() -> String {
    tcp_routes(
        "db",
        "db",
        "  - match: [{destinationSubnets: [10.1.0.0/16, 10.2.0.7]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
  - route: [{destination: {host: db.bookinfo.svc.cluster.local}}]
",
    )
}

/// The listener `name` a full build of `yamls` serves a sidecar of bookinfo.
fn listener(yamls: &[String], name: &str) -> Listener {
    labelled_listener(yamls, "bookinfo", &[], name)
}

/// Each chain of `listener`: its destination ranges, server names and cluster.
fn matched(listener: &Listener) -> Vec<(Vec<String>, Vec<String>, String)> {
    let clusters = chains(listener);
    listener
        .filter_chains
        .iter()
        .zip(clusters)
        .map(|(chain, (_, cluster))| {
            let found = chain.filter_chain_match.clone().unwrap_or_default();
            let ranges = found.prefix_ranges.iter().map(|r| {
                let length = r.prefix_len.map_or(0, |l| l.value);
                format!("{}/{length}", r.address_prefix)
            });
            (ranges.collect(), found.server_names, cluster)
        })
        .collect()
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_tcp_service_without_an_address_is_routed_by_destination() {
    let yamls = [
        tcp_entry("db", 5432, "", &["10.0.0.5"]),
        tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.6"]),
        db_by_subnet(),
    ];
    assert_eq!(
        matched(&listener(&yamls, "0.0.0.0_5432")),
        vec![
            (owned(&["10.1.0.0/16", "10.2.0.7/32"]), vec![], DB2.into()),
            (vec![], vec![], DB.into()),
        ]
    );
}

/// A route whose subnets hold after the one for any destination is never reached (TCP routes
/// end there, as istiod's), and one naming only ranges an earlier route took is left out.
#[test]
fn tcp_routes_end_at_the_first_for_any_destination() {
    let routes = "  - match: [{destinationSubnets: [10.1.0.0/16]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
  - match: [{destinationSubnets: [10.1.0.0/16]}]
    route: [{destination: {host: db.bookinfo.svc.cluster.local, subset: never}}]
  - route: [{destination: {host: db.bookinfo.svc.cluster.local}}]
  - match: [{destinationSubnets: [10.3.0.0/16]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
";
    let yamls = [
        tcp_entry("db", 5432, "", &["10.0.0.5"]),
        tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.6"]),
        tcp_routes("db", "db", routes),
    ];
    assert_eq!(
        matched(&listener(&yamls, "0.0.0.0_5432")),
        vec![
            (owned(&["10.1.0.0/16"]), vec![], DB2.into()),
            (vec![], vec![], DB.into())
        ]
    );
}

/// Services with CIDR addresses share `0.0.0.0_5432`: a route naming a service's own range
/// takes that range's chain, one naming a narrower subnet gets a chain of its own, and a
/// subnet another service's route took first stays with it (reported).
#[test]
fn subnets_share_a_listener_with_cidr_addresses() {
    let yamls = [
        tcp_entry("range", 5432, "10.0.0.0/16", &["10.0.0.5"]),
        tcp_entry("db", 5432, "192.168.0.0/24", &["10.0.0.6"]),
        tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.7"]),
        tcp_routes(
            "range",
            "range",
            "  - match: [{destinationSubnets: [10.0.0.0/16]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
",
        ),
        tcp_routes(
            "db",
            "db",
            "  - match: [{destinationSubnets: [10.5.0.0/16, 10.0.0.0/16]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
",
        ),
    ];
    assert_eq!(
        matched(&listener(&yamls, "0.0.0.0_5432")),
        vec![
            (owned(&["10.5.0.0/16"]), vec![], DB2.into()),
            (owned(&["192.168.0.0/24"]), vec![], DB.into()),
            (owned(&["10.0.0.0/16"]), vec![], DB2.into()),
            (vec![], vec![], "PassthroughCluster".into()),
        ]
    );
    let mut pipeline = Pipeline::new(capture(), "cluster.local");
    for yaml in &yamls {
        pipeline.index.handle(istio(yaml));
    }
    pipeline.full();
    let problems: Vec<String> = pipeline
        .translator
        .problems()
        .map(ToString::to_string)
        .filter(|p| p.contains("is matched already"))
        .collect();
    assert_eq!(
        problems,
        [
            "VirtualService bookinfo/db: spec.tcp.match.destinationSubnets: 10.0.0.0/16 is \
          matched already on this port by range.bookinfo.svc.cluster.local's chain; this route \
          does not take connections to it"
        ]
    );
}

/// A `tls` match with subnets: connections with that SNI to those addresses get their own
/// chain; the host's chain takes the rest.
#[test]
fn tls_routes_by_destination_keep_to_their_server_name() {
    let secure = "outbound|443||secure.example.com";
    let other = "outbound|443||other.example.com";
    let yamls = [
        tls_entry("secure"),
        tls_entry("other"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{sniHosts: [secure.example.com], destinationSubnets: [10.9.0.0/16]}]
    route: [{destination: {host: other.example.com}}]
"
        .to_string(),
    ];
    let sni = |name: &str| vec![name.to_string()];
    assert_eq!(
        matched(&listener(&yamls, "0.0.0.0_443")),
        vec![
            (vec![], sni("other.example.com"), other.into()),
            (
                owned(&["10.9.0.0/16"]),
                sni("secure.example.com"),
                other.into()
            ),
            (vec![], sni("secure.example.com"), secure.into()),
            (vec![], vec![], "PassthroughCluster".into()),
        ]
    );
}

#[test]
fn subnet_routes_update_as_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&tcp_entry("db", 5432, "", &["10.0.0.5"])),
            istio(&tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.6"])),
            istio(&db_by_subnet()),
            istio(&tcp_entry("range", 5432, "10.0.0.0/16", &["10.0.0.7"])),
            istio(&tcp_routes(
                "range",
                "range",
                "  - match: [{destinationSubnets: [10.1.0.0/16, 10.0.0.0/16]}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local}}]
",
            )),
            delete(Kind::VirtualService, "bookinfo", "db"),
            istio(&tls_entry("secure")),
            delete(Kind::ServiceEntry, "bookinfo", "range"),
            delete(Kind::VirtualService, "bookinfo", "range"),
        ],
    );
}
