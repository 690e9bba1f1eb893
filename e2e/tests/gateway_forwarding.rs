//! Gateways that forward what they do not terminate, through real Envoys: Istio's egress
//! gateway pattern (a client's sidecar sends an external host's traffic to the egress gateway,
//! which sends it out), TCP and TLS-passthrough servers, and TCP tunnelled through an HTTP
//! proxy (DestinationRule `tunnel`). Logs:
//! `<target>/debug/e2e-logs/<test name>/`. Runs in a network namespace of its own, as
//! e2e/tests/gateway.rs does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::connect_proxy::ConnectProxy;
use capstan_e2e::envoy::{AdsMode, loopback};
use capstan_e2e::gateway_mesh::{
    EgressPair, cluster_requests, edge_tcp_gateway, edge_tcp_route, egress_gateway_service,
    loopback_entry, start_egress_and_sidecar, start_gateway, wait_for_service,
};
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::tls_pki::{TestCa, connector, ensure_https_refused, https_get};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Istio's egress gateway pattern: a ServiceEntry for an external host, a Gateway on the
/// egress gateway proxies, and one VirtualService sending the mesh's traffic for the host to
/// the egress gateway (`gateways: [mesh]`) and from there out (`gateways: [egress]`). A
/// client's request through its sidecar reaches the external server, and it went through the
/// egress gateway: the gateway's cluster for the external host carried every request, the
/// sidecar's none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_traffic_leaves_through_the_egress_gateway() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let name = "egress_traffic_leaves_through_the_egress_gateway";
    let env = TestEnv::new(name)?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("httpbin", "v1")], &env.log_dir)
            .await?;
    let external_port = upstreams.port("httpbin", "v1")?;
    let egress_port = capstan_e2e::gateway_mesh::gateway_port();
    env.write_config(
        "egress.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-ext, namespace: shop}}
spec:
  hosts: [httpbin.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {external_port}}}}}]
---
{egress_service}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: shop}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {egress_port}, name: http, protocol: HTTP}}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-httpbin-through-egress-gateway, namespace: shop}}
spec:
  hosts: [httpbin.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
  - match: [{{gateways: [istio-egressgateway], port: {egress_port}}}]
    route: [{{destination: {{host: httpbin.example.com, port: {{number: 80}}}}}}]
"#,
            egress_service = egress_gateway_service(egress_port),
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let EgressPair {
        egress,
        sidecar,
        outbound,
    } = start_egress_and_sidecar(&env, &capstan, AdsMode::Sotw, egress_port).await?;
    let mut client = HttpClient::new(outbound);
    wait_for_service(&mut client, "httpbin.example.com", "/get", "httpbin").await?;
    const N: u64 = 20;
    let before = upstreams.count("httpbin", "v1").await?;
    let gateway_before = cluster_requests(&egress, "outbound|80||httpbin.example.com").await?;
    for _ in 0..N {
        client
            .get("httpbin.example.com", "/get", &[])
            .await?
            .upstream_reply()?;
    }
    let arrived = upstreams.count("httpbin", "v1").await? - before;
    let through_gateway =
        cluster_requests(&egress, "outbound|80||httpbin.example.com").await? - gateway_before;
    let direct = cluster_requests(&sidecar, "outbound|80||httpbin.example.com").await?;
    ensure!(
        arrived == N,
        "{arrived} of {N} requests reached the external server"
    );
    ensure!(
        through_gateway == N,
        "the egress gateway carried {through_gateway} of {N} requests"
    );
    ensure!(
        direct == 0,
        "the sidecar sent {direct} requests straight out"
    );
    egress.ensure_no_rejected_updates().await?;
    sidecar.ensure_no_rejected_updates().await
}

