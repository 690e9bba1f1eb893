//! `Sidecar` ingress listeners in capture mode: the `virtualInbound` of the sidecars they
//! cover (built per Sidecar, replacing their workloads' per-address listeners), built
//! incrementally as a full build.

use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, SnapshotCache, type_index};
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::tests::{check_with, delete, istio, options};
use super::*;
use crate::model::sidecar_scope::fixtures::{service_entry, sidecar_proxy, sidecar_with};
use crate::reconcile::Pipeline;

fn capture() -> Options {
    Options {
        sidecar_listeners: ListenerMode::Capture,
        ..options()
    }
}

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
            // The root default lists ingress listeners for everyone else.
            istio(&ingress("default", "istio-system", None, 7070, "GRPC", "")),
            istio(&service_entry("basket", "shop")),
            delete(Kind::Sidecar, "shop", "default"),
            delete(Kind::Sidecar, "istio-system", "default"),
        ],
    );
}

/// The filter chains (their clusters) of the `virtualInbound` a full build serves `proxy`.
fn inbound_chains(yamls: &[String], proxy: &ProxyInfo) -> Vec<String> {
    let mut pipeline = Pipeline::new(capture(), "cluster.local");
    for yaml in yamls {
        pipeline.index.handle(istio(yaml));
    }
    let cache = SnapshotCache::new();
    cache.replace(pipeline.full());
    let state = cache.current();
    let index = type_index(type_url::LISTENER).expect("a served type");
    let listener = state
        .snapshot
        .view(index, proxy)
        .find(|r| r.name() == "virtualInbound")
        .map(|r| Listener::decode(r.body().clone()).expect("decodes"))
        .expect("every sidecar has virtualInbound");
    listener.filter_chains.into_iter().map(|c| c.name).collect()
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
fn direct_mode_reports_ingress_listeners() {
    let mut pipeline = Pipeline::new(options(), "cluster.local");
    pipeline
        .index
        .handle(istio(&ingress("default", "shop", None, 9080, "HTTP", "")));
    let _ = pipeline.full();
    let problems: Vec<String> = pipeline
        .translator
        .problems()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect();
    assert_eq!(problems, ["Sidecar shop/default spec.ingress"]);
}
