//! `Sidecar` ingress listeners in capture mode: the `virtualInbound` of the sidecars they
//! cover (built per Sidecar, replacing their workloads' per-address listeners), and the
//! limits of the clusters to the workload (`inboundConnectionPool`, an ingress listener's
//! `connectionPool`, the service's DestinationRule), built incrementally as a full build.

use capstan_crds::Kind;
use capstan_xds::ProxyInfo;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::tests::{capture, check_with, delete, istio, options, served_to};
use super::*;
use crate::model::sidecar_scope::fixtures::{service_entry, sidecar_proxy, sidecar_with};
use crate::reconcile::Pipeline;
use prost::Message;

/// A Sidecar with one ingress listener: `port` (`protocol`) to `endpoint`.
fn ingress(
    name: &str,
    ns: &str,
    selector: Option<&str>,
    port: u32,
    protocol: &str,
    endpoint: &str,
) -> String {
    let spec = format!(
        "  ingress:\n  - port: {{number: {port}, protocol: {protocol}, name: in}}\n    defaultEndpoint: \"{endpoint}\"\n"
    );
    sidecar_with(name, ns, selector, &spec)
}

/// shop's Sidecar: HTTP on 9080 to the workload's 127.0.0.1:8080.
fn shop_ingress() -> String {
    ingress("default", "shop", None, 9080, "HTTP", "127.0.0.1:8080")
}

#[test]
fn ingress_listener_updates_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&service_entry("cart", "shop")),
            istio(&service_entry("front", "web")),
            istio(&shop_ingress()),
            // The workloads labelled v1 have a Sidecar of their own, without ingress.
            istio(&sidecar_with(
                "v1",
                "shop",
                Some("version: v1"),
                "  egress: [{hosts: [\"*/*\"]}]\n",
            )),
            istio(&ingress(
                "default",
                "shop",
                None,
                9090,
                "TCP",
                "0.0.0.0:8081",
            )),
            delete(Kind::Sidecar, "shop", "v1"),
            istio(&tls_ingress()),
            // The root default lists ingress listeners for everyone else.
            istio(&ingress("default", "istio-system", None, 7070, "GRPC", "")),
            istio(&service_entry("basket", "shop")),
            delete(Kind::Sidecar, "shop", "default"),
            delete(Kind::Sidecar, "istio-system", "default"),
        ],
    );
}

/// The resources of `type_url` a full build of `yamls` serves `proxy`, in capture mode.
fn served<M: Message + Default>(yamls: &[String], type_url: &str, proxy: &ProxyInfo) -> Vec<M> {
    served_to(capture(), yamls, type_url, proxy)
}

/// The filter chains (their clusters) of the `virtualInbound` a full build serves `proxy`.
fn inbound_chains(yamls: &[String], proxy: &ProxyInfo) -> Vec<String> {
    let listener = served::<Listener>(yamls, type_url::LISTENER, proxy)
        .into_iter()
        .find(|l| l.name == "virtualInbound")
        .expect("every sidecar has virtualInbound");
    listener.filter_chains.into_iter().map(|c| c.name).collect()
}

/// shop's Sidecar: HTTP on 9080, and HTTPS on 9443 terminated (SIMPLE) to the workload's
/// 9080.
fn tls_ingress() -> String {
    sidecar_with(
        "default",
        "shop",
        None,
        "  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
  - port: {number: 9443, protocol: HTTPS, name: https}
    defaultEndpoint: 0.0.0.0:9080
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
",
    )
}

#[test]
fn an_ingress_port_with_tls_terminates_it() {
    let cart = ProxyInfo {
        address: Some("10.0.0.1".into()),
        ..sidecar_proxy("shop", &[])
    };
    let yamls = [service_entry("cart", "shop"), tls_ingress()];
    let listener = served::<Listener>(&yamls, type_url::LISTENER, &cart)
        .into_iter()
        .find(|l| l.name == "virtualInbound")
        .expect("virtualInbound");
    let terminated: Vec<(String, bool)> = listener
        .filter_chains
        .iter()
        .map(|c| (c.name.clone(), c.transport_socket.is_some()))
        .collect();
    assert_eq!(
        terminated,
        [
            ("inbound|9080|http|passthrough".to_string(), false),
            ("inbound|9443|http|instance_9080".to_string(), true),
            ("InboundPassthroughCluster".to_string(), false),
        ]
    );
}

