//! Gateway `TLS` servers that terminate TLS and forward what they decrypted by a `tcp` route,
//! as istiod builds them, through a real gateway Envoy and real TLS clients: SIMPLE and
//! MUTUAL with certificate files, chosen by SNI on one port, and ISTIO_MUTUAL with the
//! gateway's workload certificate from a real `capstan agent` (the egress gateway's side of
//! Istio's "egress gateway with mutual TLS" for TCP), a mesh workload's Envoy on the other
//! side. The upstreams speak plain HTTP: a reply means the gateway decrypted the bytes.
//! Logs: `<target>/debug/e2e-logs/<test name>/`. Runs in a network namespace of its own, as
//! e2e/tests/gateway.rs does.

use std::path::Path;

use anyhow::ensure;
use capstan_ca::SpiffeId;
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, loopback};
use capstan_e2e::gateway_mesh::{
    GATEWAY_SAN, edge_tcp_route, gateway_port, loopback_entry, start_gateway,
    start_gateway_with_agent, start_mesh_client, wait_for_service,
};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::tls_pki::{
    TestCa, connector, connector_any_name, ensure_https_refused, https_get, served_certificate,
    wait_https_reply,
};
use capstan_e2e::upstreams::Upstreams;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Two TLS servers on one port, a SIMPLE one for db.example.com and a MUTUAL one for
/// cache.example.com: each connection is decrypted with the certificate of the server its SNI
/// names and forwarded by that server's `tcp` route to a plain-text upstream; MUTUAL refuses
/// a client without a certificate of the client CA; a name no server has is refused. A route
/// edit moves where db.example.com's connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_servers_decrypt_and_forward_by_tcp_routes() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let env = TestEnv::new("tls_servers_decrypt_and_forward_by_tcp_routes")?;
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "edge")?;
    let db_cert = ca.server("db", &["db.example.com"])?;
    let cache_cert = ca.server("cache", &["cache.example.com"])?;
    let clients = TestCa::new(certs.path(), "clients")?;
    let app = clients.client("app", "spiffe://example.com/ns/shop/sa/app")?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("db", "v1"), ("cache", "v1")],
        &env.log_dir,
    )
    .await?;
    let port = gateway_port();
    let mesh = |db_destination: &str, db_port: u16| -> anyhow::Result<String> {
        Ok(format!(
            r#"{db}{cache}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls-db, protocol: TLS}}
    hosts: [shop/db.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {db_cert}, privateKey: {db_key}}}
  - port: {{number: {port}, name: tls-cache, protocol: TLS}}
    hosts: [shop/cache.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cache_cert}, privateKey: {cache_key}, caCertificates: {clients_ca}}}
---
{db_route}{cache_route}"#,
            db = loopback_entry(
                "db",
                "db.shop.svc.cluster.local",
                (5432, "TCP"),
                upstreams.port("db", "v1")?
            ),
            cache = loopback_entry(
                "cache",
                "cache.shop.svc.cluster.local",
                (6379, "TCP"),
                upstreams.port("cache", "v1")?
            ),
            db_cert = db_cert.cert.display(),
            db_key = db_cert.key.display(),
            cache_cert = cache_cert.cert.display(),
            cache_key = cache_cert.key.display(),
            clients_ca = clients.cert_path.display(),
            db_route = edge_tcp_route("db", "db.example.com", db_destination, db_port),
            cache_route = edge_tcp_route(
                "cache",
                "cache.example.com",
                "cache.shop.svc.cluster.local",
                6379
            ),
        ))
    };
    env.write_config("edge.yaml", &mesh("db.shop.svc.cluster.local", 5432)?)?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let gateway = start_gateway(&env, &capstan, AdsMode::Delta).await?;
    gateway
        .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
        .await?;
    let addr = loopback(port);
    let trusting = connector(&ca.cert_pem, None)?;
    let reply = wait_https_reply(&trusting, addr, "db.example.com", "/q", "db over TLS").await?;
    ensure!(reply.service == "db", "db.example.com reached {reply:?}");
    ensure!(
        served_certificate(&trusting, addr, "db.example.com").await? == db_cert.cert_der()?,
        "the gateway did not present db's certificate"
    );

    ensure_https_refused(
        &trusting,
        addr,
        "cache.example.com",
        "/",
        "a client without a certificate",
    )
    .await?;
    let with_certificate = connector(&ca.cert_pem, Some(&app))?;
    let reply = https_get(&with_certificate, addr, "cache.example.com", "/")
        .await?
        .upstream_reply()?;
    ensure!(
        reply.service == "cache",
        "cache.example.com reached {reply:?}"
    );
    ensure!(
        served_certificate(&with_certificate, addr, "cache.example.com").await?
            == cache_cert.cert_der()?,
        "the gateway did not present cache's certificate"
    );
    ensure_https_refused(
        &connector_any_name(&ca.cert_pem, None)?,
        addr,
        "other.example.com",
        "/",
        "a name no server has",
    )
    .await?;

    env.write_config("edge.yaml", &mesh("cache.shop.svc.cluster.local", 6379)?)?;
    capstan_e2e::wait_until(
        "db.example.com routed to cache",
        CONFIG_TIMEOUT,
        async || {
            let reply = https_get(&trusting, addr, "db.example.com", "/")
                .await?
                .upstream_reply()?;
            ensure!(reply.service == "cache", "{reply:?}");
            Ok(())
        },
    )
    .await?;
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}

/// ISTIO_MUTUAL on a TLS server: the gateway terminates the mesh's mTLS with its workload
/// certificate (from its agent) and forwards the bytes by the `tcp` route. A mesh workload's
/// Envoy (its own agent, checking the gateway's SPIFFE id) reaches the plain-text upstream
/// through it; a client without a mesh certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_tls_server_forwards_a_mesh_workloads_bytes() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    // Short: the agents' Unix sockets live in the log dir.
    let env = TestEnv::new("gw_mtls_tcp")?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("db", "v1")], &env.log_dir)
            .await?;
    let port = gateway_port();
    env.write_config(
        "egress.yaml",
        &format!(
            r#"{db}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
{route}"#,
            db = loopback_entry(
                "db",
                "db.shop.svc.cluster.local",
                (5432, "TCP"),
                upstreams.port("db", "v1")?
            ),
            route = edge_tcp_route("db", "db.example.com", "db.shop.svc.cluster.local", 5432),
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let client_id = SpiffeId::new("cluster.local", "shop", "app");
    let others = [("client-token", client_id.clone())];
    let (gateway, _gateway_agent, ca) = start_gateway_with_agent(&env, &capstan, &others).await?;
    // The listener warms until the agent's secrets have come over SDS.
    gateway
        .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
        .await?;
    let (_client_agent, _workload, mut client) =
        start_mesh_client(&env, &ca, (&client_id, "client-token"), (GATEWAY_SAN, port)).await?;
    // A mesh workload through the gateway.
    wait_for_service(&mut client, "db.example.com", "/q", "db").await?;
    ensure_https_refused(
        &connector_any_name(&ca.workload_root_pem, None)?,
        loopback(port),
        "db.example.com",
        "/q",
        "a client without a mesh certificate",
    )
    .await?;
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}
