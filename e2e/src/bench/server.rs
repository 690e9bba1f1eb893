//! The servers the benchmarks measure, capstan and istiod (`pilot-discovery`), as child
//! processes on free loopback ports against a [`KubeCluster`]: how each is started, and its
//! start timed to ready (and, for capstan, to its ADS server listening).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::info;

use crate::kube::{KubeCluster, KubeUser};
use crate::process::ChildProcess;

/// How long a server may take from start to ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The capstan binary: `given`, else `capstan` beside the running benchmark (both are built
/// into the same target directory); an error when it is not there.
pub fn capstan_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("capstan"),
    };
    ensure!(
        bin.is_file(),
        "capstan binary {} not found (cargo build --release -p capstan, or --capstan)",
        bin.display()
    );
    Ok(bin)
}

/// istiod's `pilot-discovery`: `given`, else where `scripts/build-istiod.sh` puts it
/// (`$CAPSTAN_TOOLS_DIR/istiod/pilot-discovery`); it may be missing, and its row skipped.
pub fn istiod_bin(given: Option<&Path>) -> PathBuf {
    match given {
        Some(p) => p.to_path_buf(),
        None => crate::locate::tools_dir()
            .join("istiod")
            .join("pilot-discovery"),
    }
}

/// A free port on 127.0.0.1, as an address: each server listens on several.
pub fn loopback_port() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        crate::ports::free_port()?,
    )))
}

/// One HTTP/1.1 request on a fresh connection; the status and body. Plain and dependency-free
/// so that a readiness probe (or a PATCH through `kubectl proxy`) costs one round trip and
/// nothing else; 5 s at most.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            request.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("HTTP request timed out")?
}

/// How to run one server: its command line and where it serves ADS and says it is ready.
/// A benchmark may adjust it (name, log, extra arguments) before [`ServerSpec::start`].
pub struct ServerSpec {
    pub name: &'static str,
    pub command: Command,
    pub ads: SocketAddr,
    /// Where readiness is probed: capstan's monitoring address (which also serves
    /// `/metrics`), istiod's HTTP one.
    pub ready: SocketAddr,
    pub ready_path: &'static str,
    /// A log line that says the ADS server listens; [`ServerSpec::start`] times it when set.
    pub listening: Option<&'static str>,
    pub log: PathBuf,
}

impl ServerSpec {
    /// capstan in Kubernetes mode on `cluster` (no leader election); `capture`: sidecars with
    /// inbound listeners (`--sidecar-listeners capture`).
    pub fn capstan(bin: &Path, cluster: &KubeCluster, capture: bool) -> anyhow::Result<Self> {
        let ads = loopback_port()?;
        let monitoring = loopback_port()?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Capstan))
            .arg("--leader-elect=false")
            .arg(format!("--xds-addr={ads}"))
            .arg(format!("--monitoring-addr={monitoring}"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if capture {
            command.arg("--sidecar-listeners=capture");
        }
        Ok(Self {
            name: "capstan",
            command,
            ads,
            ready: monitoring,
            ready_path: "/readyz",
            listening: Some("ADS server listening"),
            log: cluster.log_dir().join("capstan.log"),
        })
    }

    /// istiod (`pilot-discovery discovery`) on `cluster`, every port on loopback, with
    /// `env` (`NAME=VALUE` each) added to its environment.
    pub fn istiod(bin: &Path, cluster: &KubeCluster, env: &[String]) -> anyhow::Result<Self> {
        let ads = loopback_port()?;
        let http = loopback_port()?;
        let mut command = Command::new(bin);
        command
            .arg("discovery")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig(KubeUser::Admin))
            .arg(format!("--grpcAddr={ads}"))
            .arg(format!("--httpAddr={http}"))
            .arg(format!("--monitoringAddr={}", loopback_port()?))
            .arg(format!("--secureGRPCAddr={}", loopback_port()?))
            .arg(format!("--httpsAddr={}", loopback_port()?))
            .arg(format!("--ctrlz_port={}", loopback_port()?.port()))
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "istiod-kube-bench")
            .env("REVISION", "default")
            // istiod accepts 25 new xDS connections per second by default and turns the rest
            // away ("request rate limit exceeded"); Envoys would retry with backoff. Lifted so
            // that the sync measures istiod's pushes, not the limiter.
            .env("PILOT_MAX_REQUESTS_PER_SECOND", "100000");
        for pair in env {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("--istiod-env {pair}: expected NAME=VALUE"))?;
            command.env(name, value);
        }
        Ok(Self {
            name: "istiod",
            command,
            ads,
            ready: http,
            ready_path: "/ready",
            listening: None,
            log: cluster.log_dir().join("istiod.log"),
        })
    }

    /// Starts the server and waits (probing every 5 ms, at most [`READY_TIMEOUT`]) until its
    /// readiness endpoint answers 200 and, when [`ServerSpec::listening`] is set, its log
    /// says the ADS server listens.
    pub async fn start(&mut self) -> anyhow::Result<Started> {
        info!(server = self.name, log = %self.log.display(), "starting");
        let t0 = Instant::now();
        let mut process = ChildProcess::spawn(self.name, &mut self.command, &self.log)?;
        let mut ads_listening = None;
        let ready = loop {
            if ads_listening.is_none()
                && let Some(line) = self.listening
                && process.log().contains(line)
            {
                ads_listening = Some(t0.elapsed());
            }
            if let Ok((200, _)) = http(self.ready, "GET", self.ready_path, None, "").await {
                break t0.elapsed();
            }
            process.ensure_running()?;
            ensure!(
                t0.elapsed() < READY_TIMEOUT,
                "{} not ready after {READY_TIMEOUT:?}: {}",
                self.name,
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if let Some(line) = self.listening {
            while ads_listening.is_none() && t0.elapsed() < READY_TIMEOUT {
                if process.log().contains(line) {
                    ads_listening = Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(Started {
            process,
            t0,
            ready,
            ads_listening,
            ads: self.ads,
            monitoring: self.ready,
        })
    }
}

/// A server [`ServerSpec::start`] started, ready.
pub struct Started {
    pub process: ChildProcess,
    /// When the process was spawned.
    pub t0: Instant,
    /// Start → readiness endpoint 200.
    pub ready: Duration,
    /// Start → the [`ServerSpec::listening`] log line, when the spec names one.
    pub ads_listening: Option<Duration>,
    pub ads: SocketAddr,
    /// The readiness address ([`ServerSpec::ready`]): capstan's monitoring one.
    pub monitoring: SocketAddr,
}
