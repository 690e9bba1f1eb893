//! `capstan agent`: what Istio's pilot-agent does for a workload's Envoy. It makes a key in
//! its own memory, has the CA certify it for the workload's SPIFFE identity (proven by the
//! workload's token), serves the certificate and the trust bundle to Envoy over SDS on a
//! private Unix socket, renews at half life, and writes (and optionally runs) Envoy's
//! bootstrap. The private key leaves the process only over that socket.

mod args;
pub mod bootstrap;
mod ca_client;
pub mod chain;
mod csr;
pub mod rotation;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use capstan_ca::SpiffeId;
use capstan_ca::sds::{SdsError, SecretsPublisher, WorkloadSecrets, bind_uds, serve_uds};
use tokio::io::AsyncReadExt;

pub use args::{AgentArgs, ProxyType, parse_duration};
pub use csr::KeyAndCsr;

use chain::LeafInfo;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("{0} is not a valid SPIFFE URI")]
    InvalidIdentity(String),
    #[error("key or CSR generation failed: {0}")]
    Key(#[from] rcgen::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("connecting to the CA: {0}")]
    Connect(String),
    #[error("the CA refused: {0}")]
    Ca(tonic::Status),
    #[error("the CA returned an unusable chain: {0}")]
    BadChain(String),
    #[error("the CA certified a key that is not ours")]
    WrongKey,
    #[error("the CA certified {got:?}, not {expected}")]
    WrongIdentity { expected: String, got: String },
    #[error(transparent)]
    Sds(#[from] SdsError),
}

/// Reads at most `max` bytes of UTF-8 from `path`; a larger file is an error, not truncated.
pub(crate) async fn read_bounded(path: &Path, max: u64) -> Result<String, AgentError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| AgentError::Io(path.to_path_buf(), e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| AgentError::Io(path.to_path_buf(), e))?;
    if bytes.len() as u64 > max {
        return Err(AgentError::File(
            path.to_path_buf(),
            format!("larger than {max} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| AgentError::File(path.to_path_buf(), "not UTF-8".into()))
}

/// A certificate being served, and when it arrived.
#[derive(Debug, Clone)]
struct Served {
    leaf: LeafInfo,
    received: SystemTime,
}

/// One issuance: new key, CSR, `CreateCertificate`, checks. Returns what SDS should serve.
async fn issue(
    args: &AgentArgs,
    identity: &SpiffeId,
) -> Result<(WorkloadSecrets, LeafInfo), AgentError> {
    let roots = chain::read_roots(&args.ca_root_cert).await?;
    let request = KeyAndCsr::generate(identity)?;
    let returned = ca_client::create_certificate(args, &roots, &request.csr_pem).await?;
    let (certs, leaf) = chain::check_chain(&returned, &request.public_key_info(), identity)?;
    // The root goes out as ROOTCA; the chain Envoy presents is the leaf and intermediates.
    let presented = if certs.len() > 1 {
        &certs[..certs.len() - 1]
    } else {
        &certs[..]
    };
    let secrets = WorkloadSecrets {
        cert_chain_pem: presented.iter().map(|c| c.pem.as_str()).collect(),
        private_key_pem: request.key.serialize_pem(),
        trust_bundle_pem: chain::trust_bundle(&roots, &certs),
    };
    Ok((secrets, leaf))
}

/// Issues until it works, backing off between failures. Whatever is being served stays
/// served meanwhile; `valid_until` is only for saying when it has run out.
async fn issue_with_retries(
    args: &AgentArgs,
    identity: &SpiffeId,
    valid_until: Option<SystemTime>,
) -> (WorkloadSecrets, LeafInfo) {
    let mut attempt = 0u32;
    loop {
        match issue(args, identity).await {
            Ok(issued) => return issued,
            Err(e) => {
                let delay = rotation::retry_delay(attempt, fastrand::f64());
                let expired = valid_until.is_some_and(|t| t <= SystemTime::now());
                if expired {
                    tracing::error!(
                        attempt,
                        ?delay,
                        "certificate request failed and the current certificate has expired: {e}"
                    );
                } else {
                    tracing::warn!(attempt, ?delay, "certificate request failed: {e}");
                }
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn publish(
    publisher: &SecretsPublisher,
    identity: &SpiffeId,
    (secrets, leaf): (WorkloadSecrets, LeafInfo),
) -> Served {
    let version = publisher.publish(secrets);
    let expires = leaf
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    tracing::info!(%identity, serial = %leaf.serial, expires_unix = expires, version, "serving a new certificate over SDS");
    Served {
        leaf,
        received: SystemTime::now(),
    }
}

/// Renews at half life, forever.
async fn rotate(
    args: AgentArgs,
    identity: SpiffeId,
    publisher: SecretsPublisher,
    mut served: Served,
) {
    loop {
        let delay = rotation::renewal_delay(
            served.leaf.not_before,
            served.leaf.not_after,
            served.received,
            SystemTime::now(),
        );
        tracing::debug!(?delay, "next renewal");
        tokio::time::sleep(delay).await;
        let issued = issue_with_retries(&args, &identity, Some(served.leaf.not_after)).await;
        served = publish(&publisher, &identity, issued);
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the working directory")?
        .join(path))
}

/// Runs the agent until a signal, or until the Envoy it started exits (with its status).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let identity = args.identity();
    let socket = absolute(&args.sds_socket)?;
    if args.envoy_bin.is_some() && args.bootstrap_out.is_none() {
        anyhow::bail!("--envoy-bin needs --bootstrap-out (and --xds-address)");
    }
    if let Some(out) = &args.bootstrap_out {
        let bootstrap = bootstrap::bootstrap_json(&args, &socket)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, serde_json::to_vec_pretty(&bootstrap)?)
            .with_context(|| format!("writing {}", out.display()))?;
        tracing::info!(path = %out.display(), "wrote the Envoy bootstrap");
    }

    let (publisher, secrets) = SecretsPublisher::new();
    let listener = bind_uds(&socket)?;
    tracing::info!(socket = %socket.display(), %identity, "serving SDS");
    // Open SDS streams would hold up a graceful stop for ever (Envoy keeps them open), so
    // the server is aborted on the way out instead.
    let mut sds = tokio::spawn(serve_uds(listener, secrets, std::future::pending()));

    let first = tokio::select! {
        issued = issue_with_retries(&args, &identity, None) => issued,
        () = crate::run::shutdown_signal() => {
            sds.abort();
            return cleanup(&socket, Ok(()));
        }
    };
    let served = publish(&publisher, &identity, first);
    let mut rotation = tokio::spawn(rotate(args.clone(), identity, publisher, served));

    let mut envoy = match &args.envoy_bin {
        Some(bin) => Some(start_envoy(bin, &args)?),
        None => None,
    };
    let envoy_exit = async {
        match envoy.as_mut() {
            Some(child) => child.wait().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = envoy_exit => match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(anyhow::anyhow!("Envoy exited with {s}")),
            Err(e) => Err(anyhow::anyhow!("waiting for Envoy: {e}")),
        },
        () = crate::run::shutdown_signal() => Ok(()),
        served = &mut sds => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the SDS server stopped")),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(anyhow::anyhow!("SDS server task: {e}")),
        },
        ended = &mut rotation => Err(anyhow::anyhow!("rotation stopped: {ended:?}")),
    };
    rotation.abort();
    sds.abort();
    if let Some(child) = envoy.as_mut() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    cleanup(&socket, outcome)
}

fn start_envoy(bin: &Path, args: &AgentArgs) -> anyhow::Result<tokio::process::Child> {
    let bootstrap = args
        .bootstrap_out
        .as_ref()
        .context("--envoy-bin needs --bootstrap-out")?;
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(bootstrap)
        .args(&args.envoy_args)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    tracing::info!(pid = child.id(), "started Envoy");
    Ok(child)
}

fn cleanup(socket: &Path, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(socket);
    outcome
}
