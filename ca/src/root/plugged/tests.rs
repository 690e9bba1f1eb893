use std::fs;
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};

use super::*;
use crate::SpiffeId;

const DAY: Duration = Duration::from_secs(86_400);

/// An operator's PKI: a root, and an intermediate it signed, in the `cacerts` layout.
fn cacerts(dir: &Path, root: &RootCa, chain_has_root: bool) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let intermediate = params.signed_by(&key, &root.issuer).expect("intermediate");
    let mut chain = intermediate.pem();
    if chain_has_root {
        chain.push_str(root.certificate_pem());
    }
    fs::write(dir.join(CERT_FILE), intermediate.pem()).expect("write");
    fs::write(dir.join(KEY_FILE), key.serialize_pem()).expect("write");
    fs::write(dir.join(CHAIN_FILE), chain).expect("write");
    fs::write(dir.join(ROOT_FILE), root.certificate_pem()).expect("write");
}

fn csr() -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let request = CertificateParams::default()
        .serialize_request(&key)
        .expect("csr");
    request.pem().expect("pem")
}

fn openssl_verify(dir: &Path, chain: &[String]) -> bool {
    let (root, untrusted, leaf) = (
        dir.join("v-root.pem"),
        dir.join("v-untrusted.pem"),
        dir.join("v-leaf.pem"),
    );
    fs::write(&root, chain.last().expect("a root")).expect("write");
    fs::write(&untrusted, chain[1..chain.len() - 1].concat()).expect("write");
    fs::write(&leaf, &chain[0]).expect("write");
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .expect("openssl runs")
        .status
        .success()
}

#[test]
fn workloads_get_the_chain_up_to_the_operators_root() {
    for chain_has_root in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = RootCa::generate("cluster.local", DAY).expect("root");
        cacerts(dir.path(), &root, chain_has_root);
        let ca = RootCa::load_plugged(dir.path(), "cluster.local").expect("plugged");
        let signed = ca
            .sign_csr(&csr(), &SpiffeId::new("cluster.local", "a", "b"), DAY, DAY)
            .expect("signed");
        assert_eq!(signed.chain_pem.len(), 3, "leaf, intermediate, root");
        assert_eq!(
            pem::parse(&signed.chain_pem[2]).expect("pem").contents(),
            pem::parse(root.certificate_pem()).expect("pem").contents()
        );
        assert!(
            openssl_verify(dir.path(), &signed.chain_pem),
            "openssl accepts the chain (root in cert-chain.pem: {chain_has_root})"
        );
    }
}

#[test]
fn files_that_do_not_belong_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootCa::generate("cluster.local", DAY).expect("root");
    cacerts(dir.path(), &root, true);
    let other = RootCa::generate("cluster.local", DAY).expect("other");
    fs::write(dir.path().join(ROOT_FILE), other.certificate_pem()).expect("write");
    let err = RootCa::load_plugged(dir.path(), "cluster.local").expect_err("wrong root");
    assert!(
        matches!(err, CaError::BrokenChain(ref p, _) if p.ends_with(CHAIN_FILE)),
        "{err}"
    );

    fs::write(dir.path().join(ROOT_FILE), "").expect("write");
    let err = RootCa::load_plugged(dir.path(), "cluster.local").expect_err("no root");
    assert!(err.to_string().contains(ROOT_FILE), "{err}");
}
