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
use capstan_e2e::envoy::{AdsMode, loopback};
use capstan_e2e::gateway_mesh::{
    GatewayMesh, http_gateway, ingress_gateway, shop, shop_routes, start_gateway, wait_for_service,
};
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::tls_pki::{ShopPki, connector, ensure_https_refused, wait_https_reply};
use capstan_e2e::upstreams::Upstreams;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

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
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let mesh = GatewayMesh::start(
        "ingress_routes_only_what_is_bound_to_the_gateway",
        Path::new(UPSTREAM_BIN),
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

/// `sourceLabels`, `sourceNamespace` and `exportTo` on a gateway read the gateway proxy's own
/// labels and namespace, as with istiod: a canary-labelled gateway of istio-system takes the
/// canary route, not the one for another namespace's gateways; when the labels match no more,
/// the general route; exported to its own namespace only, the VirtualService routes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_services_on_a_gateway_read_the_gateway_proxys_labels_and_namespace()
-> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let routed = |labels: &str, namespace: &str| {
        let http = format!(
            "  - match: [{{sourceNamespace: {namespace}, uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - match: [{{sourceLabels: {labels}, uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - route: [{{destination: {{host: reviews, subset: v2}}}}]
"
        );
        format!("{}---\n{}", http_gateway(port, ""), shop_routes(&http))
    };
    let mesh = GatewayMesh::start_labelled(
        "virtual_services_on_a_gateway_read_the_gateway_proxys_labels_and_namespace",
        Path::new(UPSTREAM_BIN),
        &routed("{version: canary}", "edge"),
        AdsMode::Delta,
        &[("istio", "ingressgateway"), ("version", "canary")],
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let mut client = HttpClient::new(addr);
    let mut all_at = async |version: &str| {
        capstan_e2e::wait_until(&format!("shop at {version}"), CONFIG_TIMEOUT, async || {
            let counts = versions(&mut client, "shop.example.com", 10).await?;
            ensure!(counts.keys().eq([version]), "{counts:?}");
            Ok(())
        })
        .await
        .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))
    };
    all_at("v3").await?;
    mesh.env
        .write_config("gateway.yaml", &routed("{version: stable}", "edge"))?;
    all_at("v2").await?;
    mesh.env
        .write_config("gateway.yaml", &routed("{version: stable}", "istio-system"))?;
    all_at("v1").await?;
    // Exported to its own namespace only, the VirtualService is not the gateway's (istio-system)
    // any more: no route for the host.
    let private = routed("{version: stable}", "istio-system")
        .replace("  http:\n", "  exportTo: [.]\n  http:\n");
    mesh.env.write_config("gateway.yaml", &private)?;
    capstan_e2e::wait_until("shop unrouted", CONFIG_TIMEOUT, async || {
        let reply = client.get("shop.example.com", "/reviews/1", &[]).await?;
        ensure!(reply.status == 404, "{}", reply.status);
        Ok(())
    })
    .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// An HTTPS server terminates TLS with the certificate files it names: a client trusting the
