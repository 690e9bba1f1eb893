//! PeerAuthentication and auto mTLS with real traffic through a real captured sidecar that
//! has a workload identity (see `capstan_e2e::capture_identity`: an in-test CA, a real
//! `capstan agent`, the sidecar's `sds-grpc`). The workload's app calls its own services
//! through the capture, so its sidecar is both the client (auto mTLS out of
//! `virtualOutbound`) and the server (`virtualInbound`); a pod without a sidecar is played by
//! plain-text connections the capture delivers into `virtualInbound` from another address.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use capstan_ca::SpiffeId;
use capstan_e2e::capture::service_ip;
use capstan_e2e::capture_identity::{IdentityMesh, start_with_identity, start_with_identity_and};
use capstan_e2e::capture_mesh::call;
use capstan_e2e::http::{HttpClient, HttpResponse, REQUEST_TIMEOUT, UpstreamReply};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::tls_pki::{Issued, connector_any_name_with_alpn};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connections `virtualInbound` closed because no filter chain takes them.
const NO_CHAIN: &str = "listener.0.0.0.0_15006.no_filter_chain_match";

/// The workload (its endpoints' labels: `app: reviews`, `security.istio.io/tlsMode: istio`)
/// runs as `spiffe://cluster.local/ns/bookinfo/sa/reviews`.
async fn start(name: &str) -> anyhow::Result<IdentityMesh> {
    start_with_identity(name, Path::new(UPSTREAM_BIN), "bookinfo", "reviews").await
}

fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: bookinfo}}
spec:
{body}"
    )
}

const STRICT: &str = "  mtls: {mode: STRICT}\n";
/// The workload's port 5432 (db) in plain text, the rest as the namespace says.
const DB_PLAIN: &str = "  selector: {matchLabels: {app: reviews}}
  portLevelMtls:
    \"5432\": {mode: DISABLE}
";

/// `capstan explain` callers and destinations: the workload's app through its own sidecar,
/// another pod without one.
const APP: &[&str] = &["--from", "bookinfo/reviews", "--source-ip", "10.244.1.7"];
const OTHER_POD: &[&str] = &["--from-outside", "bookinfo", "--source-ip", "10.244.1.8"];
const REVIEWS: &str = "--to=reviews.bookinfo.svc.cluster.local:9080";
const DB: &str = "--to=db.bookinfo.svc.cluster.local:5432";

/// Fails unless `capstan explain` decides as the Envoys just did.
fn explained(
    env: &capstan_e2e::mesh::TestEnv,
    caller: &[&str],
    to: &str,
    allowed: bool,
) -> anyhow::Result<()> {
    let args: Vec<&str> = caller.iter().copied().chain([to]).collect();
    capstan_e2e::explain::agrees(&env.config_dir, &args, allowed)
}

fn reviews_vip() -> SocketAddr {
    SocketAddr::from((service_ip(10), 9080))
}

fn db_vip() -> SocketAddr {
    SocketAddr::from((service_ip(20), 5432))
}

/// The app calling reviews through the capture; fails unless the workload's side saw the
/// caller's certificate: `x-forwarded-client-cert` naming the caller (`URI`) and itself
/// (`By`), both the workload's own identity here.
async fn call_over_mutual_tls(mesh: &IdentityMesh) -> anyhow::Result<UpstreamReply> {
    let reply = call(reviews_vip(), "reviews").await?;
    let id = mesh.spiffe_id();
    let xfcc = reply
        .headers
        .get("x-forwarded-client-cert")
        .with_context(|| format!("no x-forwarded-client-cert reached the app: {reply:?}"))?;
    ensure!(
        xfcc.contains(&format!("URI={id}")) && xfcc.contains(&format!("By={id}")),
        "x-forwarded-client-cert {xfcc:?} does not name {id}"
    );
    Ok(reply)
}

