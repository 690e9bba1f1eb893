//! The capture harness (`capstan_e2e::capture`) with real processes and no capstan: istio-init's
//! rules in this binary's own network namespace, and a real Envoy running as uid 1337 from a
//! static bootstrap laid out like Istio's capture-mode listeners (`virtualOutbound` on 15001
//! handing connections to `0.0.0.0_9080` by original destination, `virtualInbound` on 15006).
//! Logs: `<target>/debug/e2e-logs/capture_*/`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capture::{self, Capture, Redirected};
use capstan_e2e::envoy::Envoy;
use capstan_e2e::http::{HttpClient, HttpResponse};
use capstan_e2e::netns::pod_ip;
use capstan_e2e::upstreams::Upstreams;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Both tests listen on 15001 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(5);

/// The rules are in a namespace of the test binary's own, not in the one it was started in.
#[test]
fn capture_rules_live_only_in_the_test_binarys_namespace() -> anyhow::Result<()> {
    let capture = capture::install()?;
    let own = capture::net_namespace("self")?;
    // Whatever started this binary (cargo) stayed where the test binary was born.
    let parent = capture::net_namespace(&std::os::unix::process::parent_id().to_string())?;
    ensure!(own != parent, "same network namespace as the parent: {own}");
    ensure!(capture::in_private_namespace()?);
    // Some sandboxes deny reading PID 1's namespace from another one; where it can be read,
    // it must differ too.
    if let Ok(host) = capture::net_namespace("1") {
        ensure!(own != host, "same network namespace as PID 1: {own}");
    }
    let rules = capture.live_rules()?;
    for rule in [
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "--to-ports 15001",
        "--to-ports 15006",
    ] {
        ensure!(rules.contains(rule), "{rule:?} missing from:\n{rules}");
    }
    Ok(())
}

/// A root app's connection to a service VIP arrives on 15001 with the VIP as its original
/// destination, from the capture device's address; its connection to a pod address is not
/// captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_connection_to_a_service_ip_lands_on_15001() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let capture = capture::install()?;
    let outbound = TcpListener::bind((Ipv4Addr::UNSPECIFIED, capture::OUTBOUND_CAPTURE_PORT))
        .await
        .context("binding 0.0.0.0:15001")?;
    let vip = SocketAddrV4::new(capture::service_ip(10), 9080);

    let before = capture.redirected()?;
    let _client = TcpStream::connect(vip).await?;
    let (accepted, peer) = tokio::time::timeout(WAIT, outbound.accept())
        .await
        .context("no connection arrived on 15001")??;
    assert_eq!(capture::original_dst(&accepted)?, vip);
    assert_eq!(peer.ip(), capture::DEVICE_ADDRESS);
    assert_eq!(capture.redirected()?.since(before), counts(1, 0));

    let pod = SocketAddrV4::new(pod_ip(8), 9080);
    let app = TcpListener::bind(pod).await?;
    let _client = TcpStream::connect(pod).await?;
    let (accepted, _) = tokio::time::timeout(WAIT, app.accept())
        .await
        .context("the pod address did not get the connection")??;
    assert_eq!(capture::original_dst(&accepted)?, pod);
    assert_eq!(capture.redirected()?.since(before), counts(1, 0));
    Ok(())
}

/// The response headers each listener adds, naming itself and the connection's (original)
/// destination as Envoy saw it.
fn hcm(stat_prefix: &str, side: &str, listener: &str, routes: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": routes } ],
                "response_headers_to_add": [
                    { "header": { "key": format!("x-{side}-listener"), "value": listener } },
                    { "header": { "key": format!("x-{side}-original-dst"), "value": "%DOWNSTREAM_LOCAL_ADDRESS%" } },
                ],
            },
            "http_filters": [ {
                "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
            } ],
        },
    })
}

fn to_cluster(prefix: &str, cluster: &str) -> Value {
    json!({ "match": { "prefix": prefix }, "route": { "cluster": cluster, "timeout": "3s" } })
}

fn direct(status: u16, body: &str) -> Value {
    json!({ "match": { "prefix": "/" }, "direct_response": { "status": status, "body": { "inline_string": body } } })
}

fn socket(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn static_cluster(name: &str, addr: SocketAddr, connect_timeout: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": {
                "address": socket(&addr.ip().to_string(), addr.port()),
            } } ] } ],
        },
    })
}

