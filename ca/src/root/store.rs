//! The built-in root kept in a folder (the no-cluster mode; in a cluster, a Secret holds the
//! same two files), so that restarts and replicas share one root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{Issuer, KeyPair};

use super::files::CaFiles;
use super::{CaError, RootCa};

/// The root certificate, as Istio's `istio-ca-secret` names it.
pub const CERT_FILE: &str = "ca-cert.pem";
/// The root's private key (mode 0600).
pub const KEY_FILE: &str = "ca-key.pem";

impl RootCa {
    /// The root kept in `dir`, or a new one for `trust_domain` written there when `dir` holds
    /// none. A folder holding only one of the two files is an error, never overwritten: it
    /// may be a root another replica is writing, or one an operator put there by halves.
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &str,
        validity: Duration,
    ) -> Result<Self, CaError> {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Self::from_files(
                trust_domain,
                &CaFiles::read_dir(dir, &[CERT_FILE, KEY_FILE])?,
            ),
            (false, false) => {
                let root = Self::generate(trust_domain, validity)?;
                fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
                write_new(&key, root.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_new(&cert, root.certificate_pem.as_bytes(), 0o644)?;
                Ok(root)
            }
            _ => Err(CaError::IncompleteStore(dir.to_path_buf())),
        }
    }

    /// The signer in `files`' `ca-cert.pem` and `ca-key.pem`.
    pub fn from_files(trust_domain: &str, files: &CaFiles) -> Result<Self, CaError> {
        Self::from_pem_pair(trust_domain, files, CERT_FILE, KEY_FILE)
    }

    pub(super) fn from_pem_pair(
        trust_domain: &str,
        files: &CaFiles,
        cert: &str,
        key: &str,
    ) -> Result<Self, CaError> {
        let certificate_pem = files.require(cert)?.to_string();
        let key_pair = KeyPair::from_pem(files.require(key)?)
            .map_err(|e| CaError::InvalidFile(files.label(key), e))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key_pair)
            .map_err(|e| CaError::InvalidFile(files.label(cert), e))?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            certificate_pem,
            above: Vec::new(),
            issuer,
        })
    }
}

/// Writes `bytes` to a new file at `path` with `mode`, whole or not at all (a temporary file
/// renamed into place), so a reader never sees half a key.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let staged = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&staged)
        .map_err(|e| io(&staged, e))?;
    file.write_all(bytes).map_err(|e| io(&staged, e))?;
    file.sync_all().map_err(|e| io(&staged, e))?;
    // The umask may have narrowed the mode given at creation; the key's must be exact.
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode)).map_err(|e| io(&staged, e))?;
    fs::rename(&staged, path).map_err(|e| io(path, e))
}

pub(super) fn io(path: &Path, error: std::io::Error) -> CaError {
    CaError::Io(PathBuf::from(path), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpiffeId;
    use x509_parser::pem::parse_x509_pem;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_root_written_once_is_the_root_loaded_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = RootCa::load_or_generate(dir.path(), "cluster.local", DAY).expect("new");
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .expect("key written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = RootCa::load_or_generate(dir.path(), "cluster.local", DAY).expect("loaded");
        assert_eq!(again.certificate_pem(), first.certificate_pem());

        // What the loaded root signs verifies against the root written first.
        let issued = again
            .issue(&SpiffeId::new("cluster.local", "a", "b"), DAY)
            .expect("issued");
        let (_, root_pem) = parse_x509_pem(first.certificate_pem().as_bytes()).expect("pem");
        let root_cert = root_pem.parse_x509().expect("x509");
        let (_, leaf_pem) = parse_x509_pem(issued.certificate_pem.as_bytes()).expect("pem");
        let leaf = leaf_pem.parse_x509().expect("x509");
        leaf.verify_signature(Some(root_cert.public_key()))
            .expect("signed by the stored root");
    }

    #[test]
    fn half_a_store_or_a_bad_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        RootCa::load_or_generate(dir.path(), "cluster.local", DAY).expect("new");
        fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        let err = RootCa::load_or_generate(dir.path(), "cluster.local", DAY).expect_err("bad key");
        assert!(err.to_string().contains(KEY_FILE), "{err}");

        fs::remove_file(dir.path().join(KEY_FILE)).expect("remove");
        let err = RootCa::load_or_generate(dir.path(), "cluster.local", DAY).expect_err("half");
        assert!(matches!(err, CaError::IncompleteStore(_)), "{err}");
        assert!(
            dir.path().join(CERT_FILE).exists(),
            "the remaining file is never overwritten"
        );
    }
}
