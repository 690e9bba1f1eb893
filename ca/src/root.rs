//! A self-signed root CA and the workload certificates it signs.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("SPIFFE id {0} is not a valid URI SAN")]
    InvalidIdentity(String),
    #[error("the CSR is {0} bytes, more than the {MAX_CSR_PEM} accepted")]
    CsrTooLarge(usize),
    #[error("the CSR is not a PEM certification request with a valid signature")]
    InvalidCsr,
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("{0}: not a usable PEM certificate or key: {1}")]
    InvalidFile(std::path::PathBuf, rcgen::Error),
    #[error("{0} holds only one of ca-cert.pem and ca-key.pem; refusing to replace it")]
    IncompleteStore(std::path::PathBuf),
    #[error("{0}: {1}")]
    BrokenChain(std::path::PathBuf, String),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

/// Largest CSR accepted, PEM-encoded. A workload CSR (P-256 or RSA 4096 key, a SAN) is under
/// 2 KiB; parsing is bounded by this whatever a caller sends.
pub const MAX_CSR_PEM: usize = 64 * 1024;

/// A workload certificate signed from a CSR: the leaf, then the chain up to and including
/// the root, PEM-encoded (what Istio's `CreateCertificate` returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChain {
    pub chain_pem: Vec<String>,
    /// The validity granted: the TTL asked for, capped.
    pub ttl: Duration,
}

/// A workload certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// A root CA whose key lives in memory.
pub struct RootCa {
    trust_domain: String,
    certificate_pem: String,
    /// The certificates above the signing one, up to and including the root (empty when the
    /// signing certificate is the root itself): what a workload's chain continues with.
    above: Vec<String>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root for `trust_domain`, valid for `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        Self::generate_with(trust_domain, validity, KeyAlgorithm::EcdsaP256)
    }

    /// A new self-signed root with a key of `algorithm`.
    pub fn generate_with(
        trust_domain: &str,
        validity: Duration,
        algorithm: KeyAlgorithm,
    ) -> Result<Self, CaError> {
        let key = algorithm.generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        // Each root gets its own name: during a rotation two roots sit in one trust bundle,
        // and TLS stacks (Envoy's BoringSSL among them) pick the issuer by name.
        name.push(
            DnType::CommonName,
            format!("capstan root CA ({trust_domain}) {}", unique_suffix()),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, validity);
        let certificate = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            certificate_pem: certificate.pem(),
            above: Vec::new(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The signing certificate (the root itself, or a plugged-in intermediate).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The root at the top of the chain: what workloads must trust.
    pub fn root_pem(&self) -> &str {
        self.above.last().unwrap_or(&self.certificate_pem)
    }

    /// A new key pair and a certificate for `identity`, signed by this root.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        validity: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let certificate = workload_params(identity, validity)?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of `csr_pem` for `identity`, valid for `ttl` capped at `max_ttl`.
    /// Only the key is taken from the CSR: the identity comes from the caller (a verified
    /// token), never from what the CSR asks for, and so do every other field and extension.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
        max_ttl: Duration,
    ) -> Result<SignedChain, CaError> {
        if csr_pem.len() > MAX_CSR_PEM {
            return Err(CaError::CsrTooLarge(csr_pem.len()));
        }
        // Parsing checks the CSR's signature: the caller holds the key it asks us to certify.
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| CaError::InvalidCsr)?;
        let ttl = ttl.min(max_ttl);
        let request = CertificateSigningRequestParams {
            params: workload_params(identity, ttl)?,
            public_key: csr.public_key,
        };
        let leaf = request.signed_by(&self.issuer)?;
        let mut chain_pem = vec![leaf.pem(), self.certificate_pem.clone()];
        chain_pem.extend(self.above.iter().cloned());
        Ok(SignedChain { chain_pem, ttl })
    }
}

/// A workload certificate's fields: Istio's empty subject, the identity as the only SAN, and
/// the usages of a certificate that is both client and server in mTLS.
fn workload_params(identity: &SpiffeId, validity: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string();
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| CaError::InvalidIdentity(uri))?,
    )];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // Names the signer's key too, for verifiers choosing among roots of one name.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    Ok(params)
}

/// Eight random hex digits.
fn unique_suffix() -> String {
    use rand_core::RngCore;
    format!("{:08x}", rand_core::OsRng.next_u32())
}

/// How far back a new certificate's notBefore is set, to tolerate clocks a little behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time_now();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

mod external;
mod files;
mod keys;
mod plugged;
mod rotation;
mod serving;
mod store;

pub use external::IssuedCertError;
pub use files::{CaFiles, MAX_CA_FILE};
pub use keys::KeyAlgorithm;
pub use plugged::{CHAIN_FILE, PLUGGED_FILES, ROOT_FILE};
pub use rotation::{
    BUNDLE_FILE, NEXT_CERT_FILE, NEXT_KEY_FILE, ROOT_FILES, RotationPolicy, RotationStep,
    new_root_files, rotation_step, state_from_files,
};
pub use store::{CERT_FILE, KEY_FILE};

#[cfg(test)]
pub(crate) mod csr_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn workload_certificate_carries_the_spiffe_id_and_verifies_against_the_root() {
        let root = RootCa::generate("cluster.local", 365 * DAY).expect("root");
        let id = SpiffeId::new("cluster.local", "bookinfo", "reviews");
        let issued = root.issue(&id, DAY).expect("issued");

        let (_, root_pem) = parse_x509_pem(root.certificate_pem().as_bytes()).expect("root pem");
        let root_cert = root_pem.parse_x509().expect("root x509");
        assert!(root_cert.is_ca());

        let (_, leaf_pem) = parse_x509_pem(issued.certificate_pem.as_bytes()).expect("leaf pem");
        let leaf = leaf_pem.parse_x509().expect("leaf x509");
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), root_cert.subject());
        leaf.verify_signature(Some(root_cert.public_key()))
            .expect("signed by the root");
        let sans = leaf
            .subject_alternative_name()
            .expect("parsable")
            .expect("has SANs");
        let uris: Vec<&str> = sans
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews"]);
        assert!(issued.private_key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn another_root_does_not_verify_the_leaf() {
        let root = RootCa::generate("cluster.local", DAY).expect("root");
        let other = RootCa::generate("cluster.local", DAY).expect("other");
        let issued = root
            .issue(&SpiffeId::new("cluster.local", "a", "b"), DAY)
            .expect("issued");
        let (_, other_pem) = parse_x509_pem(other.certificate_pem().as_bytes()).expect("pem");
        let other_cert = other_pem.parse_x509().expect("x509");
        let (_, leaf_pem) = parse_x509_pem(issued.certificate_pem.as_bytes()).expect("pem");
        let leaf = leaf_pem.parse_x509().expect("x509");
        assert!(
            leaf.verify_signature(Some(other_cert.public_key()))
                .is_err()
        );
    }
}
