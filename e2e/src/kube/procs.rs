//! etcd and kube-apiserver: command lines, launching on the keeper thread, readiness waits.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::keeper;
use super::kubectl;
use super::pki::Pki;
use crate::http::HttpClient;
use crate::locate;
use crate::ports::free_port;
use crate::process::ChildProcess;

/// How long etcd gets to answer /health (it takes ~0.1 s).
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the apiserver gets to answer /readyz `ok` (~2-3 s here; slower under load).
pub const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// Port races (another process binding our free port first) are retried this often.
const START_ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(100);

/// The kube-apiserver and etcd binaries.
#[derive(Debug, Clone)]
pub struct KubeBins {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

/// `$CAPSTAN_KUBE_BIN_DIR`, else `$CAPSTAN_TOOLS_DIR/kube` (default `<repo>/.tools/kube`).
pub fn kube_bin_dir() -> PathBuf {
    match std::env::var_os("CAPSTAN_KUBE_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => locate::tools_dir().join("kube"),
    }
}

/// kube-apiserver and etcd in [`kube_bin_dir`]; an error naming `make kube-tools` if absent.
pub fn kube_bins() -> anyhow::Result<KubeBins> {
    bins_in(&kube_bin_dir())
}

fn bins_in(dir: &Path) -> anyhow::Result<KubeBins> {
    let bins = KubeBins {
        apiserver: dir.join("kube-apiserver"),
        etcd: dir.join("etcd"),
    };
    for bin in [&bins.apiserver, &bins.etcd] {
        if !bin.is_file() {
            bail!(
                "{} not found: run `make kube-tools` (scripts/build-kube.sh builds kube-apiserver \
                 and etcd into $CAPSTAN_TOOLS_DIR/kube), or set CAPSTAN_KUBE_BIN_DIR",
                bin.display()
            );
        }
    }
    Ok(bins)
}

/// Starts a process on the keeper thread; `at_exit` also has it killed when the test binary
/// exits (the shared cluster, which is never dropped).
pub(crate) fn spawn(
    name: &str,
    cmd: Command,
    log_dir: &Path,
    at_exit: bool,
) -> anyhow::Result<ChildProcess> {
    let p = keeper::spawn(name, cmd, &log_dir.join(format!("{name}.log")))?;
    if at_exit {
        keeper::kill_at_exit(p.pid());
    }
    Ok(p)
}

fn port_taken(p: &ChildProcess) -> bool {
    p.log().contains("address already in use")
}

/// A running etcd and its client URL.
pub(crate) struct Etcd {
    pub process: ChildProcess,
    pub url: String,
}

/// Starts etcd on free loopback ports with its data in `data_dir`, waiting for /health.
pub(crate) async fn start_etcd(
    bin: &Path,
    data_dir: &Path,
    log_dir: &Path,
    at_exit: bool,
) -> anyhow::Result<Etcd> {
    for attempt in 1..=START_ATTEMPTS {
        let (client, peer) = (free_port()?, free_port()?);
        let (client_url, peer_url) = (
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        );
        let mut cmd = Command::new(bin);
        cmd.arg("--name=e2e")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            // Test data is thrown away; fsync would only slow every write.
            .arg("--unsafe-no-fsync")
            // A lone member still waits one election timeout (1 s by default) to lead;
            // with no peers to hear from, a short one costs nothing.
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100");
        let name = if attempt == 1 {
            "etcd".to_string()
        } else {
            format!("etcd-{attempt}")
        };
        let mut process = spawn(&name, cmd, log_dir, at_exit)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client));
        match wait_etcd_healthy(&mut process, addr).await {
            Ok(()) => {
                return Ok(Etcd {
                    process,
                    url: client_url,
                });
            }
            Err(e) if attempt < START_ATTEMPTS && port_taken(&process) => {
                eprintln!("kube: etcd lost a port race, retrying: {e:#}");
                // A failed start may have written a member directory for the old ports.
                let _ = std::fs::remove_dir_all(data_dir);
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

async fn wait_etcd_healthy(process: &mut ChildProcess, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + ETCD_START_TIMEOUT;
    let mut client = HttpClient::new(addr);
    loop {
        let last = match client.get("127.0.0.1", "/health", &[]).await {
            Ok(r) if r.status == 200 && r.text().contains("\"health\":\"true\"") => return Ok(()),
            Ok(r) => format!("/health answered {}: {}", r.status, r.text()),
            Err(e) => format!("{e:#}"),
        };
        process
            .ensure_running()
            .context("etcd exited while starting")?;
        if Instant::now() >= deadline {
            bail!(
                "etcd not healthy after {ETCD_START_TIMEOUT:?} ({last}); log {}:\n{}",
                process.log_path().display(),
                process.log_tail(30)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Everything an apiserver launch needs besides the port.
pub(crate) struct ApiserverSpec<'a> {
    pub bin: &'a Path,
    pub pki: &'a Pki,
    pub etcd_url: &'a str,
    pub log_dir: &'a Path,
    pub admin_kubeconfig: &'a Path,
    pub kubectl_cache: &'a Path,
    pub at_exit: bool,
}

impl ApiserverSpec<'_> {
    fn command(&self, port: u16) -> Command {
        let pki = self.pki;
        let path = |p: &Path| p.display().to_string();
        let mut cmd = Command::new(self.bin);
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--tls-cert-file={}", path(&pki.serving_cert)))
            .arg(format!("--tls-private-key-file={}", path(&pki.serving_key)))
            .arg(format!("--client-ca-file={}", path(&pki.ca_cert)))
            .arg(format!("--token-auth-file={}", path(&pki.token_file)))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", path(&pki.sa_pub)))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path(&pki.sa_key)
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            // No controller-manager runs, so nothing would create the default ServiceAccount
            // this plug-in insists every Pod's namespace has.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true");
        cmd
    }

    /// Starts the apiserver on `port` and waits for /readyz. `Err` carries whether the port
    /// was taken, so the first start can retry on another one.
    pub async fn launch(
        &self,
        name: &str,
        port: u16,
    ) -> Result<ChildProcess, (anyhow::Error, bool)> {
        let mut process =
            spawn(name, self.command(port), self.log_dir, self.at_exit).map_err(|e| (e, false))?;
        match self.wait_ready(&mut process, port).await {
            Ok(()) => Ok(process),
            Err(e) => {
                let taken = port_taken(&process);
                process.stop();
                Err((e, taken))
            }
        }
    }

    async fn wait_ready(&self, process: &mut ChildProcess, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + APISERVER_START_TIMEOUT;
        let mut last = String::from("not yet polled");
        loop {
            // A TCP connect is cheap; kubectl (a Go binary) only once something listens.
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                let out = kubectl::run(
                    self.admin_kubeconfig,
                    self.kubectl_cache,
                    &["get", "--raw=/readyz", "--request-timeout=5s"],
                    None,
                )
                .await?;
                if out.success() && out.stdout.trim() == "ok" {
                    return Ok(());
                }
                last = format!("{}{}", out.stdout.trim_end(), out.stderr.trim_end());
            }
            process
                .ensure_running()
                .context("kube-apiserver exited while starting")?;
            if Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready after {APISERVER_START_TIMEOUT:?} (last /readyz: \
                     {last}); log {}:\n{}",
                    process.log_path().display(),
                    process.log_tail(40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_make_target() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", bins_in(dir.path()).unwrap_err());
        assert!(
            err.contains("kube-apiserver not found") && err.contains("make kube-tools"),
            "{err}"
        );
        std::fs::write(dir.path().join("kube-apiserver"), "").unwrap();
        let err = format!("{:#}", bins_in(dir.path()).unwrap_err());
        assert!(err.contains("etcd not found"), "{err}");
    }
}
