//! Ingress through a real gateway Envoy: capstan serves a Gateway and the VirtualServices bound
//! to it to an Envoy that joins as a `router` labelled `istio: ingressgateway` (as Istio's
//! ingress gateway pods are), and requests sent to the gateway's port land on the reviews
//! upstreams. Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! The test binary runs in a network namespace of its own, so Istio's bookinfo gateway can
//! open the port it names (8080) without meeting anything else on the machine; every other
//! test here takes a free port.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::fixtures::reviews_vs_header_match;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv, start_reviews};
use capstan_e2e::tls_pki::{TestCa, connector, https_get};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const INGRESS_LABELS: &[(&str, &str)] = &[("istio", "ingressgateway")];

/// The reviews mesh (its sidecar VirtualService sends jason to v2, the rest to v1), capstan,
/// and one gateway Envoy, with `gateway_yaml` in `gateway.yaml`.
struct GatewayMesh {
    gateway: Envoy,
    _capstan: Capstan,
    _upstreams: Upstreams,
    env: TestEnv,
}

impl GatewayMesh {
    async fn start(name: &str, gateway_yaml: &str) -> anyhow::Result<Self> {
        capstan_e2e::netns::network_up()?;
        let env = TestEnv::new(name)?;
        let upstreams = start_reviews(
            &env,
            Path::new(UPSTREAM_BIN),
            &reviews_vs_header_match("jason", "v2", "v1"),
        )
        .await?;
        env.write_config("gateway.yaml", gateway_yaml)?;
        let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
        let gateway = start_gateway(&env, &capstan, AdsMode::Sotw).await?;
        Ok(Self {
            gateway,
            _capstan: capstan,
            _upstreams: upstreams,
            env,
        })
    }

    /// Waits for the gateway's listener on `port`; returns its address.
    async fn listening(&self, port: u16) -> anyhow::Result<SocketAddr> {
        let bound = self
            .gateway
            .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", self.env.log_dir.display()))?;
        ensure!(bound == port, "listener bound {bound}, expected {port}");
        Ok(loopback(port))
    }

    /// The names of the listeners the gateway Envoy holds.
    async fn listener_names(&self) -> anyhow::Result<Vec<String>> {
        let v: serde_json::Value = self
            .gateway
            .admin_get("/listeners?format=json")
            .await?
            .json()?;
        Ok(v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect())
    }
}

/// An ingress gateway Envoy (a `router` labelled `istio: ingressgateway`) on `capstan`.
async fn start_gateway(env: &TestEnv, capstan: &Capstan, mode: AdsMode) -> anyhow::Result<Envoy> {
    Envoy::start(
        &capstan_e2e::locate::envoy_bin()?,
        &Bootstrap::gateway(mode, capstan.xds_port, INGRESS_LABELS),
        &env.log_dir,
        "gateway",
    )
    .await
}

/// Waits until `GET path` with Host `host` is answered by an upstream of `service`.
async fn wait_for_service(
    client: &mut HttpClient,
    host: &str,
    path: &str,
    service: &str,
) -> anyhow::Result<()> {
    capstan_e2e::wait_until(
        &format!("{host}{path} answered by {service}"),
        CONFIG_TIMEOUT,
        async || {
            let reply = client.get(host, path, &[]).await?.upstream_reply()?;
            ensure!(reply.service == service, "{reply:?}");
            Ok(())
        },
    )
    .await
}

/// A Gateway with one plain HTTP server on `port` for every host, with `tls` settings if any.
fn http_gateway(port: u16, tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
{tls}"#
    )
}

/// The VirtualService bound to the gateway: `/reviews` on shop.example.com to `subset`.
fn shop(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: bookinfo}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
  - match: [{{uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
    )
}

async fn versions(
    client: &mut HttpClient,
    host: &str,
    n: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let reply = client
            .get(host, "/reviews/1", &[])
            .await?
            .upstream_reply()?;
        *counts.entry(reply.version).or_default() += 1;
    }
    Ok(counts)
}

