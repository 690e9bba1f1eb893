//! A mesh whose trust domain is not `cluster.local` (`capstan run --trust-domain`, or the mesh
//! config's `trustDomain`, which Helm's `trustDomain` value sets): identities are
//! `spiffe://example.org/...`, and what capstan sends expects them there, through a real
//! gateway Envoy with a real `capstan agent` and real mesh workloads:
//!
//! - the gateway's auto-mTLS cluster to a workload accepts the workload's certificate in the
//!   mesh's trust domain (before, it asked for `spiffe://cluster.local/...` and every
//!   handshake failed);
//! - an AuthorizationPolicy naming principals as Istio's docs write them
//!   (`cluster.local/ns/<ns>/sa/<sa>`, "this mesh") admits that account in the mesh's trust
//!   domain, and still no other account;
//! - a ServiceEntry's `subjectAltNames` say who its servers are: another identity there and
//!   the gateway refuses the workload's certificate.
//!
//! Logs: `<target>/debug/e2e-logs/<test name>/` (a short name: the agents' Unix sockets live
//! there). Runs in a network namespace of its own, as e2e/tests/gateway.rs does.

use std::path::Path;

use anyhow::ensure;
use capstan_ca::SpiffeId;
use capstan_e2e::agent::{Agent, AgentSpec, StaticEnvoy, server_bootstrap};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::loopback;
use capstan_e2e::gateway_mesh::{
    gateway_port, loopback_entry, start_gateway_with_agent_as, start_mesh_client, wait_for_service,
};
use capstan_e2e::http::HttpClient;
use capstan_e2e::locate::{capstan_bin, envoy_bin};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::upstreams::Upstreams;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

const TRUST_DOMAIN: &str = "example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_in_the_meshs_trust_domain_are_accepted_and_authorized() -> anyhow::Result<()> {
    capstan_e2e::netns::network_up()?;
    let env = TestEnv::new("trust_domain")?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("db", "v1")], &env.log_dir)
            .await?;
    let gateway_id = SpiffeId::new(TRUST_DOMAIN, "istio-system", "istio-ingressgateway");
    let db_id = SpiffeId::new(TRUST_DOMAIN, "shop", "db");
    let app_id = SpiffeId::new(TRUST_DOMAIN, "shop", "app");
    let intruder_id = SpiffeId::new(TRUST_DOMAIN, "shop", "intruder");
    let (http_port, tls_port) = (gateway_port(), gateway_port());
    let capstan = Capstan::start_folder_with(
        &env.config_dir,
        &["--trust-domain", TRUST_DOMAIN],
        &env.log_dir,
        "capstan",
    )
    .await?;
    let others = [
        ("db-token", db_id.clone()),
        ("app-token", app_id.clone()),
        ("intruder-token", intruder_id.clone()),
    ];
    let (gateway, _gateway_agent, ca) =
        start_gateway_with_agent_as(&env, &capstan, &gateway_id, &others).await?;

    // db's sidecar: mutual TLS as db, for the gateway only, to the plain-text upstream.
    let db_agent = Agent::start(
        &capstan_bin()?,
        &ca.target(),
        &env.log_dir,
        &AgentSpec::for_identity("db-agent", &db_id, "db-token"),
    )
    .await?;
    let db_sidecar = StaticEnvoy::start(
        &envoy_bin()?,
        &server_bootstrap(
            &db_agent.sds_socket,
            &gateway_id.to_string(),
            upstreams.port("db", "v1")?,
        ),
        &env.log_dir,
        "db-envoy",
    )
    .await?;
    let db_port = db_sidecar.wait_listener_port("mtls").await?;

    // `db_identity`: how the ServiceEntry says who db's servers are.
    let mesh = |db_identity: (&str, &str)| -> anyhow::Result<String> {
        let (entry_sans, endpoint_account) = db_identity;
        Ok(format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  subjectAltNames: [{entry_sans}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {db_port}}}, {endpoint_account}labels: {{security.istio.io/tlsMode: istio}}}}
---
{plain}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/edge]
  http:
  - route: [{{destination: {{host: db.shop.svc.cluster.local}}}}]
  tcp:
  - match: [{{port: {tls_port}}}]
    route: [{{destination: {{host: db-plain.shop.svc.cluster.local, port: {{number: 5432}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-app, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/app]}}}}]
    to: [{{operation: {{ports: ["{tls_port}"]}}}}]
  - to: [{{operation: {{ports: ["{http_port}"]}}}}]
"#,
            plain = loopback_entry(
                "db-plain",
                "db-plain.shop.svc.cluster.local",
                (5432, "TCP"),
                upstreams.port("db", "v1")?
            ),
        ))
    };
    env.write_config("mesh.yaml", &mesh(("", "serviceAccount: db, "))?)?;
    gateway
        .wait_listener_port(&format!("0.0.0.0_{tls_port}"), CONFIG_TIMEOUT)
        .await?;

    // The gateway's auto mTLS to db checks db's identity in the mesh's trust domain.
    let mut plain = HttpClient::new(loopback(http_port));
    wait_for_service(&mut plain, "db.example.com", "/q", "db").await?;
    let handshakes = gateway
        .stats(r"^cluster\.outbound\|80\|\|db\.shop\.svc\.cluster\.local\.ssl\.handshake$")
        .await?;
    ensure!(
        handshakes.values().sum::<u64>() > 0,
        "the gateway did not speak TLS to db: {handshakes:?}"
    );

    // `cluster.local/ns/shop/sa/app` names app in this mesh, whatever its trust domain.
    let gateway_san = gateway_id.to_string();
    let (_app_agent, _app_envoy, mut app) =
        start_mesh_client(&env, &ca, (&app_id, "app-token"), (&gateway_san, tls_port)).await?;
    wait_for_service(&mut app, "db.example.com", "/q", "db").await?;
    let (_intruder_agent, _intruder_envoy, mut intruder) = start_mesh_client(
        &env,
        &ca,
        (&intruder_id, "intruder-token"),
        (&gateway_san, tls_port),
    )
    .await?;
    let denied = gateway.stats(r"^.*rbac\.denied$").await?;
    let outcome = intruder.get("db.example.com", "/q", &[]).await;
    ensure!(
        outcome
            .as_ref()
            .map_or(true, |r| r.upstream_reply().is_err()),
        "intruder got through: {outcome:?}"
    );
    // Envoy may count the denial after the client has seen the connection close.
    let before: u64 = denied.values().sum();
    capstan_e2e::wait_until(
        "the gateway's RBAC denial counted",
        CONFIG_TIMEOUT,
        async || {
            let after: u64 = gateway.stats(r"^.*rbac\.denied$").await?.values().sum();
            ensure!(after > before, "denied {before} -> {after}");
            Ok(())
        },
    )
    .await?;

    // The ServiceEntry's `subjectAltNames` are who db's servers are: naming another account,
    // the gateway refuses db's certificate; naming db's, it is accepted again.
    let someone_else = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/someone-else");
    env.write_config("mesh.yaml", &mesh((&someone_else, ""))?)?;
    capstan_e2e::wait_until("db's certificate refused", CONFIG_TIMEOUT, async || {
        let response = plain.get("db.example.com", "/q", &[]).await?;
        ensure!(response.upstream_reply().is_err(), "still reached db");
        Ok(())
    })
    .await?;
    env.write_config("mesh.yaml", &mesh((&db_id.to_string(), ""))?)?;
    // Named by the entry: accepted again.
    wait_for_service(&mut plain, "db.example.com", "/q", "db").await?;
    drop(upstreams);
    gateway.ensure_no_rejected_updates().await
}
