//! A `Sidecar`'s inbound settings with real traffic through a real captured sidecar (see
//! `capstan_e2e::capture_mesh`): ingress listeners and their default endpoints, TLS
//! termination on an ingress port, the limits of the clusters to the workload; and the
//! policies of a sidecar no service has an endpoint at.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture::{self, service_ip};
use capstan_e2e::capture_mesh::{CaptureMesh, call, capstan_and_captured_sidecar, entry};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::http::{HttpClient, UpstreamReply};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::netns::pod_ip;
use capstan_e2e::tls_pki::{TestCa, connector, https_get};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(name: &str) -> anyhow::Result<CaptureMesh> {
    capstan_e2e::capture_mesh::start(name, Path::new(UPSTREAM_BIN)).await
}

/// A `Sidecar` with an ingress listener: connections to the workload's port 9080 go to its
/// `defaultEndpoint`, an app listening on 127.0.0.1 only, instead of the port its
/// ServiceEntry names; without the Sidecar they reach the port again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_listener_sends_inbound_traffic_to_its_default_endpoint()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh =
        start("a_sidecar_ingress_listener_sends_inbound_traffic_to_its_default_endpoint").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let local = SocketAddr::from(([127, 0, 0, 1], 18080));
    let _local_app = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("reviews-on-loopback", "v1", local)],
        &log_dir,
        "loopback-app",
    )
    .await?;
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let reply = wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");

    mesh.env.write_config(
        "ingress.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:18080
",
    )?;
    let reply = wait_until("the app on loopback", CONFIG_TIMEOUT, async || {
        let reply = call(reviews, "reviews").await?;
        ensure!(reply.service == "reviews-on-loopback", "{reply:?}");
        Ok(reply)
    })
    .await
    .with_context(logs)?;
    ensure!(
        reply.headers.contains_key("x-request-id") && reply.peer.starts_with("127.0.0.1:"),
        "not through the sidecar's inbound HTTP chain: {reply:?}"
    );
    // Ports the Sidecar does not list pass through to the workload: db on 5432.
    let db = call(SocketAddr::from((service_ip(20), 5432)), "db").await?;
    ensure!(db.service == "db", "{db:?}");

    std::fs::remove_file(mesh.env.config_dir.join("ingress.yaml"))?;
    wait_until("the workload's port again", CONFIG_TIMEOUT, async || {
        let reply = call(reviews, "reviews").await?;
        ensure!(reply.service == "reviews", "{reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// `concurrency` requests at once to reviews through the capture, each held `delay_ms` by
/// the app: how many were answered OK and how many shed by a sidecar (503 with
/// `x-envoy-overloaded`), and how many reached the app.
async fn send_burst(
    mesh: &CaptureMesh,
    concurrency: usize,
    delay_ms: u64,
) -> anyhow::Result<Burst> {
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let before = mesh.upstreams.count("reviews", "v1").await?;
    let delay = delay_ms.to_string();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let delay = delay.clone();
            tokio::spawn(async move {
                HttpClient::new(reviews)
                    .get("reviews", "/slow", &[("x-upstream-delay-ms", &delay)])
                    .await
            })
        })
        .collect();
    let mut burst = Burst::default();
    for task in tasks {
        let response = task.await??;
        let shed = response
            .headers
            .get("x-envoy-overloaded")
            .is_some_and(|v| v == "true");
        match response.status.as_u16() {
            200 => burst.ok += 1,
            503 if shed => burst.shed += 1,
            status => burst.other.push(format!("{status} {}", response.text())),
        }
    }
    burst.reached = mesh.upstreams.count("reviews", "v1").await? - before;
    Ok(burst)
}

/// Fails unless the sidecar's `inbound|9080||` allows `expected` connections.
async fn max_inbound_connections(mesh: &CaptureMesh, expected: u64) -> anyhow::Result<()> {
    let cluster = mesh.envoy.active_cluster("inbound|9080||").await?;
    let limit = cluster
        .as_ref()
        .and_then(|c| c["circuit_breakers"]["thresholds"][0]["max_connections"].as_u64());
    ensure!(limit == Some(expected), "max_connections {limit:?}");
    Ok(())
}

#[derive(Debug, Default)]
struct Burst {
    ok: u64,
    shed: u64,
    other: Vec<String>,
    reached: u64,
}

/// A `Sidecar`'s `inboundConnectionPool` limits what its sidecar passes on to the workload:
/// with one connection and one pending request allowed, a burst of slow requests is partly
/// shed by the sidecar's inbound side and never reaches the app; without the Sidecar, the
/// same burst all gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_connection_pool_sheds_what_the_workload_is_not_to_take() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("an_inbound_connection_pool_sheds_what_the_workload_is_not_to_take").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let reviews = SocketAddr::from((service_ip(10), 9080));
    wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;

    mesh.env.write_config(
        "limits.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  inboundConnectionPool:
    tcp: {maxConnections: 1}
    http: {http1MaxPendingRequests: 1}
",
    )?;
    wait_until("the inbound limit in Envoy", CONFIG_TIMEOUT, async || {
        max_inbound_connections(&mesh, 1).await
    })
    .await
    .with_context(logs)?;
    let burst = send_burst(&mesh, 8, 1500).await?;
    ensure!(burst.other.is_empty(), "unexpected answers: {burst:?}");
    ensure!(
        burst.ok >= 1 && burst.shed >= 1,
        "expected some OK and some shed: {burst:?}"
    );
    ensure!(
        burst.reached == burst.ok,
        "the app saw {} requests, {} were answered OK: shed ones reached it ({burst:?})",
        burst.reached,
        burst.ok
    );

    std::fs::remove_file(mesh.env.config_dir.join("limits.yaml"))?;
    wait_until("no inbound limit", CONFIG_TIMEOUT, async || {
        max_inbound_connections(&mesh, u32::MAX.into()).await
    })
    .await
    .with_context(logs)?;
    let burst = send_burst(&mesh, 8, 300).await?;
    ensure!(
        burst.ok == 8 && burst.reached == 8,
        "without the Sidecar every request gets through: {burst:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A `Sidecar` ingress listener with `tls` terminates it, as in Istio's "ingress sidecar TLS
/// termination" task: HTTPS to the workload's port 9443 is decrypted by its sidecar (a
/// SIMPLE server certificate the client verifies) and reaches the app's plain HTTP port 9080;
/// with MUTUAL, a client without a certificate is refused and one with a certificate of the
/// named CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_listener_terminates_tls() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_sidecar_ingress_listener_terminates_tls").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    // Files the sidecar (uid 1337) reads: outside root's private home.
    let certs = tempfile::Builder::new()
        .prefix("capstan-e2e-ingress-tls-")
        .tempdir()?;
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755))?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let host = "secure-reviews.bookinfo.svc.cluster.local";
    let server = ca.server("secure-reviews", &[host])?;
    let client = ca.client("client", "spiffe://example.org/outside")?;
    let workload = pod_ip(263).to_string();
    mesh.env.write_config(
        "secure-reviews.yaml",
        &entry(
            "secure-reviews",
            50,
            "{number: 9443, name: https, protocol: HTTPS}",
            &workload,
        ),
    )?;
    let sidecar = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: bookinfo}}
