//! The folder store; the Secret store runs against a real apiserver in
//! e2e/tests/ca_secret.rs.

use std::fs;
use std::path::Path;

use capstan_ca::{BUNDLE_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE, NEXT_CERT_FILE, ROOT_FILE};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn policy(grace: f64) -> RotationPolicy {
    RotationPolicy {
        validity: 10 * DAY,
        grace,
        announce: DAY,
        algorithm: capstan_ca::KeyAlgorithm::EcdsaP256,
    }
}

#[tokio::test]
async fn the_builtin_root_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::Folder(dir.path().join("ca"));
    let first = start_builtin(&store, "cluster.local", &policy(0.2))
        .await
        .unwrap();
    let again = start_builtin(&store, "cluster.local", &policy(0.2))
        .await
        .unwrap();
    assert_eq!(
        first.current().signer.certificate_pem(),
        again.current().signer.certificate_pem()
    );
    let key = dir.path().join("ca").join(KEY_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_due_rotation_is_written_and_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::Folder(dir.path().to_path_buf());
    let authority = start_builtin(&store, "cluster.local", &policy(0.2))
        .await
        .unwrap();
    let old = authority.current().signer.certificate_pem().to_string();
    // grace 1.0: a root always has less than all its life left, so the next root is due now.
    builtin_tick(&store, &authority, "cluster.local", &policy(1.0))
        .await
        .unwrap();
    assert!(dir.path().join(NEXT_CERT_FILE).exists());
    let state = authority.current();
    assert_eq!(
        state.signer.certificate_pem(),
        old,
        "announced, not switched"
    );
    assert_eq!(state.trust_bundle.len(), 2);
    let bundle = fs::read_to_string(dir.path().join(BUNDLE_FILE)).unwrap();
    assert_eq!(pem::parse_many(bundle).unwrap().len(), 2);
}

#[tokio::test]
async fn half_a_store_is_an_error_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CERT_FILE), "x").unwrap();
    let store = FileStore::Folder(dir.path().to_path_buf());
    let err = start_builtin(&store, "cluster.local", &policy(0.2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(KEY_FILE), "{err}");
    assert_eq!(fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(), "x");
}

/// An operator's PKI: a new root and an intermediate it signed, in the `cacerts` layout.
/// Returns the root's PEM.
fn write_cacerts(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_params = || {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params().self_signed(&root_key).unwrap();
    let issuer = Issuer::new(ca_params(), root_key);
    let key = KeyPair::generate().unwrap();
    let intermediate = ca_params().signed_by(&key, &issuer).unwrap();
    fs::write(dir.join(CERT_FILE), intermediate.pem()).unwrap();
    fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
    fs::write(dir.join(CHAIN_FILE), intermediate.pem()).unwrap();
    fs::write(dir.join(ROOT_FILE), root.pem()).unwrap();
    root.pem()
}

#[tokio::test]
async fn plug_in_files_are_reloaded_and_a_broken_change_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path());
    let store = FileStore::Folder(dir.path().to_path_buf());
    let authority = start_plugged(&store, "cluster.local").await.unwrap();
    let first = authority.current().signer.certificate_pem().to_string();
    let mut seen = None;
    // The files as started: nothing to do.
    assert!(
        !plugged_tick(&store, &authority, "cluster.local", &mut seen)
            .await
            .unwrap()
    );

    // An operator installs a new intermediate from another root.
    let second_root = write_cacerts(dir.path());
    assert!(
        plugged_tick(&store, &authority, "cluster.local", &mut seen)
            .await
            .unwrap()
    );
    let state = authority.current();
    assert_ne!(state.signer.certificate_pem(), first);
    assert_eq!(state.trust_bundle, [second_root]);
    let good = state.signer.certificate_pem().to_string();

    // A half-done edit: the chain no longer matches the root.
    let stray = RootCa::generate("cluster.local", DAY).unwrap();
    fs::write(dir.path().join(ROOT_FILE), stray.certificate_pem()).unwrap();
    let err = plugged_tick(&store, &authority, "cluster.local", &mut seen)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(CHAIN_FILE), "{err}");
    assert_eq!(authority.current().signer.certificate_pem(), good);
    // Reported once, not on every tick.
    assert!(
        !plugged_tick(&store, &authority, "cluster.local", &mut seen)
            .await
            .unwrap()
    );
}