/// A TCP server forwards connections to its `tcp` route's destination; a TLS PASSTHROUGH
/// server forwards each connection by its SNI name to the `tls` route naming it, still
/// encrypted: the client completes its handshake with the upstream's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_tls_passthrough_are_forwarded_unread() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let name = "tcp_and_tls_passthrough_are_forwarded_unread";
    let env = TestEnv::new(name)?;
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "upstreams")?;
    let server = ca.server("secure", &["a.example.com", "b.example.com"])?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let upstreams = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[("db", "v1", any)],
        &[("secure", "a", any), ("secure", "b", any)],
        Some(&UpstreamTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: None,
        }),
        &env.log_dir,
        "upstreams",
    )
    .await?;
    let (tcp_port, tls_port) = (
        capstan_e2e::gateway_mesh::gateway_port(),
        capstan_e2e::gateway_mesh::gateway_port(),
    );
    let yaml = format!(
        r#"{db}{a}{b}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db]
  gateways: [istio-system/edge]
  tcp:
  - match: [{{port: {tcp_port}}}]
    route: [{{destination: {{host: db, port: {{number: 5432}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [istio-system/edge]
  tls:
  - match: [{{port: {tls_port}, sniHosts: [a.example.com]}}]
    route: [{{destination: {{host: a.example.com}}}}]
  - match: [{{port: {tls_port}, sniHosts: [b.example.com]}}]
    route: [{{destination: {{host: b.example.com}}}}]
"#,
        db = loopback_entry(
            "db",
            "db.shop.svc.cluster.local",
            (5432, "TCP"),
            upstreams.port("db", "v1")?
        ),
        a = loopback_entry(
            "a",
            "a.example.com",
            (443, "TLS"),
            upstreams.port("secure", "a")?
        ),
        b = loopback_entry(
            "b",
            "b.example.com",
            (443, "TLS"),
            upstreams.port("secure", "b")?
        ),
    );
    env.write_config("edge.yaml", &yaml)?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let gateway = start_gateway(&env, &capstan, AdsMode::Delta).await?;
    for port in [tcp_port, tls_port] {
        gateway
            .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
            .await?;
    }
    let mut tcp = HttpClient::new(loopback(tcp_port));
    let reply = capstan_e2e::wait_until("HTTP over the TCP server", CONFIG_TIMEOUT, async || {
        tcp.get("anything", "/db", &[]).await?.upstream_reply()
    })
    .await?;
    ensure!(reply.service == "db", "the TCP server reached {reply:?}");

    let trusting = connector(&ca.cert_pem, None)?;
    for (sni, version) in [("a.example.com", "a"), ("b.example.com", "b")] {
        let reply = capstan_e2e::wait_until(&format!("TLS to {sni}"), CONFIG_TIMEOUT, async || {
            https_get(&trusting, loopback(tls_port), sni, "/")
                .await?
                .upstream_reply()
        })
        .await?;
        ensure!(
            (reply.service.as_str(), reply.version.as_str()) == ("secure", version),
            "SNI {sni} reached {reply:?}"
        );
    }
    ensure_https_refused(
        &trusting,
        loopback(tls_port),
        "c.example.com",
        "/",
        "an SNI no route names",
    )
    .await?;

    // The routes read the gateway proxy's namespace (istio-system), as with istiod: db's
    // VirtualService exported elsewhere leaves the TCP server without a route; exported to
    // istio-system it serves again.
    let db_exported = |to: &str| {
        yaml.replace(
            "  hosts: [db]\n  gateways: [istio-system/edge]\n",
            &format!("  hosts: [db]\n  exportTo: [{to}]\n  gateways: [istio-system/edge]\n"),
        )
    };
    env.write_config("edge.yaml", &db_exported("elsewhere"))?;
    capstan_e2e::wait_until("db exported elsewhere", CONFIG_TIMEOUT, async || {
        let outcome = HttpClient::new(loopback(tcp_port))
            .get("anything", "/db", &[])
            .await;
        ensure!(outcome.is_err(), "still forwarded: {outcome:?}");
        Ok(())
    })
    .await?;
    env.write_config("edge.yaml", &db_exported("istio-system"))?;
    let reply = capstan_e2e::wait_until("db exported here", CONFIG_TIMEOUT, async || {
        HttpClient::new(loopback(tcp_port))
            .get("anything", "/db", &[])
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(reply.service == "db", "{reply:?}");
    // As istiod's gateways, a `tls` match's `sourceNamespace` is not read on a gateway: a
    // match naming another namespace, now sending a.example.com to b, still holds here.
    let elsewhere = yaml
        .replace(
            "sniHosts: [a.example.com]}",
            "sniHosts: [a.example.com], sourceNamespace: elsewhere}",
        )
        .replace(
            "route: [{destination: {host: a.example.com}}]",
            "route: [{destination: {host: b.example.com}}]",
        );
    ensure!(
        elsewhere.matches("b.example.com}}]").count() == 2,
        "{elsewhere}"
    );
    env.write_config("edge.yaml", &elsewhere)?;
    capstan_e2e::wait_until(
        "a match naming another namespace",
        CONFIG_TIMEOUT,
        async || {
            let reply = https_get(&trusting, loopback(tls_port), "a.example.com", "/")
                .await?
                .upstream_reply()?;
            ensure!(reply.version == "b", "{reply:?}");
            Ok(())
        },
    )
    .await?;
    let reply = https_get(&trusting, loopback(tls_port), "b.example.com", "/")
        .await?
        .upstream_reply()?;
    ensure!(reply.version == "b", "{reply:?}");
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}

/// A DestinationRule's `tunnel`: a gateway TCP server's route sends connections to an HTTP
/// proxy, and the rule for the proxy's host has Envoy open an HTTP CONNECT tunnel through it
/// to `targetHost:targetPort`. The proxy (in this test) is asked for exactly that authority
/// and relays to the database behind it; without the tunnel, the proxy receives the
/// client's bytes as they are, refuses them, and nothing reaches the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_tunnels_through_the_proxy_its_rule_names() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let name = "a_tcp_route_tunnels_through_the_proxy_its_rule_names";
    let env = TestEnv::new(name)?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("db", "v1")], &env.log_dir)
            .await?;
    let db: SocketAddr = ([127, 0, 0, 1], upstreams.port("db", "v1")?).into();
    let proxy =
        ConnectProxy::start(HashMap::from([("db.example.com:5432".to_string(), db)])).await?;
    let tcp_port = capstan_e2e::gateway_mesh::gateway_port();
    let mesh = |tunnel: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: corp-proxy, namespace: istio-system}}
spec:
  hosts: [proxy.corp.internal]
  location: MESH_EXTERNAL
  ports: [{{number: 3128, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {proxy_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: corp-proxy, namespace: istio-system}}
spec:
  host: proxy.corp.internal
{tunnel}---
{gateway}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db-through-proxy, namespace: istio-system}}
spec:
  hosts: [db.example.com]
  gateways: [edge]
  tcp:
  - route: [{{destination: {{host: proxy.corp.internal, port: {{number: 3128}}}}}}]
"#,
            proxy_port = proxy.port,
            gateway = edge_tcp_gateway(tcp_port),
        )
    };
    let tunnel = "  trafficPolicy:\n    tunnel: {protocol: CONNECT, targetHost: db.example.com, targetPort: 5432}\n";
    env.write_config("edge.yaml", &mesh(tunnel))?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let gateway = start_gateway(&env, &capstan, AdsMode::Delta).await?;
    gateway
        .wait_listener_port(&format!("0.0.0.0_{tcp_port}"), CONFIG_TIMEOUT)
        .await?;
    let reply = capstan_e2e::wait_until(
        "the database through the tunnel",
        CONFIG_TIMEOUT,
        async || {
            HttpClient::new(loopback(tcp_port))
                .get("db.example.com", "/rows", &[])
                .await?
                .upstream_reply()
        },
    )
    .await?;
    ensure!(
        (reply.service.as_str(), reply.path.as_str()) == ("db", "/rows"),
        "{reply:?}"
    );
    let asked = proxy.requests();
    ensure!(
        asked.first().map(String::as_str) == Some("CONNECT db.example.com:5432 HTTP/1.1"),
        "the proxy was asked {asked:?}"
    );

    // The rule without its tunnel: the proxy gets the request itself and refuses it.
    env.write_config("edge.yaml", &mesh("  trafficPolicy: {}\n"))?;
    capstan_e2e::wait_until(
        "the proxy refusing plain bytes",
        CONFIG_TIMEOUT,
        async || {
            let response = HttpClient::new(loopback(tcp_port))
                .get("db.example.com", "/rows", &[])
                .await?;
            ensure!(response.status.as_u16() == 502, "{}", response.status);
            Ok(())
        },
    )
    .await?;
    ensure!(
        proxy.requests().iter().any(|r| r == "GET /rows HTTP/1.1"),
        "{:?}",
        proxy.requests()
    );
    let before = upstreams.count("db", "v1").await?;
    for _ in 0..3 {
        let response = HttpClient::new(loopback(tcp_port))
            .get("db.example.com", "/rows", &[])
            .await?;
        ensure!(response.status.as_u16() == 502, "{}", response.status);
    }
    ensure!(
        upstreams.count("db", "v1").await? == before,
        "the database was reached without the tunnel"
    );
    gateway.ensure_no_rejected_updates().await
}

