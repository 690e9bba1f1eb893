//! `capstan agent` processes for end-to-end tests, with an in-test CA ([`ca::TestCa`]) and
//! Envoys whose static bootstraps take their TLS material from an agent ([`envoy`]).

pub mod ca;
pub mod envoy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::envoy::{RunAs, command_as, dir_owned_by, ensure_user_may};
use crate::process::ChildProcess;

pub use ca::{CA_SERVER_NAME, TestCa};
pub use envoy::{StaticEnvoy, client_bootstrap, server_bootstrap, with_agent_sds};

/// The log line an agent prints each time it starts serving a certificate.
pub const SERVING_LINE: &str = "serving a new certificate over SDS";

/// A running `capstan agent` for one workload identity.
#[derive(Debug)]
pub struct Agent {
    pub process: ChildProcess,
    pub sds_socket: PathBuf,
    /// Where the agent writes its Envoy bootstrap.
    pub bootstrap: PathBuf,
    /// The port of the bootstrap's readiness listener (`/healthz/ready`), free when chosen:
    /// several agents' Envoys run side by side.
    pub health_port: u16,
    /// The files of an agent run as another user ([`Agent::spawn_as`]): its token, socket
    /// and bootstrap. Declared after `process`, so it is removed once the agent has stopped.
    _runtime_dir: Option<tempfile::TempDir>,
}

/// What one agent is started with.
#[derive(Debug, Clone)]
pub struct AgentSpec<'a> {
    /// Names its files in the log dir: `<name>.log`, `<name>.sock`, `<name>.token`.
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    /// `--trust-domain`: the one the agent asks its identity in.
    pub trust_domain: &'a str,
    /// Written to the token file.
    pub token: &'a str,
    /// `--cert-ttl`, e.g. `20s`.
    pub cert_ttl: &'a str,
    /// More arguments, last on the command line (e.g. `--envoy-bin`, `--`, Envoy's own).
    pub extra_args: &'a [&'a str],
}

impl<'a> AgentSpec<'a> {
    /// An agent named `name` for `id`, presenting `token`, with a certificate valid for an
    /// hour.
    pub fn for_identity(name: &'a str, id: &'a capstan_ca::SpiffeId, token: &'a str) -> Self {
        AgentSpec {
            name,
            namespace: &id.namespace,
            service_account: &id.service_account,
            trust_domain: &id.trust_domain,
            token,
            cert_ttl: "1h",
            extra_args: &[],
        }
    }
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
        Self::spawn_with(capstan_bin, target, dir, spec, None)
    }

    /// As [`Agent::spawn`], the agent running as `user`, as Istio's pilot-agent runs as the
    /// proxy's uid 1337: the SDS socket it makes (mode 0600) is then that user's, so an Envoy
    /// run as the same user may connect to it. Its token, socket and bootstrap live in a
    /// private directory of `user`'s under the system temp dir (the log dir may be out of
    /// its reach); only its log goes to `dir`. `target`'s roots file must be readable by
    /// `user`.
    pub fn spawn_as(
        capstan_bin: &Path,
        target: &AgentTarget,
        dir: &Path,
        spec: &AgentSpec<'_>,
        user: RunAs,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(capstan_bin, target, dir, spec, Some(user))
    }

    fn spawn_with(
        capstan_bin: &Path,
        target: &AgentTarget,
        dir: &Path,
        spec: &AgentSpec<'_>,
        user: Option<RunAs>,
    ) -> anyhow::Result<Self> {
        let runtime_dir = match user {
            Some(user) => Some(runtime_dir_for(user, spec.name, target)?),
            None => None,
        };
        let files = runtime_dir.as_ref().map_or(dir, |rt| rt.path());
        let token_file = write_token(files, spec, user)?;
        let sds_socket = files.join(format!("{}.sock", spec.name));
        let bootstrap = bootstrap_file(files, spec.name);
        let health_port = crate::ports::free_port()?;
        let (mut cmd, binary) = match user {
            Some(user) => {
                let (cmd, binary) = command_as(capstan_bin, user)?;
                (cmd, Some(binary))
            }
            None => (Command::new(capstan_bin), None),
        };
        cmd.arg("agent")
            .args(["--ca-address", &target.ca_url])
            .arg("--ca-root-cert")
            .arg(&target.roots_file)
            .args(["--ca-server-name", &target.server_name])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--namespace", spec.namespace])
            .args(["--service-account", spec.service_account])
            .args(["--trust-domain", spec.trust_domain])
            .args(["--pod-name", &format!("{}-0", spec.name)])
            .args(["--pod-ip", "127.0.0.1"])
            .arg("--sds-socket")
            .arg(&sds_socket)
            .args(["--cert-ttl", spec.cert_ttl])
            .args(["--xds-address", &target.xds_address])
            .args(["--xds-server-name", &target.server_name])
            .arg("--bootstrap-out")
            .arg(&bootstrap)
            .args(["--health-port", &health_port.to_string()])
            .args(spec.extra_args)
            .env("CAPSTAN_LOG", "info,capstan=debug,capstan_ca=debug");
        let process =
            ChildProcess::spawn(spec.name, &mut cmd, &dir.join(format!("{}.log", spec.name)))?;
        // Kept open until the child has exec'd the binary through it (see `command_as`).
        drop(binary);
        Ok(Self {
            process,
            sds_socket,
            bootstrap,
            health_port,
            _runtime_dir: runtime_dir,
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
        agent.wait_first_certificate().await?;
        Ok(agent)
    }

    /// [`Agent::spawn_as`], then waits until the agent serves its first certificate.
    pub async fn start_as(
        capstan_bin: &Path,
        target: &AgentTarget,
        dir: &Path,
        spec: &AgentSpec<'_>,
        user: RunAs,
    ) -> anyhow::Result<Self> {
        let mut agent = Self::spawn_as(capstan_bin, target, dir, spec, user)?;
        agent.wait_first_certificate().await?;
        Ok(agent)
    }

    async fn wait_first_certificate(&mut self) -> anyhow::Result<()> {
        self.process
            .wait_for_log("the first certificate", FIRST_CERTIFICATE_TIMEOUT, |l| {
                l.contains(SERVING_LINE)
            })
            .await?;
        Ok(())
    }

    /// How many certificates the agent has served so far.
    pub fn certificates_served(&self) -> usize {
        self.process.log_lines(|l| l.contains(SERVING_LINE)).len()
    }
}

/// The private directory of an agent run as `user`, after checking that `user` may read the
/// roots it is given (which it re-reads at every rotation, so they are not copied).
fn runtime_dir_for(
    user: RunAs,
    name: &str,
    target: &AgentTarget,
) -> anyhow::Result<tempfile::TempDir> {
    ensure_user_may(user, &target.roots_file, 0o4).with_context(|| {
        format!(
            "agent {name} runs as uid {} and reads the CA roots; keep them out of root's home",
            user.uid
        )
    })?;
    dir_owned_by(user, &format!("capstan-agent-{name}-"))
}

/// Writes `spec`'s token to `<dir>/<name>.token`, owned by `user` when the agent runs as one.
fn write_token(dir: &Path, spec: &AgentSpec<'_>, user: Option<RunAs>) -> anyhow::Result<PathBuf> {
    let token_file = dir.join(format!("{}.token", spec.name));
    std::fs::write(&token_file, spec.token)
        .with_context(|| format!("writing {}", token_file.display()))?;
    if let Some(user) = user {
        std::os::unix::fs::chown(&token_file, Some(user.uid), Some(user.gid))
            .with_context(|| format!("giving {} to uid {}", token_file.display(), user.uid))?;
    }
    Ok(token_file)
}