/// A Gateway and the VirtualService bound to it route shop.example.com to v2; the sidecar
/// VirtualService of reviews is not served on the gateway, nor the sidecar listener; an edit
/// of the bound VirtualService reroutes the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_only_what_is_bound_to_the_gateway() -> anyhow::Result<()> {
    let port = capstan_e2e::ports::free_port()?;
    let mesh = GatewayMesh::start(
        "ingress_routes_only_what_is_bound_to_the_gateway",
        &format!("{}---\n{}", http_gateway(port, ""), shop("v2")),
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let mut client = HttpClient::new(addr);
    capstan_e2e::wait_until(
        "shop.example.com served by v2",
        CONFIG_TIMEOUT,
        async || {
            let counts = versions(&mut client, "shop.example.com", 5).await?;
            ensure!(counts.keys().eq(["v2"]), "{counts:?}");
            Ok(())
        },
    )
    .await?;
    let counts = versions(&mut client, &format!("shop.example.com:{port}"), 30).await?;
    ensure!(
        counts.keys().eq(["v2"]),
        "with the port in Host: {counts:?}"
    );

    // reviews' own (sidecar) VirtualService is not the gateway's business.
    let sidecar_host = client
        .get("reviews.bookinfo.svc.cluster.local", "/reviews/1", &[])
        .await?;
    ensure!(
        sidecar_host.status == 404,
        "the gateway answered a sidecar-only host with {}",
        sidecar_host.status
    );
    let listeners = mesh.listener_names().await?;
    ensure!(
        listeners == [format!("0.0.0.0_{port}")],
        "the gateway holds listeners {listeners:?}"
    );

    mesh.env.write_config(
        "gateway.yaml",
        &format!("{}---\n{}", http_gateway(port, ""), shop("v3")),
    )?;
    capstan_e2e::wait_until(
        "shop.example.com rerouted to v3",
        CONFIG_TIMEOUT,
        async || {
            let counts = versions(&mut client, "shop.example.com", 10).await?;
            ensure!(counts.keys().eq(["v3"]), "{counts:?}");
            Ok(())
        },
    )
    .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// An HTTPS server terminates TLS with the certificate files it names: a client trusting the
/// issuing CA gets the routed upstream; one trusting another CA is refused at the handshake.
/// With MUTUAL, a client without a certificate from the client CA is refused, one with it
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_terminates_tls_simple_and_mutual() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let server = ca.server("shop", &["shop.example.com"])?;
    let clients = TestCa::new(certs.path(), "clients")?;
    let client_cert = clients.client("client", "spiffe://example.com/ns/shop/sa/buyer")?;
    let stranger = TestCa::new(certs.path(), "stranger")?;

    let simple_port = capstan_e2e::ports::free_port()?;
    let mutual_port = capstan_e2e::ports::free_port()?;
    let path = |p: &Path| p.display().to_string();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {simple_port}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {mutual_port}, name: https-mutual, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {client_ca}}}
