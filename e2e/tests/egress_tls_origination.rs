//! Istio's egress gateway with mutual TLS origination, through real Envoys: a client's
//! sidecar sends plain HTTP for an external host to the egress gateway, and the gateway
//! originates mutual TLS to the external server with the client certificate and CA of the
//! Secret its DestinationRule names (`credentialName`), served by capstan over SDS. Logs:
//! `<target>/debug/e2e-logs/<test name>/`. Runs in a network namespace of its own, as
//! e2e/tests/gateway.rs does.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::gateway_mesh::{EgressPair, egress_gateway_service, start_egress_and_sidecar};
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::tls_pki::{Issued, TestCa};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const HOST: &str = "my-nginx.mesh-external.svc.cluster.local";

/// The mesh of Istio's "egress gateway TLS origination" task, with the external server on
/// `external_port` and the egress gateway listening on `egress_port`.
fn egress_mesh(external_port: u16, egress_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: originate-mtls-for-nginx, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {external_port}, https: {external_port}}}}}]
---
{egress_service}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {egress_port}, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-nginx-through-egress-gateway, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
  - match: [{{gateways: [istio-egressgateway], port: {egress_port}}}]
    route: [{{destination: {{host: {HOST}, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-nginx, namespace: istio-system}}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    portLevelSettings:
    - port: {{number: 443}}
      # A connection per request: a rotated certificate applies to new connections only.
      # (Port-level settings replace the rule's whole policy for the port, as with istiod.)
      connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
      tls:
        mode: MUTUAL
        credentialName: client-credential
        sni: {HOST}
"#,
        egress_service = egress_gateway_service(egress_port),
    )
}

/// Secret `client-credential` in istio-system (the egress gateway's namespace), Istio's
/// generic form: the client's certificate and key, and the CA of the server.
fn client_credential(client: &Issued, server_ca: &TestCa) -> anyhow::Result<String> {
    let mut out = "apiVersion: v1\nkind: Secret\n\
                   metadata: {name: client-credential, namespace: istio-system}\nstringData:\n"
        .to_string();
    let cert = std::fs::read_to_string(&client.cert).context("client certificate")?;
    let key = std::fs::read_to_string(&client.key).context("client key")?;
    for (entry, pem) in [
        ("cert", &cert),
        ("key", &key),
        ("cacert", &server_ca.cert_pem),
    ] {
        out.push_str(&format!("  {entry}: |\n"));
        for line in pem.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    Ok(out)
}

/// The external server requires a client certificate of its CA. Through the egress gateway,
/// a request reaches it with the Secret's certificate; a Secret holding a certificate of
/// another CA is served to the gateway without restarting anything, and the server refuses
/// it; the right one again, and requests pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_gateway_originates_mutual_tls_with_the_secrets_certificate()
-> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let name = "the_egress_gateway_originates_mutual_tls_with_the_secrets_certificate";
    let env = TestEnv::new(name)?;
    let pki = tempfile::tempdir()?;
    let external_ca = TestCa::new(pki.path(), "external")?;
    let server = external_ca.server("nginx", &[HOST])?;
    let client =
        external_ca.client("client", "spiffe://cluster.local/ns/istio-system/sa/egress")?;
    let rogue_ca = TestCa::new(pki.path(), "rogue")?;
    let rogue_client =
        rogue_ca.client("rogue", "spiffe://cluster.local/ns/istio-system/sa/egress")?;

    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let external = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[],
        &[("nginx", "v1", any)],
        Some(&UpstreamTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: Some(external_ca.cert_path.clone()),
        }),
        &env.log_dir,
        "external",
    )
    .await?;
    let egress_port = capstan_e2e::gateway_mesh::gateway_port();
    env.write_config(
        "egress.yaml",
        &egress_mesh(external.port("nginx", "v1")?, egress_port),
    )?;
    env.write_config("secret.yaml", &client_credential(&client, &external_ca)?)?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let EgressPair {
        egress,
        sidecar,
        outbound,
    } = start_egress_and_sidecar(&env, &capstan, AdsMode::Delta, egress_port).await?;
    let sidecar_addr = outbound;
    let get = async || HttpClient::new(sidecar_addr).get(HOST, "/mtls", &[]).await;

    let reply = wait_until(
        "a reply through the egress gateway",
        CONFIG_TIMEOUT,
        async || get().await?.upstream_reply(),
    )
    .await?;
    ensure!(
        (reply.service.as_str(), reply.path.as_str()) == ("nginx", "/mtls"),
        "{reply:?}"
    );
    let through_gateway =
        capstan_e2e::gateway_mesh::cluster_requests(&egress, &format!("outbound|443||{HOST}"))
            .await?;
    ensure!(
        through_gateway >= 1,
        "the gateway's TLS cluster carried no request"
    );

    // Another CA's certificate: the server refuses the handshake, Envoy answers 503.
    env.write_config(
        "secret.yaml",
        &client_credential(&rogue_client, &external_ca)?,
    )?;
    wait_until(
        "the rogue certificate refused",
        CONFIG_TIMEOUT,
        async || {
            let response = get().await?;
            ensure!(
                response.status == hyper::StatusCode::SERVICE_UNAVAILABLE,
                "{} {}",
                response.status,
                response.text().trim()
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        external.process.log().contains("refused"),
        "the server logged no refused handshake"
    );
    env.write_config("secret.yaml", &client_credential(&client, &external_ca)?)?;
    wait_until("the right certificate again", CONFIG_TIMEOUT, async || {
        get().await?.upstream_reply()
    })
    .await?;
    egress.ensure_no_rejected_updates().await?;
    sidecar.ensure_no_rejected_updates().await
}
