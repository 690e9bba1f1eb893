//! The harness for mutual-TLS tests with a captured sidecar (see
//! `capstan_e2e::capture_identity`): a workload with an identity (in-test CA, a real
//! `capstan agent` as uid 1337, the sidecar's static `sds-grpc`), and plain-text clients from
//! another pod that the capture delivers into the sidecar's inbound side. What capstan does
//! with PeerAuthentication is tested elsewhere; this checks the pieces those tests stand on.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture::{self, ANOTHER_POD, INBOUND_CAPTURE_PORT, original_dst, service_ip};
use capstan_e2e::capture_identity::{IdentityMesh, start_with_identity};
use capstan_e2e::capture_mesh::{call, workload};
use capstan_e2e::envoy::Envoy;
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15006 (and the mesh on 15001) in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The connections the sidecar's `virtualInbound` has accepted.
const INBOUND_CONNECTIONS: &str = "listener.0.0.0.0_15006.downstream_cx_total";

/// The names of the static clusters in `envoy`'s `/config_dump`.
async fn static_clusters(envoy: &Envoy) -> anyhow::Result<Vec<String>> {
    let dump = envoy.config_dump(false).await?;
    Ok(dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["static_clusters"].as_array())
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
        .collect())
}

/// What `stream` answers to one HTTP/1.0 `GET /whoami` sent as raw bytes, read to its end.
async fn raw_http_get(mut stream: tokio::net::TcpStream, host: &str) -> anyhow::Result<String> {
    let request = format!("GET /whoami HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        capstan_e2e::http::REQUEST_TIMEOUT,
        stream.read_to_end(&mut answer),
    )
    .await
    .context("the answer over raw TCP took too long")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The identity mesh: the agent serves the workload's certificate, the sidecar has
/// `sds-grpc`, the app still reaches its services through the capture, and another pod's
/// plain HTTP and raw TCP reach the apps through the sidecar's inbound side (plain text is
/// accepted: PERMISSIVE, Istio's default, with no PeerAuthentication).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_with_an_identity_serves_another_pods_plain_text() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start_with_identity(
        "capture_identity",
        Path::new(UPSTREAM_BIN),
        "bookinfo",
        "reviews",
    )
    .await?;
    let log_dir = mesh.mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    ensure!(
        mesh.spiffe_id() == "spiffe://cluster.local/ns/bookinfo/sa/reviews",
        "{}",
        mesh.spiffe_id()
    );
    ensure!(
        !mesh.certificates_served().is_empty(),
        "the agent served no certificate for {}; {}",
        mesh.spiffe_id(),
        logs()
    );
    ensure!(mesh.ca.issued() >= 1, "the CA signed nothing");
    the_agent_and_its_socket_are_the_proxy_users(&mesh)?;
    let statics = static_clusters(&mesh.mesh.envoy).await?;
    ensure!(
        statics.iter().any(|c| c == "sds-grpc"),
        "no sds-grpc among {statics:?}"
    );

    let reviews = SocketAddr::from((service_ip(10), 9080));
    let reply = wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");

    another_pods_http_reaches_reviews_through_the_sidecar(&mesh)
        .await
        .with_context(logs)?;
    another_pods_tcp_reaches_db_through_the_sidecar(&mesh)
        .await
        .with_context(logs)?;
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// The agent runs as uid 1337, as the sidecar does, and its socket (mode 0600) is that
/// user's: what lets the sidecar connect to it.
fn the_agent_and_its_socket_are_the_proxy_users(mesh: &IdentityMesh) -> anyhow::Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", mesh.agent.process.pid()))?;
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid line in the agent's status")?;
    ensure!(
        uids.split_whitespace().all(|uid| uid == "1337"),
        "the agent runs as uids {uids}"
    );
    let socket = std::fs::metadata(&mesh.agent.sds_socket)?;
    ensure!(
        socket.uid() == 1337 && socket.mode() & 0o777 == 0o600,
        "{}: owner {}, mode {:o}",
        mesh.agent.sds_socket.display(),
        socket.uid(),
        socket.mode() & 0o777
    );
    Ok(())
}

/// Plain HTTP from another pod to reviews' pod address goes into `virtualInbound` (the
/// capture counts it, the sidecar accepts it) and through the sidecar's inbound HTTP chain
/// (which adds `x-request-id`) to the app.
async fn another_pods_http_reaches_reviews_through_the_sidecar(
    mesh: &IdentityMesh,
) -> anyhow::Result<()> {
    let redirected = mesh.capture.redirected()?;
    let accepted = mesh.mesh.envoy.stat(INBOUND_CONNECTIONS).await?;
    let mut client = mesh.capture.another_pod_client(mesh.workload_port(9080));
    let reply = client.upstream("reviews", "/whoami", &[]).await?;
    ensure!(reply.service == "reviews", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "not through the sidecar's inbound HTTP chain: {reply:?}"
    );
    let since = mesh.capture.redirected()?.since(redirected);
    ensure!(since.inbound == 1, "redirected since: {since:?}");
    let now = mesh.mesh.envoy.stat(INBOUND_CONNECTIONS).await?;
    ensure!(
        now == accepted + 1,
        "virtualInbound accepted {accepted} -> {now}"
    );
    Ok(())
}

/// Raw TCP from another pod to db's pod address (a TCP port) goes through the sidecar's
/// inbound side to the app, bytes unread.
async fn another_pods_tcp_reaches_db_through_the_sidecar(
    mesh: &IdentityMesh,
) -> anyhow::Result<()> {
    let redirected = mesh.capture.redirected()?;
    let stream = mesh
        .capture
        .connect_from_another_pod(mesh.workload_port(5432))
        .await?;
    let answer = raw_http_get(stream, "db").await?;
    ensure!(
        answer.starts_with("HTTP/1.0 200") && answer.contains(r#""service":"db""#),
        "db over raw TCP answered {answer:?}"
    );
    let since = mesh.capture.redirected()?.since(redirected);
    ensure!(since.inbound == 1, "redirected since: {since:?}");
    Ok(())
}

/// The primitive under [`Capture::connect_from_another_pod`]: a connection to a pod address
/// from a socket made with uid 1337's filesystem ids is redirected to 15006 (its original
/// destination kept, its source the other pod's address), while root's own connection to the
/// same address is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_pods_connections_are_redirected_to_the_inbound_port() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let capture = capture::install()?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", INBOUND_CAPTURE_PORT)).await?;
    let target = SocketAddr::from((workload(), 9080));
    let before = capture.redirected()?;
    let (_client, accepted) = tokio::try_join!(capture.connect_from_another_pod(target), async {
        listener.accept().await.context("accepting on 15006")
    })?;
    let (socket, peer) = accepted;
    ensure!(
        SocketAddr::V4(original_dst(&socket)?) == target,
        "original destination {:?}",
        original_dst(&socket)
    );
    ensure!(peer.ip() == ANOTHER_POD, "came from {peer}");
    let since = capture.redirected()?.since(before);
    ensure!(since.inbound == 1, "redirected: {since:?}");

    // Root's socket is not the sidecar's: not redirected, and nothing listens at the target.
    let direct = tokio::net::TcpStream::connect(target).await;
    ensure!(
        direct.is_err(),
        "root's connection was accepted: {direct:?}"
    );
    let since = capture.redirected()?.since(before);
    ensure!(
        since.inbound == 1,
        "root's connection was redirected: {since:?}"
    );
    Ok(())
}