---
{vs}"#,
        cert = path(&server.cert),
        key = path(&server.key),
        client_ca = path(&clients.cert_path),
        vs = shop("v2"),
    );
    let mesh = GatewayMesh::start("ingress_terminates_tls_simple_and_mutual", &yaml).await?;
    let simple = mesh.listening(simple_port).await?;
    let mutual = mesh.listening(mutual_port).await?;

    let trusting = connector(&ca.cert_pem, None)?;
    let reply = capstan_e2e::wait_until("HTTPS to shop.example.com", CONFIG_TIMEOUT, async || {
        https_get(&trusting, simple, "shop.example.com", "/reviews/1")
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(reply.version == "v2", "HTTPS reached {reply:?}");

    let distrusting = connector(&stranger.cert_pem, None)?;
    let refused = https_get(&distrusting, simple, "shop.example.com", "/reviews/1").await;
    ensure!(
        refused.is_err(),
        "a client trusting another CA got {:?}",
        refused.map(|r| r.status)
    );

    // MUTUAL: the client's certificate is checked against caCertificates.
    let with_cert = connector(&ca.cert_pem, Some(&client_cert))?;
    let reply = capstan_e2e::wait_until(
        "mutual TLS with a client certificate",
        CONFIG_TIMEOUT,
        async || {
            https_get(&with_cert, mutual, "shop.example.com", "/reviews/1")
                .await?
                .upstream_reply()
        },
    )
    .await?;
    ensure!(reply.version == "v2", "mutual TLS reached {reply:?}");
    let anonymous = https_get(&trusting, mutual, "shop.example.com", "/reviews/1").await;
    ensure!(
        anonymous.is_err(),
        "a client without a certificate got {:?}",
        anonymous.map(|r| r.status)
    );
    let foreign_cert = stranger.client("foreign", "spiffe://example.com/ns/x/sa/y")?;
    let foreign = https_get(
        &connector(&ca.cert_pem, Some(&foreign_cert))?,
        mutual,
        "shop.example.com",
        "/reviews/1",
    )
    .await;
    ensure!(
        foreign.is_err(),
        "a client certificate from another CA got {:?}",
        foreign.map(|r| r.status)
    );
    mesh.gateway.ensure_no_rejected_updates().await
}

/// `httpsRedirect` on a plain HTTP server answers every request with a redirect to HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_sends_clients_to_https() -> anyhow::Result<()> {
    let port = capstan_e2e::ports::free_port()?;
    let yaml = format!(
        "{}---\n{}",
        http_gateway(port, "    tls: {httpsRedirect: true}\n"),
        shop("v2")
    );
    let mesh = GatewayMesh::start("https_redirect_sends_clients_to_https", &yaml).await?;
    let addr = mesh.listening(port).await?;
    let mut client = HttpClient::new(addr);
    let response = capstan_e2e::wait_until("a redirect", CONFIG_TIMEOUT, async || {
        let r = client.get("shop.example.com", "/reviews/1", &[]).await?;
        ensure!(r.status == 301, "got {} {}", r.status, r.text());
        Ok(r)
    })
    .await?;
    let location = response
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        location == "https://shop.example.com/reviews/1",
        "redirected to {location:?}"
    );
    mesh.gateway.ensure_no_rejected_updates().await
}

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
    let egress_port = capstan_e2e::ports::free_port()?;
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
# Stands in for the istio-egressgateway Service: its pods' port is the gateway's listener.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {egress_port}}}}}]
---
apiVersion: networking.istio.io/v1
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
"#
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let egress = Envoy::start(
        &envoy_bin,
        &Bootstrap::gateway(
            AdsMode::Sotw,
            capstan.xds_port,
            &[("istio", "egressgateway")],
        ),
        &env.log_dir,
        "egress-gateway",
    )
    .await?;
    let sidecar = Envoy::start(
        &envoy_bin,
        &Bootstrap::new(AdsMode::Delta, capstan.xds_port),
        &env.log_dir,
        "sidecar",
    )
    .await?;
    egress
        .wait_listener_port(&format!("0.0.0.0_{egress_port}"), CONFIG_TIMEOUT)
        .await?;
    let outbound = sidecar
        .wait_listener_port(capstan_e2e::mesh::OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await?;
    let mut client = HttpClient::new(loopback(outbound));
    wait_for_service(&mut client, "httpbin.example.com", "/get", "httpbin").await?;
    const N: u64 = 20;
    let before = upstreams.count("httpbin", "v1").await?;
    let gateway_before = requests(&egress, "outbound|80||httpbin.example.com").await?;
    for _ in 0..N {
        client
            .get("httpbin.example.com", "/get", &[])
            .await?
            .upstream_reply()?;
    }
    let arrived = upstreams.count("httpbin", "v1").await? - before;
    let through_gateway =
        requests(&egress, "outbound|80||httpbin.example.com").await? - gateway_before;
    let direct = requests(&sidecar, "outbound|80||httpbin.example.com").await?;
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

/// Requests `envoy` sent through `cluster` (0 when it has no such cluster).
async fn requests(envoy: &Envoy, cluster: &str) -> anyhow::Result<u64> {
    let stat = format!("cluster.{cluster}.upstream_rq_total");
    let stats = envoy.stats(&format!("^{}$", regex_escape(&stat))).await?;
    Ok(stats.get(&stat).copied().unwrap_or(0))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
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
        capstan_e2e::ports::free_port()?,
        capstan_e2e::ports::free_port()?,
    );
    let entry = |name: &str, host: &str, port: u16, protocol: &str, number: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  ports: [{{number: {number}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{p: {port}}}}}]
---
"#
        )
    };
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
        db = entry(
            "db",
            "db.shop.svc.cluster.local",
            upstreams.port("db", "v1")?,
            "TCP",
            5432
        ),
        a = entry(
            "a",
            "a.example.com",
            upstreams.port("secure", "a")?,
            "TLS",
            443
        ),
        b = entry(
            "b",
            "b.example.com",
            upstreams.port("secure", "b")?,
            "TLS",
            443
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
    let unknown = https_get(&trusting, loopback(tls_port), "c.example.com", "/").await;
    ensure!(
        unknown.is_err(),
        "an SNI no route names got {:?}",
        unknown.map(|r| r.status)
    );
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}

