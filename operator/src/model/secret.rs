//! Gateway credentials read from Secrets (`tls.credentialName`), in either of the forms
//! istiod reads: Kubernetes' TLS Secret (`tls.crt`, `tls.key`, optional `ca.crt`) or Istio's
//! generic one (`cert`, `key`, optional `cacert`); a Secret may also hold a CA alone (the
//! `<name>-cacert` Secret of a MUTUAL server), with the CA's revocation list in `ca.crl`.
//!
//! The PEM is checked here, once per Secret change: a certificate that does not parse or a
//! key that is not a PEM private key would be refused by Envoy, and is better reported on
//! the Gateway that names it. Whether the key matches the certificate is not checked (Envoy
//! refuses such a Secret and keeps the one it had). Nothing here formats a value: `Debug`
//! shows sizes only.

use std::sync::Arc;

use crate::index::SecretRecord;

/// PEM bytes from a Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Arc<[u8]>);

impl SecretBytes {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAndKey {
    pub chain: SecretBytes,
    pub key: SecretBytes,
}

/// What a Secret holds for a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    pub certificate: Option<CertificateAndKey>,
    /// CA certificates client certificates must chain to (MUTUAL), PEM.
    pub ca: Option<SecretBytes>,
    /// `ca.crl`: the client certificates the CA revoked, PEM (read with a CA only).
    pub crl: Option<SecretBytes>,
}

