//! The whole identity path against the real parts: a real kube-apiserver makes the
//! ServiceAccount tokens; `capstan run` in Kubernetes mode keeps its root in
//! `istio-system/istio-ca-secret`, checks tokens by TokenReview and signs on its TLS port, where
//! it also serves ADS; real `capstan agent`s get certificates there and serve them over SDS to
//! real Envoys. Nothing is stood in for. Logs: `<target>/debug/e2e-logs/<test dir>/`.
//!
//! The binary runs in its own network namespace (the reviews pods need pod addresses).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use capstan_e2e::agent::{Agent, StaticEnvoy, client_bootstrap, server_bootstrap};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::loopback;
use capstan_e2e::http::HttpClient;
use capstan_e2e::identity::{
    CA_AUDIENCE, CapstanTls, EnvoyAdmin, KubeAgentSpec, ReviewsPods, bootstrap_file,
    create_service_account, envoy_args, metric, openssl_verify, presented_uris,
    secret_chain_base64, spawn_agent, spiffe_uri, start_agent, token,
};
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::locate::{capstan_bin, envoy_bin, fresh_log_dir};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use serde_json::Value;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
/// The tests share the binary's API server and every capstan watches all of it: none of them
/// writes status (they would correct each other).
const CAPSTAN_ARGS: &[&str] = &["--write-status=false"];
/// How long a refused agent is watched for a certificate it must never get.
const REFUSED_WATCH: Duration = Duration::from_secs(10);

/// A fresh namespace with the ServiceAccounts `accounts`, and a token for each (audience
/// `istio-ca`).
async fn namespace_with(
    kube: &KubeCluster,
    prefix: &str,
    accounts: &[&str],
) -> anyhow::Result<(String, Vec<String>)> {
    let ns = kube.create_namespace(prefix).await?;
    let mut tokens = Vec::new();
    for sa in accounts {
        create_service_account(kube, &ns, sa).await?;
        tokens.push(token(kube, &ns, sa, CA_AUDIENCE).await?);
    }
    Ok((ns, tokens))
}

async fn start_capstan(kube: &KubeCluster, dir: &Path) -> anyhow::Result<(Capstan, CapstanTls)> {
    let capstan =
        Capstan::start_kube(kube.capstan_kubeconfig(), CAPSTAN_ARGS, dir, "capstan").await?;
    let tls = CapstanTls::of(&capstan, kube, dir).await?;
    Ok((capstan, tls))
}

/// The certificate chain (PEM) an Envoy holds as its SDS secret `default`.
fn held_chain(config_dump: &Value) -> anyhow::Result<String> {
    let encoded = secret_chain_base64(config_dump, "default")?;
    let bytes = STANDARD
        .decode(encoded)
        .context("the chain in config_dump is not base64")?;
    String::from_utf8(bytes).context("the chain is not UTF-8")
}

/// `openssl verify`: the chain Envoy holds (its `/config_dump`) chains to the root in
/// istio-ca-secret and its leaf names exactly `want`; and `/certs` presents exactly `want`.
fn check_held_certificate(
    capstan: &CapstanTls,
    config_dump: &Value,
    certs: &Value,
    want: &str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let presented = presented_uris(certs);
    ensure!(
        presented == [want],
        "{name} presents {presented:?}, not {want}: {certs}"
    );
    let chain = held_chain(config_dump)?;
    let verified = openssl_verify(&capstan.root_file, &chain, dir, name)
        .with_context(|| format!("{name}'s certificate against the root in istio-ca-secret"))?;
    ensure!(
        verified.uris == [want],
        "{name}'s leaf names {:?}, not {want}",
        verified.uris
    );
    Ok(())
}

async fn capstan_metrics(capstan: &Capstan) -> anyhow::Result<String> {
    Ok(capstan.monitoring_get("/metrics").await?.text())
}

/// A CA counter in capstan's metrics, by its documented name (`capstan_ca_…`,
/// docs/ca-api.md).
fn ca_counter(metrics: &str, series: &str) -> Option<f64> {
    metric(metrics, series)
}

