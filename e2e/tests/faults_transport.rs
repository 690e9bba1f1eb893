//! Hostile clients at the connection level against a real capstan, beside a well-behaved real
//! Envoy: each test starts a fault, then has Envoy connect (or stay connected), changes the
//! config during the fault and checks that real traffic follows it, and that capstan's
//! memory stays within a bound derived from its connection caps.
//!
//! capstan runs with `ulimit -n 1024` (`transport::CAPSTAN_FD_LIMIT`) and its default limits,
//! so the hostile clients (from 127.0.0.2) can open more connections than it has descriptors.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::fixtures::reviews_vs_weighted;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{OUTBOUND_LISTENER, REVIEWS_VS_FILE, TestEnv, start_reviews};
use capstan_e2e::transport::{self, CAPSTAN_FD_LIMIT, HOSTILE_IP, LimitedCapstan, closed_so_far};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const NO_HEADERS: &[(&str, &str)] = &[];

/// Hostile connections per fault: more than capstan has descriptors.
const HOSTILE_CONNECTIONS: usize = 1500;

/// Generous bound on what one open connection may cost capstan (socket, HTTP/2 or HTTP/1
/// buffers, a task): real costs are a few KiB to a few tens.
const BUDGET_PER_CONNECTION_KIB: u64 = 256;

/// Deadline for config to reach the Envoy that connects during a fault: a hostile backlog
/// drains in rounds of the first-request / header deadline (10 s), so this is longer than
/// the usual CONFIG_TIMEOUT; it only bounds a hang.
const FAULT_CONFIG_TIMEOUT: Duration = Duration::from_secs(60);

/// Upstreams, config dir and a capstan under the fd limit; Envoy is started by the test.
struct Fault {
    env: TestEnv,
    _upstreams: Upstreams,
    capstan: LimitedCapstan,
    baseline_rss_kib: u64,
}

impl Fault {
    async fn start(name: &str) -> anyhow::Result<Self> {
        transport::ensure_fds(4 * HOSTILE_CONNECTIONS + 2000)?;
        let env = TestEnv::new(name)?;
        let vs = reviews_vs_weighted(&[("v1", 100)]);
        let upstreams = start_reviews(&env, Path::new(UPSTREAM_BIN), &vs).await?;
        let capstan = LimitedCapstan::start(&env.config_dir, &env.log_dir, &[]).await?;
        let baseline_rss_kib = capstan.rss_kib()?;
        Ok(Self {
            env,
            _upstreams: upstreams,
            capstan,
            baseline_rss_kib,
        })
    }

    fn xds(&self) -> SocketAddr {
        loopback(self.capstan.xds_port)
    }

    async fn start_envoy(&self) -> anyhow::Result<(Envoy, HttpClient)> {
        let envoy_bin = capstan_e2e::locate::envoy_bin()?;
        let envoy = Envoy::start(
            &envoy_bin,
            &Bootstrap::new(AdsMode::Delta, self.capstan.xds_port),
            &self.env.log_dir,
            "envoy",
        )
        .await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, FAULT_CONFIG_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "Envoy got no listener; logs in {}",
                    self.env.log_dir.display()
                )
            })?;
        Ok((envoy, HttpClient::new(loopback(port))))
    }

    /// Changes the reviews route to `version` and waits until Envoy routes real requests by it.
    async fn reroute(&mut self, proxy: &mut HttpClient, version: &str) -> anyhow::Result<()> {
        self.env
            .write_config(REVIEWS_VS_FILE, &reviews_vs_weighted(&[(version, 100)]))?;
        let what = format!("10 requests in a row to reach reviews {version}");
        let log_dir = self.env.log_dir.clone();
        wait_until(&what, FAULT_CONFIG_TIMEOUT, async || {
            self.capstan.process.ensure_running()?;
            let counts = proxy.reviews_versions(NO_HEADERS, 10).await?;
            ensure!(
                counts.len() == 1 && counts.get(version) == Some(&10),
                "{counts:?}"
            );
            Ok(())
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    }

    /// capstan's RSS must stay within its baseline plus the budget of every connection its
    /// descriptors allow.
    fn ensure_memory_bounded(&self) -> anyhow::Result<()> {
        let rss = self.capstan.rss_kib()?;
        let bound = self.baseline_rss_kib + CAPSTAN_FD_LIMIT as u64 * BUDGET_PER_CONNECTION_KIB;
        ensure!(
            rss <= bound,
            "capstan's RSS grew from {} KiB to {rss} KiB, beyond {bound} KiB",
            self.baseline_rss_kib
        );
        Ok(())
    }
}

/// Thousands of TCP connections that never send a byte, more than capstan has descriptors:
/// capstan stays within its cap, drops them at the first-request deadline, and the Envoy that
/// connects during the fault gets config and follows a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_beyond_the_cap() -> anyhow::Result<()> {
    let mut fault = Fault::start("idle_tcp_connections_beyond_the_cap").await?;
    let mut idle = transport::hold_connections(fault.xds(), HOSTILE_CONNECTIONS, b"");
    let (mut envoy, mut proxy) = fault.start_envoy().await?;
    fault.reroute(&mut proxy, "v3").await?;
    let mut closed = 0;
    wait_until(
        "capstan to close idle connections",
        FAULT_CONFIG_TIMEOUT,
        async || {
            closed_so_far(&mut idle, &mut closed);
            ensure!(closed > 0, "none closed yet");
            Ok(())
        },
    )
    .await?;
    fault.ensure_memory_bounded()?;
    envoy.process().ensure_running()?;
    // It connected while capstan was at its cap: its first requests may wait.
    envoy.ensure_nothing_rejected().await
}