spec:
  ingress:
  - port: {{number: 9443, protocol: HTTPS, name: external}}
    defaultEndpoint: 0.0.0.0:9080
    tls: {tls}
"
        )
    };
    let files = format!(
        "serverCertificate: {}, privateKey: {}",
        server.cert.display(),
        server.key.display()
    );
    mesh.env.write_config(
        "ingress.yaml",
        &sidecar(&format!("{{mode: SIMPLE, {files}}}")),
    )?;
    let secure = SocketAddr::from((service_ip(50), 9443));
    let anonymous = connector(&ca.cert_pem, None)?;
    let reply = wait_until(
        "HTTPS terminated by the sidecar",
        CONFIG_TIMEOUT,
        async || {
            let response = https_get(&anonymous, secure, host, "/whoami").await?;
            let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
            Ok(reply)
        },
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "not decrypted into the sidecar's inbound HTTP chain: {reply:?}"
    );

    mesh.env.write_config(
        "ingress.yaml",
        &sidecar(&format!(
            "{{mode: MUTUAL, {files}, caCertificates: {}}}",
            ca.cert_path.display()
        )),
    )?;
    wait_until(
        "a client without a certificate refused",
        CONFIG_TIMEOUT,
        async || {
            let outcome = https_get(&anonymous, secure, host, "/whoami").await;
            ensure!(outcome.is_err(), "still served: {outcome:?}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    let identified = connector(&ca.cert_pem, Some(&client))?;
    let response = https_get(&identified, secure, host, "/whoami").await?;
    let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
    ensure!(
        reply.service == "reviews",
        "with a client certificate: {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A sidecar no service has an endpoint at is held to the policies that select it by
/// namespace and labels, as istiod holds every sidecar: a DENY AuthorizationPolicy of its
/// namespace refuses another pod's request for the path it names with 403 and lets the rest
/// through; removed, that path is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_without_an_endpoint_is_held_to_its_namespaces_policies() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let capture = capture::install()?;
    let env = TestEnv::new("a_sidecar_without_an_endpoint_is_held_to_its_namespaces_policies")?;
    // No ServiceEntry names this address: its sidecar gets the mesh's default inbound side.
    let workload = pod_ip(300);
    let app = SocketAddr::from((workload, 7777));
    let _apps = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("lonely", "v1", app)],
        &env.log_dir,
        "apps",
    )
    .await?;
    // Another workload's service (capstan serves nothing from an empty folder).
    let other = pod_ip(263).to_string();
    let port = "{number: 9080, name: http, protocol: HTTP}";
    env.write_config("reviews.yaml", &entry("reviews", 10, port, &other))?;
    let address = workload.to_string();
    let (_capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Delta, &address).await?;
    let logs = || format!("logs in {}", env.log_dir.display());
    let status = async |path: &str| -> anyhow::Result<u16> {
        let response = capture
            .another_pod_client(app)
            .get("lonely", path, &[])
            .await?;
        Ok(response.status.as_u16())
    };
    wait_until(
        "the app through the passthrough",
        CONFIG_TIMEOUT,
        async || {
            ensure!(status("/admin").await? == 200, "not served");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;

    env.write_config(
        "deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: bookinfo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
",
    )?;
    wait_until("/admin denied", CONFIG_TIMEOUT, async || {
        ensure!(status("/admin").await? == 403, "not denied");
        Ok(())
    })
    .await
    .with_context(logs)?;
    ensure!(status("/whoami").await? == 200, "/whoami refused too");

    std::fs::remove_file(env.config_dir.join("deny.yaml"))?;
    wait_until("/admin served again", CONFIG_TIMEOUT, async || {
        ensure!(status("/admin").await? == 200, "still denied");
        Ok(())
    })
    .await
    .with_context(logs)?;
    envoy.ensure_no_rejected_updates().await
}