/// issuing CA gets the routed upstream; one trusting another CA is refused at the handshake.
/// With MUTUAL, a client without a certificate from the client CA is refused, one with it
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_terminates_tls_simple_and_mutual() -> anyhow::Result<()> {
    let ShopPki {
        ca,
        server,
        clients,
        client_cert,
        stranger,
        ..
    } = &ShopPki::new()?;

    let simple_port = capstan_e2e::gateway_mesh::gateway_port();
    let mutual_port = capstan_e2e::gateway_mesh::gateway_port();
    let path = |p: &Path| p.display().to_string();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - name: shop-simple
    port: {{number: {simple_port}, name: https, protocol: HTTPS}}
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
    let mesh = GatewayMesh::start(
        "ingress_terminates_tls_simple_and_mutual",
        Path::new(UPSTREAM_BIN),
        &yaml,
    )
    .await?;
    let simple = mesh.listening(simple_port).await?;
    let mutual = mesh.listening(mutual_port).await?;

    let trusting = connector(&ca.cert_pem, None)?;
    let reply = wait_https_reply(
        &trusting,
        simple,
        "shop.example.com",
        "/reviews/1",
        "HTTPS to shop.example.com",
    )
    .await?;
    ensure!(reply.version == "v2", "HTTPS reached {reply:?}");
    // A named HTTPS server's requests count under its name (`servers[].name`), as istiod's.
    let named = mesh
        .gateway
        .stats(r"^http\.shop-simple\.downstream_rq_2xx$")
        .await?;
    ensure!(
        named.values().sum::<u64>() > 0,
        "the SIMPLE server's requests are not counted under its name: {named:?}"
    );

    let distrusting = connector(&stranger.cert_pem, None)?;
    ensure_https_refused(
        &distrusting,
        simple,
        "shop.example.com",
        "/reviews/1",
        "a client trusting another CA",
    )
    .await?;

    // MUTUAL: the client's certificate is checked against caCertificates.
    let with_cert = connector(&ca.cert_pem, Some(client_cert))?;
    let reply = wait_https_reply(
        &with_cert,
        mutual,
        "shop.example.com",
        "/reviews/1",
        "mutual TLS with a client certificate",
    )
    .await?;
    ensure!(reply.version == "v2", "mutual TLS reached {reply:?}");
    ensure_https_refused(
        &trusting,
        mutual,
        "shop.example.com",
        "/reviews/1",
        "a client without a certificate",
    )
    .await?;
    let foreign_cert = stranger.client("foreign", "spiffe://example.com/ns/x/sa/y")?;
    ensure_https_refused(
        &connector(&ca.cert_pem, Some(&foreign_cert))?,
        mutual,
        "shop.example.com",
        "/reviews/1",
        "a client certificate from another CA",
    )
    .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// `httpsRedirect` on a plain HTTP server answers every request with a redirect to HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_sends_clients_to_https() -> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let yaml = format!(
        "{}---\n{}",
        http_gateway(port, "    tls: {httpsRedirect: true}\n"),
        shop("v2")
    );
    let mesh = GatewayMesh::start(
        "https_redirect_sends_clients_to_https",
        Path::new(UPSTREAM_BIN),
        &yaml,
    )
    .await?;
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
/// delegate reroutes the running gateway. As istiod's `mergeHTTPRoute`, the root route's
/// `headers` apply to a team route that sets none; one with its own keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_virtual_service_routes_under_its_root() -> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let root = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: bookinfo}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews-team, namespace: team}
    headers: {request: {set: {x-root: applied}}}
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
    headers: {{request: {{set: {{x-team: jason}}}}}}
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: {others}}}}}]
"#
        )
    };
    let yaml = format!("{}---\n{root}", http_gateway(port, ""));
    let mesh = GatewayMesh::start(
        "a_delegate_virtual_service_routes_under_its_root",
        Path::new(UPSTREAM_BIN),
        &yaml,
    )
    .await?;
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
    let headers_of = async |headers: &[(&str, &str)]| -> anyhow::Result<_> {
        let reply = HttpClient::new(addr)
            .get("shop.example.com", "/reviews/1", headers)
            .await?
            .upstream_reply()?;
        let header = |name: &str| reply.headers.get(name).cloned();
        Ok((header("x-root"), header("x-team")))
    };
    let others = headers_of(&[]).await?;
    ensure!(
        others == (Some("applied".into()), None),
        "the root route's headers on a team route without its own: {others:?}"
    );
    let jason = headers_of(&[("end-user", "jason")]).await?;
    ensure!(
        jason == (None, Some("jason".into())),
        "a team route with headers of its own: {jason:?}"
    );
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

/// Servers bound to addresses (`bind`) on one port are listeners of their own: each answers
/// on its address only, with the hosts of its own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_server_listens_on_its_address_only() -> anyhow::Result<()> {
    let port = capstan_e2e::gateway_mesh::gateway_port();
    let gateway = ingress_gateway(&format!(
        "  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [shop.example.com]
    bind: 127.0.0.1
  - port: {{number: {port}, name: http-internal, protocol: HTTP}}
    hosts: [internal.example.com]
    bind: 127.0.0.2
"
    ));
    let mesh = GatewayMesh::start(
        "a_bound_server_listens_on_its_address_only",
        Path::new(UPSTREAM_BIN),
        &format!("{gateway}---\n{}", shop("v2")),
    )
    .await?;
    for address in ["127.0.0.1", "127.0.0.2"] {
        let name = format!("{address}_{port}");
        let bound = mesh
            .gateway
            .wait_listener_port(&name, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
        ensure!(bound == port, "{name} bound {bound}");
    }
    let at = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
    let reply = capstan_e2e::wait_until("shop on its address", CONFIG_TIMEOUT, async || {
        HttpClient::new(at(1))
            .get("shop.example.com", "/reviews/1", &[])
            .await?
            .upstream_reply()
    })
    .await?;
    ensure!(reply.version == "v2", "{reply:?}");
    // The other address serves the other server's hosts only; a third has no listener.
    let other = HttpClient::new(at(2))
        .get("shop.example.com", "/reviews/1", &[])
        .await?;
    ensure!(other.status == 404, "{} {}", other.status, other.text());
    let unbound = HttpClient::new(at(3))
        .get("shop.example.com", "/reviews/1", &[])
        .await;
    ensure!(unbound.is_err(), "127.0.0.3 answered: {unbound:?}");
    mesh.gateway.ensure_no_rejected_updates().await
}
