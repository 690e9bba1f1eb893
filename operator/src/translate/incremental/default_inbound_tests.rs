//! `virtualInbound` of sidecars no service has an endpoint at: held to the policies that
//! select them by namespace and labels (variants per set of sidecars, joined where two sets
//! share sidecars), built incrementally as a full build.

use capstan_crds::Kind;
use capstan_xds::ProxyInfo;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::peer_authentication_tests::{IN_MESH, entries};
use super::tests::{capture, check_with, delete, istio, served_to};
use crate::model::sidecar_scope::fixtures::sidecar_with;

/// A sidecar at 10.9.9.9 (no endpoint there) of `namespace` with `labels`.
fn lonely(namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo {
        id: format!("sidecar~10.9.9.9~lonely-0.{namespace}~{namespace}.svc.cluster.local"),
        namespace: Some(namespace.into()),
        address: Some("10.9.9.9".into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

const FRONT_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: front}
spec: {mtls: {mode: STRICT}}
";

/// A mesh-wide DENY for the workloads labelled `app: batch`, in any namespace.
const DENY_BATCH: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-batch, namespace: istio-system}
spec:
  selector: {matchLabels: {app: batch}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";

/// Per chain of the passthrough: its name, whether it terminates TLS, and its filters.
fn passthrough(yamls: &[String], proxy: &ProxyInfo) -> Vec<(String, bool, Vec<String>)> {
    let listeners = served_to::<Listener>(capture(), yamls, capstan_xds::type_url::LISTENER, proxy);
    let inbound = (listeners.into_iter())
        .find(|l| l.name == "virtualInbound")
        .expect("a virtualInbound");
    let chains = inbound.filter_chains.iter();
    chains
        .map(|c| {
            let filters = c.filters.iter().map(|f| f.name.clone()).collect();
            (c.name.clone(), c.transport_socket.is_some(), filters)
        })
        .collect()
}

fn yamls() -> Vec<String> {
    let mut yamls = entries(IN_MESH, false);
    yamls.push(FRONT_STRICT.to_string());
    yamls.push(DENY_BATCH.to_string());
    yamls
}

#[test]
fn a_sidecar_without_an_endpoint_reads_the_policies_of_its_namespace_and_labels() {
    let yamls = yamls();
    let names = |chains: Vec<(String, bool, Vec<String>)>| -> Vec<String> {
        chains.into_iter().map(|(n, _, _)| n).collect()
    };
    // Neither policy: one chain for everything, as before.
    let free = passthrough(&yamls, &lonely("web", &[]));
    assert_eq!(names(free), ["InboundPassthroughCluster"]);
    // front's STRICT: mutual TLS only.
    let strict = passthrough(&yamls, &lonely("front", &[]));
    assert!(strict.iter().all(|(_, tls, _)| *tls), "{strict:?}");
    assert_eq!(
        names(strict),
        [
            "InboundPassthroughClustermtlshttp",
            "InboundPassthroughClustermtls"
        ]
    );
    // The mesh-wide DENY for batch workloads, in a namespace without policies: the RBAC
    // filters on the passthrough, HTTP told apart by its first bytes.
    let batch = passthrough(&yamls, &lonely("web", &[("app", "batch")]));
    let tcp = &batch.last().expect("a chain").2;
    assert_eq!(
        tcp,
        &[
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    // Both for a batch workload of front.
    let both = passthrough(&yamls, &lonely("front", &[("app", "batch")]));
    assert!(both.iter().all(|(_, tls, _)| *tls), "{both:?}");
    assert_eq!(
        both.last().expect("a chain").2,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
}

/// An ingress listener of front's Sidecar on a sidecar without an endpoint: STRICT there.
#[test]
fn a_sidecar_without_an_endpoint_holds_its_ingress_ports_to_its_mode() {
    let mut yamls = yamls();
    let ingress = "  ingress:\n  - port: {number: 7070, name: http, protocol: HTTP}\n";
    yamls.push(sidecar_with("default", "front", None, ingress));
    let chains = passthrough(&yamls, &lonely("front", &[]));
    let port: Vec<&(String, bool, Vec<String>)> = chains
        .iter()
        .filter(|(n, _, _)| n.starts_with("inbound|7070"))
        .collect();
    assert!(!port.is_empty(), "{chains:?}");
    assert!(port.iter().all(|(_, tls, _)| *tls), "{port:?}");
}

#[test]
fn default_inbound_updates_match_a_full_build() {
    let ingress = "  ingress:\n  - port: {number: 7070, name: http, protocol: HTTP}\n";
    check_with(
        capture(),
        vec![
            istio(FRONT_STRICT),
            istio(DENY_BATCH),
            istio(&sidecar_with("default", "front", None, ingress)),
            istio(&sidecar_with("batch", "web", Some("app: batch"), ingress)),
            delete(Kind::PeerAuthentication, "front", "default"),
            delete(Kind::Sidecar, "front", "default"),
            delete(Kind::AuthorizationPolicy, "istio-system", "deny-batch"),
            delete(Kind::Sidecar, "web", "batch"),
        ],
    );
}
