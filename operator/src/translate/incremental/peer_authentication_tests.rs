//! PeerAuthentication and auto mTLS: what a workload's `virtualInbound` accepts, how clients'
//! clusters and load assignments reach it, and incremental builds equal to full ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::Kind;
use capstan_xds::ProxyInfo;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Message;

use super::tests::{capture, check_with, delete, istio, options, served_to, service};
use crate::index::{Event, Health, NsName, PodRecord, Record, SliceEndpoint, SliceRecord};

/// `reviews` (HTTP 9080) and `db` (TCP 5432) in `bookinfo`, both on workload 10.0.0.1 (`app:
/// bookinfo`), whose endpoints carry `extra` labels too; `location` MESH_INTERNAL unless `external`.
pub(super) fn entries(extra: &str, external: bool) -> Vec<String> {
    let location = if external {
        "MESH_EXTERNAL"
    } else {
        "MESH_INTERNAL"
    };
    [("reviews", 9080, "HTTP", 10), ("db", 5432, "TCP", 20)]
        .iter()
        .map(|(name, port, protocol, vip)| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [240.0.0.{vip}]
  location: {location}
  ports: [{{number: {port}, name: {}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.1, serviceAccount: bookinfo-app, labels: {{app: bookinfo{extra}}}}}
",
                protocol.to_lowercase()
            )
        })
        .collect()
}

pub(super) const IN_MESH: &str = ", security.istio.io/tlsMode: istio";

fn policy(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{body}"
    )
}

fn workload() -> ProxyInfo {
    ProxyInfo {
        id: "sidecar~10.0.0.1~app-0.bookinfo~bookinfo.svc.cluster.local".into(),
        namespace: Some("bookinfo".into()),
        address: Some("10.0.0.1".into()),
        ..Default::default()
    }
}

pub(super) fn virtual_inbound(yamls: &[String]) -> Listener {
    listener_named(yamls, "virtualInbound")
}

/// Listener `name` as the workload at 10.0.0.1 is served it by a full build of `yamls`.
fn listener_named(yamls: &[String], name: &str) -> Listener {
    served_to::<Listener>(
        capture(),
        yamls,
        capstan_xds::type_url::LISTENER,
        &workload(),
    )
    .into_iter()
    .find(|l| l.name == name)
    .unwrap_or_else(|| panic!("{name} is not served"))
}

/// Per chain of `port`: (transport protocol, ALPN, terminates TLS requiring a client
/// certificate).
fn chains_of(listener: &Listener, port: u32) -> Vec<(String, Vec<String>, bool)> {
    let on_port = |c: &&FilterChain| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port)
            .is_some_and(|p| p.value == port)
    };
    listener
        .filter_chains
        .iter()
        .filter(on_port)
        .map(chain_view)
        .collect()
}

/// [`chains_of`] every chain.
fn chains(listener: &Listener) -> Vec<(String, Vec<String>, bool)> {
    listener.filter_chains.iter().map(chain_view).collect()
}

/// A chain's transport protocol, ALPN, and whether it terminates mutual TLS.
type ChainView = (String, Vec<String>, bool);

fn chain_view(c: &FilterChain) -> ChainView {
    let m = c.filter_chain_match.clone().unwrap_or_default();
    let mtls = c.transport_socket.as_ref().is_some_and(|socket| {
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = &socket.config_type
        else {
            return false;
        };
        let context = DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        let common = context.common_tls_context.unwrap_or_default();
        context.require_client_certificate.is_some_and(|b| b.value)
            && common.tls_certificate_sds_secret_configs[0].name == "default"
    });
    (m.transport_protocol, m.application_protocols, mtls)
}

