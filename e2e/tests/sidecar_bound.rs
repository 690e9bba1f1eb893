//! `Sidecar` listeners with `captureMode: NONE`, for workloads without an iptables capture
//! (EKS Fargate): the sidecar listens on sockets of its own that the application calls
//! itself. Real traffic through a real sidecar Envoy of the capture harness's workload
//! (`capstan_e2e::capture_mesh`; loopback is never captured, so these connections reach the
//! bound listeners directly). Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture_mesh::{CaptureMesh, SniApps, call, sni_entry, workload};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(name: &str) -> anyhow::Result<CaptureMesh> {
    capstan_e2e::capture_mesh::start(name, Path::new(UPSTREAM_BIN)).await
}

/// bookinfo's `Sidecar` binding an HTTP egress listener on 127.0.0.1:9080 (`captureMode:
/// NONE`), as an application without an iptables capture (EKS Fargate) needs.
const BOUND_EGRESS_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 9080, name: http, protocol: HTTP}
    captureMode: NONE
    hosts: [./*]
  - hosts: [./*]
";

/// An egress listener with `captureMode: NONE`: the sidecar listens on 127.0.0.1:9080 itself
/// (the capture never takes loopback), and an application sending its request there is
/// routed by Host as through the capture, out and back in through the workload's inbound
/// listener; with the `Sidecar` gone, the socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_listener_without_capture_listens_on_its_own_socket() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("an_egress_listener_without_capture_listens_on_its_own_socket").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let bound = SocketAddr::from(([127, 0, 0, 1], 9080));
    ensure!(
        call(bound, "reviews").await.is_err(),
        "something answered on {bound} before the Sidecar"
    );
    mesh.env
        .write_config("sidecar.yaml", BOUND_EGRESS_SIDECAR)?;
    let reply = wait_until(
        "reviews through the bound listener",
        CONFIG_TIMEOUT,
        async || call(bound, "reviews").await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id") && reply.peer.starts_with("127.0.0.6:"),
        "not routed by the sidecar out and back in: {reply:?}"
    );
    std::fs::remove_file(mesh.env.config_dir.join("sidecar.yaml"))?;
    wait_until(
        "the bound listener closed",
        CONFIG_TIMEOUT,
        async || match call(bound, "reviews").await {
            Ok(reply) => anyhow::bail!("still answered: {reply:?}"),
            Err(_) => Ok(()),
        },
    )
    .await
    .with_context(logs)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// bookinfo's `Sidecar` binding a TCP egress listener on 127.0.0.1:5432 (`captureMode:
/// NONE`): the listener carries its connections to `db`, the one TCP service on that port.
const BOUND_TCP_EGRESS_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 5432, name: tcp, protocol: TCP}
    captureMode: NONE
    hosts: [./*]
  - hosts: [./*]
";

/// A TCP egress listener with `captureMode: NONE`: the sidecar listens on 127.0.0.1:5432
/// itself, and a connection the application makes there is carried to `db` (its app answers
/// HTTP over the TCP service) through the sidecar and back in through the workload's inbound
/// listener — bytes only: no HTTP connection manager on the way adds a request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_egress_listener_without_capture_carries_its_service() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_tcp_egress_listener_without_capture_carries_its_service").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let bound = SocketAddr::from(([127, 0, 0, 1], 5432));
    ensure!(
        call(bound, "db").await.is_err(),
        "something answered on {bound} before the Sidecar"
    );
    mesh.env
        .write_config("sidecar.yaml", BOUND_TCP_EGRESS_SIDECAR)?;
    let reply = wait_until(
        "db through the bound TCP listener",
        CONFIG_TIMEOUT,
        async || call(bound, "anything").await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "db", "{reply:?}");
    ensure!(
        reply.peer.starts_with("127.0.0.6:") && !reply.headers.contains_key("x-request-id"),
        "not carried as bytes by the sidecar out and back in: {reply:?}"
    );
    let stats = mesh.envoy.stats("127.0.0.1_5432").await?;
    ensure!(
        stats
            .get("listener.127.0.0.1_5432.downstream_cx_total")
            .copied()
            >= Some(1),
        "the bound listener counted no connection: {stats:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A TLS egress listener with `captureMode: NONE`: the sidecar listens on 127.0.0.1:8443
/// itself and passes each connection, still encrypted, to the service its SNI names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_egress_listener_without_capture_routes_by_server_name() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_tls_egress_listener_without_capture_routes_by_server_name").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let workload = workload();
    let apps = SniApps::start(
        &mesh.env,
        Path::new(UPSTREAM_BIN),
        &["secure.example.com", "other.example.com"],
        &[
            ("secure", SocketAddr::from((workload, 8443))),
            ("other", SocketAddr::from((workload, 8444))),
        ],
    )
    .await?;
    let address = workload.to_string();
    for (host, target) in [("secure.example.com", 8443), ("other.example.com", 8444)] {
        let file = format!("{}.yaml", host.replace('.', "-"));
        mesh.env
            .write_config(&file, &sni_entry(host, 8443, "TLS", target, &address))?;
    }
    mesh.env.write_config(
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 8443, name: tls, protocol: TLS}
    captureMode: NONE
    hosts: [./*]
  - hosts: [./*]
",
    )?;
    let bound = SocketAddr::from(([127, 0, 0, 1], 8443));
    for (name, app) in [
        ("secure.example.com", "secure"),
        ("other.example.com", "other"),
    ] {
        let reached = wait_until(
            &format!("{name} through the bound TLS listener"),
            CONFIG_TIMEOUT,
            async || apps.reached_at(bound, name).await,
        )
        .await
        .with_context(logs)?;
        ensure!(reached == app, "{name} reached {reached}");
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

/// bookinfo's `Sidecar` with an ingress listener on 127.0.0.1:7080 of its own (`captureMode:
/// NONE`), to the workload's app on 127.0.0.1:8088.
const BOUND_INGRESS_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 7080, name: http, protocol: HTTP}
    captureMode: NONE
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8088
";

/// An ingress listener with `captureMode: NONE`: the sidecar listens on 127.0.0.1:7080
/// itself, as a workload without an iptables capture needs for what reaches it, and sends
/// the requests through its inbound HTTP chain to the app's loopback port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_listener_without_capture_listens_on_its_own_socket() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("an_ingress_listener_without_capture_listens_on_its_own_socket").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let _app = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("local", "v1", SocketAddr::from(([127, 0, 0, 1], 8088)))],
        &log_dir,
        "local-app",
    )
    .await?;
    let bound = SocketAddr::from(([127, 0, 0, 1], 7080));
    mesh.env
        .write_config("sidecar.yaml", BOUND_INGRESS_SIDECAR)?;
    let reply = wait_until(
        "the app through the bound listener",
        CONFIG_TIMEOUT,
        async || call(bound, "anything").await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "local", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "not through the sidecar's inbound HTTP chain: {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}