/// A sidecar bootstrap in the shape of Istio's capture mode, written by hand: `/pod` goes to
/// a pod address (and so, captured, through `virtualInbound` and its passthrough to the app),
/// `/local` to `local` on 127.0.0.1, `/vip` to a service VIP nobody answers on, and anything
/// else is answered by `0.0.0.0_9080` itself.
fn sidecar_bootstrap(pod: SocketAddr, local: SocketAddr, vip: SocketAddr) -> Value {
    let outbound_routes = json!([
        to_cluster("/pod", "pod"),
        to_cluster("/local", "local"),
        to_cluster("/vip", "vip"),
        direct(200, "0.0.0.0_9080"),
    ]);
    json!({
        "node": { "id": "sidecar~10.244.1.7~productpage-v1.default~default.svc.cluster.local", "cluster": "productpage.default" },
        "admin": { "address": socket("127.0.0.1", 0) },
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": socket("0.0.0.0", capture::OUTBOUND_CAPTURE_PORT),
                    "use_original_dst": true,
                    "filter_chains": [ { "filters": [
                        hcm("virtual_outbound", "outbound", "virtualOutbound", json!([direct(404, "no listener for the original destination")])),
                    ] } ],
                },
                {
                    "name": "0.0.0.0_9080",
                    "address": socket("0.0.0.0", 9080),
                    "bind_to_port": false,
                    "filter_chains": [ { "filters": [
                        hcm("outbound_9080", "outbound", "0.0.0.0_9080", outbound_routes),
                    ] } ],
                },
                {
                    "name": "virtualInbound",
                    "address": socket("0.0.0.0", capture::INBOUND_CAPTURE_PORT),
                    "listener_filters": [ {
                        "name": "envoy.filters.listener.original_dst",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" },
                    } ],
                    "filter_chains": [ { "filters": [
                        hcm("virtual_inbound", "inbound", "virtualInbound", json!([to_cluster("/", "InboundPassthroughCluster")])),
                    ] } ],
                },
            ],
            "clusters": [
                static_cluster("pod", pod, "1s"),
                static_cluster("local", local, "1s"),
                static_cluster("vip", vip, "0.5s"),
                {
                    "name": "InboundPassthroughCluster",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "1s",
                    "upstream_bind_config": { "source_address": {
                        "address": capture::INBOUND_PASSTHROUGH_SOURCE.to_string(),
                        "port_value": 0,
                    } },
                },
            ],
        },
    })
}

/// One request to `addr` on a connection of its own, so that it is exactly one capture.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    HttpClient::new(addr)
        .get("productpage:9080", path, &[])
        .await
}

fn header<'a>(resp: &'a HttpResponse, name: &str) -> &'a str {
    resp.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn redirected_during(
    capture: &Capture,
    request: impl AsyncFnOnce() -> anyhow::Result<HttpResponse>,
) -> anyhow::Result<(HttpResponse, Redirected)> {
    let before = capture.redirected()?;
    let resp = request().await?;
    Ok((resp, capture.redirected()?.since(before)))
}

fn counts(outbound: u64, inbound: u64) -> Redirected {
    Redirected { outbound, inbound }
}

