//! The Gateway server TLS modes beyond SIMPLE, MUTUAL and PASSTHROUGH, through a real gateway
//! Envoy and real TLS clients: OPTIONAL_MUTUAL (a client certificate checked when sent),
//! AUTO_PASSTHROUGH (the east-west gateway: forwarded unread by Istio's SNI, no
//! VirtualService) and ISTIO_MUTUAL (the gateway's workload certificate and the mesh roots
//! from a real `capstan agent`, a mesh workload's Envoy on the other side). Logs:
//! `<target>/debug/e2e-logs/<test name>/` (the ISTIO_MUTUAL test's dir has a short name: its
//! agents' Unix sockets live there). Runs in a network namespace of its own, as
//! e2e/tests/gateway.rs does.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_ca::SpiffeId;
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{Envoy, loopback};
use capstan_e2e::fixtures::reviews_vs_header_match;
use capstan_e2e::gateway_mesh::{
    GATEWAY_SAN, GatewayMesh, gateway_port, ingress_gateway, shop, start_gateway_with_agent,
    start_mesh_client,
};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv, start_reviews};
use capstan_e2e::tls_pki::{
    Issued, TestCa, connector, connector_any_name, connector_limited, connector_with_alpn,
    ensure_https_refused, https_get, served_certificate, wait_https_reply,
};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// The sum of the gateway listeners' counters named `ssl.<name>`.
async fn ssl_stat(envoy: &Envoy, name: &str) -> anyhow::Result<u64> {
    let stats = envoy
        .stats(&format!(r"^listener\..*\.ssl\.{name}$"))
        .await?;
    Ok(stats.values().sum())
}

/// Waits until the gateway's `ssl.<name>` counters sum above `before`: Envoy may count a
/// refused handshake after the client has seen it fail.
async fn wait_ssl_stat_above(envoy: &Envoy, name: &str, before: u64) -> anyhow::Result<u64> {
    let what = format!("ssl.{name} above {before}");
    capstan_e2e::wait_until(&what, Duration::from_secs(5), async || {
        let now = ssl_stat(envoy, name).await?;
        ensure!(now > before, "{name}: {now}");
        Ok(now)
    })
    .await
}

/// Fails unless the client `who` is refused by the gateway at `addr` and the gateway counts a
/// failed verification of a client certificate for it.
async fn refused_at_verification(
    mesh: &GatewayMesh,
    client: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    who: &str,
) -> anyhow::Result<()> {
    let failures = ssl_stat(&mesh.gateway, "fail_verify_error").await?;
    ensure_https_refused(client, addr, "shop.example.com", "/reviews/1", who).await?;
    wait_ssl_stat_above(&mesh.gateway, "fail_verify_error", failures)
        .await
        .with_context(|| format!("{who}: the gateway counted no verification failure"))?;
    Ok(())
}

/// A Gateway in istio-system with one HTTPS server on `port` for every host, with `tls`.
fn https_gateway(port: u16, tls: &str) -> String {
    ingress_gateway(&https_server(port, tls))
}

fn https_server(port: u16, tls: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: https-{port}, protocol: HTTPS}}
    hosts: [\"*\"]
    tls: {tls}
"
    )
}

/// The gateway mesh of test `name` with one HTTPS server terminating with `server`'s
/// certificate files and the further `tls` settings (`mode: …, …`), and that server's
/// address once it listens.
async fn files_gateway(
    name: &str,
    server: &Issued,
    tls: &str,
) -> anyhow::Result<(GatewayMesh, SocketAddr)> {
    let port = gateway_port();
    let tls = format!(
        "{{serverCertificate: {}, privateKey: {}, {tls}}}",
        server.cert.display(),
        server.key.display()
    );
    let yaml = format!("{}---\n{}", https_gateway(port, &tls), shop("v2"));
    let mesh = GatewayMesh::start(name, Path::new(UPSTREAM_BIN), &yaml).await?;
    let addr = mesh.listening(port).await?;
    Ok((mesh, addr))
}

