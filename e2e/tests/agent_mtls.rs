//! `capstan agent` end to end: real agents get certificates from a CA over TLS (an in-test
//! `IstioCertificateService` signing with a real `RootCa`; tokens map to identities through
//! a table), serve them over SDS to real Envoys with static bootstraps, and those Envoys talk
//! mutual TLS checking each other's SPIFFE identity. Logs:
//! `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstan_ca::SpiffeId;
use capstan_e2e::agent::{
    Agent, AgentSpec, StaticEnvoy, TestCa, client_bootstrap, server_bootstrap,
};
use capstan_e2e::http::HttpClient;
use capstan_e2e::locate::{capstan_bin, envoy_bin, fresh_log_dir};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const CLIENT_SAN: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER_SAN: &str = "spiffe://cluster.local/ns/b/sa/server";

fn client_id() -> SpiffeId {
    SpiffeId::new("cluster.local", "a", "client")
}

fn server_id() -> SpiffeId {
    SpiffeId::new("cluster.local", "b", "server")
}

fn spec<'a>(name: &'a str, id: &'a SpiffeId, token: &'a str, ttl: &'a str) -> AgentSpec<'a> {
    AgentSpec {
        name,
        trust_domain: &id.trust_domain,
        namespace: &id.namespace,
        service_account: &id.service_account,
        token,
        cert_ttl: ttl,
        extra_args: &[],
    }
}

/// An upstream, the server side (agent + Envoy requiring `a/client`) and its listener port.
struct ServerSide {
    _upstreams: Upstreams,
    agent: Agent,
    envoy: StaticEnvoy,
    port: u16,
}

async fn server_side(dir: &Path, ca: &TestCa, ttl: &str) -> anyhow::Result<ServerSide> {
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("web", "v1")], dir).await?;
    let id = server_id();
    let agent = Agent::start(
        &capstan_bin()?,
        &ca.target(),
        dir,
        &spec("server", &id, "server-token", ttl),
    )
    .await?;
    let bootstrap = server_bootstrap(&agent.sds_socket, CLIENT_SAN, upstreams.port("web", "v1")?);
    let envoy = StaticEnvoy::start(&envoy_bin()?, &bootstrap, dir, "server-envoy").await?;
    let port = envoy.wait_listener_port("mtls").await?;
    Ok(ServerSide {
        _upstreams: upstreams,
        agent,
        envoy,
        port,
    })
}

/// A client-side Envoy (plaintext in, mTLS out to the server) fed by `agent`.
async fn client_envoy(
    dir: &Path,
    agent: &Agent,
    server_port: u16,
    name: &str,
) -> anyhow::Result<(StaticEnvoy, HttpClient)> {
    let bootstrap = client_bootstrap(&agent.sds_socket, SERVER_SAN, server_port);
    let envoy = StaticEnvoy::start(&envoy_bin()?, &bootstrap, dir, name).await?;
    let port = envoy.wait_listener_port("plain").await?;
    Ok((envoy, HttpClient::new(([127, 0, 0, 1], port).into())))
}

