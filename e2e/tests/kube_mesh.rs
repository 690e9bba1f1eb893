//! capstan in Kubernetes mode against a real kube-apiserver (one per test binary, a namespace
//! per test) and real Envoys: Services, EndpointSlices, Pods and Istio YAML applied with
//! kubectl route real traffic; edits, deletions, invalid objects and endpoint scaling are
//! followed. capstan runs as the RBAC-limited `capstan` service account of
//! `charts/manifests/rbac.yaml`: a forbidden call shows as a watch error and fails the test.
//!
//! The binary runs in its own network namespace (pods need non-loopback addresses).

use std::path::Path;

use anyhow::ensure;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::kube_mesh::{
    KubeReviewsMesh, TestPod, all_to_yaml, endpoint_slice_yaml, header_match_yaml,
};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
const NOBODY: &[(&str, &str)] = &[];
/// The tests of one binary share an API server, and every capstan watches all of it: only
/// one may write status, or they would correct each other's view of the others' objects.
/// The status test is that one (leader election has a binary of its own).
const NO_STATUS: &[&str] = &["--write-status=false"];
const STATUS_WRITER: &[&str] = &["--leader-elect=false"];

async fn routing(name: &str, mode: AdsMode) -> anyhow::Result<()> {
    let upstream = Path::new(UPSTREAM_BIN);
    let mut mesh = KubeReviewsMesh::start(name, upstream, mode, None, NO_STATUS).await?;
    let ns = mesh.namespace.clone();

    // Without a VirtualService the Service balances over every ready pod.
    mesh.wait_for_versions(NOBODY, &["v1", "v2", "v3"], 60)
        .await?;

    // A VirtualService applied with kubectl routes by header.
    mesh.apply("vs-jason", &header_match_yaml(&ns, "v2", "v1"))
        .await?;
    mesh.wait_for_versions(JASON, &["v2"], 20).await?;
    mesh.wait_for_versions(NOBODY, &["v1"], 20).await?;

    // Edited: followed.
    mesh.apply("vs-all-v3", &all_to_yaml(&ns, "v3")).await?;
    mesh.wait_for_versions(JASON, &["v3"], 20).await?;

    // Scaled up: a second v3 pod, in a second slice, answering `v3-b`, takes traffic too.
    mesh.add_pod(upstream, TestPod::answering("v3", "v3-b"))
        .await?;
    mesh.wait_for_versions(NOBODY, &["v3", "v3-b"], 40).await?;

    // Scaled down: the first slice reports its v3 pod not ready; only the new one is left.
    let [v1, v2, v3] = [&mesh.pods[0], &mesh.pods[1], &mesh.pods[2]].map(Clone::clone);
    mesh.apply(
        "scale-down",
        &endpoint_slice_yaml(&ns, "reviews-1", &[v1, v2], std::slice::from_ref(&v3)),
    )
    .await?;
    mesh.wait_for_versions(NOBODY, &["v3-b"], 20).await?;

    // Deleted: back to every ready pod.
    mesh.cluster
        .kubectl(&["delete", "virtualservice", "reviews", "-n", &ns])
        .await?;
    mesh.wait_for_versions(NOBODY, &["v1", "v2", "v3-b"], 60)
        .await?;

    mesh.envoy.ensure_no_rejected_updates().await?;
    ensure_no_watch_errors(&mesh).await
}