#[test]
fn a_sidecars_ingress_listeners_replace_its_workloads_service_ports() {
    let mut yamls = vec![
        service_entry("cart", "shop"),
        service_entry("front", "web").replace("10.0.0.1", "10.0.0.2"),
    ];
    let at = |ns: &str, address: &str, labels: &[(&str, &str)]| ProxyInfo {
        address: Some(address.into()),
        ..sidecar_proxy(ns, labels)
    };
    let cart = at("shop", "10.0.0.1", &[("version", "v1")]);
    let front = at("web", "10.0.0.2", &[("version", "v1")]);
    let idle = at("shop", "10.0.0.9", &[]);
    let passthrough = "InboundPassthroughCluster";
    assert_eq!(inbound_chains(&yamls, &cart), ["inbound|80||", passthrough]);
    assert_eq!(inbound_chains(&yamls, &idle), [passthrough]);

    yamls.push(shop_ingress());
    let listed = "inbound|9080|http|127.0.0.1_8080";
    assert_eq!(inbound_chains(&yamls, &cart), [listed, passthrough]);
    assert_eq!(
        inbound_chains(&yamls, &idle),
        [listed, passthrough],
        "no endpoints"
    );
    assert_eq!(
        inbound_chains(&yamls, &front),
        ["inbound|80||", passthrough]
    );

    // A workload's own Sidecar without ingress: its services' ports again.
    yamls.push(sidecar_with(
        "v1",
        "shop",
        Some("version: v1"),
        "  egress: [{hosts: [\"*/*\"]}]\n",
    ));
    assert_eq!(inbound_chains(&yamls, &cart), ["inbound|80||", passthrough]);
    assert_eq!(inbound_chains(&yamls, &idle), [listed, passthrough]);
}

#[test]
fn direct_mode_reports_ingress_listeners_and_inbound_limits() {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    pipeline
        .index
        .handle(istio(&ingress("default", "shop", None, 9080, "HTTP", "")));
    pipeline.index.handle(istio(&sidecar_with(
        "default",
        "web",
        None,
        &inbound_pool(3),
    )));
    let _ = pipeline.full();
    let problems: Vec<String> = pipeline
        .translator
        .problems()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect();
    assert_eq!(
        problems,
        [
            "Sidecar shop/default spec.ingress",
            "Sidecar web/default spec.inboundConnectionPool"
        ]
    );
}

/// `inboundConnectionPool` of `max_connections`, as Sidecar spec lines.
fn inbound_pool(max_connections: u32) -> String {
    format!("  inboundConnectionPool: {{tcp: {{maxConnections: {max_connections}}}}}\n")
}

/// A DestinationRule for `name.namespace` limiting its connections to `max_connections`
/// (`port_level`: on port 80 only).
fn pool_rule(name: &str, namespace: &str, max_connections: u32, port_level: bool) -> String {
    let pool = format!("{{connectionPool: {{tcp: {{maxConnections: {max_connections}}}}}}}");
    let policy = if port_level {
        format!(
            "{{portLevelSettings: [{{port: {{number: 80}}, connectionPool: {{tcp: {{maxConnections: {max_connections}}}}}}}]}}"
        )
    } else {
        pool
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {name}.{namespace}.svc.cluster.local
  trafficPolicy: {policy}
"
    )
}

