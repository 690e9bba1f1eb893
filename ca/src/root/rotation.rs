//! The built-in root over its whole life: created once, then rotated in two steps so that no
//! proxy ever meets a certificate from a root it does not trust yet.
//!
//! 1. *Announce*: when the signing root has less than `grace` of its life left, a next root is
//!    made and added to the trust bundle, while the old root keeps signing. Proxies pick the
//!    new bundle up on their next certificate rotation.
//! 2. *Switch*: once the next root has been announced for `announce` (longer than a workload
//!    certificate's life, so every proxy has renewed meanwhile), it becomes the signer; the old
//!    root stays in the bundle until it expires, for the certificates it signed.
//!
//! Everything is kept in one set of files ([`CaFiles`]: `istio-ca-secret`'s keys, or the
//! `--ca-dir` folder), written whole at each step.

use std::time::{Duration, SystemTime};

use x509_parser::pem::parse_x509_pem;

use super::files::CaFiles;
use super::keys::KeyAlgorithm;
use super::store::{CERT_FILE, KEY_FILE};
use super::{CaError, RootCa};
use crate::CaState;

/// The next root, trusted but not yet signing.
pub const NEXT_CERT_FILE: &str = "next-ca-cert.pem";
/// The next root's key.
pub const NEXT_KEY_FILE: &str = "next-ca-key.pem";
/// Every root workloads must trust, PEM-concatenated (the name Istio's `istio-ca-secret` uses).
pub const BUNDLE_FILE: &str = "root-cert.pem";
/// All files of the built-in root.
pub const ROOT_FILES: [&str; 5] = [
    CERT_FILE,
    KEY_FILE,
    BUNDLE_FILE,
    NEXT_CERT_FILE,
    NEXT_KEY_FILE,
];

/// When to rotate the built-in root.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Validity of a new root.
    pub validity: Duration,
    /// Announce the next root when less than this fraction of the signer's life is left
    /// (Istio rotates its self-signed root at 20%).
    pub grace: f64,
    /// How long the next root is trusted before it signs: more than the longest workload
    /// certificate, so every proxy has fetched the new bundle by then.
    pub announce: Duration,
    /// The key algorithm of a new root.
    pub algorithm: KeyAlgorithm,
}

/// What a rotation step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// A next root was made and added to the bundle.
    Announced,
    /// The next root became the signer.
    Switched,
    /// Expired roots left the bundle.
    Pruned,
}

/// The files of a new root for `trust_domain`.
pub fn new_root_files(
    origin: &CaFiles,
    trust_domain: &str,
    policy: &RotationPolicy,
) -> Result<CaFiles, CaError> {
    let root = RootCa::generate_with(trust_domain, policy.validity, policy.algorithm)?;
    let mut files = origin.clone();
    for name in ROOT_FILES {
        files.remove(name);
    }
    files.insert(CERT_FILE, root.certificate_pem.clone());
    files.insert(KEY_FILE, root.issuer.key().serialize_pem());
    files.insert(BUNDLE_FILE, root.certificate_pem.clone());
    Ok(files)
}

/// The signer and trust bundle the files describe: the signing root first, then the next
/// root and any earlier root that has not expired.
pub fn state_from_files(
    files: &CaFiles,
    trust_domain: &str,
    now: SystemTime,
) -> Result<CaState, CaError> {
    let signer = RootCa::from_files(trust_domain, files)?;
    let mut bundle = vec![signer.certificate_pem.clone()];
    let mut others = Vec::new();
    if let Some(next) = files.get(NEXT_CERT_FILE) {
        others.push(next.to_string());
    }
    if let Some(text) = files.get(BUNDLE_FILE) {
        others.extend(split_pem(files, BUNDLE_FILE, text)?);
    }
    for pem in others {
        let (_, not_after) = validity(files, BUNDLE_FILE, &pem)?;
        if not_after > now && !bundle.iter().any(|b| same_cert(b, &pem)) {
            bundle.push(pem);
        }
    }
    let mut state = CaState::new(signer);
    state.trust_bundle = bundle;
    Ok(state)
}

