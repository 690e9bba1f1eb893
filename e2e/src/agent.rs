//! `capstan agent` processes for end-to-end tests, with an in-test CA ([`ca::TestCa`]) and
//! Envoys whose static bootstraps take their TLS material from an agent ([`envoy`]).

pub mod ca;
pub mod envoy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::ChildProcess;

pub use ca::{CA_SERVER_NAME, TestCa};
pub use envoy::{StaticEnvoy, client_bootstrap, server_bootstrap};

/// The log line an agent prints each time it starts serving a certificate.
pub const SERVING_LINE: &str = "serving a new certificate over SDS";

/// A running `capstan agent` for one workload identity.
#[derive(Debug)]
pub struct Agent {
    pub process: ChildProcess,
    pub sds_socket: PathBuf,
}

/// What one agent is started with.
#[derive(Debug, Clone)]
pub struct AgentSpec<'a> {
    /// Names its files in the log dir: `<name>.log`, `<name>.sock`, `<name>.token`.
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    /// Written to the token file.
    pub token: &'a str,
    /// `--cert-ttl`, e.g. `20s`.
    pub cert_ttl: &'a str,
    /// More arguments, last on the command line (e.g. `--envoy-bin`, `--`, Envoy's own).
    pub extra_args: &'a [&'a str],
}

/// Where the agent named `name` writes its Envoy bootstrap.
pub fn bootstrap_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.bootstrap.json"))
}

/// The CA an agent asks and the xDS server its Envoy is sent to.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// `--ca-address`, e.g. `https://127.0.0.1:15012`.
    pub ca_url: String,
    /// `--ca-root-cert`: the roots the agent trusts for the CA, and starts its bundle with.
    pub roots_file: PathBuf,
    /// `--ca-server-name` (and `--xds-server-name`): the name the CA's certificate carries.
    pub server_name: String,
    /// `--xds-address`, written into the Envoy bootstrap.
    pub xds_address: String,
}

/// How long an agent gets to serve its first certificate.
const FIRST_CERTIFICATE_TIMEOUT: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts `capstan agent` for `spec` against `target` and returns at once (see
    /// [`Agent::start`] to wait for its first certificate). Its bootstrap goes to
    /// `<dir>/<name>.bootstrap.json`.
    pub fn spawn(
        capstan_bin: &Path,
        target: &AgentTarget,
        dir: &Path,
        spec: &AgentSpec<'_>,
    ) -> anyhow::Result<Self> {
        let token_file = dir.join(format!("{}.token", spec.name));
        std::fs::write(&token_file, spec.token)
            .with_context(|| format!("writing {}", token_file.display()))?;
        let sds_socket = dir.join(format!("{}.sock", spec.name));
        let mut cmd = Command::new(capstan_bin);
        cmd.arg("agent")
            .args(["--ca-address", &target.ca_url])
            .arg("--ca-root-cert")
            .arg(&target.roots_file)
            .args(["--ca-server-name", &target.server_name])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--namespace", spec.namespace])
            .args(["--service-account", spec.service_account])
            .args(["--pod-name", &format!("{}-0", spec.name)])
            .args(["--pod-ip", "127.0.0.1"])
            .arg("--sds-socket")
            .arg(&sds_socket)
            .args(["--cert-ttl", spec.cert_ttl])
            .args(["--xds-address", &target.xds_address])
            .args(["--xds-server-name", &target.server_name])
            .arg("--bootstrap-out")
            .arg(bootstrap_file(dir, spec.name))
            .args(spec.extra_args)
            .env("CAPSTAN_LOG", "info,capstan=debug,capstan_ca=debug");
        let process =
            ChildProcess::spawn(spec.name, &mut cmd, &dir.join(format!("{}.log", spec.name)))?;
        Ok(Self {
            process,
            sds_socket,
        })
    }

    /// [`Agent::spawn`], then waits until the agent serves its first certificate.
    pub async fn start(
        capstan_bin: &Path,
        target: &AgentTarget,
        dir: &Path,
        spec: &AgentSpec<'_>,
    ) -> anyhow::Result<Self> {
        let mut agent = Self::spawn(capstan_bin, target, dir, spec)?;
        agent
            .process
            .wait_for_log("the first certificate", FIRST_CERTIFICATE_TIMEOUT, |l| {
                l.contains(SERVING_LINE)
            })
            .await?;
        Ok(agent)
    }

    /// How many certificates the agent has served so far.
    pub fn certificates_served(&self) -> usize {
        self.process.log_lines(|l| l.contains(SERVING_LINE)).len()
    }
}
