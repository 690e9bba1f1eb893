//! AuthorizationPolicy with real traffic through a real captured sidecar that has a workload
//! identity (see `capstan_e2e::capture_identity`). The workload's app calls its own services
//! through the capture over auto mTLS, so its requests arrive at its sidecar's inbound side
//! with its own SPIFFE id as the peer (`spiffe://cluster.local/ns/bookinfo/sa/reviews`);
//! another pod without a sidecar (10.244.1.8) sends plain text, with no identity.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture::service_ip;
use capstan_e2e::capture_identity::{IdentityMesh, start_with_identity};
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(name: &str) -> anyhow::Result<IdentityMesh> {
    start_with_identity(name, Path::new(UPSTREAM_BIN), "bookinfo", "reviews").await
}

fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: bookinfo}}
spec:
{body}"
    )
}

/// The status the app gets for `GET path` to reviews through its sidecar (mutual TLS).
async fn app_status(path: &str) -> anyhow::Result<u16> {
    let reviews = SocketAddr::from((service_ip(10), 9080));
    Ok(HttpClient::new(reviews)
        .get("reviews", path, &[])
        .await?
        .status
        .as_u16())
}

/// The status another pod (plain text, no identity) gets for `GET path` to reviews.
async fn other_pod_status(mesh: &IdentityMesh, path: &str) -> anyhow::Result<u16> {
    let mut client = mesh.capture.another_pod_client(mesh.workload_port(9080));
    Ok(client.get("reviews", path, &[]).await?.status.as_u16())
}

/// Whether another pod's plain TCP to db is answered (else the sidecar closed it).
async fn other_pod_tcp_answered(mesh: &IdentityMesh) -> anyhow::Result<bool> {
    Ok(mesh.other_pod_tcp_to_db().await?.contains("\"db\""))
}