/// The files after the rotation step due at `now`, if one is.
pub fn rotation_step(
    files: &CaFiles,
    trust_domain: &str,
    now: SystemTime,
    policy: &RotationPolicy,
) -> Result<Option<(CaFiles, RotationStep)>, CaError> {
    let signing = files.require(CERT_FILE)?;
    let (not_before, not_after) = validity(files, CERT_FILE, signing)?;
    let mut next_files = files.clone();

    if let Some(next) = files.get(NEXT_CERT_FILE) {
        let (announced, _) = validity(files, NEXT_CERT_FILE, next)?;
        // A new root's notBefore is backdated by the skew allowance; count from its making.
        let announced = announced + super::CLOCK_SKEW;
        if now >= announced + policy.announce {
            next_files.insert(CERT_FILE, next.to_string());
            next_files.insert(KEY_FILE, files.require(NEXT_KEY_FILE)?.to_string());
            next_files.remove(NEXT_CERT_FILE);
            next_files.remove(NEXT_KEY_FILE);
            let bundle = live_bundle(files, now, &[next, signing])?;
            next_files.insert(BUNDLE_FILE, bundle);
            return Ok(Some((next_files, RotationStep::Switched)));
        }
    } else {
        let life = not_after.duration_since(not_before).unwrap_or_default();
        let left = not_after.duration_since(now).unwrap_or_default();
        if left.as_secs_f64() < life.as_secs_f64() * policy.grace {
            let next = RootCa::generate_with(trust_domain, policy.validity, policy.algorithm)?;
            next_files.insert(NEXT_CERT_FILE, next.certificate_pem.clone());
            next_files.insert(NEXT_KEY_FILE, next.issuer.key().serialize_pem());
            let bundle = live_bundle(files, now, &[signing, &next.certificate_pem])?;
            next_files.insert(BUNDLE_FILE, bundle);
            return Ok(Some((next_files, RotationStep::Announced)));
        }
    }

    let pruned = live_bundle(files, now, &[signing])?;
    if files.get(BUNDLE_FILE) != Some(pruned.as_str()) {
        next_files.insert(BUNDLE_FILE, pruned);
        return Ok(Some((next_files, RotationStep::Pruned)));
    }
    Ok(None)
}

/// `first`, then the unexpired roots of the files' bundle, without duplicates, joined.
fn live_bundle(files: &CaFiles, now: SystemTime, first: &[&str]) -> Result<String, CaError> {
    let mut kept: Vec<String> = first.iter().map(|p| p.to_string()).collect();
    if let Some(text) = files.get(BUNDLE_FILE) {
        for pem in split_pem(files, BUNDLE_FILE, text)? {
            let (_, not_after) = validity(files, BUNDLE_FILE, &pem)?;
            if not_after > now && !kept.iter().any(|k| same_cert(k, &pem)) {
                kept.push(pem);
            }
        }
    }
    Ok(kept
        .iter()
        .map(|p| p.trim_end().to_string() + "\n")
        .collect())
}

fn split_pem(files: &CaFiles, name: &str, text: &str) -> Result<Vec<String>, CaError> {
    let blocks = pem::parse_many(text)
        .map_err(|e| CaError::BrokenChain(files.label(name), e.to_string()))?;
    Ok(blocks.iter().map(super::files::encode_pem).collect())
}

fn same_cert(a: &str, b: &str) -> bool {
    match (pem::parse(a), pem::parse(b)) {
        (Ok(a), Ok(b)) => a.contents() == b.contents(),
        _ => a == b,
    }
}

/// A certificate's notBefore and notAfter.
fn validity(files: &CaFiles, name: &str, pem: &str) -> Result<(SystemTime, SystemTime), CaError> {
    let bad = |why: String| CaError::BrokenChain(files.label(name), why);
    let (_, block) = parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = block.parse_x509().map_err(|e| bad(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

#[cfg(test)]
mod tests;
