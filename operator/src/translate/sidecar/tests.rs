use std::collections::BTreeMap;

use capstan_xds::{ProxyInfo, Role, SnapshotCache, type_index, type_url};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;

use super::*;
use crate::translate::test_support::mesh;
use crate::translate::{Options, Translator};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, ports: {http: 19080}}
  - {address: 10.0.0.2}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  addresses: [240.0.0.5]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: bookinfo}
spec:
  hosts: [cache.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 6379, name: redis, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.3}
"#;

fn capture() -> Options {
    Options {
        sidecar_listeners: ListenerMode::Capture,
        ..crate::translate::test_support::options()
    }
}

fn sidecar(address: &str) -> ProxyInfo {
    ProxyInfo {
        role: Role::Sidecar,
        address: Some(address.into()),
        ..ProxyInfo::default()
    }
}

/// The listeners and clusters `proxy` is served, by name.
fn served(
    yaml: &str,
    proxy: &ProxyInfo,
) -> (BTreeMap<String, Listener>, BTreeMap<String, Cluster>) {
    let cache = SnapshotCache::new();
    cache.replace(Translator::new(capture()).full(&mesh(yaml)));
    let state = cache.current();
    let decode = |url: &str| {
        let index = type_index(url).expect("known type");
        state
            .snapshot
            .view(index, proxy)
            .map(|r| (r.name().to_string(), r.body()))
            .collect::<Vec<_>>()
    };
    let listeners = decode(type_url::LISTENER)
        .into_iter()
        .map(|(n, b)| (n, Listener::decode(b).expect("listener")))
        .collect();
    let clusters = decode(type_url::CLUSTER)
        .into_iter()
        .map(|(n, b)| (n, Cluster::decode(b).expect("cluster")))
        .collect();
    (listeners, clusters)
}

fn chain_ports(listener: &Listener) -> Vec<Option<u32>> {
    listener
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .map(|p| p.value)
        })
        .collect()
}

#[test]
fn outbound_listeners_per_port_and_inbound_per_workload() {
    let (listeners, clusters) = served(MESH, &sidecar("10.0.0.1"));
    let names: Vec<&str> = listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "0.0.0.0_6379",
            "0.0.0.0_9080",
            "240.0.0.5_5432",
            VIRTUAL_INBOUND,
            VIRTUAL_OUTBOUND
        ]
    );
    let outbound = &listeners[VIRTUAL_OUTBOUND];
    assert_eq!(
        outbound.use_original_dst.as_ref().map(|b| b.value),
        Some(true)
    );
    for name in ["0.0.0.0_9080", "240.0.0.5_5432", "0.0.0.0_6379"] {
        assert_eq!(
            listeners[name].bind_to_port.as_ref().map(|b| b.value),
            Some(false),
            "{name} is reached through virtualOutbound only"
        );
    }
    // The workload at 10.0.0.1 serves reviews on its mapped port and db on 5432.
    assert_eq!(
        chain_ports(&listeners[VIRTUAL_INBOUND]),
        vec![Some(5432), Some(19080), None]
    );
    for name in [
        "inbound|5432||",
        "inbound|19080||",
        PASSTHROUGH,
        INBOUND_PASSTHROUGH,
    ] {
        assert!(
            clusters.contains_key(name),
            "no {name} in {:?}",
            clusters.keys()
        );
    }
    // A workload elsewhere gets its own ports; a sidecar of no workload only the passthrough.
    let (listeners, _) = served(MESH, &sidecar("10.0.0.2"));
    assert_eq!(
        chain_ports(&listeners[VIRTUAL_INBOUND]),
        vec![Some(9080), None]
    );
    let (listeners, _) = served(MESH, &sidecar("10.9.9.9"));
    assert_eq!(chain_ports(&listeners[VIRTUAL_INBOUND]), vec![None]);
    // Gateways get none of this.
    let router = ProxyInfo {
        role: Role::Router,
        ..ProxyInfo::default()
    };
    let (listeners, clusters) = served(MESH, &router);
    assert!(listeners.is_empty(), "{:?}", listeners.keys());
    assert!(!clusters.contains_key(PASSTHROUGH));
}