/// Thousands of HTTP/2 connections that send the preface and SETTINGS and then nothing:
/// clients that answer pings (an h2 client that never opens a stream), so keepalive never
/// ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_http2_connections() -> anyhow::Result<()> {
    let mut fault = Fault::start("half_open_http2_connections").await?;
    let xds = fault.xds();
    let mut idle_h2 = tokio::task::JoinSet::new();
    for _ in 0..HOSTILE_CONNECTIONS {
        idle_h2.spawn(async move {
            let Some(tcp) = transport::connect_hostile(xds, Duration::from_secs(30)).await else {
                return false;
            };
            let Ok((_send, connection)) = h2::client::handshake(tcp).await else {
                return true;
            };
            // Drives the connection (answers SETTINGS and PINGs) until the server closes it.
            let _ = connection.await;
            true
        });
    }
    let (mut envoy, mut proxy) = fault.start_envoy().await?;
    fault.reroute(&mut proxy, "v3").await?;
    let mut closed = 0;
    wait_until(
        "capstan to close half-open connections",
        FAULT_CONFIG_TIMEOUT,
        async || {
            closed_so_far(&mut idle_h2, &mut closed);
            ensure!(closed > 0, "none closed yet");
            Ok(())
        },
    )
    .await?;
    fault.ensure_memory_bounded()?;
    envoy.process().ensure_running()?;
    // It connected while capstan was at its cap: its first requests may wait.
    envoy.ensure_nothing_rejected().await
}

/// One HTTP/2 connection opening ADS streams and resetting them, as fast as it can: capstan
/// closes that connection, whether the streams are reset before the server accepted them
/// (h2's own guard) or after (a stream costs capstan a task and a subscription); the Envoy
/// beside it keeps its stream and follows a config change during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reset_flood() -> anyhow::Result<()> {
    const MAX_STREAMS: usize = 20_000;
    let mut fault = Fault::start("stream_reset_flood").await?;
    let (mut envoy, mut proxy) = fault.start_envoy().await?;
    let xds = fault.xds();
    let rapid = tokio::spawn(transport::reset_flood(xds, MAX_STREAMS, false));
    let accepted = tokio::spawn(transport::reset_flood(xds, MAX_STREAMS, true));
    fault.reroute(&mut proxy, "v3").await?;
    for (what, flood) in [("rapid", rapid), ("accepted-then-reset", accepted)] {
        let (opened, closed) = flood.await??;
        ensure!(
            closed && opened < MAX_STREAMS,
            "{what} flood: capstan let one connection open and reset {opened} streams \
             (connection closed: {closed})"
        );
        eprintln!("{what} flood: the connection was closed after {opened} streams");
    }
    fault.reroute(&mut proxy, "v2").await?;
    fault.ensure_memory_bounded()?;
    envoy.process().ensure_running()?;
    envoy.ensure_no_rejected_updates().await
}

