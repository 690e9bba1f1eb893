//! The CAs under test, started on the bench's apiserver: `capstan run` in Kubernetes mode with
//! its CA on the TLS xDS port, and istiod (`pilot-discovery discovery`) with its CA on
//! `--secureGRPCAddr`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use capstan_e2e::kube::{KubeCluster, KubeUser};
use capstan_e2e::ports::free_port;
use capstan_e2e::process::ChildProcess;
use tracing::warn;

use super::Cli;

pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
    _process: ChildProcess,
    _state: tempfile::TempDir,
}

/// Starts `name` and waits until its CA port completes a TLS handshake; `None` when the
/// server's binary is missing (the row is skipped, saying so).
pub async fn start(name: &str, cli: &Cli, cluster: &KubeCluster) -> anyhow::Result<Option<Server>> {
    let state = tempfile::tempdir()?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let log = cluster.log_dir().join(format!("{name}.log"));
    let mut command = match name {
        "capstan" | "capstan-rsa" => {
            let bin = match &cli.capstan {
                Some(p) => p.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("binary directory")?
                    .join("capstan"),
            };
            let mut c = Command::new(bin);
            c.arg("run")
                .arg("--kubeconfig")
                .arg(cluster.capstan_kubeconfig())
                .arg("--xds-addr")
                .arg(format!("127.0.0.1:{}", free_port()?))
                .arg("--monitoring-addr")
                .arg(format!("127.0.0.1:{}", free_port()?))
                .arg("--xds-tls-addr")
                .arg(addr.to_string())
                .arg("--ca-dir")
                .arg(state.path().join("ca"))
                .env("RUST_LOG", "warn");
            if name == "capstan-rsa" {
                c.args(["--ca-key-algorithm", "rsa-2048"]);
            }
            c
        }
        "istiod" => {
            let bin = cli.istiod.clone().unwrap_or_else(|| {
                capstan_e2e::locate::tools_dir()
                    .join("istiod")
                    .join("pilot-discovery")
            });
            if !bin.is_file() {
                warn!(
                    "istiod row skipped: {} not found (scripts/build-istiod.sh)",
                    bin.display()
                );
                return Ok(None);
            }
            let port = |p: anyhow::Result<u16>| p.map(|p| format!("127.0.0.1:{p}"));
            let mut c = Command::new(bin);
            c.arg("discovery")
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig(KubeUser::Admin))
                .arg(format!("--grpcAddr={}", port(free_port())?))
                .arg(format!("--httpAddr={}", port(free_port())?))
                .arg(format!("--monitoringAddr={}", port(free_port())?))
                .arg(format!("--secureGRPCAddr={addr}"))
                .arg(format!("--httpsAddr={}", port(free_port())?))
                .arg(format!("--ctrlz_port={}", free_port()?))
                .env("POD_NAMESPACE", "istio-system")
                .env("POD_NAME", "istiod-ca-bench")
                .env("REVISION", "default");
            c
        }
        other => bail!("unknown server {other:?} (capstan, capstan-rsa or istiod)"),
    };
    let process = ChildProcess::spawn(name, &mut command, &log)?;
    let pid = process.pid();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if super::client::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{name}'s CA port {addr} never answered (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Some(Server {
        addr,
        pid,
        _process: process,
        _state: state,
    }))
}
