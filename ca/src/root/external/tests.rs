use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::*;
use crate::SpiffeId;

const DAY: Duration = Duration::from_secs(86_400);

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

/// A certificate for `key`, CA or not, signed by `parent`.
fn issued_by(key: &KeyPair, parent: &RootCa, ca: bool, name: &str) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    super::super::set_validity(&mut params, DAY);
    params.signed_by(key, &parent.issuer).expect("signed").pem()
}

fn csr() -> String {
    CertificateParams::default()
        .serialize_request(&p256())
        .expect("csr")
        .pem()
        .expect("pem")
}

#[test]
fn an_issued_intermediate_signs_workloads_chained_to_the_root() {
    let root = RootCa::generate("pca.example", 30 * DAY).expect("root");
    let key = p256();
    let cert = issued_by(&key, &root, true, "capstan intermediate");
    let ca = RootCa::from_issued(
        "cluster.local",
        key,
        &cert,
        &[root.certificate_pem().to_string()],
    )
    .expect("accepted");
    assert_eq!(ca.root_pem().trim(), root.certificate_pem().trim());
    assert!(ca.not_after() > SystemTime::now() + DAY / 2);
    assert!(ca.not_after() < SystemTime::now() + 2 * DAY);
    assert!(ca.not_before() < SystemTime::now());

    let chain = ca
        .sign_csr(
            &csr(),
            &SpiffeId::new("cluster.local", "ns", "sa"),
            DAY,
            DAY,
        )
        .expect("signed");
    assert_eq!(chain.chain_pem.len(), 3);
    let der: Vec<pem::Pem> = chain
        .chain_pem
        .iter()
        .map(|p| pem::parse(p).expect("pem"))
        .collect();
    verify(&der[0], &der[1]).expect("leaf signed by the intermediate");
    verify(&der[1], &der[2]).expect("intermediate signed by the root");
}

#[test]
fn a_certificate_without_ca_true_is_refused() {
    let root = RootCa::generate("pca.example", DAY).expect("root");
    let key = p256();
    let cert = issued_by(&key, &root, false, "not a CA");
    let err = RootCa::from_issued("cluster.local", key, &cert, &[root.root_pem().into()])
        .expect_err("not a CA");
    assert!(matches!(err, IssuedCertError::NotCa), "{err}");
    assert!(err.to_string().contains("CA:TRUE"), "{err}");
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let root = RootCa::generate("pca.example", DAY).expect("root");
    let cert = issued_by(&p256(), &root, true, "someone else's");
    let err = RootCa::from_issued("cluster.local", p256(), &cert, &[root.root_pem().into()])
        .expect_err("key mismatch");
    assert!(matches!(err, IssuedCertError::KeyMismatch), "{err}");
}

#[test]
fn a_chain_that_does_not_link_or_lacks_the_root_is_refused() {
    let root = RootCa::generate("pca.example", DAY).expect("root");
    let other = RootCa::generate("pca.example", DAY).expect("other root");
    let key = p256();
    let cert = issued_by(&key, &root, true, "capstan intermediate");
    let err = RootCa::from_issued("cluster.local", key, &cert, &[other.root_pem().into()])
        .expect_err("wrong root");
    assert!(matches!(err, IssuedCertError::BrokenChain(_)), "{err}");

    // Two levels: root -> mid -> ours. Handing only the mid leaves no root at the top.
    let mid_key = p256();
    let mid_pem = issued_by(&mid_key, &root, true, "pca subordinate");
    let mid = RootCa::from_issued("pca.example", mid_key, &mid_pem, &[root.root_pem().into()])
        .expect("mid");
    let key = p256();
    let cert = issued_by(&key, &mid, true, "capstan intermediate");
    let err = RootCa::from_issued("cluster.local", key, &cert, std::slice::from_ref(&mid_pem))
        .expect_err("no root");
    assert!(matches!(err, IssuedCertError::NoRoot(_)), "{err}");

    let key = p256();
    let cert = issued_by(&key, &mid, true, "capstan intermediate");
    let ca = RootCa::from_issued(
        "cluster.local",
        key,
        &cert,
        &[mid_pem.clone(), root.root_pem().into()],
    )
    .expect("the whole chain");
    assert_eq!(ca.root_pem().trim(), root.root_pem().trim());
    let err = RootCa::from_issued("cluster.local", p256(), "garbage", &[]).expect_err("not PEM");
    assert!(matches!(err, IssuedCertError::Unparsable(_)), "{err}");
}
