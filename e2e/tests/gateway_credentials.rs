//! Gateway certificates from Secrets (`tls.credentialName`), through a real gateway Envoy:
//! the Secrets sit in the config folder beside the Gateway, capstan serves them to the
//! gateway over SDS (on its ADS stream), and HTTPS clients see the certificate they hold. A
//! new certificate in the Secret is served on new connections without a listener change; a
//! MUTUAL server takes its client CA from `<credentialName>-cacert`, as Istio's does.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::path::Path;

use anyhow::{Context, ensure};
use base64::Engine;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::gateway_mesh::{GatewayMesh, gateway_port, ingress_gateway, shop};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::tls_pki::{
    Issued, ShopPki, TestCa, connector, ensure_https_refused, https_get, served_certificate,
    wait_https_reply,
};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// A Gateway in istio-system (the gateway Envoy's namespace) with one HTTPS server per
/// `(port, tls)`, all for shop.example.com.
fn credential_gateway(servers: &[(u16, &str)]) -> String {
    let servers: String = servers
        .iter()
        .map(|(port, tls)| {
            format!(
                "  - port: {{number: {port}, name: https-{port}, protocol: HTTPS}}\n    \
                 hosts: [shop.example.com]\n    tls: {tls}\n"
            )
        })
        .collect();
    ingress_gateway(&servers)
}

/// A `kubernetes.io/tls` Secret (base64 `data`) holding `issued`.
fn tls_secret(name: &str, issued: &Issued) -> anyhow::Result<String> {
    let b64 = |path: &Path| -> anyhow::Result<String> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(pem))
    };
    Ok(format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        b64(&issued.cert)?,
        b64(&issued.key)?
    ))
}

/// A generic Secret in Istio's form (`stringData`), one entry per `(key, PEM file)`.
fn generic_secret(name: &str, entries: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\n\
         stringData:\n"
    );
    for (key, path) in entries {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        out.push_str(&format!("  {key}: |\n"));
        for line in pem.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    Ok(out)
}

/// A Gateway's `credentialName` names a TLS Secret in the folder: HTTPS through the gateway
/// reaches the routed upstream with the Secret's certificate. A server naming a Secret that
/// does not exist is reported and left out, the other served. Replacing the Secret's
/// certificate changes what new connections are shown, and the listener stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_name_serves_the_secrets_certificate_and_follows_its_rotation()
-> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let first = ca.server("shop-first", &["shop.example.com"])?;
    let second = ca.server("shop-second", &["shop.example.com"])?;
    let port = gateway_port();
    let missing_port = gateway_port();
    let gateway = credential_gateway(&[
        (port, "{mode: SIMPLE, credentialName: shop-cert}"),
        (missing_port, "{mode: SIMPLE, credentialName: absent-cert}"),
    ]);
    let config = |secret: &str| format!("{gateway}---\n{}---\n{secret}", shop("v2"));
    let mut mesh = GatewayMesh::start(
        "credential_name_serves_the_secrets_certificate_and_follows_its_rotation",
        Path::new(UPSTREAM_BIN),
        &config(&tls_secret("shop-cert", &first)?),
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let client = connector(&ca.cert_pem, None)?;
    let reply = wait_https_reply(
        &client,
        addr,
        "shop.example.com",
        "/reviews/1",
        "HTTPS with the Secret's certificate",
    )
    .await?;
    ensure!(reply.version == "v2", "HTTPS reached {reply:?}");
    ensure!(
        served_certificate(&client, addr, "shop.example.com").await? == first.cert_der()?,
        "the gateway does not present the Secret's certificate"
    );

    // The server whose Secret is missing: named in capstan's log, not listening.
    mesh.capstan
        .process
        .wait_for_log("the missing Secret reported", CONFIG_TIMEOUT, |l| {
            l.contains("Gateway istio-system/ingress: spec.servers[1].tls.credentialName")
                && l.contains("Secret istio-system/absent-cert not found")
        })
        .await?;
    let listeners = mesh.listener_names().await?;
    ensure!(
        listeners == [format!("0.0.0.0_{port}")],
        "the gateway holds listeners {listeners:?}"
    );

    let modified = mesh
        .gateway
        .stat("listener_manager.listener_modified")
        .await?;
    let added = mesh.gateway.stat("listener_manager.listener_added").await?;
    mesh.env
        .write_config("gateway.yaml", &config(&tls_secret("shop-cert", &second)?))?;
    let wanted = second.cert_der()?;
    capstan_e2e::wait_until(
        "the new certificate on a new connection",
        CONFIG_TIMEOUT,
        async || {
            let served = served_certificate(&client, addr, "shop.example.com").await?;
            ensure!(served == wanted, "still the previous certificate");
            Ok(())
        },
    )
    .await?;
    let reply = https_get(&client, addr, "shop.example.com", "/reviews/1")
        .await?
        .upstream_reply()?;
    ensure!(
        reply.version == "v2",
        "after the rotation HTTPS reached {reply:?}"
    );
    ensure!(
        mesh.gateway
            .stat("listener_manager.listener_modified")
            .await?
            == modified
            && mesh.gateway.stat("listener_manager.listener_added").await? == added,
        "the listener changed with the certificate"
    );
    mesh.gateway.ensure_no_rejected_updates().await
}