#[test]
fn inbound_pool_updates_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&service_entry("cart", "shop")),
            // The service's rule limits its workload's inbound side, as with istiod.
            istio(&pool_rule("cart", "shop", 9, false)),
            istio(&pool_rule("cart", "shop", 8, true)),
            istio(&sidecar_with("default", "shop", None, &inbound_pool(5))),
            // A port more: its cluster gets shop's variant too.
            istio(&service_entry("basket", "shop").replace("number: 80", "number: 81")),
            istio(&sidecar_with(
                "default",
                "istio-system",
                None,
                &inbound_pool(7),
            )),
            istio(&sidecar_with("default", "shop", None, &inbound_pool(6))),
            // Ingress listeners take the Sidecar's limits unless they set their own.
            istio(&sidecar_with(
                "default",
                "shop",
                None,
                &format!(
                    "{}  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: a}}\n  - port: {{number: 9090, protocol: TCP, name: b}}\n    connectionPool: {{tcp: {{maxConnections: 2}}}}\n",
                    inbound_pool(6)
                ),
            )),
            delete(Kind::ServiceEntry, "shop", "basket"),
            delete(Kind::Sidecar, "shop", "default"),
            delete(Kind::Sidecar, "istio-system", "default"),
            istio(&pool_rule("cart", "shop", 4, false)),
            delete(Kind::DestinationRule, "shop", "cart"),
        ],
    );
}

/// The `max_connections` of each cluster to the workload a full build serves `proxy`, by
/// name (`u32::MAX`: istiod's "no limit").
fn inbound_limits(yamls: &[String], proxy: &ProxyInfo) -> Vec<(String, u32)> {
    served::<Cluster>(yamls, type_url::CLUSTER, proxy)
        .into_iter()
        .filter(|c| c.name.starts_with("inbound|"))
        .map(|cluster| {
            let limit = cluster
                .circuit_breakers
                .and_then(|c| c.thresholds.first().cloned())
                .and_then(|t| t.max_connections)
                .map_or(0, |v| v.value);
            (cluster.name, limit)
        })
        .collect()
}

#[test]
fn inbound_limits_come_from_the_sidecars_own_scope_and_ingress_listener() {
    let cart = ProxyInfo {
        address: Some("10.0.0.1".into()),
        ..sidecar_proxy("shop", &[("version", "v1")])
    };
    let front = ProxyInfo {
        address: Some("10.0.0.2".into()),
        ..sidecar_proxy("web", &[])
    };
    let mut yamls = vec![
        service_entry("cart", "shop"),
        service_entry("front", "web").replace("10.0.0.1", "10.0.0.2"),
    ];
    // Without a Sidecar: no limits, as istiod's defaults.
    let unlimited = ("inbound|80||".to_string(), u32::MAX);
    assert_eq!(
        inbound_limits(&yamls, &cart),
        std::slice::from_ref(&unlimited)
    );
    // The rule of the service the workload serves limits it, not the others.
    yamls.push(pool_rule("cart", "shop", 9, false));
    assert_eq!(
        inbound_limits(&yamls, &cart),
        [("inbound|80||".to_string(), 9)]
    );
    assert_eq!(
        inbound_limits(&yamls, &front),
        std::slice::from_ref(&unlimited)
    );

    // A Sidecar's limits win over the rule's.
    yamls.push(sidecar_with("default", "shop", None, &inbound_pool(5)));
    assert_eq!(
        inbound_limits(&yamls, &cart),
        [("inbound|80||".to_string(), 5)]
    );
    assert_eq!(inbound_limits(&yamls, &front), [unlimited], "web's own");

    // shop's ingress listeners: one with limits of its own, one reading the Sidecar's.
    yamls.pop();
    yamls.push(sidecar_with(
        "default",
        "shop",
        None,
        &format!(
            "{}  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: a}}\n    defaultEndpoint: 127.0.0.1:8080\n  - port: {{number: 9090, protocol: TCP, name: b}}\n    connectionPool: {{tcp: {{maxConnections: 2}}}}\n",
            inbound_pool(5)
        ),
    ));
    let limits = inbound_limits(&yamls, &cart);
    for expected in [
        (
            "inbound|9080|http|127.0.0.1_8080|default.shop".to_string(),
            5,
        ),
        ("inbound|9090|tcp|passthrough|default.shop".to_string(), 2),
    ] {
        assert!(limits.contains(&expected), "{expected:?} in {limits:?}");
    }
}
