//! CUSTOM AuthorizationPolicies with real traffic: a real captured sidecar with a workload
//! identity (see `capstan_e2e::capture_identity`) puts what a CUSTOM rule matches to a real
//! external authorizer of the mesh config (`capstan run --mesh-config`), over Envoy's HTTP and
//! gRPC `ext_authz` protocols (`capstan_e2e::ext_authz`), and does what it answers. Every
//! request is also asked of `capstan explain`, told what the authorizer answered.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use capstan_e2e::capture::service_ip;
use capstan_e2e::capture_identity::{IdentityMesh, start_with_identity_and};
use capstan_e2e::capture_mesh::{entry_in, service_port};
use capstan_e2e::ext_authz::{ALLOW_HEADER, Authorizer};
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The mesh config naming both authorizers, as Istio users write it.
const MESH_CONFIG: &str = "extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: authz-http.bookinfo.svc.cluster.local
    port: 8000
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
- name: grpc-authz
  envoyExtAuthzGrpc:
    service: authz-grpc.bookinfo.svc.cluster.local
    port: 9000
";

/// The two authorizers, their services, and the mesh with the mesh config pointing at them.
struct Setup {
    mesh: IdentityMesh,
    http: Authorizer,
    grpc: Authorizer,
    mesh_config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(name: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let mesh_config = dir.path().join("mesh");
    std::fs::write(&mesh_config, MESH_CONFIG)?;
    let (http, grpc) = (Authorizer::http().await?, Authorizer::grpc().await?);
    let flag = mesh_config.display().to_string();
    let mesh = start_with_identity_and(
        name,
        Path::new(UPSTREAM_BIN),
        "bookinfo",
        "reviews",
        &["--mesh-config", &flag],
    )
    .await?;
    for (name, vip, protocol, port) in [
        ("authz-http", 30, "HTTP", http.addr.port()),
        ("authz-grpc", 31, "GRPC", grpc.addr.port()),
    ] {
        let listen = if name == "authz-http" { 8000 } else { 9000 };
        let endpoint = format!(
            "{{address: 127.0.0.1, ports: {{{}: {port}}}}}",
            protocol.to_lowercase()
        );
        mesh.mesh.env.write_config(
            &format!("{name}.yaml"),
            &entry_in(
                "bookinfo",
                name,
                vip,
                &service_port(listen, protocol),
                &endpoint,
            ),
        )?;
    }
    Ok(Setup {
        mesh,
        http,
        grpc,
        mesh_config,
        _dir: dir,
    })
}

fn custom(provider: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: bookinfo}}
spec:
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: {rules}
"
    )
}

/// The status the app gets for `GET path` to reviews through its sidecar (mutual TLS),
/// with the header the authorizers allow, or without.
async fn app_status(path: &str, allow_header: bool) -> anyhow::Result<u16> {
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let headers: &[(&str, &str)] = if allow_header { &[ALLOW_HEADER] } else { &[] };
    Ok(HttpClient::new(reviews)
        .get("reviews", path, headers)
        .await?
        .status
        .as_u16())
}

