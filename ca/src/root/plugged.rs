//! A plugged-in CA: an intermediate an operator's PKI issued, in the `cacerts` layout Istio
//! users already have (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`).
//! capstan signs with the intermediate; workloads get the chain up to the operator's root.

use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::CaFiles;
use super::store::{CERT_FILE, KEY_FILE};
use super::{CaError, RootCa};

/// The chain from the signing certificate up to the root (Istio's name).
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// The root that workloads trust.
pub const ROOT_FILE: &str = "root-cert.pem";
/// The four files of a `cacerts` layout.
pub const PLUGGED_FILES: [&str; 4] = [CERT_FILE, KEY_FILE, CHAIN_FILE, ROOT_FILE];

impl RootCa {
    /// The intermediate in the `cacerts` folder `dir`. Each certificate of the chain must be
    /// signed by the next one and the last by the root: a folder whose files do not belong
    /// together is refused, naming the file, rather than handing workloads a chain no peer
    /// can verify.
    pub fn load_plugged(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let files = CaFiles::read_dir(dir, &PLUGGED_FILES)?;
        Self::from_plugged_files(trust_domain, &files)
    }

    /// The intermediate in a `cacerts` layout read from anywhere (a folder, a Secret).
    pub fn from_plugged_files(trust_domain: &str, files: &CaFiles) -> Result<Self, CaError> {
        let mut ca = Self::from_files(trust_domain, files)?;
        let chain = pem_blocks(files, CHAIN_FILE)?;
        let root = pem_blocks(files, ROOT_FILE)?;
        let [root] = root.as_slice() else {
            return Err(broken(
                files,
                ROOT_FILE,
                "must hold exactly one certificate",
            ));
        };
        let signing = pem_blocks(files, CERT_FILE)?;
        let [signing] = signing.as_slice() else {
            return Err(broken(
                files,
                CERT_FILE,
                "must hold exactly one certificate",
            ));
        };
        // `cert-chain.pem` starts with the signing certificate itself; the root may or may not
        // be at its end.
        let mut above: Vec<pem::Pem> = chain
            .iter()
            .skip_while(|block| block.contents() == signing.contents())
            .cloned()
            .collect();
        if above
            .last()
            .is_none_or(|last| last.contents() != root.contents())
        {
            above.push(root.clone());
        }
        let mut child = signing;
        for parent in &above {
            verify(child, parent).map_err(|why| broken(files, CHAIN_FILE, &why))?;
            child = parent;
        }
        ca.above = above.iter().map(super::files::encode_pem).collect();
        Ok(ca)
    }
}

fn pem_blocks(files: &CaFiles, name: &str) -> Result<Vec<pem::Pem>, CaError> {
    let blocks =
        pem::parse_many(files.require(name)?).map_err(|e| broken(files, name, &e.to_string()))?;
    if blocks.iter().any(|b| b.tag() != "CERTIFICATE") {
        return Err(broken(
            files,
            name,
            "holds something other than certificates",
        ));
    }
    Ok(blocks)
}

/// Whether `child` is signed by `parent`'s key.
pub(super) fn verify(child: &pem::Pem, parent: &pem::Pem) -> Result<(), String> {
    let (_, child) = X509Certificate::from_der(child.contents()).map_err(|e| e.to_string())?;
    let (_, parent) = X509Certificate::from_der(parent.contents()).map_err(|e| e.to_string())?;
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| format!("{} is not signed by {}", child.subject(), parent.subject()))
}

fn broken(files: &CaFiles, name: &str, why: &str) -> CaError {
    CaError::BrokenChain(files.label(name), why.to_string())
}

#[cfg(test)]
mod tests;
