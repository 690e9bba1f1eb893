//! The root's key algorithm: ECDSA P-256 by default, RSA for PKIs that require it.

use rcgen::KeyPair;

use super::CaError;

/// The key algorithm of a new built-in root (`--ca-key-algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa4096,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-4096" => Ok(Self::Rsa4096),
            other => Err(format!(
                "unknown key algorithm {other:?} (expected ecdsa-p256, rsa-2048 or rsa-4096)"
            )),
        }
    }
}

impl KeyAlgorithm {
    /// A new key pair. ring (capstan's one crypto library) signs with RSA keys but cannot make
    /// them, so RSA keys come from the `rsa` crate, handed over as PKCS#8.
    pub fn generate(self) -> Result<KeyPair, CaError> {
        let bits = match self {
            Self::EcdsaP256 => return Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
            Self::Rsa2048 => 2048,
            Self::Rsa4096 => 4096,
        };
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
        Ok(KeyPair::from_pkcs8_der_and_sign_algo(
            &der,
            &rcgen::PKCS_RSA_SHA256,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{RootCa, SpiffeId};

    #[test]
    fn an_rsa_root_signs_workload_certificates_that_verify() {
        let root = RootCa::generate_with(
            "cluster.local",
            Duration::from_secs(86_400),
            KeyAlgorithm::Rsa2048,
        )
        .unwrap();
        let (_, root_pem) =
            x509_parser::pem::parse_x509_pem(root.certificate_pem().as_bytes()).unwrap();
        let root_cert = root_pem.parse_x509().unwrap();
        assert_eq!(
            root_cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
        );
        let leaf = root
            .issue(
                &SpiffeId::new("cluster.local", "a", "b"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let (_, leaf_pem) =
            x509_parser::pem::parse_x509_pem(leaf.certificate_pem.as_bytes()).unwrap();
        leaf_pem
            .parse_x509()
            .unwrap()
            .verify_signature(Some(root_cert.public_key()))
            .expect("signed by the RSA root");
    }

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert_eq!("rsa-4096".parse(), Ok(KeyAlgorithm::Rsa4096));
        assert!(
            "rsa-1024"
                .parse::<KeyAlgorithm>()
                .unwrap_err()
                .contains("rsa-1024")
        );
    }
}