#[test]
fn a_tcp_port_without_an_address_on_an_http_port_is_reported() {
    let yaml = format!(
        "{MESH}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: bookinfo}}
spec:
  hosts: [legacy.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.4}}
"
    );
    let mut translator = Translator::new(capture());
    translator.full(&mesh(&yaml));
    let problems: Vec<String> = translator.problems().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("legacy") && problems[0].contains("9080"),
        "{problems:?}"
    );
}

#[test]
fn listener_modes_read_from_flags() {
    assert_eq!("capture".parse(), Ok(ListenerMode::Capture));
    assert_eq!("direct".parse(), Ok(ListenerMode::Direct));
    assert!("iptables".parse::<ListenerMode>().is_err());
}

fn tcp_clusters(listener: &Listener) -> Vec<(String, u32)> {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
    let chain = &listener.filter_chains[0];
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &chain.filters[0].config_type
    else {
        panic!("no typed config");
    };
    let proxy = TcpProxy::decode(any.value.as_slice()).expect("a tcp proxy");
    match proxy.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![(c, 100)],
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.into_iter().map(|c| (c.name, c.weight)).collect()
        }
        None => Vec::new(),
    }
}

#[test]
fn tcp_routes_split_a_services_listener() {
    let yaml = format!(
        "{MESH}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: bookinfo}}
spec:
  host: db.bookinfo.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
  - match: [{{port: 5432}}]
    route:
    - {{destination: {{host: db.bookinfo.svc.cluster.local, subset: v1}}, weight: 80}}
    - {{destination: {{host: db.bookinfo.svc.cluster.local, subset: v2}}, weight: 20}}
"
    );
    let (listeners, _) = served(&yaml, &sidecar("10.9.9.9"));
    assert_eq!(
        tcp_clusters(&listeners["240.0.0.5_5432"]),
        vec![
            (
                "outbound|5432|v1|db.bookinfo.svc.cluster.local".to_string(),
                80
            ),
            (
                "outbound|5432|v2|db.bookinfo.svc.cluster.local".to_string(),
                20
            )
        ]
    );
    // A route bound to a gateway only leaves the sidecars alone.
    let gateway_only = yaml.replace(
        "  hosts: [db.bookinfo.svc.cluster.local]\n  tcp:",
        "  hosts: [db.bookinfo.svc.cluster.local]\n  gateways: [gw]\n  tcp:",
    );
    let (listeners, _) = served(&gateway_only, &sidecar("10.9.9.9"));
    assert_eq!(
        tcp_clusters(&listeners["240.0.0.5_5432"]),
        vec![(
            "outbound|5432||db.bookinfo.svc.cluster.local".to_string(),
            100
        )]
    );
}

#[test]
fn tls_hosts_share_a_port_by_sni() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: apis, namespace: default}
spec:
  hosts: [api.example.com, "*.storage.example.com"]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com]}]
    route: [{destination: {host: "eu.storage.example.com"}}]
"#;
    let (listeners, _) = served(yaml, &sidecar("10.9.9.9"));
    let listener = &listeners["0.0.0.0_443"];
    assert_eq!(
        listener.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let names: Vec<(Vec<String>, String)> = listener
        .filter_chains
        .iter()
        .map(|c| {
            let names = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            (names, c.name.clone())
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (
                vec!["*.storage.example.com".to_string()],
                "outbound|443||*.storage.example.com".to_string()
            ),
            (
                vec!["api.example.com".to_string()],
                "outbound|443||api.example.com".to_string()
            ),
            (Vec::new(), PASSTHROUGH.to_string()),
        ]
    );
    // The tls route sends api.example.com's connections elsewhere.
    let api = Listener {
        filter_chains: vec![listener.filter_chains[1].clone()],
        ..Default::default()
    };
    assert_eq!(
        tcp_clusters(&api),
        vec![("outbound|443||eu.storage.example.com".to_string(), 100)]
    );
}