/// Plain HTTP from another pod (no sidecar) to reviews at the workload's address.
async fn plain_http(mesh: &IdentityMesh) -> anyhow::Result<UpstreamReply> {
    let mut client = mesh.capture.another_pod_client(mesh.workload_port(9080));
    let response = client.get("reviews", "/whoami", &[]).await?;
    ensure!(
        response.status.is_success(),
        "plain HTTP from another pod: {}",
        response.status
    );
    let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
    ensure!(
        !reply.headers.contains_key("x-forwarded-client-cert"),
        "a plain-text caller was given a certificate: {reply:?}"
    );
    Ok(reply)
}

/// Waits until plain HTTP from another pod is refused: the connection closed by
/// `virtualInbound` for want of a filter chain taking plain text.
async fn wait_plain_http_refused(mesh: &IdentityMesh) -> anyhow::Result<()> {
    let envoy = &mesh.mesh.envoy;
    wait_until("plain HTTP refused", CONFIG_TIMEOUT, async || {
        let before = envoy.stat(NO_CHAIN).await?;
        match plain_http(mesh).await {
            Ok(reply) => bail!("still served: {reply:?}"),
            Err(_) => {
                let after = envoy.stat(NO_CHAIN).await?;
                ensure!(after > before, "refused, but not by the inbound listener");
                Ok(())
            }
        }
    })
    .await
}

/// Istio's default and its two modes, as a workload's clients see them:
/// - PERMISSIVE (no policy): the app's call through its sidecar goes over mutual TLS (auto
///   mTLS: the endpoint says it has a sidecar), and the app sees the caller's SPIFFE id in
///   `x-forwarded-client-cert`; another pod's plain text is served too;
/// - namespace STRICT: plain HTTP and TCP from another pod are closed by the sidecar, the
///   mesh's calls still served — without Envoy restarting;
/// - a workload policy DISABLEs port 5432: another pod's plain TCP reaches db again, and the
///   app's own call to db (sent in plain text now: the endpoint no longer takes mutual TLS on
///   that port) is served, while HTTP on 9080 stays STRICT;
/// - an invalid version of that policy (`portLevelMtls` without a selector) is refused and
///   the last good one kept;
/// - both policies deleted: plain text is served on every port again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plain_text_and_a_port_level_disable_opens_one_port() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("peer_authentication_modes").await?;
    let env = &mesh.mesh.env;
    let logs = || format!("logs in {}", env.log_dir.display());
    let envoy_pid = mesh.mesh.envoy.pid();

    wait_until("mutual TLS to reviews", CONFIG_TIMEOUT, async || {
        call_over_mutual_tls(&mesh).await
    })
    .await
    .with_context(logs)?;
    plain_http(&mesh).await.context("PERMISSIVE: plain HTTP")?;
    let answer = mesh.other_pod_tcp_to_db().await?;
    ensure!(
        answer.contains("\"db\""),
        "PERMISSIVE: plain TCP: {answer:?}"
    );

    env.write_config("strict.yaml", &policy("default", STRICT))?;
    wait_plain_http_refused(&mesh).await.with_context(logs)?;
    let answer = mesh.other_pod_tcp_to_db().await?;
    ensure!(answer.is_empty(), "STRICT: plain TCP answered {answer:?}");
    call_over_mutual_tls(&mesh)
        .await
        .context("STRICT: the mesh")?;
    explained(env, OTHER_POD, REVIEWS, false)?;
    explained(env, OTHER_POD, DB, false)?;
    explained(env, APP, REVIEWS, true)?;

    env.write_config("db-plain.yaml", &policy("db-plain", DB_PLAIN))?;
    let answer = wait_until("plain TCP to db", CONFIG_TIMEOUT, async || {
        let answer = mesh.other_pod_tcp_to_db().await?;
        ensure!(answer.contains("\"db\""), "{answer:?}");
        Ok(answer)
    })
    .await
    .with_context(logs)?;
    ensure!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let reply = call(db_vip(), "db").await.context("the app to db")?;
    ensure!(reply.service == "db", "{reply:?}");
    explained(env, OTHER_POD, DB, true)?;
    explained(env, APP, DB, true)?;
    explained(env, OTHER_POD, REVIEWS, false)?;
    ensure!(
        plain_http(&mesh).await.is_err(),
        "port 9080 stopped being STRICT"
    );

    let invalid = "  portLevelMtls:\n    \"5432\": {mode: STRICT}\n";
    env.write_config("db-plain.yaml", &policy("db-plain", invalid))?;
    wait_until("the invalid policy refused", CONFIG_TIMEOUT, async || {
        let refused = mesh
            .mesh
            .capstan
            .process
            .log_lines(|l| l.contains("db-plain") && l.contains("portLevelMtls"));
        ensure!(!refused.is_empty(), "capstan logged no refusal");
        Ok(())
    })
    .await
    .with_context(logs)?;
    let answer = mesh.other_pod_tcp_to_db().await?;
    ensure!(
        answer.contains("\"db\""),
        "the last good policy was not kept: plain TCP answered {answer:?}"
    );

    for file in ["db-plain.yaml", "strict.yaml"] {
        std::fs::remove_file(env.config_dir.join(file))?;
    }
    wait_until("plain HTTP served again", CONFIG_TIMEOUT, async || {
        plain_http(&mesh).await
    })
    .await
    .with_context(logs)?;
    call_over_mutual_tls(&mesh).await?;
    explained(env, OTHER_POD, REVIEWS, true)?;
    ensure!(mesh.mesh.envoy.pid() == envoy_pid, "the sidecar restarted");
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// Plain HTTP from another pod to the workload's port 7777, which no service declares.
async fn undeclared_port(mesh: &IdentityMesh) -> anyhow::Result<HttpResponse> {
    let mut client = mesh.capture.another_pod_client(mesh.workload_port(7777));
    client.get("undeclared", "/whoami", &[]).await
}