async fn through(client: &mut HttpClient) -> anyhow::Result<()> {
    let reply = client.upstream("web", "/hello", &[]).await?;
    ensure!(
        reply.service == "web" && reply.path == "/hello",
        "reply from the wrong place: {reply:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_talk_mtls_with_agent_certificates_across_rotations() -> anyhow::Result<()> {
    let dir = fresh_log_dir("agent_mtls_rotation")?;
    // The CA grants 20 s: the agents renew about every 10 s.
    let ca = TestCa::start(
        &dir,
        "ca",
        &[("client-token", client_id()), ("server-token", server_id())],
        Duration::from_secs(20),
    )
    .await?;
    let server = server_side(&dir, &ca, "20s").await?;
    let id = client_id();
    let client_agent = Agent::start(
        &capstan_bin()?,
        &ca.target(),
        &dir,
        &spec("client", &id, "client-token", "20s"),
    )
    .await?;
    let (client_envoy, mut client) =
        client_envoy(&dir, &client_agent, server.port, "client-envoy").await?;

    wait_until(
        "a first request through both Envoys",
        Duration::from_secs(30),
        async || through(&mut client).await,
    )
    .await?;
    let server_first = server.envoy.presented_serials().await?;
    let client_first = client_envoy.presented_serials().await?;
    ensure!(
        server_first.len() == 1 && client_first.len() == 1,
        "each Envoy presents one certificate: server {server_first:?}, client {client_first:?}"
    );

    // Requests without pause across renewals; each takes a new connection to the server
    // Envoy (max_requests_per_connection 1), so each is a handshake with the certificates of
    // the moment. Not one may fail.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut ok, mut failed) = (0usize, Vec::new());
    let (mut server_now, mut client_now) = (server_first.clone(), client_first.clone());
    while server_now == server_first || client_now == client_first {
        ensure!(
            Instant::now() < deadline,
            "no rotation within 90 s: server {server_now:?}, client {client_now:?}; \
             {} and {} certificates served",
            server.agent.certificates_served(),
            client_agent.certificates_served()
        );
        for _ in 0..10 {
            match through(&mut client).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server_now = server.envoy.presented_serials().await?;
        client_now = client_envoy.presented_serials().await?;
    }
    // And some more on the renewed certificates.
    for _ in 0..20 {
        match through(&mut client).await {
            Ok(()) => ok += 1,
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    ensure!(
        server_now.len() == 1 && client_now.len() == 1,
        "after rotation each Envoy presents one certificate: {server_now:?} {client_now:?}"
    );
    ensure!(
        server.agent.certificates_served() >= 2 && client_agent.certificates_served() >= 2,
        "the agents logged no renewal"
    );
    let handshakes: u64 = server
        .envoy
        .stats(r"^listener\..*\.ssl\.handshake$")
        .await?
        .values()
        .sum();
    ensure!(
        handshakes >= ok as u64,
        "{ok} requests but only {handshakes} TLS handshakes at the server Envoy"
    );
    eprintln!(
        "{ok} requests, 0 failed, {handshakes} handshakes; server {server_first:?} -> {server_now:?}, \
         client {client_first:?} -> {client_now:?}; CA issued {}",
        ca.issued()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certified_by_another_root_is_refused() -> anyhow::Result<()> {
    let dir = fresh_log_dir("agent_mtls_other_root")?;
    let ca = TestCa::start(
        &dir,
        "ca",
        &[("client-token", client_id()), ("server-token", server_id())],
        Duration::from_secs(3600),
    )
    .await?;
    // Another CA certifying the very same identity. Its agent also trusts the mesh's root
    // (it is public), so its Envoy accepts the server and presents its own certificate: what
    // is refused is the client certificate, by the server.
    let rogue_ca = TestCa::start(
        &dir,
        "rogue-ca",
        &[("rogue-token", client_id())],
        Duration::from_secs(3600),
    )
    .await?;
    let rogue_roots = std::fs::read_to_string(&rogue_ca.roots_file)?;
    std::fs::write(
        &rogue_ca.roots_file,
        format!("{rogue_roots}{}", ca.workload_root_pem),
    )?;

    let server = server_side(&dir, &ca, "1h").await?;
    let bin = capstan_bin()?;
    let id = client_id();
    let good = Agent::start(
        &bin,
        &ca.target(),
        &dir,
        &spec("client", &id, "client-token", "1h"),
    )
    .await?;
    let rogue = Agent::start(
        &bin,
        &rogue_ca.target(),
        &dir,
        &spec("rogue", &id, "rogue-token", "1h"),
    )
    .await?;
    let (_good_envoy, mut good_client) =
        client_envoy(&dir, &good, server.port, "client-envoy").await?;
    let (rogue_envoy, mut rogue_client) =
        client_envoy(&dir, &rogue, server.port, "rogue-envoy").await?;

    wait_until(
        "the legitimate client to get through",
        Duration::from_secs(30),
        async || through(&mut good_client).await,
    )
    .await?;
    let refusals = async || -> anyhow::Result<u64> {
        let stats = server
            .envoy
            .stats(r"^listener\..*\.ssl\.fail_verify_error$")
            .await?;
        ensure!(
            !stats.is_empty(),
            "no fail_verify_error stat at the server Envoy"
        );
        Ok(stats.values().sum())
    };
    let before = refusals().await?;
    for attempt in 0..3 {
        let resp = rogue_client
            .get("web", "/hello", &[])
            .await
            .with_context(|| format!("rogue request {attempt}"))?;
        ensure!(
            !resp.status.is_success(),
            "the rogue client got through: {} {}",
            resp.status,
            resp.text()
        );
    }
    let after = refusals().await?;
    ensure!(
        after >= before + 3,
        "the server Envoy counted {before} -> {after} certificate verification failures for 3 \
         rogue requests; server ssl stats {:?}; rogue Envoy ssl stats {:?}",
        server.envoy.stats(r"ssl\.").await?,
        rogue_envoy.stats(r"ssl\.").await?
    );
    through(&mut good_client)
        .await
        .context("the legitimate client after the rogue attempts")?;
    ensure!(
        rogue_ca.issued() >= 1 && ca.issued() >= 2,
        "CAs issued too little"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_envoy_and_exits_with_it_and_cleans_up_on_sigterm() -> anyhow::Result<()> {
    let dir = fresh_log_dir("agent_runs_envoy")?;
    let ca = TestCa::start(
        &dir,
        "ca",
        &[("client-token", client_id())],
        Duration::from_secs(3600),
    )
    .await?;
    let bin = capstan_bin()?;
    let envoy = envoy_bin()?;
    let envoy = envoy.to_str().context("Envoy's path is not UTF-8")?;
    let id = client_id();
    let exit = async |agent: &mut Agent| {
        wait_until("the agent to exit", Duration::from_secs(30), async || {
            agent.process.exit_status().context("still running")
        })
        .await
    };

    // Envoy validating the bootstrap the agent wrote, then exiting: so does the agent.
    let validate = [
        "--envoy-bin",
        envoy,
        "--",
        "--mode",
        "validate",
        "--disable-hot-restart",
    ];
    let mut ok = Agent::start(
        &bin,
        &ca.target(),
        &dir,
        &AgentSpec {
            extra_args: &validate,
            ..spec("validating", &id, "client-token", "1h")
        },
    )
    .await?;
    let status = exit(&mut ok).await?;
    ensure!(
        status.success(),
        "agent exited with {status}:\n{}",
        ok.process.log_tail(20)
    );
    ensure!(
        !ok.process
            .log_lines(|l| l.contains("validating.bootstrap.json' OK"))
            .is_empty(),
        "Envoy did not validate the agent's bootstrap:\n{}",
        ok.process.log_tail(20)
    );

    // Envoy failing: the agent fails too.
    let broken = ["--envoy-bin", envoy, "--", "--no-such-flag"];
    let mut failing = Agent::start(
        &bin,
        &ca.target(),
        &dir,
        &AgentSpec {
            extra_args: &broken,
            ..spec("failing", &id, "client-token", "1h")
        },
    )
    .await?;
    let status = exit(&mut failing).await?;
    ensure!(
        !status.success(),
        "agent exited with {status} after Envoy failed"
    );

    // SIGTERM: the agent stops and removes its socket.
    let mut plain = Agent::start(
        &bin,
        &ca.target(),
        &dir,
        &spec("plain", &id, "client-token", "1h"),
    )
    .await?;
    ensure!(plain.sds_socket.exists(), "no socket while serving");
    plain.process.stop();
    ensure!(
        !plain.sds_socket.exists(),
        "the socket outlived the agent:\n{}",
        plain.process.log_tail(10)
    );
    Ok(())
}