fn listener_filters(listener: &Listener) -> Vec<String> {
    listener
        .listener_filters
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

fn plain(transport: &str) -> (String, Vec<String>, bool) {
    (transport.into(), Vec::new(), false)
}

fn mutual(alpn: &[&str]) -> (String, Vec<String>, bool) {
    (
        "tls".into(),
        alpn.iter().map(|s| s.to_string()).collect(),
        true,
    )
}

const ISTIO_ALPN: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

#[test]
fn a_workload_with_a_sidecar_accepts_mutual_tls_and_plain_text_by_default() {
    let listener = virtual_inbound(&entries(IN_MESH, false));
    assert!(listener_filters(&listener).contains(&"envoy.filters.listener.tls_inspector".into()));
    assert_eq!(
        chains_of(&listener, 9080),
        vec![mutual(&ISTIO_ALPN), plain("raw_buffer")]
    );
    // TCP: Istio's mutual TLS, TLS the app speaks itself (passed on), plain text.
    assert_eq!(
        chains_of(&listener, 5432),
        vec![mutual(&ISTIO_ALPN), plain("tls"), plain("raw_buffer")]
    );
}

#[test]
fn strict_accepts_mutual_tls_only_and_disable_plain_text_only() {
    let mut yamls = entries(IN_MESH, false);
    yamls.push(policy("bookinfo", "default", "  mtls: {mode: STRICT}\n"));
    let strict = virtual_inbound(&yamls);
    assert_eq!(chains_of(&strict, 9080), vec![mutual(&[])]);
    assert_eq!(chains_of(&strict, 5432), vec![mutual(&[])]);

    yamls.push(policy(
        "bookinfo",
        "db",
        "  selector: {matchLabels: {app: bookinfo}}\n  portLevelMtls:\n    \"5432\": {mode: DISABLE}\n",
    ));
    let mixed = virtual_inbound(&yamls);
    assert_eq!(chains_of(&mixed, 9080), vec![mutual(&[])]);
    assert_eq!(chains_of(&mixed, 5432), vec![plain("raw_buffer")]);
}

#[test]
fn a_workload_without_a_sidecar_label_accepts_anything_unless_strict() {
    let mut yamls = entries("", false);
    let before = virtual_inbound(&yamls);
    assert_eq!(chains_of(&before, 9080), vec![plain("")]);
    assert!(!listener_filters(&before).contains(&"envoy.filters.listener.tls_inspector".into()));
    yamls.push(policy(
        "istio-system",
        "default",
        "  mtls: {mode: STRICT}\n",
    ));
    assert_eq!(chains_of(&virtual_inbound(&yamls), 9080), vec![mutual(&[])]);
}

/// The passthrough's chains (what no port of the workload claims): per chain its name,
/// port and view.
fn passthrough(listener: &Listener) -> Vec<(String, Option<u32>, ChainView)> {
    let chains = listener.filter_chains.iter();
    let passing = chains.filter(|c| c.name.starts_with("InboundPassthroughCluster"));
    passing
        .map(|c| {
            let port = c
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port);
            (c.name.clone(), port.map(|p| p.value), chain_view(c))
        })
        .collect()
}

const DETECTED_HTTP: [&str; 3] = ["http/1.1", "http/1.0", "h2c"];

