//! capstan's TLS xDS port (istiod's 15012) with real Envoys: `capstan run --ca-dir DIR` keeps
//! its root in DIR; each test issues Envoy's client certificate from that same root (as the
//! agent will) and points Envoy at the TLS port. A proxy whose certificate matches its node is
//! served and routes traffic; one whose certificate names another namespace gets nothing.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_ca::{RootCa, SpiffeId};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, XdsTls, loopback};
use capstan_e2e::fixtures::reviews_vs_weighted;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, ReviewsMesh, TestEnv, start_reviews};
use capstan_e2e::ports::free_port;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const NO_HEADERS: &[(&str, &str)] = &[];
/// A name in capstan's serving certificate that Envoy asks for and checks.
const SERVER_NAME: &str = "capstan.e2e.svc";
const DAY: Duration = Duration::from_secs(86_400);

/// Writes a client certificate for `ns`/`sa` issued by the root in `ca_dir`, with that root,
/// into `dir`; returns Envoy's TLS settings for them.
fn client_files(ca_dir: &Path, dir: &Path, ns: &str, sa: &str) -> anyhow::Result<XdsTls> {
    // The root capstan generated at start: loaded, never replaced.
    let root = RootCa::load_or_generate(ca_dir, "cluster.local", DAY)?;
    let issued = root.issue(&SpiffeId::new("cluster.local", ns, sa), DAY)?;
    std::fs::create_dir_all(dir)?;
    let tls = XdsTls {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
        root_file: dir.join("root.pem"),
        sni: SERVER_NAME.to_string(),
    };
    std::fs::write(&tls.cert_file, &issued.certificate_pem)?;
    std::fs::write(&tls.key_file, &issued.private_key_pem)?;
    std::fs::write(&tls.root_file, root.root_pem())?;
    Ok(tls)
}

fn bootstrap(tls_port: u16, workload: &str, sa: &str, tls: XdsTls) -> Bootstrap {
    let mut bootstrap = Bootstrap::new(AdsMode::Sotw, tls_port);
    bootstrap.workload = workload.to_string();
    bootstrap.service_account = Some(sa.to_string());
    bootstrap.tls = Some(tls);
    bootstrap
}

async fn connected_state(envoy: &Envoy) -> anyhow::Result<u64> {
    let stats = envoy.stats("control_plane.connected_state").await?;
    stats
        .get("control_plane.connected_state")
        .copied()
        .with_context(|| format!("no control_plane.connected_state in {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_tls_is_served_and_a_certificate_for_another_namespace_gets_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::new("envoy_over_tls_is_served_and_a_certificate_for_another_namespace")?;
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let vs = reviews_vs_weighted(&[("v2", 100)]);
    let upstreams = start_reviews(&env, Path::new(UPSTREAM_BIN), &vs).await?;
    let certs = tempfile::tempdir()?;
    let ca_dir = certs.path().join("ca");
    let tls_port = free_port()?;
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let ca_dir_arg = ca_dir.display().to_string();
    let names = format!("{SERVER_NAME},localhost");
    let args = [
        "--ca-dir",
        &ca_dir_arg,
        "--xds-tls-addr",
        &tls_addr,
        "--xds-tls-dns-names",
        &names,
    ];
    let mut capstan =
        Capstan::start_folder_with(&env.config_dir, &args, &env.log_dir, "capstan").await?;
    capstan
        .process
        .wait_for_log("`xDS TLS server listening`", CONFIG_TIMEOUT, |l| {
            l.contains("xDS TLS server listening on")
        })
        .await?;

    // A proxy in namespace bookinfo whose certificate says payments: refused, never served.
    let wrong = client_files(&ca_dir, &certs.path().join("wrong"), "payments", "sleep")?;
    let intruder = Envoy::start(
        &envoy_bin,
        &bootstrap(tls_port, "intruder-0", "sleep", wrong),
        &env.log_dir,
        "envoy-intruder",
    )
    .await?;
    let refusal = capstan
        .process
        .wait_for_log("the refusal of envoy-intruder", CONFIG_TIMEOUT, |l| {
            l.contains("proxy refused") && l.contains("intruder-0")
        })
        .await?;
    ensure!(
        refusal.contains("payments") && refusal.contains("bookinfo"),
        "the refusal names neither both namespaces: {refusal}"
    );

    // A proxy whose certificate matches its node: served over TLS, routes real traffic.
    let right = client_files(&ca_dir, &certs.path().join("right"), "bookinfo", "sleep")?;
    let envoy = Envoy::start(
        &envoy_bin,
        &bootstrap(tls_port, "sleep-0", "sleep", right),
        &env.log_dir,
        "envoy",
    )
    .await?;
    let port = envoy
        .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    ensure!(
        connected_state(&envoy).await? == 1,
        "Envoy is not connected"
    );
    let mut mesh = ReviewsMesh {
        proxy: HttpClient::new(loopback(port)),
        envoy,
        capstan,
        upstreams,
        env,
    };
    mesh.wait_for_all(NO_HEADERS, "v2", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await?;

    // By now the intruder has retried for as long as the good Envoy took to be served, and
    // still holds nothing. (Not `connected_state`: Envoy sets it to 1 when it opens each
    // retried stream, before capstan has read the request it refuses.)
    let served = mesh.envoy.accepted_updates().await?;
    ensure!(
        served.values().all(|n| *n > 0),
        "the served Envoy's counters miss its updates: {served:?}"
    );
    let accepted = intruder.accepted_updates().await?;
    ensure!(
        accepted.values().all(|n| *n == 0),
        "the intruder accepted updates: {accepted:?}"
    );
    ensure!(
        intruder.listener_port(OUTBOUND_LISTENER).await.is_err(),
        "the intruder was given listeners"
    );
    let dump = intruder.config_dump(false).await?.to_string();
    ensure!(
        !dump.contains("outbound|9080"),
        "the intruder holds the mesh's clusters"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_xds_beyond_loopback_is_refused_naming_the_flag() -> anyhow::Result<()> {
    let env = TestEnv::new("plaintext_xds_beyond_loopback_is_refused_naming_the_flag")?;
    let bin = capstan_e2e::locate::capstan_bin()?;
    let command = |insecure: bool| -> anyhow::Result<Command> {
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--config-dir")
            .arg(&env.config_dir)
            .args(["--xds-addr", &format!("0.0.0.0:{}", free_port()?)])
            .args(["--monitoring-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--xds-tls-addr", "off", "--outbound-port", "0"]);
        if insecure {
            cmd.arg("--xds-plaintext-insecure");
        }
        Ok(cmd)
    };
    let mut refused = Capstan::spawn(command(false)?, &env.log_dir, "capstan-refused")?;
    let status = wait_until("capstan to exit", CONFIG_TIMEOUT, async || {
        refused
            .exit_status()
            .context("still running: a non-loopback plaintext bind was accepted")
    })
    .await?;
    ensure!(!status.success(), "capstan exited with {status}");
    let log = refused.log();
    ensure!(
        log.contains("--xds-plaintext-insecure") && log.contains("0.0.0.0"),
        "the error names neither the flag nor the address:\n{log}"
    );

    // With the flag, the same bind serves.
    let mut allowed = Capstan::spawn(command(true)?, &env.log_dir, "capstan-insecure")?;
    Capstan::wait_listening(&mut allowed).await?;
    Ok(())
}
