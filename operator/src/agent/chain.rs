//! Checking what the CA returned before serving it, and the trust bundle.

use std::time::{Duration, SystemTime};

use capstan_ca::SpiffeId;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::AgentError;

/// Most certificates accepted in a returned chain (leaf, intermediates, root).
pub const MAX_CHAIN_LEN: usize = 8;
/// Largest PEM certificate accepted, in the chain or in the roots file.
pub const MAX_CERT_PEM: usize = 64 * 1024;
/// Largest roots file read.
pub const MAX_ROOTS_FILE: u64 = 1024 * 1024;

/// What the agent needs to know about an accepted leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex, as Envoy's `/certs` shows it.
    pub serial: String,
}

/// One PEM certificate, its DER and its text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemCert {
    pub der: Vec<u8>,
    pub pem: String,
}

/// The certificates in `text`, in order; anything but CERTIFICATE blocks is refused.
pub fn parse_certs(text: &str) -> Result<Vec<PemCert>, AgentError> {
    let blocks = pem::parse_many(text).map_err(|e| AgentError::BadChain(e.to_string()))?;
    blocks
        .into_iter()
        .map(|block| {
            if block.tag() != "CERTIFICATE" {
                return Err(AgentError::BadChain(format!(
                    "a {} block where a certificate was expected",
                    block.tag()
                )));
            }
            let der = block.contents().to_vec();
            X509Certificate::from_der(&der)
                .map_err(|e| AgentError::BadChain(format!("not an X.509 certificate: {e}")))?;
            let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
            Ok(PemCert {
                pem: pem::encode_config(&block, lf),
                der,
            })
        })
        .collect()
}

/// Accepts `chain` (leaf first, root last) only if the leaf certifies our key for `expected`
/// and every certificate is signed by the next.
pub fn check_chain(
    chain: &[String],
    our_key_info: &[u8],
    expected: &SpiffeId,
) -> Result<(Vec<PemCert>, LeafInfo), AgentError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN_LEN {
        return Err(AgentError::BadChain(format!(
            "{} certificates (1 to {MAX_CHAIN_LEN} accepted)",
            chain.len()
        )));
    }
    let mut certs = Vec::with_capacity(chain.len());
    for pem in chain {
        if pem.len() > MAX_CERT_PEM {
            return Err(AgentError::BadChain("a certificate over 64 KiB".into()));
        }
        let mut parsed = parse_certs(pem)?;
        if parsed.len() != 1 {
            return Err(AgentError::BadChain(format!(
                "{} certificates in one chain entry",
                parsed.len()
            )));
        }
        certs.append(&mut parsed);
    }
    let x509: Vec<X509Certificate<'_>> = certs
        .iter()
        .map(|c| X509Certificate::from_der(&c.der).map(|(_, x)| x))
        .collect::<Result<_, _>>()
        .map_err(|e| AgentError::BadChain(e.to_string()))?;
    for pair in x509.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                AgentError::BadChain("a certificate is not signed by the next one".into())
            })?;
    }
    let leaf = &x509[0];
    if leaf.public_key().raw != our_key_info {
        return Err(AgentError::WrongKey);
    }
    let uris: Vec<&str> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let want = expected.to_string();
    if uris != [want.as_str()] {
        return Err(AgentError::WrongIdentity {
            expected: want,
            got: uris.join(", "),
        });
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let info = LeafInfo {
        not_before: time(leaf.validity().not_before),
        not_after: time(leaf.validity().not_after),
        serial: leaf.raw_serial_as_string().replace(':', ""),
    };
    Ok((certs, info))
}

/// The roots to trust: those of the roots file, then the chain's last certificate, each once.
pub fn trust_bundle(file_roots: &[PemCert], chain: &[PemCert]) -> Vec<String> {
    let mut bundle: Vec<&PemCert> = Vec::new();
    for cert in file_roots.iter().chain(chain.last()) {
        if !bundle.iter().any(|c| c.der == cert.der) {
            bundle.push(cert);
        }
    }
    bundle.into_iter().map(|c| c.pem.clone()).collect()
}

/// Reads the roots file, bounded; it must hold at least one certificate.
pub async fn read_roots(path: &std::path::Path) -> Result<Vec<PemCert>, AgentError> {
    let text = super::read_bounded(path, MAX_ROOTS_FILE).await?;
    let roots =
        parse_certs(&text).map_err(|e| AgentError::File(path.to_path_buf(), e.to_string()))?;
    if roots.is_empty() {
        return Err(AgentError::File(
            path.to_path_buf(),
            "holds no certificate".into(),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