/// As istiod's passthrough chains: a connection to a port no service declares is held to
/// the workload's mode (STRICT: mutual TLS only), and a port-level mode for such a port gets
/// chains of its own; with nothing to require, one chain takes everything as before.
#[test]
fn the_passthrough_accepts_what_the_workloads_mode_says() {
    let mut yamls = entries(IN_MESH, false);
    let name = |suffix: &str| format!("InboundPassthroughCluster{suffix}");
    let permissive = passthrough(&virtual_inbound(&yamls));
    let any = |t: &str| (t.to_string(), Vec::new(), false);
    let http = |t: &str| {
        let alpn = DETECTED_HTTP.iter().map(|p| p.to_string()).collect();
        (t.to_string(), alpn, false)
    };
    assert_eq!(
        permissive,
        vec![
            (name("mtlshttp"), None, mutual(&ISTIO_ALPN[2..])),
            (name("http"), None, http("raw_buffer")),
            (
                name("mtls"),
                None,
                mutual(&["istio-peer-exchange", "istio"])
            ),
            (name(""), None, any("raw_buffer")),
            (name("tls"), None, any("tls")),
        ]
    );
    yamls.push(policy(
        "bookinfo",
        "default",
        "  mtls: {mode: STRICT}
",
    ));
    let strict = virtual_inbound(&yamls);
    assert_eq!(
        passthrough(&strict),
        vec![
            (name("mtlshttp"), None, mutual(&ISTIO_ALPN[2..])),
            (name("mtls"), None, mutual(&[])),
        ]
    );
    assert!(listener_filters(&strict).contains(&"envoy.filters.listener.tls_inspector".into()));
    // A port-level mode for an undeclared port (7777) gets chains for that port; one for a
    // declared port (5432) is that port's.
    yamls.push(policy(
        "bookinfo",
        "ports",
        "  selector: {matchLabels: {app: bookinfo}}
  portLevelMtls:
    \"7777\": {mode: DISABLE}
    \"5432\": {mode: DISABLE}
",
    ));
    let ports = passthrough(&virtual_inbound(&yamls));
    let port_names: Vec<(String, Option<u32>)> =
        ports.iter().map(|(n, p, _)| (n.clone(), *p)).collect();
    assert_eq!(
        port_names,
        [
            (name("mtlshttp"), None),
            (name("mtls"), None),
            (name("|7777http"), Some(7777)),
            (name("|7777"), Some(7777)),
        ]
    );
    // No identity, no policy: one chain, as before.
    let before = passthrough(&virtual_inbound(&entries("", false)));
    assert_eq!(before, vec![(name(""), None, any(""))]);
}

/// bookinfo's Sidecar: an HTTP ingress listener on 7070 to the app's 127.0.0.1:8080.
const INGRESS_7070: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 7070, name: http, protocol: HTTP}
    defaultEndpoint: 127.0.0.1:8080
";

/// A workload whose Sidecar lists ingress listeners: its identity and PeerAuthentication
/// decide what those ports accept, as for its service ports; to the listener's cluster.
#[test]
fn ingress_listener_ports_accept_what_the_workloads_peer_authentication_says() {
    let mut yamls = entries(IN_MESH, false);
    yamls.push(INGRESS_7070.to_string());
    let permissive = virtual_inbound(&yamls);
    assert_eq!(
        chains_of(&permissive, 7070),
        vec![mutual(&ISTIO_ALPN), plain("raw_buffer")]
    );
    assert!(
        chains_of(&permissive, 9080).is_empty(),
        "the Sidecar's ports replace the service's"
    );
    let cluster_of = |chain: &FilterChain| chain.name.trim_end_matches("mtls").to_string();
    let first = (permissive.filter_chains.first()).expect("a chain");
    assert_eq!(cluster_of(first), "inbound|7070|http|127.0.0.1_8080");
    yamls.push(policy("bookinfo", "default", "  mtls: {mode: STRICT}\n"));
    assert_eq!(chains_of(&virtual_inbound(&yamls), 7070), vec![mutual(&[])]);
    // Without an identity, as before: anything passes on.
    let mut plain_yamls = entries("", false);
    plain_yamls.push(INGRESS_7070.to_string());
    assert_eq!(
        chains_of(&virtual_inbound(&plain_yamls), 7070),
        vec![plain("")]
    );
}

/// bookinfo's Sidecar: an HTTP ingress listener on 127.0.0.1:7070 of its own (`captureMode:
/// NONE`) to the app's 127.0.0.1:8080.
const BOUND_7070: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 7070, name: http, protocol: HTTP}
    captureMode: NONE
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8080
";

/// The bound listener of an ingress port, as the workload at 10.0.0.1 is served it.
fn bound_7070(yamls: &[String]) -> Listener {
    listener_named(yamls, "127.0.0.1_7070")
}