/// Waits until the app's `(path, with the allow header, status)` all hold, then has `capstan
/// explain` agree with each, told that the authorizer allows exactly the requests carrying
/// the header.
async fn wait_app(setup: &Setup, checks: &[(&str, bool, u16)]) -> anyhow::Result<()> {
    wait_until("the policy in force", CONFIG_TIMEOUT, async || {
        for (path, header, want) in checks {
            let got = app_status(path, *header).await?;
            ensure!(
                got == *want,
                "GET {path} (allow header: {header}): {got}, expected {want}"
            );
        }
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", setup.mesh.mesh.env.log_dir.display()))?;
    let mesh_config = setup.mesh_config.display().to_string();
    for (path, header, status) in checks {
        let answer = if *header { "allow" } else { "deny" };
        let args = [
            "--from",
            "bookinfo/reviews",
            "--source-ip",
            "10.244.1.7",
            "--to=reviews.bookinfo.svc.cluster.local:9080",
            "--path",
            path,
            "--mesh-config",
            &mesh_config,
            "--ext-authz",
            answer,
        ];
        capstan_e2e::explain::agrees(&setup.mesh.mesh.env.config_dir, &args, *status == 200)?;
    }
    Ok(())
}

/// Whether another pod's plain TCP to db (10.244.1.8, which the gRPC authorizer refuses) is
/// answered, and that `capstan explain` says the same, told the authorizer refuses it.
async fn other_pod_tcp_answered(setup: &Setup) -> anyhow::Result<bool> {
    let answered = setup.mesh.other_pod_tcp_to_db().await?.contains("\"db\"");
    let mesh_config = setup.mesh_config.display().to_string();
    let args = [
        "--from-outside",
        "bookinfo",
        "--source-ip",
        "10.244.1.8",
        "--to=db.bookinfo.svc.cluster.local:5432",
        "--mesh-config",
        &mesh_config,
        "--ext-authz",
        "deny",
    ];
    capstan_e2e::explain::agrees(&setup.mesh.mesh.env.config_dir, &args, answered)?;
    Ok(answered)
}

/// An HTTP authorizer: a request a CUSTOM rule matches (`/whoami`) is served only when the
/// authorizer allows it (it saw `GET /check/whoami`, its path prefix added); a request no rule
/// matches (`/ratings`) is served without asking; TCP is never asked (an HTTP authorizer
/// cannot check a connection). Removing the policy stops the asking, without restarting
/// Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_authorizer_decides_what_custom_rules_match() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = start("ext_authz_http").await?;
    let env = &setup.mesh.mesh.env;
    let pid = setup.mesh.mesh.envoy.pid();
    wait_app(&setup, &[("/whoami", false, 200)]).await?;
    env.write_config(
        "ext.yaml",
        &custom("http-authz", "[{to: [{operation: {paths: [/whoami]}}]}]"),
    )?;
    wait_app(
        &setup,
        &[
            ("/whoami", false, 403),
            ("/whoami", true, 200),
            ("/ratings", false, 200),
        ],
    )
    .await?;
    let asked = setup.http.take_asked();
    ensure!(
        asked.iter().any(|a| a == "GET /check/whoami"),
        "the authorizer was not asked about /whoami: {asked:?}"
    );
    ensure!(
        !asked.iter().any(|a| a.contains("/ratings")),
        "the authorizer was asked about /ratings, which no rule matches: {asked:?}"
    );
    ensure!(
        other_pod_tcp_answered(&setup).await?,
        "an HTTP authorizer refused a TCP connection"
    );
    ensure!(
        setup.grpc.take_asked().is_empty(),
        "the gRPC authorizer was asked"
    );

    std::fs::remove_file(env.config_dir.join("ext.yaml"))?;
    wait_app(&setup, &[("/whoami", false, 200)]).await?;
    ensure!(setup.mesh.mesh.envoy.pid() == pid, "the sidecar restarted");
    setup.mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// A gRPC authorizer checks HTTP requests and TCP connections alike: the app's request is
/// served with the header it allows and refused without; another pod's TCP connection to db,
/// from the address it refuses, is closed — and the authorizer was asked about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_authorizer_checks_requests_and_connections() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = start("ext_authz_grpc").await?;
    let env = &setup.mesh.mesh.env;
    ensure!(
        other_pod_tcp_answered_without_policy(&setup).await?,
        "TCP before any policy"
    );
    env.write_config("ext.yaml", &custom("grpc-authz", "[{}]"))?;
    wait_app(&setup, &[("/whoami", false, 403), ("/whoami", true, 200)]).await?;
    let asked = setup.grpc.take_asked();
    ensure!(
        asked.iter().any(|a| a == "GET /whoami"),
        "the gRPC authorizer was not asked about /whoami: {asked:?}"
    );
    ensure!(
        !other_pod_tcp_answered(&setup).await?,
        "the connection the authorizer refuses was answered"
    );
    let asked = setup.grpc.take_asked();
    ensure!(
        asked.iter().any(|a| a == "tcp 10.244.1.8"),
        "the gRPC authorizer was not asked about the connection: {asked:?}"
    );
    setup.mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// Before any policy: plain TCP is answered (checked through the same helper, which `capstan
/// explain` then agrees with whatever the authorizer would say, as no CUSTOM rule exists).
async fn other_pod_tcp_answered_without_policy(setup: &Setup) -> anyhow::Result<bool> {
    wait_until("db over TCP", CONFIG_TIMEOUT, async || {
        ensure!(other_pod_tcp_answered(setup).await?, "not answered");
        Ok(())
    })
    .await?;
    Ok(true)
}