/// Many connections dribbling request headers a byte a second to the monitoring port and to
/// the validation webhook: both still answer a normal request, and close the slow ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_webhook_and_monitoring() -> anyhow::Result<()> {
    let mut fault = Fault::start("slowloris_on_webhook_and_monitoring").await?;
    let webhook = Webhook::start(&fault.env.log_dir).await?;
    let monitoring = loopback(fault.capstan.monitoring_port);
    let interval = Duration::from_secs(1);
    let mut slow_monitoring = transport::slowloris(
        monitoring,
        HOSTILE_CONNECTIONS,
        b"GET /metrics HTTP/1.1\r\nHost: capstan\r\nX-Slow: ",
        interval,
    );
    let mut slow_webhook = webhook.slowloris(HOSTILE_CONNECTIONS, interval);

    let (mut envoy, mut proxy) = fault.start_envoy().await?;
    wait_until(
        "the monitoring port to answer /healthz",
        FAULT_CONFIG_TIMEOUT,
        async || {
            let resp = HttpClient::new(monitoring)
                .get("capstan", "/healthz", &[])
                .await?;
            ensure!(resp.status.is_success(), "{}", resp.status);
            Ok(())
        },
    )
    .await?;
    wait_until(
        "the webhook to answer /ready",
        FAULT_CONFIG_TIMEOUT,
        async || webhook.ready().await,
    )
    .await?;
    fault.reroute(&mut proxy, "v3").await?;

    let (mut closed_monitoring, mut closed_webhook) = (0, 0);
    wait_until(
        "both servers to close slow connections",
        FAULT_CONFIG_TIMEOUT,
        async || {
            closed_so_far(&mut slow_monitoring, &mut closed_monitoring);
            closed_so_far(&mut slow_webhook, &mut closed_webhook);
            ensure!(
                closed_monitoring > 0 && closed_webhook > 0,
                "monitoring closed {closed_monitoring}, webhook {closed_webhook}"
            );
            Ok(())
        },
    )
    .await?;
    fault.ensure_memory_bounded()?;
    let webhook_rss = transport::rss_kib(webhook.process.pid())?;
    let bound = webhook.baseline_rss_kib + CAPSTAN_FD_LIMIT as u64 * BUDGET_PER_CONNECTION_KIB;
    ensure!(
        webhook_rss <= bound,
        "the webhook's RSS grew from {} KiB to {webhook_rss} KiB, beyond {bound} KiB",
        webhook.baseline_rss_kib
    );
    envoy.process().ensure_running()?;
    envoy.ensure_no_rejected_updates().await
}

/// `capstan webhook` under the fd limit, with a self-signed certificate for `localhost`.
struct Webhook {
    process: capstan_e2e::process::ChildProcess,
    addr: SocketAddr,
    client: tokio_rustls::TlsConnector,
    baseline_rss_kib: u64,
    _dir: tempfile::TempDir,
}

impl Webhook {
    async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, certified.cert.pem())?;
        std::fs::write(&key, certified.signing_key.serialize_pem())?;
        let port = capstan_e2e::ports::free_port()?;
        let mut cmd = transport::limited(&capstan_e2e::locate::capstan_bin()?);
        cmd.arg("webhook")
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--addr", &format!("127.0.0.1:{port}")]);
        let mut process = capstan_e2e::capstan::Capstan::spawn(cmd, log_dir, "webhook")?;
        process
            .wait_for_log(
                "`admission webhook listening`",
                Duration::from_secs(30),
                |l| l.contains("admission webhook listening"),
            )
            .await?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let baseline_rss_kib = transport::rss_kib(process.pid())?;
        Ok(Self {
            process,
            addr: loopback(port),
            client: tokio_rustls::TlsConnector::from(Arc::new(config)),
            baseline_rss_kib,
            _dir: dir,
        })
    }

    /// A TLS connection from 127.0.0.1 (`hostile`: from [`HOSTILE_IP`]).
    async fn connect(
        client: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
        hostile: bool,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = if hostile {
            transport::connect_hostile(addr, Duration::from_secs(30))
                .await
                .with_context(|| format!("connecting from {HOSTILE_IP}"))?
        } else {
            tokio::net::TcpStream::connect(addr).await?
        };
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(client.connect(name, tcp).await?)
    }

    /// `GET /ready` must answer 200.
    async fn ready(&self) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = Self::connect(&self.client, self.addr, false).await?;
        tls.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.ok();
        let answer = String::from_utf8_lossy(&answer);
        ensure!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
        Ok(())
    }

    /// `n` TLS connections from [`HOSTILE_IP`] that dribble a request's headers.
    fn slowloris(&self, n: usize, interval: Duration) -> tokio::task::JoinSet<bool> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, addr) = (self.client.clone(), self.addr);
            set.spawn(async move {
                let Ok(mut tls) = Self::connect(&client, addr, true).await else {
                    // Refused or closed during the handshake: the server's choice.
                    return true;
                };
                transport::dribble(
                    &mut tls,
                    b"POST /validate HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
                    interval,
                )
                .await
            });
        }
        set
    }
}