/// The CA's series in capstan's metrics, for error messages.
fn ca_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.contains("_ca_") && !l.starts_with('#'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_certificate_from_capstan_and_its_config_over_tls() -> anyhow::Result<()> {
    let dir = fresh_log_dir("identity_pod")?;
    let kube = KubeCluster::shared().await?;
    let (ns, tokens) = namespace_with(kube, "identity-pod", &["productpage"]).await?;
    let reviews = ReviewsPods::start(kube, &ns, Path::new(UPSTREAM_BIN), &dir).await?;
    let (capstan, tls) = start_capstan(kube, &dir).await?;

    // The agent gets a certificate, writes the bootstrap and runs Envoy on it.
    let envoy = envoy_bin()?;
    let admin_file = dir.join("envoy.admin-address");
    let envoy_args = envoy_args(
        envoy.to_str().context("Envoy's path is not UTF-8")?,
        admin_file.to_str().context("log dir is not UTF-8")?,
    );
    let envoy_args: Vec<&str> = envoy_args.iter().map(String::as_str).collect();
    let mut agent = start_agent(
        &capstan_bin()?,
        &tls,
        &dir,
        &KubeAgentSpec {
            name: "productpage",
            namespace: &ns,
            service_account: "productpage",
            token: &tokens[0],
            extra_args: &envoy_args,
        },
    )
    .await?;
    let admin = EnvoyAdmin::wait(&admin_file, &mut agent.process).await?;

    // Its only way to capstan is the TLS port: one xDS cluster, with TLS, to xds_tls_port.
    let bootstrap: Value =
        serde_json::from_slice(&std::fs::read(bootstrap_file(&dir, "productpage"))?)?;
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .context("no static clusters")?;
    let xds = clusters
        .iter()
        .find(|c| c["name"] == "xds-grpc")
        .context("no xds-grpc cluster")?;
    let xds_port = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"];
    ensure!(
        xds_port.as_u64() == Some(u64::from(capstan.xds_tls_port))
            && xds["transport_socket"]["name"] == "envoy.transport_sockets.tls",
        "the bootstrap's xDS cluster is not TLS to port {}: {xds}",
        capstan.xds_tls_port
    );

    // Capstan's outbound listener arrives, and real requests reach every reviews pod.
    let port = wait_until(
        "Envoy's outbound listener from capstan",
        CONFIG_TIMEOUT,
        async || {
            agent.process.ensure_running()?;
            admin.listener_port(OUTBOUND_LISTENER).await
        },
    )
    .await
    .with_context(|| format!("logs in {}", dir.display()))?;
    let mut client = HttpClient::new(loopback(port));
    let counts = wait_until(
        "30 requests through Envoy to reach v1, v2 and v3",
        CONFIG_TIMEOUT,
        async || {
            let counts = client.reviews_versions(&[], 30).await?;
            let seen: Vec<&str> = counts.keys().map(String::as_str).collect();
            ensure!(seen == ["v1", "v2", "v3"], "got {counts:?}");
            Ok(counts)
        },
    )
    .await?;
    ensure!(
        reviews.pods.len() == 3 && counts.values().sum::<usize>() == 30,
        "{counts:?}"
    );

    // The kubelet's readiness probe (`/healthz/ready` on the health port): Envoy has its
    // config; any other path is not found.
    let mut health = HttpClient::new(loopback(agent.health_port));
    let ready = health.get("health", "/healthz/ready", &[]).await?;
    ensure!(ready.status == 200, "readiness: {}", ready.status);
    let other = health.get("health", "/stats", &[]).await?;
    ensure!(
        other.status == 404,
        "/stats on the health port: {}",
        other.status
    );

    // Connected over TLS, with capstan's listener and clusters accepted.
    let stats = admin
        .stats(r"^(control_plane\.connected_state|cluster\.xds-grpc\.ssl\.handshake|listener_manager\.lds\.update_(success|rejected)|cluster_manager\.cds\.update_(success|rejected))$")
        .await?;
    let stat = |name: &str| stats.get(name).copied();
    ensure!(
        stat("control_plane.connected_state") == Some(1),
        "not connected: {stats:?}"
    );
    ensure!(
        stat("cluster.xds-grpc.ssl.handshake").unwrap_or(0) >= 1,
        "no TLS handshake with capstan: {stats:?}"
    );
    ensure!(
        stat("listener_manager.lds.update_success").unwrap_or(0) >= 1
            && stat("cluster_manager.cds.update_success").unwrap_or(0) >= 1
            && stat("listener_manager.lds.update_rejected") == Some(0)
            && stat("cluster_manager.cds.update_rejected") == Some(0),
        "LDS/CDS: {stats:?}"
    );
    let dump: Value = admin.get("/config_dump").await?.json()?;
    let configs = dump["configs"].as_array().context("no configs")?;
    let listeners: Vec<&Value> = configs
        .iter()
        .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
        .filter(|l| l.get("active_state").is_some())
        .map(|l| &l["name"])
        .collect();
    ensure!(
        listeners.iter().any(|l| *l == OUTBOUND_LISTENER),
        "active dynamic listeners: {listeners:?}"
    );
    let reviews_host = format!("reviews.{ns}.svc.cluster.local");
    let clusters: Vec<&str> = configs
        .iter()
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["cluster"]["name"].as_str())
        .collect();
    ensure!(
        clusters
            .iter()
            .any(|c| c.starts_with("outbound|") && c.ends_with(&reviews_host)),
        "no outbound cluster for {reviews_host}: {clusters:?}"
    );

    // The certificate Envoy holds is the pod's identity, issued under the secret's root.
    let certs: Value = admin.get("/certs").await?.json()?;
    let dump: Value = admin.get("/config_dump").await?.json()?;
    check_held_certificate(
        &tls,
        &dump,
        &certs,
        &spiffe_uri(&ns, "productpage"),
        &dir,
        "productpage",
    )?;
    let metrics = capstan_metrics(&capstan).await?;
    ensure!(
        ca_counter(&metrics, "capstan_ca_certificates_issued_total").unwrap_or(0.0) >= 1.0,
        "capstan counted no certificate issued: {:?}",
        ca_series(&metrics)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_token_for_another_audience_gets_no_certificate() -> anyhow::Result<()> {
    let dir = fresh_log_dir("identity_audience")?;
    let kube = KubeCluster::shared().await?;
    let ns = kube.create_namespace("identity-audience").await?;
    create_service_account(kube, &ns, "productpage").await?;
    let other = token(kube, &ns, "productpage", "other").await?;
    let (capstan, tls) = start_capstan(kube, &dir).await?;

    let mut agent = spawn_agent(
        &capstan_bin()?,
        &tls,
        &dir,
        &KubeAgentSpec {
            name: "productpage",
            namespace: &ns,
            service_account: "productpage",
            token: &other,
            extra_args: &[],
        },
    )?;
    // An Envoy on the bootstrap the agent wrote (before any certificate): it waits for the
    // certificate it needs to reach capstan.
    let bootstrap_path = bootstrap_file(&dir, "productpage");
    let bootstrap: Value = wait_until("the agent's bootstrap", CONFIG_TIMEOUT, async || {
        agent.process.ensure_running()?;
        Ok(serde_json::from_slice(&std::fs::read(&bootstrap_path)?)?)
    })
    .await?;
    let envoy = StaticEnvoy::start(&envoy_bin()?, &bootstrap, &dir, "envoy").await?;

    // capstan refuses: the agent logs gRPC's Unauthenticated ("token refused").
    let unauthenticated = tonic::Code::Unauthenticated.description();
    let refusal = agent
        .process
        .wait_for_log("the CA's refusal", Duration::from_secs(20), |l| {
            l.contains("the CA refused") && l.contains(unauthenticated)
        })
        .await?;
    ensure!(refusal.contains("token refused"), "refusal: {refusal}");

    // And goes on refusing: no certificate, nothing for Envoy, no xDS connection.
    let deadline = Instant::now() + REFUSED_WATCH;
    while Instant::now() < deadline {
        agent.process.ensure_running()?;
        ensure!(
            agent.certificates_served() == 0,
            "the agent got a certificate:\n{}",
            agent.process.log_tail(10)
        );
        // Never served: Envoy has accepted no listener or cluster. (Not
        // `control_plane.connected_state`, which Envoy sets to 1 as it opens each retried
        // stream; the xds-grpc cluster's TLS stats do not exist without a certificate.)
        let stats = envoy
            .stats(r"^(cluster_manager\.cds|listener_manager\.lds)\.update_success$")
            .await?;
        ensure!(
            stats.get("cluster_manager.cds.update_success") == Some(&0)
                && stats.get("listener_manager.lds.update_success") == Some(&0),
            "Envoy was served by capstan: {stats:?}"
        );
        ensure!(
            envoy.presented_serials().await?.is_empty(),
            "Envoy holds a certificate"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refusals = agent.process.log_lines(|l| l.contains("the CA refused"));
    ensure!(refusals.len() >= 2, "the agent did not retry: {refusals:?}");
    let metrics = capstan_metrics(&capstan).await?;
    let refused = ca_counter(
        &metrics,
        "capstan_ca_requests_refused_total{reason=\"token_refused\"}",
    )
    .unwrap_or(0.0);
    ensure!(
        refused >= refusals.len() as f64,
        "capstan counted {refused} refused tokens for {} refusals: {:?}",
        refusals.len(),
        ca_series(&metrics)
    );
    ensure!(
        ca_counter(&metrics, "capstan_ca_certificates_issued_total") == Some(0.0),
        "capstan issued a certificate: {:?}",
        ca_series(&metrics)
    );
    Ok(())
}

/// An agent with no extra arguments.
fn spec<'a>(
    name: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    token: &'a str,
) -> KubeAgentSpec<'a> {
    KubeAgentSpec {
        name,
        namespace,
        service_account,
        token,
        extra_args: &[],
    }
}

/// One request through `client` that must come back from the `web` upstream.
async fn through(client: &mut HttpClient) -> anyhow::Result<()> {
    let reply = client.upstream("web", "/hello", &[]).await?;
    ensure!(
        reply.service == "web" && reply.path == "/hello",
        "reply from the wrong place: {reply:?}"
    );
    Ok(())
}

/// A client-side Envoy (plaintext in, mTLS out to `server_port` requiring `server_san`).
async fn start_client_envoy(
    dir: &Path,
    agent: &Agent,
    server_san: &str,
    server_port: u16,
    name: &str,
) -> anyhow::Result<(StaticEnvoy, HttpClient)> {
    let bootstrap = client_bootstrap(&agent.sds_socket, server_san, server_port);
    let envoy = StaticEnvoy::start(&envoy_bin()?, &bootstrap, dir, name).await?;
    let port = envoy.wait_listener_port("plain").await?;
    Ok((envoy, HttpClient::new(loopback(port))))
}

/// Requests through `client` must fail; returns how many `stat` (summed over names matching
/// it) grew at `envoy` meanwhile.
async fn refused(
    client: &mut HttpClient,
    envoy: &StaticEnvoy,
    stat: &str,
    who: &str,
) -> anyhow::Result<u64> {
    let count = async || -> anyhow::Result<u64> { Ok(envoy.stats(stat).await?.values().sum()) };
    let before = count().await?;
    for attempt in 0..3 {
        let resp = client
            .get("web", "/hello", &[])
            .await
            .with_context(|| format!("{who}: request {attempt}"))?;
        ensure!(
            !resp.status.is_success(),
            "{who} got through: {} {}",
            resp.status,
            resp.text()
        );
    }
    Ok(count().await? - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_talk_mtls_with_certificates_from_capstan() -> anyhow::Result<()> {
    let dir = fresh_log_dir("identity_mtls")?;
    let kube = KubeCluster::shared().await?;
    let (client_ns, client_tokens) =
        namespace_with(kube, "identity-client", &["client", "intruder"]).await?;
    let (server_ns, server_tokens) = namespace_with(kube, "identity-server", &["server"]).await?;
    let client_san = spiffe_uri(&client_ns, "client");
    let server_san = spiffe_uri(&server_ns, "server");
    let (capstan, tls) = start_capstan(kube, &dir).await?;
    let bin = capstan_bin()?;

    // The server: an agent for server_ns/server, an Envoy requiring client_ns/client.
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("web", "v1")], &dir).await?;
    let server_agent = start_agent(
        &bin,
        &tls,
        &dir,
        &spec("server", &server_ns, "server", &server_tokens[0]),
    )
    .await?;
    let server_envoy = StaticEnvoy::start(
        &envoy_bin()?,
        &server_bootstrap(
            &server_agent.sds_socket,
            &client_san,
            upstreams.port("web", "v1")?,
        ),
        &dir,
        "server-envoy",
    )
    .await?;
    let server_port = server_envoy.wait_listener_port("mtls").await?;

    // The client: an agent for client_ns/client, an Envoy requiring server_ns/server.
    let client_agent = start_agent(
        &bin,
        &tls,
        &dir,
        &spec("client", &client_ns, "client", &client_tokens[0]),
    )
    .await?;
    let (client_envoy, mut client) = start_client_envoy(
        &dir,
        &client_agent,
        &server_san,
        server_port,
        "client-envoy",
    )
    .await?;
    wait_until(
        "a first request through both Envoys",
        Duration::from_secs(30),
        async || through(&mut client).await,
    )
    .await
    .with_context(|| format!("logs in {}", dir.display()))?;
    let handshakes = async || -> anyhow::Result<u64> {
        Ok(server_envoy
            .stats(r"^listener\..*\.ssl\.handshake$")
            .await?
            .values()
            .sum())
    };
    let before = handshakes().await?;
    for i in 0..10 {
        through(&mut client)
            .await
            .with_context(|| format!("request {i}"))?;
    }
    let after = handshakes().await?;
    ensure!(
        after >= before + 10,
        "10 requests but {before} -> {after} TLS handshakes at the server Envoy"
    );

    // Each holds its own identity, issued under the root in istio-ca-secret.
    for (envoy, san, name) in [
        (&server_envoy, &server_san, "server-envoy"),
        (&client_envoy, &client_san, "client-envoy"),
    ] {
        let certs: Value = envoy.admin_get("/certs").await?.json()?;
        let dump: Value = envoy.admin_get("/config_dump").await?.json()?;
        check_held_certificate(&tls, &dump, &certs, san, &dir, name)?;
    }

    // The server checks the client's SAN: another identity of the same mesh, certified by
    // the same capstan, is refused.
    let intruder_agent = start_agent(
        &bin,
        &tls,
        &dir,
        &spec("intruder", &client_ns, "intruder", &client_tokens[1]),
    )
    .await?;
    let (_intruder_envoy, mut intruder) = start_client_envoy(
        &dir,
        &intruder_agent,
        &server_san,
        server_port,
        "intruder-envoy",
    )
    .await?;
    let san_refusals = refused(
        &mut intruder,
        &server_envoy,
        r"^listener\..*\.ssl\.fail_verify_san$",
        "the intruder",
    )
    .await?;
    ensure!(
        san_refusals >= 3,
        "the server Envoy counted {san_refusals} SAN refusals for 3 intruder requests"
    );

    // The client checks the server's SAN: a client Envoy expecting another server refuses it.
    let elsewhere = spiffe_uri(&server_ns, "someone-else");
    let (picky_envoy, mut picky) =
        start_client_envoy(&dir, &client_agent, &elsewhere, server_port, "picky-envoy").await?;
    let san_refusals = refused(
        &mut picky,
        &picky_envoy,
        r"^cluster\.server\.ssl\.fail_verify_san$",
        "the client expecting another server",
    )
    .await?;
    ensure!(
        san_refusals >= 3,
        "the picky client Envoy counted {san_refusals} SAN refusals for 3 requests"
    );

    through(&mut client)
        .await
        .context("the legitimate client after the refusals")?;
    let metrics = capstan_metrics(&capstan).await?;
    ensure!(
        ca_counter(&metrics, "capstan_ca_certificates_issued_total").unwrap_or(0.0) >= 3.0,
        "capstan counted fewer than 3 certificates for 3 agents: {:?}",
        ca_series(&metrics)
    );
    Ok(())
}
