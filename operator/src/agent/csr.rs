//! The workload key and its certification request.

use capstan_ca::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};

use super::AgentError;

/// A private key made in this process, and the CSR asking for `identity` on it.
pub struct KeyAndCsr {
    pub key: KeyPair,
    pub csr_pem: String,
}

// Only the public half may be shown.
impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// A new ECDSA P-256 key and a CSR with `identity` as its only SAN (a URI) and Istio's
    /// empty subject. The CA decides the identity from the token; the SAN only says what we
    /// expect.
    pub fn generate(identity: &SpiffeId) -> Result<Self, AgentError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.to_string();
        params.subject_alt_names = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|_| AgentError::InvalidIdentity(uri))?,
        )];
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key, csr_pem })
    }

    /// The DER SubjectPublicKeyInfo of the key, to recognise it in the issued certificate.
    pub fn public_key_info(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn csr_carries_the_identity_and_our_key_and_is_self_signed() {
        let id = SpiffeId::new("cluster.local", "a", "client");
        let made = KeyAndCsr::generate(&id).expect("csr");
        let (_, pem) = x509_parser::pem::parse_x509_pem(made.csr_pem.as_bytes()).expect("pem");
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .expect("der");
        csr.verify_signature().expect("signed by its own key");
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            made.public_key_info().as_slice()
        );
        let uris: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://cluster.local/ns/a/sa/client"]);
        assert!(!format!("{made:?}").contains("PRIVATE"));
    }

    #[test]
    fn every_request_has_a_new_key() {
        let id = SpiffeId::new("cluster.local", "a", "client");
        let one = KeyAndCsr::generate(&id).expect("csr");
        let two = KeyAndCsr::generate(&id).expect("csr");
        assert_ne!(one.public_key_info(), two.public_key_info());
    }
}