#[test]
fn a_bound_ingress_port_accepts_what_the_workloads_peer_authentication_says() {
    let mut yamls = entries(IN_MESH, false);
    yamls.push(BOUND_7070.to_string());
    assert_eq!(
        chains(&bound_7070(&yamls)),
        vec![mutual(&ISTIO_ALPN), plain("raw_buffer")]
    );
    yamls.push(policy("bookinfo", "default", "  mtls: {mode: STRICT}\n"));
    assert_eq!(chains(&bound_7070(&yamls)), vec![mutual(&[])]);
    let mut plain_yamls = entries("", false);
    plain_yamls.push(BOUND_7070.to_string());
    assert_eq!(chains(&bound_7070(&plain_yamls)), vec![plain("")]);
}

#[test]
fn ingress_listener_mtls_built_incrementally_matches_a_full_build() {
    let mut steps: Vec<Event> = entries(IN_MESH, false).iter().map(|y| istio(y)).collect();
    steps.extend([
        istio(INGRESS_7070),
        istio(&policy("bookinfo", "default", "  mtls: {mode: STRICT}\n")),
        istio(&entries("", false)[0]),
        istio(&entries(IN_MESH, false)[0]),
        istio(BOUND_7070),
        delete(Kind::PeerAuthentication, "bookinfo", "default"),
        istio(&entries("", false)[0]),
        delete(Kind::Sidecar, "bookinfo", "default"),
    ]);
    check_with(capture(), steps);
}

fn clusters(yamls: &[String]) -> BTreeMap<String, Cluster> {
    served_to::<Cluster>(
        options(),
        yamls,
        capstan_xds::type_url::CLUSTER,
        &workload(),
    )
    .into_iter()
    .map(|c| (c.name.clone(), c))
    .collect()
}

fn auto_matches(cluster: &Cluster) -> Vec<String> {
    cluster
        .transport_socket_matches
        .iter()
        .map(|m| m.name.clone())
        .collect()
}

const REVIEWS: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";

#[test]
fn clients_originate_mutual_tls_to_endpoints_with_sidecars() {
    let in_mesh = clusters(&entries(IN_MESH, false));
    let reviews = &in_mesh[REVIEWS];
    assert_eq!(auto_matches(reviews), ["tlsMode-istio", "tlsMode-disabled"]);
    assert!(reviews.transport_socket.is_none());

    // Outside the mesh, without sidecars, or DISABLE for the namespace: no mutual TLS.
    assert!(auto_matches(&clusters(&entries(IN_MESH, true))[REVIEWS]).is_empty());
    assert!(auto_matches(&clusters(&entries("", false))[REVIEWS]).is_empty());
    let mut disabled = entries(IN_MESH, false);
    disabled.push(policy("bookinfo", "default", "  mtls: {mode: DISABLE}\n"));
    assert!(auto_matches(&clusters(&disabled)[REVIEWS]).is_empty());

    // A DestinationRule's TLS wins.
    let mut ruled = entries(IN_MESH, false);
    ruled.push(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: DISABLE}}
"
        .into(),
    );
    assert!(auto_matches(&clusters(&ruled)[REVIEWS]).is_empty());

    // The mesh config's `enableAutoMtls: false`: none either.
    let off =
        crate::mesh_config::MeshConfig::parse("mesh", "enableAutoMtls: false\n").expect("valid");
    let options = super::super::Options {
        mesh_settings: std::sync::Arc::new(off.settings()),
        ..options()
    };
    let without = served_to::<Cluster>(
        options,
        &entries(IN_MESH, false),
        capstan_xds::type_url::CLUSTER,
        &workload(),
    );
    let reviews = without.iter().find(|c| c.name == REVIEWS).expect("reviews");
    assert!(auto_matches(reviews).is_empty());
}

