//! Starting the capstan control plane under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::locate;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::wait::wait_until;

/// How long capstan gets to log `ADS server listening`.
pub const CAPSTAN_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `capstan run`.
#[derive(Debug)]
pub struct Capstan {
    pub process: ChildProcess,
    pub xds_port: u16,
    /// Port of capstan's monitoring server (/metrics, /debug/nacks, ...).
    pub monitoring_port: u16,
    /// Port of the TLS xDS server (and the CA), when it runs and the test did not choose
    /// its own `--xds-tls-addr`: in Kubernetes mode, or with a CA flag.
    pub xds_tls_port: u16,
    source: Source,
    log_dir: PathBuf,
    starts: usize,
}

/// The ports a capstan under test is started on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    xds: u16,
    monitoring: u16,
    xds_tls: u16,
}

/// Where a capstan under test reads its config, and any further flags.
#[derive(Debug, Clone)]
enum Source {
    Folder(PathBuf, Vec<String>),
    Kube {
        kubeconfig: PathBuf,
        args: Vec<String>,
    },
}

impl Capstan {
    /// Starts `capstan run --config-dir <config_dir> --xds-addr 127.0.0.1:<free port>
    /// --outbound-port 0` (binary from [`locate::capstan_bin`]) logging to `<log_dir>/capstan.log`,
    /// and waits for its `ADS server listening` line. Retries with other ports if a port was
    /// taken in between ("in use" in the log).
    pub async fn start(config_dir: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_folder_with(config_dir, &[], log_dir, "capstan").await
    }

    /// [`Capstan::start`] with further flags (`--ca-dir DIR`, `--xds-tls-addr ADDR`, ...), as
    /// `name` (log `<name>.log`).
    pub async fn start_folder_with(
        config_dir: &Path,
        args: &[&str],
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let args = args.iter().map(|a| a.to_string()).collect();
        let source = Source::Folder(config_dir.to_path_buf(), args);
        Self::start_from(source, log_dir, name).await
    }