/// OPTIONAL_MUTUAL: the client CA is configured, yet a client without a certificate gets
/// through; one with a certificate from that CA too; one presenting another CA's
/// certificate is refused at the handshake (and Envoy counts a verification failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mutual_admits_clients_without_a_certificate_and_checks_those_sent()
-> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let server = ca.server("shop", &["shop.example.com"])?;
    let clients = TestCa::new(certs.path(), "clients")?;
    let member = clients.client("member", "spiffe://example.com/ns/shop/sa/buyer")?;
    let stranger = TestCa::new(certs.path(), "stranger")?;
    let foreign = stranger.client("foreign", "spiffe://example.com/ns/shop/sa/buyer")?;
    let tls = format!(
        "mode: OPTIONAL_MUTUAL, caCertificates: {}",
        clients.cert_path.display()
    );
    let (mesh, addr) = files_gateway(
        "optional_mutual_admits_clients_without_a_certificate_and_checks_those_sent",
        &server,
        &tls,
    )
    .await?;

    let anonymous = connector(&ca.cert_pem, None)?;
    let reply = wait_https_reply(
        &anonymous,
        addr,
        "shop.example.com",
        "/reviews/1",
        "HTTPS without a client certificate",
    )
    .await?;
    ensure!(reply.version == "v2", "no certificate: reached {reply:?}");

    let with_member = connector(&ca.cert_pem, Some(&member))?;
    let reply = https_get(&with_member, addr, "shop.example.com", "/reviews/1")
        .await?
        .upstream_reply()
        .context("a certificate from the client CA")?;
    ensure!(
        reply.version == "v2",
        "member certificate: reached {reply:?}"
    );

    let foreign = connector(&ca.cert_pem, Some(&foreign))?;
    refused_at_verification(&mesh, &foreign, addr, "a certificate from another CA").await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites` on two SIMPLE servers: one
/// refuses TLS 1.2 clients and serves TLS 1.3 ones; the other refuses TLS 1.3 and, on TLS
/// 1.2, every cipher suite but the one named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_cipher_suites_limit_the_handshakes_a_gateway_accepts()
-> anyhow::Result<()> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as AES128,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 as AES256,
    };
    use rustls::version::{TLS12, TLS13};

    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    // An ECDSA certificate: the suites named are ECDHE-ECDSA ones.
    let server = ca.server("shop", &["shop.example.com"])?;
    let (modern, legacy) = (gateway_port(), gateway_port());
    let files = format!(
        "serverCertificate: {}, privateKey: {}",
        server.cert.display(),
        server.key.display()
    );
    let gateway = ingress_gateway(&format!(
        "{}{}",
        https_server(
            modern,
            &format!("{{mode: SIMPLE, {files}, minProtocolVersion: TLSV1_3}}")
        ),
        https_server(
            legacy,
            &format!(
                "{{mode: SIMPLE, {files}, maxProtocolVersion: TLSV1_2, \
                 cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]}}"
            )
        ),
    ));
    let mesh = GatewayMesh::start(
        "tls_versions_and_cipher_suites_limit_the_handshakes_a_gateway_accepts",
        Path::new(UPSTREAM_BIN),
        &format!("{gateway}---\n{}", shop("v2")),
    )
    .await?;
    let (host, path) = ("shop.example.com", "/reviews/1");
    let tls13 = connector_limited(&ca.cert_pem, &[&TLS13], &[])?;
    let tls12 = connector_limited(&ca.cert_pem, &[&TLS12], &[])?;

    let addr = mesh.listening(modern).await?;
    let reply = wait_https_reply(&tls13, addr, host, path, "TLS 1.3 to the modern server").await?;
    ensure!(reply.version == "v2", "TLS 1.3: reached {reply:?}");
    ensure_https_refused(&tls12, addr, host, path, "a TLS 1.2 client (minimum 1.3)").await?;

    let addr = mesh.listening(legacy).await?;
    let aes256 = connector_limited(&ca.cert_pem, &[&TLS12], &[AES256])?;
    let reply = wait_https_reply(&aes256, addr, host, path, "TLS 1.2 with the suite named").await?;
    ensure!(reply.version == "v2", "TLS 1.2, AES-256: reached {reply:?}");
    ensure_https_refused(&tls13, addr, host, path, "a TLS 1.3 client (maximum 1.2)").await?;
    let aes128 = connector_limited(&ca.cert_pem, &[&TLS12], &[AES128])?;
    ensure_https_refused(&aes128, addr, host, path, "a suite not named").await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// MUTUAL with `caCrl`: a client certificate the CRL revokes is refused at the handshake,
/// another from the same CA admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_refuses_client_certificates_the_crl_revokes() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let server = ca.server("shop", &["shop.example.com"])?;
    let clients = TestCa::new(certs.path(), "clients")?;
    let member = clients.client("member", "spiffe://example.com/ns/shop/sa/buyer")?;
    let revoked = clients.client("revoked", "spiffe://example.com/ns/shop/sa/buyer")?;
    let crl = clients.crl("clients-crl", &[&revoked])?;
    let tls = format!(
        "mode: MUTUAL, caCertificates: {}, caCrl: {}",
        clients.cert_path.display(),
        crl.display()
    );
    let (mesh, addr) = files_gateway(
        "mutual_refuses_client_certificates_the_crl_revokes",
        &server,
        &tls,
    )
    .await?;
    let (host, path) = ("shop.example.com", "/reviews/1");
    let with_member = connector(&ca.cert_pem, Some(&member))?;
    let reply =
        wait_https_reply(&with_member, addr, host, path, "a certificate not revoked").await?;
    ensure!(reply.version == "v2", "member: reached {reply:?}");
    let with_revoked = connector(&ca.cert_pem, Some(&revoked))?;
    refused_at_verification(&mesh, &with_revoked, addr, "a revoked certificate").await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// `tlsCertificates`: each pair is served; Envoy presents the one whose names match the
/// client's SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_tls_certificates_is_served() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let shop_cert = ca.server("shop", &["shop.example.com"])?;
    let admin_cert = ca.server("admin", &["admin.example.com"])?;
    let pair = |c: &Issued| {
        format!(
            "{{serverCertificate: {}, privateKey: {}}}",
            c.cert.display(),
            c.key.display()
        )
    };
    let port = gateway_port();
    let tls = format!(
        "{{mode: SIMPLE, tlsCertificates: [{}, {}]}}",
        pair(&shop_cert),
        pair(&admin_cert)
    );
    let yaml = format!("{}---\n{}", https_gateway(port, &tls), shop("v2"));
    let mesh = GatewayMesh::start(
        "each_of_tls_certificates_is_served",
        Path::new(UPSTREAM_BIN),
        &yaml,
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let client = connector(&ca.cert_pem, None)?;
    let reply = wait_https_reply(&client, addr, "shop.example.com", "/reviews/1", "HTTPS").await?;
    ensure!(reply.version == "v2", "reached {reply:?}");
    for (host, cert) in [
        ("shop.example.com", &shop_cert),
        ("admin.example.com", &admin_cert),
    ] {
        ensure!(
            served_certificate(&client, addr, host).await? == cert.cert_der()?,
            "{host}: the gateway does not present the certificate for it"
        );
    }
    mesh.gateway.ensure_no_rejected_updates().await
}

/// Istio's SNI for a cluster (`outbound_.<port>_.<subset>_.<host>`).
fn istio_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// AUTO_PASSTHROUGH with no VirtualService: a client speaking Istio's mTLS ALPN with the SNI
/// of a mesh cluster reaches that cluster (the whole service, or the subset the SNI names)
/// and completes its handshake with the upstream's own certificate, which the gateway does
/// not hold; a host capstan does not know, or a client without Istio's ALPN, gets no chain.
/// As istiod, the gateway forwards to clusters of its own (SNI-DNAT) holding only the
/// endpoints clients would speak the mesh's mTLS to: without TLS in the DestinationRule, those
/// with a sidecar (subset `c` has none: refused); with the rule's ISTIO_MUTUAL, every one —
/// and the gateway still never wraps the passed-through TLS in its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_passthrough_forwards_by_istio_sni_without_decrypting() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    // A short name: the gateway agent's Unix socket lives in the log dir.
    let env = TestEnv::new("gateway_auto_pt")?;
    let host = "secure.shop.svc.cluster.local";
    let snis = ["", "a", "b", "c"].map(|subset| istio_sni(443, subset, host));
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "workloads")?;
    let sni_refs: Vec<&str> = snis.iter().map(String::as_str).collect();
    let upstream_cert = ca.server("secure", &sni_refs)?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let upstreams = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[],
        &[
            ("secure", "a", any),
            ("secure", "b", any),
            ("secure", "c", any),
        ],
        Some(&UpstreamTls {
            cert: upstream_cert.cert.clone(),
            key: upstream_cert.key.clone(),
            client_ca: None,
        }),
        &env.log_dir,
        "upstreams",
    )
    .await?;
    let port = gateway_port();
    let config = |rule_tls: &str| -> anyhow::Result<String> {
        Ok(format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tls: {a}}}, labels: {{version: a, {SIDECAR}}}}}
  - {{address: 127.0.0.1, ports: {{tls: {b}}}, labels: {{version: b, {SIDECAR}}}}}
  - {{address: 127.0.0.1, ports: {{tls: {c}}}, labels: {{version: c}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: shop}}
spec:
  host: {host}
  {rule_tls}
  subsets:
  - {{name: a, labels: {{version: a}}}}
  - {{name: b, labels: {{version: b}}}}
  - {{name: c, labels: {{version: c}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
"#,
            a = upstreams.port("secure", "a")?,
            b = upstreams.port("secure", "b")?,
            c = upstreams.port("secure", "c")?,
        ))
    };
    env.write_config("east-west.yaml", &config("")?)?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    // Endpoints with a sidecar make the gateway's own clusters to the service originate the
    // mesh's mTLS (auto mTLS), which needs the agent's `sds-grpc`, as an Istio gateway has.
    let (gateway, _agent, _ca) = start_gateway_with_agent(&env, &capstan, &[]).await?;
    gateway
        .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
        .await?;
    let addr = loopback(port);
    // What a sidecar offers for HTTP over mTLS, and plain HTTP/1.1 for the upstream.
    let mesh_client = connector_with_alpn(&ca.cert_pem, None, &["istio-http/1.1", "http/1.1"])?;
    let reaches = async |sni: &str, version: &str| -> anyhow::Result<()> {
        let reply = capstan_e2e::wait_until(&format!("TLS to {sni}"), CONFIG_TIMEOUT, async || {
            https_get(&mesh_client, addr, sni, "/")
                .await?
                .upstream_reply()
        })
        .await?;
        ensure!(
            (reply.service.as_str(), reply.version.as_str()) == ("secure", version),
            "SNI {sni} reached {reply:?}"
        );
        Ok(())
    };

    reaches(&snis[1], "a").await?;
    reaches(&snis[2], "b").await?;
    for _ in 0..6 {
        let reply = https_get(&mesh_client, addr, &snis[0], "/")
            .await?
            .upstream_reply()?;
        ensure!(
            reply.service == "secure" && reply.version != "c",
            "SNI {} reached {reply:?}: c has no sidecar",
            snis[0]
        );
    }
    ensure!(
        served_certificate(&mesh_client, addr, &snis[0]).await? == upstream_cert.cert_der()?,
        "the client was not shown the upstream's own certificate"
    );
    ensure_https_refused(
        &mesh_client,
        addr,
        &snis[3],
        "/",
        "a subset without a sidecar",
    )
    .await?;
    let unknown = istio_sni(443, "", "unknown.shop.svc.cluster.local");
    ensure_https_refused(&mesh_client, addr, &unknown, "/", "an SNI of no known host").await?;
    ensure_https_refused(
        &connector(&ca.cert_pem, None)?,
        addr,
        &snis[1],
        "/",
        "a client without Istio's ALPN",
    )
    .await?;

    // The rule says clients speak the mesh's mTLS to every endpoint: c is reached too, and
    // the gateway's clusters still pass the client's TLS on as it is.
    env.write_config(
        "east-west.yaml",
        &config("trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}")?,
    )?;
    reaches(&snis[3], "c").await?;
    ensure!(
        served_certificate(&mesh_client, addr, &snis[3]).await? == upstream_cert.cert_der()?,
        "with the rule's ISTIO_MUTUAL the client was not shown the upstream's own certificate"
    );
    reaches(&snis[1], "a").await?;
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}

/// `security.istio.io/tlsMode: istio`: the endpoint has a sidecar taking the mesh's mTLS.
const SIDECAR: &str = "security.istio.io/tlsMode: istio";

/// ISTIO_MUTUAL: the gateway Envoy (bootstrapped like Istio's gateway pods, with cluster
/// `sds-grpc` to a real `capstan agent`) terminates TLS with its workload certificate and
/// requires a client certificate the mesh roots certify. A mesh workload (its own agent
/// and Envoy, which checks the gateway's SPIFFE id) is routed; a client without a
/// certificate, or with one another CA issued for the same identity, is refused, and Envoy
/// counts why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_terminates_with_the_agents_workload_certificate() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let env = TestEnv::new("gateway_istio_mutual")?;
    let _upstreams = start_reviews(
        &env,
        Path::new(UPSTREAM_BIN),
        &reviews_vs_header_match("jason", "v2", "v1"),
    )
    .await?;
    let port = gateway_port();
    env.write_config(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            https_gateway(port, "{mode: ISTIO_MUTUAL}"),
            shop("v2")
        ),
    )?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let client_id = SpiffeId::new("cluster.local", "bookinfo", "productpage");
    let others = [("client-token", client_id.clone())];
    let (gateway, _gateway_agent, ca) = start_gateway_with_agent(&env, &capstan, &others).await?;
    // The listener warms until both secrets have come over SDS.
    gateway
        .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    let addr = loopback(port);

    let (_client_agent, _workload, mut client) =
        start_mesh_client(&env, &ca, (&client_id, "client-token"), (GATEWAY_SAN, port)).await?;
    let reply = capstan_e2e::wait_until(
        "a mesh workload through the gateway",
        CONFIG_TIMEOUT,
        async || {
            client
                .get("shop.example.com", "/reviews/1", &[])
                .await?
                .upstream_reply()
        },
    )
    .await?;
    ensure!(reply.version == "v2", "the mesh workload reached {reply:?}");

    // The certificate the gateway presents chains to the mesh root and names the gateway.
    let anonymous = connector_any_name(&ca.workload_root_pem, None)?;
    let leaf = served_certificate(&anonymous, addr, "shop.example.com").await?;
    ensure!(
        leaf.windows(GATEWAY_SAN.len())
            .any(|w| w == GATEWAY_SAN.as_bytes()),
        "the gateway's certificate does not name {GATEWAY_SAN}"
    );

    let no_cert = ssl_stat(&gateway, "fail_verify_no_cert").await?;
    ensure_https_refused(
        &anonymous,
        addr,
        "shop.example.com",
        "/reviews/1",
        "a client without a certificate",
    )
    .await?;
    wait_ssl_stat_above(&gateway, "fail_verify_no_cert", no_cert)
        .await
        .context("no missing certificate counted")?;

    let certs = tempfile::tempdir()?;
    let rogue = TestCa::new(certs.path(), "rogue")?;
    let forged = rogue.client("forged", &client_id.to_string())?;
    let failures = ssl_stat(&gateway, "fail_verify_error").await?;
    ensure_https_refused(
        &connector_any_name(&ca.workload_root_pem, Some(&forged))?,
        addr,
        "shop.example.com",
        "/reviews/1",
        "a certificate from outside the mesh",
    )
    .await?;
    wait_ssl_stat_above(&gateway, "fail_verify_error", failures)
        .await
        .context("no verification failure counted")?;

    client
        .get("shop.example.com", "/reviews/1", &[])
        .await?
        .upstream_reply()
        .context("the mesh workload after the refusals")?;
    gateway.ensure_no_rejected_updates().await
}