/// RBAC: a forbidden list or watch would have been counted.
async fn ensure_no_watch_errors(mesh: &KubeReviewsMesh) -> anyhow::Result<()> {
    let metrics = mesh.capstan.monitoring_get("/metrics").await?.text();
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("capstan_kube_watch_errors_total{"))
        .collect();
    ensure!(errors.is_empty(), "watch errors: {errors:?}");
    let forbidden = mesh.capstan.process.log_lines(|l| l.contains("forbidden"));
    ensure!(forbidden.is_empty(), "forbidden calls: {forbidden:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applied_mesh_routes_sotw() -> anyhow::Result<()> {
    routing("kubectl_applied_mesh_routes_sotw", AdsMode::Sotw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applied_mesh_routes_delta() -> anyhow::Result<()> {
    routing("kubectl_applied_mesh_routes_delta", AdsMode::Delta).await
}

/// An invalid VirtualService: its status says which field and why, and Envoy keeps routing
/// by the last valid version. Status is written once per change (no churn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_object_gets_a_condition_and_the_last_good_config_stays() -> anyhow::Result<()> {
    let name = "invalid_object_gets_a_condition_and_the_last_good_config_stays";
    let upstream = Path::new(UPSTREAM_BIN);
    let mut mesh =
        KubeReviewsMesh::start(name, upstream, AdsMode::Delta, None, STATUS_WRITER).await?;
    let ns = mesh.namespace.clone();
    mesh.apply("vs-v2", &all_to_yaml(&ns, "v2")).await?;
    mesh.wait_for_versions(NOBODY, &["v2"], 20).await?;
    let accepted = wait_until("the Accepted condition", CONFIG_TIMEOUT, async || {
        let c = mesh.condition("virtualservice", "reviews").await?;
        match c {
            Some(c) if c.1 == "Accepted" && c.0 == "True" && c.3 == 1 => Ok(c),
            other => anyhow::bail!("condition so far: {other:?}"),
        }
    })
    .await?;
    ensure!(accepted.3 == 1, "observedGeneration {}", accepted.3);

    // A weight above 100 passes the CRD schema but not Istio's validation.
    let invalid = all_to_yaml(&ns, "v3").replace(
        "route: [{destination: {host: reviews, subset: v3}}]",
        "route: [{destination: {host: reviews, subset: v3}, weight: 150}]",
    );
    ensure!(invalid.contains("150"), "fixture did not change");
    mesh.apply("vs-invalid", &invalid).await?;
    let (status, _reason, message, generation) =
        wait_until("the Invalid condition", CONFIG_TIMEOUT, async || match mesh
            .condition("virtualservice", "reviews")
            .await?
        {
            Some(c) if c.1 == "Invalid" => Ok(c),
            other => anyhow::bail!("condition so far: {other:?}"),
        })
        .await?;
    ensure!(status == "False", "status {status}");
    ensure!(generation == 2, "observedGeneration {generation}");
    ensure!(
        message.contains("spec.http[0].route") && message.contains("last valid version"),
        "message: {message}"
    );
    // The last valid version is still what Envoy routes by.
    mesh.wait_for_versions(NOBODY, &["v2"], 20).await?;

    // No status churn: the object's resourceVersion stays put once the condition is written.
    let rv = |json: String| -> anyhow::Result<String> {
        let v: serde_json::Value = serde_json::from_str(&json)?;
        Ok(v.pointer("/metadata/resourceVersion")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_string())
    };
    let get = ["get", "virtualservice", "reviews", "-n", &ns, "-o", "json"];
    let before = rv(mesh.cluster.kubectl(&get).await?)?;
    // Something unrelated changes (a pod is relabelled): capstan reconciles again.
    mesh.cluster
        .kubectl(&["label", "pod", &mesh.pods[0].name, "-n", &ns, "touched=yes"])
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = rv(mesh.cluster.kubectl(&get).await?)?;
    ensure!(before == after, "status rewritten: {before} -> {after}");
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A TLS Secret and a Gateway naming it, applied with kubectl: capstan (watching Secrets as
/// its RBAC allows) serves the certificate to a gateway Envoy over SDS, HTTPS through it
/// reaches the pods, and a re-applied Secret with a new certificate is presented on new
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_the_certificate_of_a_kubectl_applied_secret() -> anyhow::Result<()> {
    use base64::Engine;
    use capstan_e2e::envoy::{Bootstrap, Envoy, loopback};
    use capstan_e2e::gateway_mesh::{INGRESS_LABELS, gateway_port};
    use capstan_e2e::tls_pki::{Issued, TestCa, connector, https_get, served_certificate};

    let name = "a_gateway_serves_the_certificate_of_a_kubectl_applied_secret";
    let upstream = Path::new(UPSTREAM_BIN);
    let mesh = KubeReviewsMesh::start(name, upstream, AdsMode::Sotw, None, NO_STATUS).await?;
    let ns = mesh.namespace.clone();
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let first = ca.server("shop-first", &["shop.example.com"])?;
    let second = ca.server("shop-second", &["shop.example.com"])?;
    let secret = |issued: &Issued| -> anyhow::Result<String> {
        let b64 = |path: &Path| -> anyhow::Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(path)?))
        };
        Ok(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: shop-cert, namespace: {ns}}}\n\
             type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&issued.cert)?,
            b64(&issued.key)?
        ))
    };
    let port = gateway_port();
    let gateway = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: {ns}}}