/// Waits until each of `checks` (what, status) holds, then has `capstan explain` say the same
/// of each request (200 allowed, 403 denied).
async fn wait_statuses(
    mesh: &IdentityMesh,
    app: &[(&str, u16)],
    other_pod: &[(&str, u16)],
) -> anyhow::Result<()> {
    wait_until("the policy in force", CONFIG_TIMEOUT, async || {
        for (path, want) in app {
            let got = app_status(path).await?;
            ensure!(got == *want, "the app's GET {path}: {got}, expected {want}");
        }
        for (path, want) in other_pod {
            let got = other_pod_status(mesh, path).await?;
            ensure!(
                got == *want,
                "another pod's GET {path}: {got}, expected {want}"
            );
        }
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", mesh.mesh.env.log_dir.display()))?;
    let config = &mesh.mesh.env.config_dir;
    for (caller, checks) in [(APP, app), (OTHER_POD, other_pod)] {
        for (path, status) in checks {
            let args: Vec<&str> = caller
                .iter()
                .copied()
                .chain([REVIEWS, "--path", path])
                .collect();
            capstan_e2e::explain::agrees(config, &args, *status == 200)?;
        }
    }
    Ok(())
}

/// `capstan explain` callers: the workload's app through its own sidecar, and another pod.
const APP: [&str; 4] = ["--from", "bookinfo/reviews", "--source-ip", "10.244.1.7"];
const OTHER_POD: [&str; 4] = ["--from-outside", "bookinfo", "--source-ip", "10.244.1.8"];
const REVIEWS: &str = "--to=reviews.bookinfo.svc.cluster.local:9080";
const DB: &str = "--to=db.bookinfo.svc.cluster.local:5432";

/// Whether another pod's TCP to db is answered, and that `capstan explain` says so too.
async fn other_pod_tcp_explained(mesh: &IdentityMesh) -> anyhow::Result<bool> {
    let answered = other_pod_tcp_answered(mesh).await?;
    let args: Vec<&str> = OTHER_POD.iter().copied().chain([DB]).collect();
    capstan_e2e::explain::agrees(&mesh.mesh.env.config_dir, &args, answered)?;
    Ok(answered)
}

/// Istio's "deny all, then allow one thing" pattern: `spec: {}` in the namespace refuses
/// every request (403) and every TCP connection to the workload; an ALLOW for the workload's
/// own principal, GET and `/whoami` then opens exactly that: the app's (mutual TLS, that
/// principal) `GET /whoami` is served, its `GET /ratings` and another pod's `GET /whoami`
/// (no principal) stay refused, and so does TCP (an HTTP rule cannot allow TCP). Edits apply
/// without restarting Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_all_then_one_allow_opens_one_path_for_one_principal() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("authorization_deny_all").await?;
    let env = &mesh.mesh.env;
    let pid = mesh.mesh.envoy.pid();
    wait_statuses(&mesh, &[("/whoami", 200)], &[("/whoami", 200)]).await?;
    ensure!(
        other_pod_tcp_explained(&mesh).await?,
        "TCP before any policy"
    );

    env.write_config("deny-all.yaml", &policy("deny-all", "  {}\n"))?;
    wait_statuses(&mesh, &[("/whoami", 403)], &[("/whoami", 403)]).await?;
    ensure!(
        !other_pod_tcp_explained(&mesh).await?,
        "deny-all let TCP through"
    );

    env.write_config(
        "allow-whoami.yaml",
        &policy(
            "allow-whoami",
            "  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/reviews]}}]
    to: [{operation: {methods: [GET], paths: [/whoami]}}]
",
        ),
    )?;
    wait_statuses(
        &mesh,
        &[("/whoami", 200), ("/ratings", 403)],
        &[("/whoami", 403)],
    )
    .await?;
    ensure!(
        !other_pod_tcp_explained(&mesh).await?,
        "an HTTP-only rule allowed TCP"
    );
    ensure!(mesh.mesh.envoy.pid() == pid, "the sidecar restarted");
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// DENY beats ALLOW, and `ipBlocks` is the connection's source: with everything allowed, a
/// DENY for another pod's address refuses it and not the app (whose sidecar connects from the
/// workload's own address), and a DENY for `/admin*` refuses the app there while `/whoami`
/// is still served; with the DENY policy gone, everyone is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_beats_allow_and_ip_blocks_match_the_source() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("authorization_deny").await?;
    let env = &mesh.mesh.env;
    env.write_config(
        "allow-all.yaml",
        &policy("allow-all", "  action: ALLOW\n  rules: [{}]\n"),
    )?;
    let deny = policy(
        "deny",
        "  action: DENY
  rules:
  - from: [{source: {ipBlocks: [10.244.1.8/32]}}]
  - to: [{operation: {paths: [/admin*]}}]
",
    );
    env.write_config("deny.yaml", &deny)?;
    wait_statuses(
        &mesh,
        &[("/whoami", 200), ("/admin/users", 403)],
        &[("/whoami", 403)],
    )
    .await?;
    ensure!(
        !other_pod_tcp_explained(&mesh).await?,
        "the address DENY let another pod's TCP through"
    );

    std::fs::remove_file(env.config_dir.join("deny.yaml"))?;
    nothing_denied(&mesh, "after the DENY went").await?;

    // The same DENY in dry run (`istio.io/dry-run`): evaluated and counted by Envoy as a
    // shadow denial, never enforced, as istiod's.
    env.write_config("deny.yaml", &dry_run(&deny))?;
    wait_until("the dry-run DENY to count", CONFIG_TIMEOUT, async || {
        let status = app_status("/admin/users").await?;
        ensure!(
            status == 200,
            "the dry-run DENY refused /admin/users: {status}"
        );
        let denied = shadow_denied(&mesh).await?;
        ensure!(denied > 0, "no shadow denial counted yet");
        Ok(())
    })
    .await
    .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    nothing_denied(&mesh, "with the DENY in dry run").await?;
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// Waits until the ALLOW-all policy alone decides: every request served, another pod's TCP
/// answered (`when` says in which state of the test).
async fn nothing_denied(mesh: &IdentityMesh, when: &str) -> anyhow::Result<()> {
    wait_statuses(
        mesh,
        &[("/whoami", 200), ("/admin/users", 200)],
        &[("/whoami", 200)],
    )
    .await
    .with_context(|| format!("requests {when}"))?;
    ensure!(
        other_pod_tcp_explained(mesh).await?,
        "another pod's TCP refused {when}"
    );
    Ok(())
}

/// `policy` annotated as a dry run.
fn dry_run(policy: &str) -> String {
    policy.replace(
        "namespace: bookinfo}",
        "namespace: bookinfo, annotations: {istio.io/dry-run: \"true\"}}",
    )
}

/// How many requests the sidecar's dry-run DENY rules would have refused.
async fn shadow_denied(mesh: &IdentityMesh) -> anyhow::Result<u64> {
    let stats = mesh
        .mesh
        .envoy
        .stats(r"\.rbac\.istio_dry_run_deny_\.shadow_denied$")
        .await?;
    Ok(stats.values().sum())
}

/// The app's `GET path` to reviews with `token` as `Authorization: Bearer` (none: no header).
async fn app_status_with(path: &str, token: Option<&str>) -> anyhow::Result<u16> {
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    Ok(HttpClient::new(reviews)
        .get("reviews", path, &headers)
        .await?
        .status
        .as_u16())
}

/// Istio's "require a JWT for a path": a RequestAuthentication for one issuer (its keys
/// inline) and an AuthorizationPolicy allowing `/private*` to requests with a principal of
/// that issuer and everything else to anyone. Through the workload's real sidecar:
/// - a valid token reaches `/private` (200);
/// - an expired token, a token of an issuer the rule does not name, and a token of the right
///   issuer signed with another key are refused by the JWT filter (401), on any path;
/// - no token is let through the JWT filter but refused `/private` by RBAC (403), and
///   served elsewhere (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_required_for_one_path_and_checked_everywhere() -> anyhow::Result<()> {
    use capstan_e2e::jwt::{Issuer, now};
    let _serial = SERIAL.lock().await;
    let mesh = start("authorization_jwt").await?;
    let env = &mesh.mesh.env;
    let issuer = Issuer::new("https://issuer.bookinfo.example")?;
    let impostor = Issuer::new("https://issuer.bookinfo.example")?;
    let stranger = Issuer::new("https://stranger.example")?;
    env.write_config(
        "jwt.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {}
    jwks: '{}'
---
{}",
            issuer.issuer,
            issuer.jwks(),
            policy(
                "require-jwt",
                "  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ['https://issuer.bookinfo.example/*']}}]
    to: [{operation: {paths: ['/private*']}}]
  - to: [{operation: {notPaths: ['/private*']}}]
"
            )
        ),
    )?;
    let valid = issuer.token("alice", now() + 3600)?;
    let logs = || format!("logs in {}", env.log_dir.display());
    wait_until("the JWT rules in force", CONFIG_TIMEOUT, async || {
        let missing = app_status_with("/private", None).await?;
        ensure!(missing == 403, "no token on /private: {missing}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    let cases = [
        ("/private", Some(valid.clone()), 200, "a valid token"),
        ("/whoami", None, 200, "no token elsewhere"),
        (
            "/private",
            Some(issuer.token("alice", now() - 120)?),
            401,
            "an expired token",
        ),
        (
            "/whoami",
            Some(stranger.token("alice", now() + 3600)?),
            401,
            "another issuer's token",
        ),
        (
            "/private",
            Some(impostor.token("alice", now() + 3600)?),
            401,
            "the issuer's name signed with another key",
        ),
    ];
    for (path, token, want, what) in cases {
        let got = app_status_with(path, token.as_deref()).await?;
        ensure!(got == want, "{what} on {path}: {got}, expected {want}");
    }
    // capstan explain, for the tokens it models (a valid one, or none).
    let config = &env.config_dir;
    let with_token = ["--jwt-issuer", &issuer.issuer, "--jwt-subject", "alice"];
    for (path, token, allowed) in [
        ("/private", true, true),
        ("/whoami", false, true),
        ("/private", false, false),
    ] {
        let mut args: Vec<&str> = APP
            .iter()
            .copied()
            .chain([REVIEWS, "--path", path])
            .collect();
        if token {
            args.extend(with_token);
        }
        capstan_e2e::explain::agrees(config, &args, allowed)?;
    }
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}