fn tls_modes(yamls: &[String], cluster: &str) -> Vec<bool> {
    served_to::<ClusterLoadAssignment>(
        options(),
        yamls,
        capstan_xds::type_url::ENDPOINT,
        &workload(),
    )
    .into_iter()
    .filter(|a| a.cluster_name == cluster)
    .flat_map(|a| a.endpoints)
    .flat_map(|l| l.lb_endpoints)
    .map(|e| {
        e.metadata
            .and_then(|m| {
                m.filter_metadata
                    .get("envoy.transport_socket_match")
                    .cloned()
            })
            .and_then(|s| s.fields.get("tlsMode").cloned())
            .is_some()
    })
    .collect()
}

#[test]
fn an_endpoint_takes_mutual_tls_unless_its_workload_disables_the_port() {
    const DB: &str = "outbound|5432||db.bookinfo.svc.cluster.local";
    let mut yamls = entries(IN_MESH, false);
    assert_eq!(tls_modes(&yamls, DB), [true]);
    assert_eq!(tls_modes(&entries("", false), DB), [false]);
    yamls.push(policy(
        "bookinfo",
        "db",
        "  selector: {matchLabels: {app: bookinfo}}\n  portLevelMtls:\n    \"5432\": {mode: DISABLE}\n",
    ));
    assert_eq!(tls_modes(&yamls, DB), [false]);
    assert_eq!(tls_modes(&yamls, REVIEWS), [true]);
}

/// Policies added, changed and deleted at every level, and a ServiceEntry's endpoints
/// gaining the sidecar label, must each equal a full build (listeners, clusters and load
/// assignments).
#[test]
fn peer_authentication_updates_match_a_full_build() {
    let plain = entries("", false);
    let in_mesh = entries(IN_MESH, false);
    check_with(
        capture(),
        vec![
            istio(&plain[0]),
            istio(&plain[1]),
            istio(&policy(
                "istio-system",
                "default",
                "  mtls: {mode: STRICT}\n",
            )),
            istio(&in_mesh[0]),
            istio(&in_mesh[1]),
            istio(&policy(
                "bookinfo",
                "default",
                "  mtls: {mode: PERMISSIVE}\n",
            )),
            istio(&policy(
                "bookinfo",
                "db",
                "  selector: {matchLabels: {app: bookinfo}}\n  portLevelMtls:\n    \"5432\": {mode: DISABLE}\n",
            )),
            istio(&policy("bookinfo", "default", "  mtls: {mode: DISABLE}\n")),
            delete(Kind::PeerAuthentication, "bookinfo", "db"),
            delete(Kind::PeerAuthentication, "bookinfo", "default"),
            delete(Kind::PeerAuthentication, "istio-system", "default"),
            istio(&plain[0]),
        ],
    );
}

fn pod(name: &str, labels: &[(&str, &str)]) -> Event {
    Event::Apply(Record::Pod(PodRecord {
        id: NsName::new("bookinfo", name),
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        service_account: "reviews".into(),
        node: None,
        ip: Some("10.0.1.1".into()),
        ready: true,
    }))
}

/// A Kubernetes Service whose one pod gains, then loses, the sidecar label: its clusters
/// switch to auto mTLS and back through the endpoint path alone.
#[test]
fn a_pod_gaining_a_sidecar_switches_its_services_clusters() {
    let slice = Event::Apply(Record::Slice(SliceRecord {
        id: NsName::new("bookinfo", "reviews-1"),
        service: "reviews".into(),
        ports: Arc::new(BTreeMap::from([("http".to_string(), 9080)])),
        endpoints: vec![SliceEndpoint {
            address: "10.0.1.1".into(),
            health: Health::Ready,
            pod: Some("reviews-0".into()),
            node: None,
            zone: None,
        }],
    }));
    check_with(
        capture(),
        vec![
            pod("reviews-0", &[("app", "reviews")]),
            service("reviews", &[("http", 9080)]),
            slice,
            pod(
                "reviews-0",
                &[("app", "reviews"), ("security.istio.io/tlsMode", "istio")],
            ),
            pod("reviews-0", &[("app", "reviews")]),
        ],
    );
}