/// A DestinationRule's `connectionPool.tcp.idleTimeout` closes a gateway TCP route's
/// connections that stay idle that long (istiod puts it on the route's TCP proxy), and not
/// one in use: a kept-alive HTTP/1.1 connection through the TCP server answers a second
/// request, then is closed by the gateway once idle, which counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_routes_idle_connections_close_after_the_rules_idle_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    capstan_e2e::netns::network_up()?;
    let env = TestEnv::new("a_tcp_routes_idle_connections_close_after_the_rules_idle_timeout")?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("db", "v1")], &env.log_dir)
            .await?;
    let tcp_port = capstan_e2e::gateway_mesh::gateway_port();
    env.write_config(
        "edge.yaml",
        &format!(
            r#"{db}apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db.shop.svc.cluster.local
  trafficPolicy: {{connectionPool: {{tcp: {{idleTimeout: 1s}}}}}}
---
{gateway}{route}"#,
            route = edge_tcp_route("db", "db", "db", 5432),
            gateway = edge_tcp_gateway(tcp_port),
            db = loopback_entry(
                "db",
                "db.shop.svc.cluster.local",
                (5432, "TCP"),
                upstreams.port("db", "v1")?
            ),
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let gateway = start_gateway(&env, &capstan, AdsMode::Sotw).await?;
    gateway
        .wait_listener_port(&format!("0.0.0.0_{tcp_port}"), CONFIG_TIMEOUT)
        .await?;
    let mut tcp = HttpClient::new(loopback(tcp_port));
    capstan_e2e::wait_until("the TCP server", CONFIG_TIMEOUT, async || {
        tcp.get("anything", "/db", &[]).await?.upstream_reply()
    })
    .await?;

    // One connection, two requests 300 ms apart: kept open while in use.
    let mut conn = tokio::net::TcpStream::connect(loopback(tcp_port)).await?;
    let request = b"GET /db HTTP/1.1\r\nHost: anything\r\n\r\n";
    let mut buffer = vec![0u8; 1024];
    for _ in 0..2 {
        conn.write_all(request).await?;
        let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut conn))
            .await
            .context("no reply in 5 s")??;
        ensure!(response.starts_with("HTTP/1.1 200"), "no reply: {response}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = gateway.stats(r"^tcp\.gateway_.*\.idle_timeout$").await?;
    // Then idle: the gateway closes it after about a second.
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buffer))
        .await
        .context("the idle connection was still open after 5 s")?;
    ensure!(
        matches!(read, Ok(0) | Err(_)),
        "data on an idle connection: {read:?}"
    );
    let after = gateway.stats(r"^tcp\.gateway_.*\.idle_timeout$").await?;
    ensure!(
        after.values().sum::<u64>() > before.values().sum::<u64>(),
        "the gateway counted no idle timeout: {before:?} -> {after:?}"
    );
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}

/// One whole HTTP/1.1 response with a `content-length` off `conn`, as text.
async fn read_response(conn: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;

    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .context("no content-length")?;
            if body.len() >= length {
                return Ok(text);
            }
        }
        let read = conn.read(&mut chunk).await?;
        anyhow::ensure!(read > 0, "closed mid-response: {text}");
        bytes.extend_from_slice(&chunk[..read]);
    }
}