    /// Starts `capstan run --kubeconfig <kubeconfig> <args>` as `name` (log `<name>.log`) and
    /// waits until it serves ADS (after its first complete list of every kind).
    pub async fn start_kube(
        kubeconfig: &Path,
        args: &[&str],
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let source = Source::Kube {
            kubeconfig: kubeconfig.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        Self::start_from(source, log_dir, name).await
    }

    async fn start_from(source: Source, log_dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (xds_port, monitoring_port) = (free_port()?, free_port()?);
            let xds_tls_port = free_port()?;
            let name = if attempt == 1 {
                name.to_string()
            } else {
                format!("{name}-{attempt}")
            };
            let ports = Ports {
                xds: xds_port,
                monitoring: monitoring_port,
                xds_tls: xds_tls_port,
            };
            match Self::launch(&source, log_dir, &name, ports).await {
                Ok(process) => {
                    return Ok(Self {
                        process,
                        xds_port,
                        monitoring_port,
                        xds_tls_port,
                        source,
                        log_dir: log_dir.to_path_buf(),
                        starts: 1,
                    });
                }
                Err((e, log)) if attempt < 3 && log.contains("in use") => {
                    eprintln!("capstan could not bind its ports, retrying: {e:#}");
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Stops capstan and starts a new process on the same ports and config (its log is
    /// `capstan-restart-N.log`), as after a crash or a rollout.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.stop();
        self.starts += 1;
        let name = format!("capstan-restart-{}", self.starts);
        let ports = Ports {
            xds: self.xds_port,
            monitoring: self.monitoring_port,
            xds_tls: self.xds_tls_port,
        };
        self.process = Self::launch(&self.source, &self.log_dir, &name, ports)
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    async fn launch(
        source: &Source,
        log_dir: &Path,
        name: &str,
        ports: Ports,
    ) -> Result<ChildProcess, (anyhow::Error, String)> {
        let bin = locate::capstan_bin().map_err(|e| (e, String::new()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run");
        let args = match source {
            Source::Folder(dir, args) => {
                cmd.arg("--config-dir").arg(dir);
                args
            }
            Source::Kube { kubeconfig, args } => {
                cmd.arg("--kubeconfig").arg(kubeconfig);
                args
            }
        };
        cmd.args(args);
        // Never the default 15012: tests run side by side.
        if !args.iter().any(|a| a.starts_with("--xds-tls-addr")) {
            cmd.arg("--xds-tls-addr")
                .arg(format!("127.0.0.1:{}", ports.xds_tls));
        }
        cmd.args([
            "--xds-addr",
            &format!("127.0.0.1:{}", ports.xds),
            "--outbound-port",
            "0",
            "--monitoring-addr",
            &format!("127.0.0.1:{}", ports.monitoring),
        ]);
        let mut process = Self::spawn(cmd, log_dir, name).map_err(|e| (e, String::new()))?;
        match Self::wait_listening(&mut process).await {
            Ok(()) => Ok(process),
            Err(e) => {
                let log = process.log();
                Err((e, log))
            }
        }
    }

    /// Spawns `cmd` (a `capstan ...` command line) with RUST_LOG=info (unless set) and no
    /// colours, logging to `<log_dir>/<name>.log`.
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> anyhow::Result<ChildProcess> {
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        // Whatever AWS client a test configures talks to moto on loopback with test
        // credentials; the credential chain must never reach for instance metadata.
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", crate::moto::REGION);
        ChildProcess::spawn(name, &mut cmd, &log_dir.join(format!("{name}.log")))
    }

    /// Waits for capstan's `ADS server listening on` log line.
    pub async fn wait_listening(process: &mut ChildProcess) -> anyhow::Result<()> {
        process
            .wait_for_log("`ADS server listening on`", CAPSTAN_START_TIMEOUT, |l| {
                l.contains("ADS server listening on")
            })
            .await
            .context("capstan did not come up")?;
        Ok(())
    }

    /// GET a path of capstan's monitoring server, requiring 200.
    pub async fn monitoring_get(&self, path: &str) -> anyhow::Result<crate::http::HttpResponse> {
        let addr = crate::envoy::loopback(self.monitoring_port);
        let resp = crate::http::HttpClient::new(addr)
            .get(&addr.to_string(), path, &[])
            .await?;
        anyhow::ensure!(
            resp.status.is_success(),
            "capstan monitoring {path} answered {}: {}",
            resp.status,
            resp.text()
        );
        Ok(resp)
    }

    /// Log lines that report a problem with `file_name` (line names the file and says
    /// WARN/ERROR or "error").
    pub fn problems_with(&self, file_name: &str) -> Vec<String> {
        self.process.log_lines(|l| mentions_problem(l, file_name))
    }

    /// Waits until more than `seen` log lines report a problem with `file_name`; returns them.
    pub async fn wait_for_problem_report(
        &mut self,
        file_name: &str,
        seen: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let what = format!("capstan to report problem #{} with {file_name}", seen + 1);
        wait_until(&what, timeout, async || {
            self.process.ensure_running()?;
            let lines = self.problems_with(file_name);
            anyhow::ensure!(
                lines.len() > seen,
                "{} such lines so far; log tail:\n{}",
                lines.len(),
                self.process.log_tail(20)
            );
            Ok(lines)
        })
        .await
    }
}

fn mentions_problem(line: &str, file_name: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    line.contains(file_name)
        && (line.contains("WARN") || line.contains("ERROR") || lower.contains("error"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_problem_lines() {
        let l = "2025-01-01T00:00:00Z  WARN capstan: skipping file /tmp/x/broken.yaml: parse error";
        assert!(super::mentions_problem(l, "broken.yaml"));
        assert!(!super::mentions_problem(l, "other.yaml"));
        assert!(!super::mentions_problem(
            "INFO loaded broken.yaml",
            "broken.yaml"
        ));
    }
}
