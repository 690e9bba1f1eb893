//! Envoy's Secret Discovery Service, as Istio's agent serves it to its Envoy: two secrets,
//! `default` (the workload's certificate chain and private key) and `ROOTCA` (the trust
//! bundle), over a Unix domain socket only the agent's user can open.
//!
//! The secrets of the moment live in a [`tokio::sync::watch`] ([`SecretsPublisher`]); every
//! open stream follows it, so a rotated certificate reaches Envoy without a reconnect.
//! Streams are state of the world (`StreamSecrets`), which is what Envoy uses for SDS unless a
//! config source asks for `DELTA_GRPC`; `DeltaSecrets` answers `Unimplemented`.

mod resources;
mod server;
mod socket;
mod stream;

use std::sync::Arc;

use tokio::sync::watch;

pub use resources::{SECRET_TYPE_URL, secret_resource};
pub use server::{MAX_REQUEST_BYTES, MAX_STREAMS, SdsServer};
pub use socket::{bind_uds, serve_uds};
pub use stream::{MAX_NAME_LEN, MAX_NAMES};

/// The secret holding the workload certificate chain and key (Istio's name).
pub const DEFAULT_SECRET: &str = "default";
/// The secret holding the trust bundle (Istio's name).
pub const ROOT_SECRET: &str = "ROOTCA";

/// What SDS serves: one workload identity's certificate and the roots it trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadSecrets {
    /// The leaf first, then the intermediates, PEM-encoded and concatenated.
    pub cert_chain_pem: String,
    /// The leaf's private key, PEM-encoded.
    pub private_key_pem: String,
    /// The roots peers' certificates must chain to, one PEM each.
    pub trust_bundle_pem: Vec<String>,
}

// The key must never reach a log line, so Debug leaves it out.
impl std::fmt::Debug for WorkloadSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSecrets")
            .field("cert_chain_pem", &self.cert_chain_pem.len())
            .field("trust_bundle_pem", &self.trust_bundle_pem.len())
            .finish_non_exhaustive()
    }
}

/// One published state: the secrets and a version that grows with every publication (what
/// SDS answers as `version_info`).
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub secrets: Arc<WorkloadSecrets>,
}

/// The receiving end the SDS server follows; `None` until the first certificate.
pub type SecretsReceiver = watch::Receiver<Option<Published>>;

/// Publishes the current secrets to every SDS stream.
#[derive(Debug)]
pub struct SecretsPublisher {
    tx: watch::Sender<Option<Published>>,
}

impl SecretsPublisher {
    /// A publisher with nothing published yet, and a receiver for the server.
    pub fn new() -> (Self, SecretsReceiver) {
        let (tx, rx) = watch::channel(None);
        (Self { tx }, rx)
    }

    /// Replaces the secrets; open streams push them to their Envoy.
    pub fn publish(&self, secrets: WorkloadSecrets) -> u64 {
        let mut version = 0;
        self.tx.send_modify(|current| {
            version = current.as_ref().map_or(1, |p| p.version + 1);
            *current = Some(Published {
                version,
                secrets: Arc::new(secrets),
            });
        });
        version
    }

    pub fn subscribe(&self) -> SecretsReceiver {
        self.tx.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(std::path::PathBuf),
    #[error("SDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

#[cfg(test)]
mod tests;