/// MUTUAL with `credentialName`: the server's certificate from the Secret (Istio's generic
/// `cert`/`key` form), the CA for client certificates from `<credentialName>-cacert`. A client
/// with a certificate from that CA gets through; one without, or with another CA's, does not.
/// The gateway speaks Delta ADS here (the other test, state of the world), subscribing to
/// the two Secrets by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_the_client_ca_and_crl_from_the_cacert_secret() -> anyhow::Result<()> {
    let ShopPki {
        ca,
        server,
        clients,
        client_cert,
        stranger,
        ..
    } = &ShopPki::new()?;
    let revoked = clients.client("revoked", "spiffe://example.com/ns/shop/sa/buyer")?;
    let crl = clients.crl("clients-crl", &[&revoked])?;
    let port = gateway_port();
    let yaml = [
        credential_gateway(&[(port, "{mode: MUTUAL, credentialName: shop-mtls}")]),
        shop("v2"),
        generic_secret("shop-mtls", &[("cert", &server.cert), ("key", &server.key)])?,
        generic_secret(
            "shop-mtls-cacert",
            &[("cacert", &clients.cert_path), ("ca.crl", &crl)],
        )?,
    ]
    .join("---\n");
    let mesh = GatewayMesh::start_with(
        "mutual_tls_takes_the_client_ca_and_crl_from_the_cacert_secret",
        Path::new(UPSTREAM_BIN),
        &yaml,
        AdsMode::Delta,
    )
    .await?;
    let addr = mesh.listening(port).await?;

    let with_cert = connector(&ca.cert_pem, Some(client_cert))?;
    let reply = wait_https_reply(
        &with_cert,
        addr,
        "shop.example.com",
        "/reviews/1",
        "mutual TLS with a client certificate",
    )
    .await?;
    ensure!(reply.version == "v2", "mutual TLS reached {reply:?}");
    ensure!(
        served_certificate(&with_cert, addr, "shop.example.com").await? == server.cert_der()?,
        "the gateway does not present the Secret's certificate"
    );

    ensure_https_refused(
        &connector(&ca.cert_pem, None)?,
        addr,
        "shop.example.com",
        "/reviews/1",
        "a client without a certificate",
    )
    .await?;
    let foreign_cert = stranger.client("foreign", "spiffe://example.com/ns/x/sa/y")?;
    ensure_https_refused(
        &connector(&ca.cert_pem, Some(&foreign_cert))?,
        addr,
        "shop.example.com",
        "/reviews/1",
        "a client certificate from another CA",
    )
    .await?;
    // The CA's Secret also holds its revocation list (`ca.crl`).
    ensure_https_refused(
        &connector(&ca.cert_pem, Some(&revoked))?,
        addr,
        "shop.example.com",
        "/reviews/1",
        "a client certificate the ca.crl revokes",
    )
    .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}

/// MUTUAL with `caCertCredentialName`: the CA for client certificates is the Secret it
/// names, not `<credentialName>-cacert` (here holding another CA, to tell them apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_the_client_ca_from_the_secret_ca_cert_credential_name_names()
-> anyhow::Result<()> {
    let pki = ShopPki::new()?;
    let ShopPki {
        server,
        clients,
        client_cert,
        stranger,
        ..
    } = &pki;
    let port = gateway_port();
    let yaml = [
        credential_gateway(&[(
            port,
            "{mode: MUTUAL, credentialName: shop-mtls, caCertCredentialName: client-roots}",
        )]),
        shop("v2"),
        generic_secret("shop-mtls", &[("cert", &server.cert), ("key", &server.key)])?,
        generic_secret("client-roots", &[("cacert", &clients.cert_path)])?,
        generic_secret("shop-mtls-cacert", &[("cacert", &stranger.cert_path)])?,
    ]
    .join("---\n");
    let mesh = GatewayMesh::start(
        "mutual_tls_takes_the_client_ca_from_the_secret_ca_cert_credential_name_names",
        Path::new(UPSTREAM_BIN),
        &yaml,
    )
    .await?;
    let addr = mesh.listening(port).await?;
    let named = "a client certificate of the named CA";
    let reply = pki.shop_reply(addr, Some(client_cert), named).await?;
    ensure!(reply.version == "v2", "mutual TLS reached {reply:?}");
    let foreign_cert = stranger.client("foreign", "spiffe://example.com/ns/x/sa/y")?;
    let other = "a client certificate of the -cacert Secret's CA";
    pki.ensure_shop_refused(addr, Some(&foreign_cert), other)
        .await?;
    mesh.gateway.ensure_no_rejected_updates().await
}
