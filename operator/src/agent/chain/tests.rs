use std::time::Duration;

use capstan_ca::RootCa;

use super::*;
use crate::agent::csr::KeyAndCsr;

const HOUR: Duration = Duration::from_secs(3600);

fn client() -> SpiffeId {
    SpiffeId::new("cluster.local", "a", "client")
}

fn signed(root: &RootCa, csr: &KeyAndCsr, identity: &SpiffeId) -> Vec<String> {
    root.sign_csr(&csr.csr_pem, identity, HOUR, HOUR)
        .expect("signed")
        .chain_pem
}

#[test]
fn accepts_our_key_for_our_identity() {
    let root = RootCa::generate("cluster.local", 10 * HOUR).expect("root");
    let csr = KeyAndCsr::generate(&client()).expect("csr");
    let chain = signed(&root, &csr, &client());
    let (certs, leaf) = check_chain(&chain, &csr.public_key_info(), &client()).expect("accepted");
    assert_eq!(certs.len(), 2);
    let life = leaf
        .not_after
        .duration_since(leaf.not_before)
        .expect("ordered");
    assert!(
        life >= HOUR && life <= HOUR + Duration::from_secs(600),
        "{life:?}"
    );
    assert!(!leaf.serial.is_empty() && !leaf.serial.contains(':'));
}

#[test]
fn refuses_another_identity() {
    let root = RootCa::generate("cluster.local", 10 * HOUR).expect("root");
    let csr = KeyAndCsr::generate(&client()).expect("csr");
    let other = SpiffeId::new("cluster.local", "b", "server");
    let chain = signed(&root, &csr, &other);
    let err = check_chain(&chain, &csr.public_key_info(), &client()).unwrap_err();
    assert!(
        matches!(&err, AgentError::WrongIdentity { got, .. } if got.contains("/ns/b/sa/server")),
        "{err}"
    );
}

#[test]
fn refuses_a_certificate_for_another_key() {
    let root = RootCa::generate("cluster.local", 10 * HOUR).expect("root");
    let ours = KeyAndCsr::generate(&client()).expect("csr");
    let theirs = KeyAndCsr::generate(&client()).expect("csr");
    let chain = signed(&root, &theirs, &client());
    let err = check_chain(&chain, &ours.public_key_info(), &client()).unwrap_err();
    assert!(matches!(err, AgentError::WrongKey), "{err}");
}

#[test]
fn refuses_a_chain_that_does_not_link_and_junk() {
    let root = RootCa::generate("cluster.local", 10 * HOUR).expect("root");
    let other = RootCa::generate("cluster.local", 10 * HOUR).expect("other");
    let csr = KeyAndCsr::generate(&client()).expect("csr");
    let mut chain = signed(&root, &csr, &client());
    chain[1] = other.certificate_pem().to_string();
    let key = csr.public_key_info();
    assert!(matches!(
        check_chain(&chain, &key, &client()),
        Err(AgentError::BadChain(_))
    ));
    assert!(check_chain(&[], &key, &client()).is_err());
    assert!(check_chain(&["not pem".into()], &key, &client()).is_err());
    let too_long = vec![chain[0].clone(); MAX_CHAIN_LEN + 1];
    assert!(check_chain(&too_long, &key, &client()).is_err());
}

#[test]
fn trust_bundle_is_the_file_roots_and_the_chain_root_once_each() {
    let root = RootCa::generate("cluster.local", 10 * HOUR).expect("root");
    let next = RootCa::generate("cluster.local", 10 * HOUR).expect("next");
    let csr = KeyAndCsr::generate(&client()).expect("csr");
    let (chain, _) = check_chain(
        &signed(&root, &csr, &client()),
        &csr.public_key_info(),
        &client(),
    )
    .expect("chain");
    let file = parse_certs(&format!("{}{}", root.root_pem(), next.root_pem())).expect("roots");
    assert_eq!(file.len(), 2);
    let bundle = trust_bundle(&file, &chain);
    assert_eq!(bundle.len(), 2, "the chain's root is already in the file");
    let only_next = parse_certs(next.root_pem()).expect("root");
    let bundle = trust_bundle(&only_next, &chain);
    assert_eq!(bundle.len(), 2);
    assert_eq!(parse_certs(&bundle[1]).expect("pem")[0].der, chain[1].der);
}