/// Why a Secret cannot serve as a credential. Messages name entries, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it has {present} but no {missing}")]
    HalfPair {
        present: &'static str,
        missing: &'static str,
    },
    #[error(
        "it holds neither a certificate and key (tls.crt and tls.key, or cert and key) nor a CA \
         (ca.crt or cacert)"
    )]
    Empty,
    #[error("{entry} is not PEM")]
    NotPem { entry: &'static str },
    #[error("{entry} holds no PEM certificate")]
    NoCertificate { entry: &'static str },
    #[error("certificate {position} of {entry} does not parse as X.509")]
    BadCertificate {
        entry: &'static str,
        position: usize,
    },
    #[error("{entry} holds no unencrypted PEM private key")]
    NoPrivateKey { entry: &'static str },
    #[error("{entry} holds no PEM certificate revocation list")]
    NoCrl { entry: &'static str },
}

/// The certificate/key pairs, Istio's generic form first (as istiod reads them), and the CA
/// entries in the same order.
const PAIRS: [(&str, &str); 2] = [("cert", "key"), ("tls.crt", "tls.key")];
const CAS: [&str; 2] = ["cacert", "ca.crt"];
/// Istio's entry for the CRL that goes with the CA.
const CRL: &str = "ca.crl";

/// Reads a Secret's certificate, key and CA, checking each is well-formed PEM.
pub fn read(record: &SecretRecord) -> Result<TlsSecret, SecretError> {
    let entry = |name: &str| record.data.get(name);
    let mut certificate = None;
    for (cert, key) in PAIRS {
        match (entry(cert), entry(key)) {
            (Some(chain), Some(key_bytes)) => {
                check_certificates(cert, chain)?;
                check_private_key(key, key_bytes)?;
                certificate = Some(CertificateAndKey {
                    chain: SecretBytes(chain.clone()),
                    key: SecretBytes(key_bytes.clone()),
                });
                break;
            }
            (Some(_), None) => {
                return Err(SecretError::HalfPair {
                    present: cert,
                    missing: key,
                });
            }
            (None, Some(_)) => {
                return Err(SecretError::HalfPair {
                    present: key,
                    missing: cert,
                });
            }
            (None, None) => {}
        }
    }
    let mut ca = None;
    if let Some((name, bytes)) = CAS.iter().find_map(|n| Some((*n, entry(n)?))) {
        check_certificates(name, bytes)?;
        ca = Some(SecretBytes(bytes.clone()));
    }
    if certificate.is_none() && ca.is_none() {
        return Err(SecretError::Empty);
    }
    let mut crl = None;
    if let Some(bytes) = entry(CRL).filter(|_| ca.is_some()) {
        let blocks = pem_blocks(CRL, bytes)?;
        if !blocks.iter().any(|b| b.tag() == "X509 CRL") {
            return Err(SecretError::NoCrl { entry: CRL });
        }
        crl = Some(SecretBytes(bytes.clone()));
    }
    Ok(TlsSecret {
        certificate,
        ca,
        crl,
    })
}

fn pem_blocks(entry: &'static str, bytes: &[u8]) -> Result<Vec<pem::Pem>, SecretError> {
    pem::parse_many(bytes).map_err(|_| SecretError::NotPem { entry })
}

fn check_certificates(entry: &'static str, bytes: &[u8]) -> Result<(), SecretError> {
    let blocks = pem_blocks(entry, bytes)?;
    let certificates: Vec<&pem::Pem> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
    if certificates.is_empty() {
        return Err(SecretError::NoCertificate { entry });
    }
    for (i, block) in certificates.iter().enumerate() {
        if x509_parser::parse_x509_certificate(block.contents()).is_err() {
            return Err(SecretError::BadCertificate {
                entry,
                position: i + 1,
            });
        }
    }
    Ok(())
}

fn check_private_key(entry: &'static str, bytes: &[u8]) -> Result<(), SecretError> {
    // PKCS#8, PKCS#1 and SEC1; an encrypted key needs a password Envoy is not given.
    let usable = |tag: &str| matches!(tag, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY");
    let blocks = pem_blocks(entry, bytes)?;
    if blocks
        .iter()
        .any(|b| usable(b.tag()) && !b.contents().is_empty())
    {
        Ok(())
    } else {
        Err(SecretError::NoPrivateKey { entry })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::index::NsName;

    fn certificate_and_key() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["shop.example.com".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn record(secret_type: &str, entries: &[(&str, &str)]) -> SecretRecord {
        SecretRecord {
            id: NsName::new("edge", "shop-cert"),
            secret_type: secret_type.into(),
            data: entries
                .iter()
                .map(|(k, v)| (k.to_string(), Arc::from(v.as_bytes())))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// A CA certificate and a CRL it signed, PEM.
    fn ca_and_crl() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key).expect("CA");
        let issuer = rcgen::Issuer::new(params, key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("CRL");
        (ca.pem(), crl.pem().expect("PEM"))
    }

    #[test]
    fn a_crl_is_read_with_its_ca_and_must_be_one() {
        let (ca, crl) = ca_and_crl();
        let read_ok = read(&record("", &[("cacert", &ca), ("ca.crl", &crl)])).expect("CA + CRL");
        assert_eq!(read_ok.crl.map(|c| c.bytes().to_vec()), Some(crl.into()));
        assert_eq!(
            read(&record("", &[("cacert", &ca), ("ca.crl", &ca)])),
            Err(SecretError::NoCrl { entry: "ca.crl" }),
            "a certificate where the CRL should be"
        );
        let (cert, key) = certificate_and_key();
        let without_ca = read(&record(
            "",
            &[("cert", &cert), ("key", &key), ("ca.crl", &ca)],
        ))
        .expect("a CRL without a CA is not read");
        assert!(without_ca.crl.is_none());
    }

    #[test]
    fn both_forms_are_read() {
        let (cert, key) = certificate_and_key();
        let tls = read(&record(
            "kubernetes.io/tls",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &cert)],
        ))
        .expect("a TLS secret");
        let pair = tls.certificate.expect("a certificate");
        assert_eq!(pair.chain.bytes(), cert.as_bytes());
        assert_eq!(pair.key.bytes(), key.as_bytes());
        assert_eq!(
            tls.ca.map(|c| c.bytes().to_vec()),
            Some(cert.clone().into())
        );

        let generic = read(&record("", &[("cert", &cert), ("key", &key)])).expect("generic");
        assert!(generic.certificate.is_some() && generic.ca.is_none());

        let ca_only = read(&record("", &[("cacert", &cert)])).expect("a CA alone");
        assert!(ca_only.certificate.is_none() && ca_only.ca.is_some());
        // Debug (logs, panics) shows sizes, not PEM.
        let shown = format!("{ca_only:?}");
        assert!(!shown.contains("BEGIN"), "{shown}");
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong_without_quoting_it() {
        let (cert, key) = certificate_and_key();
        let broken_cert = cert.replace("MII", "MIX");
        let cases: Vec<(SecretRecord, SecretError)> = vec![
            (
                record("kubernetes.io/tls", &[("tls.crt", &cert)]),
                SecretError::HalfPair {
                    present: "tls.crt",
                    missing: "tls.key",
                },
            ),
            (record("kubernetes.io/tls", &[]), SecretError::Empty),
            (
                record("", &[("cert", "not pem at all"), ("key", &key)]),
                SecretError::NoCertificate { entry: "cert" },
            ),
            (
                record("", &[("cert", &broken_cert), ("key", &key)]),
                SecretError::BadCertificate {
                    entry: "cert",
                    position: 1,
                },
            ),
            (
                record("", &[("cert", &cert), ("key", &cert)]),
                SecretError::NoPrivateKey { entry: "key" },
            ),
            (
                record(
                    "",
                    &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", "junk")],
                ),
                SecretError::NoCertificate { entry: "ca.crt" },
            ),
        ];
        for (secret, expected) in cases {
            let got = read(&secret).expect_err("malformed");
            assert_eq!(got, expected, "{secret:?}");
            assert!(!got.to_string().contains("BEGIN"), "{got}");
        }
    }
}
