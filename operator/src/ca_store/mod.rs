//! Where the CA's files live, and the tasks that keep the CA current with them.
//!
//! - The built-in root lives in the Secret `istio-ca-secret` (a folder in the no-cluster
//!   mode), created by whichever replica starts first and read by the others; its rotation
//!   steps are written back under the Secret's resourceVersion, so two replicas never rotate
//!   twice.
//! - A plug-in intermediate (`cacerts`, from a Secret or a folder) is re-read periodically;
//!   a change that holds a valid chain replaces the signer, a broken one is logged naming the
//!   file or key and the last good signer stays.
//! - In a cluster, the trust bundle is published to every namespace as the ConfigMap
//!   `istio-ca-root-cert` (key `root-cert.pem`), where agents read it.

mod folder;
mod keeper;
mod roots_configmap;
mod secret;

use std::path::PathBuf;

use capstan_ca::CaFiles;

pub use keeper::{
    builtin_tick, keep_builtin, keep_plugged, plugged_tick, start_builtin, start_plugged,
};
pub use roots_configmap::{ROOTS_CONFIGMAP, ROOTS_KEY, publish_roots};
pub use secret::SecretStore;

/// Istio's name for the Secret holding the self-signed root.
pub const BUILTIN_SECRET: &str = "istio-ca-secret";
/// Istio's name for the Secret holding a plug-in intermediate.
pub const PLUGGED_SECRET: &str = "cacerts";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Ca(#[from] capstan_ca::CaError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0}: not UTF-8 text")]
    NotText(String),
}

/// The files as last read, with the store's version of them (a Secret's resourceVersion).
#[derive(Debug, Clone)]
pub struct Stored {
    pub files: CaFiles,
    pub version: Option<String>,
}

/// A folder or a Secret holding CA files.
#[derive(Debug, Clone)]
pub enum FileStore {
    Folder(PathBuf),
    Secret(Box<SecretStore>),
}

impl FileStore {
    /// What the store holds of `names`, or `None` when it does not exist (an empty folder
    /// counts as absent).
    pub async fn read(&self, names: &[&str]) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Folder(dir) => folder::read(dir, names),
            Self::Secret(secret) => secret.read(names).await,
        }
    }

    /// Creates the store with `files`; `false` when another writer created it first (then
    /// read what it wrote).
    pub async fn create(&self, files: &CaFiles) -> Result<bool, StoreError> {
        match self {
            Self::Folder(dir) => folder::write(dir, files).map(|()| true),
            Self::Secret(secret) => secret.create(files).await,
        }
    }

    /// Replaces the store's files if they are still at `version`; `false` when another
    /// writer changed them since (then read again).
    pub async fn replace(
        &self,
        files: &CaFiles,
        version: Option<&str>,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Folder(dir) => folder::write(dir, files).map(|()| true),
            Self::Secret(secret) => secret.replace(files, version).await,
        }
    }

    /// How logs and errors name the store.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(dir) => dir.display().to_string(),
            Self::Secret(secret) => secret.describe(),
        }
    }
}
