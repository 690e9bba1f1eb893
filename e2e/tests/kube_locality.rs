//! Locality in a cluster, as on EKS: sidecars send no locality of their own, so capstan takes
//! it from the Node their pod runs on (as istiod does), and endpoints' from the Nodes in
//! their EndpointSlice. Real kube-apiserver, real Envoys. Logs:
//! `<target>/debug/e2e-logs/<test name>/`.

use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::http::HttpClient;
use capstan_e2e::kube_mesh::{KubeReviewsMesh, REVIEWS_PORT, TestPod};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER};
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

fn node(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{topology.kubernetes.io/region: us-east-1, topology.kubernetes.io/zone: {zone}}}
"
    )
}

/// reviews' slice with each pod on the given Node.
fn slice(namespace: &str, pods: &[(&TestPod, &str)]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|(pod, node)| {
            format!(
                "- addresses: [\"{ip}\"]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: {node}
  targetRef: {{kind: Pod, name: {name}, namespace: {namespace}}}
",
                ip = pod.addr.ip(),
                name = pod.name,
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: reviews}}
addressType: IPv4
ports:
- {{name: http, port: {REVIEWS_PORT}, protocol: TCP}}
endpoints:
{endpoints}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_prefers_its_pods_zone() -> anyhow::Result<()> {
    let name = "a_sidecar_prefers_its_pods_zone";
    let mut mesh =
        KubeReviewsMesh::start(name, Path::new(UPSTREAM_BIN), AdsMode::Sotw, None, &[]).await?;
    let ns = mesh.namespace.clone();
    // Nodes are cluster-wide: named after this test's namespace.
    let (zone_a, zone_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let [v1, v2, v3] = [&mesh.pods[0], &mesh.pods[1], &mesh.pods[2]].map(Clone::clone);
    let client = "sleep-0";
    mesh.apply(
        "placement",
        &[
            node(&zone_a, "us-east-1a"),
            node(&zone_b, "us-east-1b"),
            format!(
                "apiVersion: v1
kind: Pod
metadata: {{name: {client}, namespace: {ns}, labels: {{app: sleep}}}}
spec:
  nodeName: {zone_a}
  containers: [{{name: sleep, image: example.invalid/sleep}}]
"
            ),
            slice(&ns, &[(&v1, &zone_a), (&v2, &zone_b), (&v3, &zone_b)]),
            format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews.{ns}.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s}}
"
            ),
        ]
        .join("---\n"),
    )
    .await?;

    // The harness's proxy has no pod: it prefers no zone.
    mesh.wait_for_versions(&[], &["v1", "v2", "v3"], 60).await?;

    // sleep-0's sidecar, which says nothing of where it runs, is kept to its pod's zone. It
    // is resolved when it connects, so one that came before capstan saw its pod reconnects.
    let log_dir = mesh.log_dir.clone();
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let xds_port = mesh.capstan.xds_port;
    let mut attempt = 0;
    let seen = wait_until("sleep-0 kept to us-east-1a", CONFIG_TIMEOUT, async || {
        attempt += 1;
        let mut bootstrap = Bootstrap::new(AdsMode::Sotw, xds_port);
        bootstrap.namespace = ns.clone();
        bootstrap.workload = client.to_string();
        let envoy = Envoy::start(
            &envoy_bin,
            &bootstrap,
            &log_dir,
            &format!("sleep-{attempt}"),
        )
        .await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await?;
        let mut proxy = HttpClient::new(loopback(port));
        let versions = wait_until("its endpoints", CONFIG_TIMEOUT, async || {
            proxy.reviews_versions(&[], 20).await
        })
        .await?;
        ensure!(
            versions.len() == 1 && versions.contains_key("v1"),
            "{versions:?}"
        );
        envoy.ensure_no_rejected_updates().await?;
        Ok(versions)
    })
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    ensure!(seen.get("v1") == Some(&20), "{seen:?}");
    mesh.envoy.ensure_no_rejected_updates().await
}