/// Istio's `bookinfo-gateway.yaml`, unchanged (e2e/bookinfo/), on port 8080: the bookinfo
/// paths reach productpage, anything else is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_gateway_sample_serves_productpage() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let env = TestEnv::new("bookinfo_gateway_sample_serves_productpage")?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("productpage", "v1")],
        &env.log_dir,
    )
    .await?;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("bookinfo/bookinfo-gateway.yaml");
    env.write_config("bookinfo-gateway.yaml", &std::fs::read_to_string(&sample)?)?;
    env.write_config(
        "productpage.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [productpage.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: productpage, version: v1}}}}]
"#,
            upstreams.port("productpage", "v1")?
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let gateway = start_gateway(&env, &capstan, AdsMode::Sotw).await?;
    gateway
        .wait_listener_port("0.0.0.0_8080", CONFIG_TIMEOUT)
        .await?;
    let mut client = HttpClient::new(loopback(8080));
    wait_for_service(
        &mut client,
        "bookinfo.example.com",
        "/productpage",
        "productpage",
    )
    .await?;
    for path in [
        "/static/img/logo.png",
        "/login",
        "/logout",
        "/api/v1/products/0",
    ] {
        let reply = client
            .get("203.0.113.10", path, &[])
            .await?
            .upstream_reply()
            .with_context(|| path.to_string())?;
        ensure!(
            (reply.service.as_str(), reply.path.as_str()) == ("productpage", path),
            "{path} reached {reply:?}"
        );
    }
    for path in ["/productpage/extra", "/admin"] {
        let response = client.get("bookinfo.example.com", path, &[]).await?;
        ensure!(response.status == 404, "{path}: {}", response.status);
    }
    gateway.ensure_no_rejected_updates().await
}

/// A root VirtualService bound to the gateway delegates `/reviews` to a VirtualService a team
/// owns (no hosts): the team's routes serve under the root's match, and editing only the
/// delegate reroutes the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_virtual_service_routes_under_its_root() -> anyhow::Result<()> {
    let port = capstan_e2e::ports::free_port()?;
    let root = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: bookinfo}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews-team, namespace: team}
"#;
    let team = |jason: &str, others: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-team, namespace: team}}
spec:
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: {jason}}}}}]
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: {others}}}}}]
"#
        )
    };
    let yaml = format!("{}---\n{root}", http_gateway(port, ""));
    let mesh =
        GatewayMesh::start("a_delegate_virtual_service_routes_under_its_root", &yaml).await?;
    mesh.env.write_config("team.yaml", &team("v2", "v3"))?;
    let addr = mesh.listening(port).await?;
    let mut client = HttpClient::new(addr);
    let mut version = async |headers: &[(&str, &str)]| -> anyhow::Result<String> {
        Ok(client
            .get("shop.example.com", "/reviews/1", headers)
            .await?
            .upstream_reply()?
            .version)
    };
    capstan_e2e::wait_until("the delegate's routes", CONFIG_TIMEOUT, async || {
        let (jason, others) = (
            version(&[("end-user", "jason")]).await?,
            version(&[]).await?,
        );
        ensure!(
            (jason.as_str(), others.as_str()) == ("v2", "v3"),
            "jason {jason}, others {others}"
        );
        Ok(())
    })
    .await?;
    mesh.env.write_config("team.yaml", &team("v1", "v1"))?;
    capstan_e2e::wait_until("the edited delegate", CONFIG_TIMEOUT, async || {
        let (jason, others) = (
            version(&[("end-user", "jason")]).await?,
            version(&[]).await?,
        );
        ensure!(
            (jason.as_str(), others.as_str()) == ("v1", "v1"),
            "jason {jason}, others {others}"
        );
        Ok(())
    })
    .await?;
    // Outside the root's match nothing is routed.
    let outside = HttpClient::new(addr)
        .get("shop.example.com", "/ratings/1", &[])
        .await?;
    ensure!(outside.status == 404, "/ratings: {}", outside.status);
    mesh.gateway.ensure_no_rejected_updates().await
}