spec:
  hosts: [shop.example.com]
  gateways: [ingress]
  http: [{{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]
"
    );
    mesh.apply("gateway", &format!("{}---\n{gateway}", secret(&first)?))
        .await?;
    let envoy = Envoy::start(
        &capstan_e2e::locate::envoy_bin()?,
        &Bootstrap::gateway(AdsMode::Sotw, mesh.capstan.xds_port, INGRESS_LABELS),
        &mesh.log_dir,
        "gateway",
    )
    .await?;
    envoy
        .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
        .await?;
    let addr = loopback(port);
    let client = connector(&ca.cert_pem, None)?;
    let reply = wait_until("HTTPS through the gateway", CONFIG_TIMEOUT, async || {
        https_get(&client, addr, "shop.example.com", "/reviews/1")
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(reply.version == "v2", "HTTPS reached {reply:?}");
    ensure!(
        served_certificate(&client, addr, "shop.example.com").await? == first.cert_der()?,
        "the gateway does not present the Secret's certificate"
    );

    mesh.apply("secret-rotated", &secret(&second)?).await?;
    let wanted = second.cert_der()?;
    wait_until("the new certificate", CONFIG_TIMEOUT, async || {
        let served = served_certificate(&client, addr, "shop.example.com").await?;
        ensure!(served == wanted, "still the previous certificate");
        Ok(())
    })
    .await?;
    envoy.ensure_no_rejected_updates().await?;
    ensure_no_watch_errors(&mesh).await
}

/// A ServiceEntry's `workloadSelector` picks Pods too, as in Istio: a pod of the namespace
/// carrying the selector's labels is an endpoint of the entry's host once its status (set
/// here as a kubelet would) gives it an address and it is ready, and stops getting requests
/// when it is no longer ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_entry_selecting_pods_routes_to_the_ready_ones() -> anyhow::Result<()> {
    use capstan_e2e::upstreams::Upstreams;

    let name = "a_service_entry_selecting_pods_routes_to_the_ready_ones";
    let upstream = Path::new(UPSTREAM_BIN);
    let mut mesh = KubeReviewsMesh::start(name, upstream, AdsMode::Sotw, None, NO_STATUS).await?;
    let ns = mesh.namespace.clone();
    let pod = TestPod::answering("ratings", "v1");
    let _app = Upstreams::start(
        upstream,
        &[("ratings", "v1", pod.addr)],
        &mesh.log_dir,
        &pod.name,
    )
    .await?;
    let host = "ratings.mesh.internal";
    mesh.apply(
        "ratings",
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {pod_name}, namespace: {ns}, labels: {{app: ratings}}}}
spec:
  serviceAccountName: bookinfo-ratings
  containers: [{{name: ratings, image: example.invalid/ratings:v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: {ns}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
",
            pod_name = pod.name,
        ),
    )
    .await?;
    let status = |ready: bool| {
        let ip = pod.addr.ip();
        let ready = if ready { "True" } else { "False" };
        format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
        )
    };
    let set_status = async |ready: bool| {
        let patch = status(ready);
        mesh.cluster
            .kubectl(&[
                "-n",
                &ns,
                "patch",
                "pod",
                &pod.name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ])
            .await
    };
    set_status(true).await?;
    let reply = wait_until("the selected pod answering", CONFIG_TIMEOUT, async || {
        mesh.proxy
            .get(host, "/ratings/1", &[])
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(reply.service == "ratings", "{reply:?}");

    set_status(false).await?;
    wait_no_endpoint(&mut mesh, host, "/ratings/1", "the pod no longer ready").await?;
    ensure_no_watch_errors(&mesh).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A Kubernetes Service's selector picks WorkloadEntries too, as istiod's (VMs behind a
/// Service name): a kubectl-applied Service without pods and a WorkloadEntry carrying its
/// selector's labels route the Service's host to the entry's address and port; relabelled
/// away, the entry gets no more requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_service_routes_to_the_workload_entries_it_selects() -> anyhow::Result<()> {
    use capstan_e2e::upstreams::Upstreams;

    let name = "a_kubernetes_service_routes_to_the_workload_entries_it_selects";
    let upstream = Path::new(UPSTREAM_BIN);
    let mut mesh = KubeReviewsMesh::start(name, upstream, AdsMode::Sotw, None, NO_STATUS).await?;
    let ns = mesh.namespace.clone();
    let vms = Upstreams::start_on_free_ports(upstream, &[("billing", "vm")], &mesh.log_dir).await?;
    let vm_port = vms.port("billing", "vm")?;
    let entry = |app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: billing-vm-1, namespace: {ns}}}
spec:
  address: 127.0.0.1
  ports: {{http: {vm_port}}}
  labels: {{app: {app}}}
"
        )
    };
    mesh.apply(
        "billing",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: billing, namespace: {ns}}}
spec:
  selector: {{app: billing}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
{}",
            entry("billing")
        ),
    )
    .await?;
    let host = format!("billing.{ns}.svc.cluster.local");
    let reply = wait_until("the selected entry answering", CONFIG_TIMEOUT, async || {
        mesh.proxy
            .get(&host, "/bill/1", &[])
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(
        (reply.service.as_str(), reply.version.as_str()) == ("billing", "vm"),
        "{reply:?}"
    );
    mesh.apply("billing-entry", &entry("payroll")).await?;
    wait_no_endpoint(&mut mesh, &host, "/bill/1", "the relabelled entry").await?;
    ensure_no_watch_errors(&mesh).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Waits until the sidecar answers `host` with 503: its service is left without endpoints
/// (`what` says why, for the timeout's message).
async fn wait_no_endpoint(
    mesh: &mut KubeReviewsMesh,
    host: &str,
    path: &str,
    what: &str,
) -> anyhow::Result<()> {
    let waiting = format!("{what}: no longer sent to");
    wait_until(&waiting, CONFIG_TIMEOUT, async || {
        let response = mesh.proxy.get(host, path, &[]).await?;
        ensure!(
            response.status == 503,
            "{} {}",
            response.status,
            response.text()
        );
        Ok(())
    })
    .await
}
