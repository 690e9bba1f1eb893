//! A signer whose certificate someone else issued (AWS Private CA, another PKI's API): capstan
//! made the key and the CSR, the issuer returned a certificate and the chain above it. Nothing
//! is taken on trust: the certificate must certify our key as a CA, and each link up to a
//! self-signed root must verify, or workloads would get chains no peer accepts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::RootCa;
use super::plugged::verify;

/// Why an issued certificate cannot sign for capstan.
#[derive(Debug, thiserror::Error)]
pub enum IssuedCertError {
    #[error("the issued certificate is not a usable PEM certificate: {0}")]
    Unparsable(String),
    #[error(
        "the issued certificate is not a CA (no basicConstraints CA:TRUE); an intermediate \
         needs a subordinate-CA template (e.g. SubordinateCACertificate_PathLen0/V1)"
    )]
    NotCa,
    #[error("the issued certificate's key usage lacks keyCertSign")]
    NoCertSign,
    #[error("the issued certificate certifies another key than the one capstan generated")]
    KeyMismatch,
    #[error("the chain is broken: {0}")]
    BrokenChain(String),
    #[error("the chain does not end in a self-signed root ({0})")]
    NoRoot(String),
    #[error("building the signer failed: {0}")]
    Signer(#[from] rcgen::Error),
}

impl RootCa {
    /// A signer from `key` and the `cert_pem` an external CA issued for it, with
    /// `chain_above_pems` ordered from the certificate's issuer up to and including the root.
    pub fn from_issued(
        trust_domain: &str,
        key: KeyPair,
        cert_pem: &str,
        chain_above_pems: &[String],
    ) -> Result<Self, IssuedCertError> {
        let signing = parse_pem(cert_pem)?;
        check_ca_for_key(&signing, &key)?;
        let above = chain_above_pems
            .iter()
            .map(|p| parse_pem(p))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(root) = above.last() else {
            return Err(IssuedCertError::NoRoot("the chain above is empty".into()));
        };
        verify(root, root).map_err(IssuedCertError::NoRoot)?;
        let mut child = &signing;
        for parent in &above {
            verify(child, parent).map_err(IssuedCertError::BrokenChain)?;
            child = parent;
        }
        let certificate_pem = lf(&signing);
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            certificate_pem,
            above: above.iter().map(lf).collect(),
            issuer,
        })
    }

    /// When the signing certificate expires: what renewal is scheduled from.
    pub fn not_after(&self) -> SystemTime {
        self.validity().1
    }

    /// When the signing certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.validity().0
    }

    fn validity(&self) -> (SystemTime, SystemTime) {
        // The PEM was parsed when this signer was built; it cannot fail to parse now, but an
        // epoch answer (renew at once) is the safe fallback if it ever did.
        let parsed = pem::parse(&self.certificate_pem).ok();
        let cert = parsed
            .as_ref()
            .and_then(|p| X509Certificate::from_der(p.contents()).ok())
            .map(|(_, c)| c);
        match cert {
            Some(c) => (
                at(c.validity().not_before.timestamp()),
                at(c.validity().not_after.timestamp()),
            ),
            None => (UNIX_EPOCH, UNIX_EPOCH),
        }
    }
}

fn at(unix: i64) -> SystemTime {
    let secs = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH + secs
    } else {
        UNIX_EPOCH - secs
    }
}

fn parse_pem(text: &str) -> Result<pem::Pem, IssuedCertError> {
    let block = pem::parse(text.trim()).map_err(|e| IssuedCertError::Unparsable(e.to_string()))?;
    if block.tag() != "CERTIFICATE" {
        return Err(IssuedCertError::Unparsable(format!(
            "a {} block, not a CERTIFICATE",
            block.tag()
        )));
    }
    X509Certificate::from_der(block.contents())
        .map_err(|e| IssuedCertError::Unparsable(e.to_string()))?;
    Ok(block)
}

/// The certificate must say CA:TRUE, allow certificate signing, and hold our public key.
fn check_ca_for_key(signing: &pem::Pem, key: &KeyPair) -> Result<(), IssuedCertError> {
    let (_, cert) = X509Certificate::from_der(signing.contents())
        .map_err(|e| IssuedCertError::Unparsable(e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| IssuedCertError::Unparsable(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(IssuedCertError::NotCa);
    }
    let usage = cert
        .key_usage()
        .map_err(|e| IssuedCertError::Unparsable(e.to_string()))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(IssuedCertError::NoCertSign);
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(IssuedCertError::KeyMismatch);
    }
    Ok(())
}

/// PEM with Unix line ends (`pem::encode` writes CRLF), as every other PEM capstan hands out.
fn lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests;
