//! Signing CSRs: the identity is the caller's, the TTL is capped, bad CSRs are errors, and
//! openssl accepts the chain.

use std::process::Command;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn csr_for(uri: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().expect("uri"))];
    let csr = params.serialize_request(&key).expect("csr");
    (key, csr.pem().expect("pem"))
}

fn root() -> RootCa {
    RootCa::generate("cluster.local", 10 * 24 * HOUR).expect("root")
}

fn caller() -> SpiffeId {
    SpiffeId::new("cluster.local", "bookinfo", "reviews")
}

/// The URI SANs and validity (seconds) of a PEM certificate, and its public key's bytes.
pub(crate) fn inspect(pem: &str) -> (Vec<String>, i64, Vec<u8>) {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    let uris = cert
        .subject_alternative_name()
        .expect("parsable")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    let seconds = validity.not_after.timestamp() - validity.not_before.timestamp();
    (
        uris,
        seconds,
        cert.public_key().subject_public_key.data.to_vec(),
    )
}

pub(crate) fn openssl_verify(root_pem: &str, leaf_pem: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, leaf) = (dir.path().join("root.pem"), dir.path().join("leaf.pem"));
    std::fs::write(&root, root_pem).expect("write");
    std::fs::write(&leaf, leaf_pem).expect("write");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg(&leaf)
        .output()
        .expect("openssl runs (it is on every machine the tests run on)");
    out.status.success()
}

#[test]
fn the_identity_is_the_callers_whatever_the_csr_asks_for() {
    let root = root();
    let (key, csr) = csr_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let signed = root
        .sign_csr(&csr, &caller(), 24 * HOUR, 24 * HOUR)
        .expect("signed");
    assert_eq!(signed.chain_pem.len(), 2, "leaf and root");
    assert_eq!(signed.chain_pem[1], root.certificate_pem());
    let (uris, _, public_key) = inspect(&signed.chain_pem[0]);
    assert_eq!(uris, vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews"]);
    assert_eq!(
        public_key,
        key.public_key_raw(),
        "the CSR's key is certified"
    );
    assert!(openssl_verify(root.certificate_pem(), &signed.chain_pem[0]));
    assert!(!openssl_verify(
        self::root().certificate_pem(),
        &signed.chain_pem[0]
    ));
}

#[test]
fn the_ttl_is_capped() {
    let root = root();
    let (_, csr) = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let signed = root
        .sign_csr(&csr, &caller(), 48 * HOUR, 24 * HOUR)
        .expect("signed");
    assert_eq!(signed.ttl, 24 * HOUR);
    let (_, seconds, _) = inspect(&signed.chain_pem[0]);
    // Valid from five minutes back (clock skew) to the capped TTL ahead.
    assert_eq!(seconds, 24 * 3600 + 300);
    let short = root
        .sign_csr(&csr, &caller(), HOUR, 24 * HOUR)
        .expect("signed");
    assert_eq!(short.ttl, HOUR);
}

#[test]
fn malformed_tampered_and_oversized_csrs_are_refused() {
    let root = root();
    let (_, csr) = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let refuse = |pem: &str| root.sign_csr(pem, &caller(), HOUR, HOUR).map(|_| ());
    assert!(matches!(refuse("not a csr"), Err(CaError::InvalidCsr)));
    assert!(matches!(
        refuse("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
        Err(CaError::InvalidCsr)
    ));
    // One byte of the signed content changed: the signature no longer matches.
    let der = pem_body(&csr);
    let mut tampered = der.clone();
    let middle = tampered.len() / 3;
    tampered[middle] ^= 0x01;
    let tampered_pem = pem_of(&tampered);
    assert!(matches!(refuse(&tampered_pem), Err(CaError::InvalidCsr)));
    assert!(refuse(&pem_of(&der)).is_ok(), "the untouched CSR is fine");
    let huge = format!("{csr}{}", " ".repeat(MAX_CSR_PEM));
    assert!(matches!(refuse(&huge), Err(CaError::CsrTooLarge(_))));
}

fn pem_body(pem: &str) -> Vec<u8> {
    let (_, parsed) = parse_x509_pem(pem.as_bytes()).expect("pem");
    parsed.contents
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}