/// As istiod's passthrough chains, a connection to a port no service declares is held to the
/// workload's mode and behind its AuthorizationPolicies:
/// - PERMISSIVE: another pod's plain HTTP to the app on 7777 is served;
/// - namespace STRICT: it is closed by `virtualInbound`;
/// - a workload policy DISABLEs 7777 alone: served again, while 9080 stays STRICT;
/// - those gone, a DENY policy for the workload: a 403 from its sidecar on 7777.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_no_service_declares_are_held_to_the_workloads_policies() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("passthrough_policies").await?;
    let env = &mesh.mesh.env;
    let logs = || format!("logs in {}", env.log_dir.display());
    let app = mesh.workload_port(7777);
    let _undeclared = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("undeclared", "v1", app)],
        &env.log_dir,
        "undeclared",
    )
    .await?;
    let served = async || -> anyhow::Result<()> {
        let response = undeclared_port(&mesh).await?;
        ensure!(response.status.is_success(), "{}", response.status);
        let reply = response.upstream_reply()?;
        ensure!(reply.service == "undeclared", "{reply:?}");
        Ok(())
    };
    wait_until("mutual TLS to reviews", CONFIG_TIMEOUT, async || {
        call_over_mutual_tls(&mesh).await
    })
    .await
    .with_context(logs)?;
    served().await.context("PERMISSIVE: the undeclared port")?;

    env.write_config("strict.yaml", &policy("default", STRICT))?;
    let envoy = &mesh.mesh.envoy;
    wait_until(
        "STRICT: the undeclared port refused",
        CONFIG_TIMEOUT,
        async || {
            let before = envoy.stat(NO_CHAIN).await?;
            let outcome = undeclared_port(&mesh).await;
            ensure!(outcome.is_err(), "still served: {outcome:?}");
            ensure!(envoy.stat(NO_CHAIN).await? > before, "refused elsewhere");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    call_over_mutual_tls(&mesh)
        .await
        .context("STRICT: the mesh")?;

    let open_7777 = "  selector: {matchLabels: {app: reviews}}
  portLevelMtls:
    \"7777\": {mode: DISABLE}
";
    env.write_config("open-7777.yaml", &policy("open-7777", open_7777))?;
    wait_until("7777 DISABLEd", CONFIG_TIMEOUT, served)
        .await
        .with_context(logs)?;
    ensure!(
        plain_http(&mesh).await.is_err(),
        "9080 stopped being STRICT"
    );

    for file in ["open-7777.yaml", "strict.yaml"] {
        std::fs::remove_file(env.config_dir.join(file))?;
    }
    env.write_config(
        "deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-whoami, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{to: [{operation: {paths: [/whoami]}}]}]
",
    )?;
    wait_until("DENY on the undeclared port", CONFIG_TIMEOUT, async || {
        let response = undeclared_port(&mesh).await?;
        ensure!(response.status.as_u16() == 403, "{}", response.status);
        Ok(())
    })
    .await
    .with_context(logs)?;
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// A DestinationRule's TLS wins over auto mTLS: told `tls.mode: DISABLE`, the client sidecar
/// sends plain text, which the STRICT workload refuses (the app gets a 503); without the
/// rule, auto mTLS reaches it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_plain_text_by_its_destination_rule_is_refused_by_strict()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("peer_authentication_rule").await?;
    let env = &mesh.mesh.env;
    let logs = || format!("logs in {}", env.log_dir.display());
    env.write_config("strict.yaml", &policy("default", STRICT))?;
    wait_plain_http_refused(&mesh).await.with_context(logs)?;

    env.write_config(
        "plain-rule.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: DISABLE}}
",
    )?;
    wait_until(
        "the app refused by its own STRICT side",
        CONFIG_TIMEOUT,
        async || {
            let response = HttpClient::new(reviews_vip())
                .get("reviews", "/whoami", &[])
                .await?;
            ensure!(response.status == 503, "{}", response.status);
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    explained(env, APP, REVIEWS, false)?;

    std::fs::remove_file(env.config_dir.join("plain-rule.yaml"))?;
    wait_until("auto mTLS again", CONFIG_TIMEOUT, async || {
        call_over_mutual_tls(&mesh).await
    })
    .await
    .with_context(logs)?;
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// bookinfo's `Sidecar` listing port 9080 as an ingress listener (to where connections were
/// headed: the app at the workload's address).
const INGRESS_9080: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 9080, name: http, protocol: HTTP}
";

/// A workload whose `Sidecar` lists ingress listeners: the mesh's mutual TLS is terminated on
/// those ports (the app sees the caller's identity) and STRICT refuses plain text there, as
/// on its service ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_port_takes_mutual_tls_and_strict_refuses_plain_text()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh =
        start("a_sidecar_ingress_port_takes_mutual_tls_and_strict_refuses_plain_text").await?;
    let env = &mesh.mesh.env;
    let logs = || format!("logs in {}", env.log_dir.display());
    env.write_config("sidecar.yaml", INGRESS_9080)?;
    env.write_config("strict.yaml", &policy("default", STRICT))?;
    wait_plain_http_refused(&mesh).await.with_context(logs)?;
    let reply = wait_until(
        "mutual TLS to the ingress port",
        CONFIG_TIMEOUT,
        async || call_over_mutual_tls(&mesh).await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");
    let stats = mesh
        .mesh
        .envoy
        .stats("inbound|9080|http|passthrough")
        .await?;
    ensure!(
        stats
            .iter()
            .any(|(k, v)| k.ends_with("upstream_rq_total") && *v > 0),
        "not through the ingress listener's cluster: {stats:?}"
    );
    // db's 5432 is not among the Sidecar's ports: the passthrough takes it, STRICT too, as
    // istiod's: plain TCP is closed.
    let answer = mesh.other_pod_tcp_to_db().await?;
    ensure!(
        answer.is_empty(),
        "plain TCP to an unlisted port: {answer:?}"
    );
    explained(env, OTHER_POD, REVIEWS, false)?;
    explained(env, APP, REVIEWS, true)?;
    explained(env, OTHER_POD, DB, false)?;
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}

/// What the workload's sidecar answers `GET /whoami` from another pod over mutual TLS as
/// `client` (a certificate from the mesh's CA): the app's reply, or an error when the
/// handshake or the connection is refused.
async fn whoami_as(mesh: &IdentityMesh, client: &Issued) -> anyhow::Result<UpstreamReply> {
    let connector = connector_any_name_with_alpn(
        &mesh.ca.workload_root_pem,
        Some(client),
        &["istio-http/1.1"],
    )?;
    let tcp = mesh
        .capture
        .connect_from_another_pod(mesh.workload_port(9080))
        .await?;
    let mut tls = connector
        .connect(ServerName::try_from("reviews")?, tcp)
        .await
        .context("TLS handshake")?;
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, tls.read_to_end(&mut answer))
        .await
        .context("no answer in time")??;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(serde_json::from_str(body)?)
}

/// The inbound side's mutual TLS takes a client certificate only in the mesh's trust
/// domains, even from the mesh's own root: a workload of a mesh sharing the root with
/// another trust domain (`other.org`) is refused (Envoy counts a SAN mismatch), one of
/// `cluster.local` is served; with `other.org` among the mesh config's
/// `trustDomainAliases`, it is served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_outside_the_meshs_trust_domains_is_refused() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let ours = SpiffeId::new("cluster.local", "bookinfo", "ratings");
    let foreign = SpiffeId::new("other.org", "bookinfo", "ratings");
    let name = "a_client_certificate_outside_the_meshs_trust_domains_is_refused";
    {
        let mesh = start(name).await?;
        let env = &mesh.mesh.env;
        let logs = || format!("logs in {}", env.log_dir.display());
        let ours_cert = mesh.ca.issue(&env.log_dir, "ours", &ours)?;
        let foreign_cert = mesh.ca.issue(&env.log_dir, "foreign", &foreign)?;
        let reply = wait_until("mutual TLS as ours", CONFIG_TIMEOUT, async || {
            whoami_as(&mesh, &ours_cert).await
        })
        .await
        .with_context(logs)?;
        let xfcc = reply.headers.get("x-forwarded-client-cert");
        ensure!(
            xfcc.is_some_and(|x| x.contains(&format!("URI={ours}"))),
            "the app did not see {ours}: {reply:?}"
        );
        let san_failures = r"^listener\.0\.0\.0\.0_15006\.ssl\.fail_verify_san$";
        let before: u64 = mesh.mesh.envoy.stats(san_failures).await?.values().sum();
        let outcome = whoami_as(&mesh, &foreign_cert).await;
        ensure!(outcome.is_err(), "{foreign} was served: {outcome:?}");
        wait_until("the SAN mismatch counted", CONFIG_TIMEOUT, async || {
            let after: u64 = mesh.mesh.envoy.stats(san_failures).await?.values().sum();
            ensure!(after > before, "fail_verify_san {before} -> {after}");
            Ok(())
        })
        .await
        .with_context(logs)?;
    }
    let mesh_config = tempfile::NamedTempFile::new()?;
    std::fs::write(mesh_config.path(), "trustDomainAliases: [other.org]\n")?;
    let config_flag = mesh_config.path().to_string_lossy().into_owned();
    let mesh = start_with_identity_and(
        &format!("{name}_aliased"),
        Path::new(UPSTREAM_BIN),
        "bookinfo",
        "reviews",
        &["--mesh-config", &config_flag],
    )
    .await?;
    let env = &mesh.mesh.env;
    let foreign_cert = mesh.ca.issue(&env.log_dir, "foreign", &foreign)?;
    let reply = wait_until("mutual TLS as an alias's", CONFIG_TIMEOUT, async || {
        whoami_as(&mesh, &foreign_cert).await
    })
    .await
    .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    ensure!(reply.service == "reviews", "{reply:?}");
    mesh.mesh.envoy.ensure_no_rejected_updates().await
}