/// Envoy as uid 1337 behind istio-init's rules: a request to a service VIP reaches
/// `0.0.0.0_9080` through 15001 with the VIP as its destination; Envoy's own connection to a
/// pod address comes back in through 15006 and reaches the app from 127.0.0.6; its
/// connections to 127.0.0.1 and to a VIP are not captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_envoy_as_uid_1337_sees_traffic_as_in_a_pod() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let capture = capture::install()?;
    let log_dir = capstan_e2e::locate::fresh_log_dir("capture_sidecar")?;
    std::fs::write(log_dir.join("nat-rules.txt"), capture.live_rules()?)?;

    let pod = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 7), 9080));
    let upstreams = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[
            ("productpage", "v1", pod),
            ("local", "v1", SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        ],
        &log_dir,
        "upstreams",
    )
    .await?;
    let local = upstreams.addr("local", "v1")?;
    let vip = SocketAddr::from((capture::service_ip(10), 9080));
    let silent_vip = SocketAddr::from((capture::service_ip(11), 9080));

    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let envoy = Envoy::start_json(
        &envoy_bin,
        &sidecar_bootstrap(pod, local, silent_vip),
        &log_dir,
        "sidecar",
        Some(capture::PROXY),
    )
    .await?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy.pid()))?;
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    ensure!(
        ids("Uid:") == ["1337"; 4],
        "Envoy's uids: {:?}",
        ids("Uid:")
    );
    ensure!(
        ids("Gid:") == ["1337"; 4],
        "Envoy's gids: {:?}",
        ids("Gid:")
    );
    for listener in ["virtualOutbound", "virtualInbound"] {
        envoy.wait_listener_port(listener, WAIT).await?;
    }

    // (a) The app's request to a VIP: captured once, handed to 0.0.0.0_9080 by its port.
    let (resp, delta) = redirected_during(&capture, async || get(vip, "/").await).await?;
    ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
    assert_eq!(resp.text(), "0.0.0.0_9080");
    assert_eq!(header(&resp, "x-outbound-listener"), "0.0.0.0_9080");
    assert_eq!(header(&resp, "x-outbound-original-dst"), vip.to_string());
    assert_eq!(delta, counts(1, 0));

    // A port with no listener of its own stays with virtualOutbound.
    let other_port = SocketAddr::from((capture::service_ip(10), 9999));
    let resp = get(other_port, "/").await?;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(header(&resp, "x-outbound-listener"), "virtualOutbound");
    assert_eq!(
        header(&resp, "x-outbound-original-dst"),
        other_port.to_string()
    );

    // (b) Envoy dialling a pod address: back in through 15006, then on to the app from the
    // passthrough source, which the rules let through.
    let (resp, delta) = redirected_during(&capture, async || get(vip, "/pod").await).await?;
    let reply = resp.upstream_reply()?;
    assert_eq!(reply.service, "productpage");
    assert_eq!(header(&resp, "x-outbound-listener"), "0.0.0.0_9080");
    assert_eq!(header(&resp, "x-inbound-listener"), "virtualInbound");
    assert_eq!(header(&resp, "x-inbound-original-dst"), pod.to_string());
    let peer: SocketAddr = reply.peer.parse().context("upstream peer")?;
    assert_eq!(peer.ip(), capture::INBOUND_PASSTHROUGH_SOURCE);
    assert_eq!(delta, counts(1, 1));

    // (c) Envoy dialling 127.0.0.1 (as it does its control plane): not captured.
    let (resp, delta) = redirected_during(&capture, async || get(vip, "/local").await).await?;
    let reply = resp.upstream_reply()?;
    assert_eq!(reply.service, "local");
    assert_eq!(header(&resp, "x-inbound-listener"), "");
    let peer: SocketAddr = reply.peer.parse().context("upstream peer")?;
    assert_eq!(peer.ip(), Ipv4Addr::LOCALHOST);
    assert_eq!(delta, counts(1, 0));

    // Envoy dialling a VIP: not captured either (else it would loop into 15001), so it goes
    // out of the capture device to nobody and times out.
    let (resp, delta) = redirected_during(&capture, async || get(vip, "/vip").await).await?;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(delta, counts(1, 0));

    // The app reaching a pod address directly is not captured.
    let (resp, delta) = redirected_during(&capture, async || get(pod, "/").await).await?;
    assert_eq!(delta, counts(0, 0));
    let reply = resp.upstream_reply()?;
    assert_eq!(header(&resp, "x-outbound-listener"), "");
    let peer: SocketAddr = reply.peer.parse().context("upstream peer")?;
    ensure!(peer.ip() != capture::INBOUND_PASSTHROUGH_SOURCE, "{peer}");
    Ok(())
}

/// A file the bootstrap names that uid 1337 cannot read (here, under a root-only directory) is
/// reported by name before Envoy starts, not left to Envoy's own error.
#[tokio::test]
async fn a_file_the_proxy_user_cannot_read_is_named_before_envoy_starts() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("capstan-e2e-capture-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key")?;
    let bootstrap = json!({ "static_resources": { "secrets": [ {
        "name": "default",
        "tls_certificate": { "private_key": { "filename": key.display().to_string() } },
    } ] } });
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let started = Envoy::start_json(
        &envoy_bin,
        &bootstrap,
        dir.path(),
        "unreadable",
        Some(capture::PROXY),
    )
    .await;
    let err = format!("{:#}", started.err().context("Envoy started")?);
    ensure!(err.contains(&key.display().to_string()), "{err}");
    ensure!(err.contains("uid 1337 may not enter"), "{err}");
    ensure!(!dir.path().join("unreadable.log").exists());
    Ok(())
}
