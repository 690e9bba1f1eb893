use std::collections::BTreeMap;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn policy() -> RotationPolicy {
    RotationPolicy {
        // Longer than the first root's, so the next root is not itself due within the test.
        validity: 100 * DAY,
        grace: 0.2,
        announce: DAY,
        algorithm: KeyAlgorithm::EcdsaP256,
    }
}

fn signer_of(files: &CaFiles) -> String {
    files.require(CERT_FILE).unwrap().to_string()
}

fn bundle_of(files: &CaFiles, now: SystemTime) -> Vec<String> {
    state_from_files(files, "cluster.local", now)
        .unwrap()
        .trust_bundle
}

/// The policy the first root is made with: ten days.
fn first_policy() -> RotationPolicy {
    RotationPolicy {
        validity: 10 * DAY,
        ..policy()
    }
}

#[test]
fn a_root_is_announced_then_switched_then_the_old_one_leaves_at_expiry() {
    let empty = CaFiles::named("Secret istio-system/istio-ca-secret", BTreeMap::new());
    let files = new_root_files(&empty, "cluster.local", &first_policy()).unwrap();
    let first = signer_of(&files);
    let start = SystemTime::now();

    // Young root: nothing to do.
    assert_eq!(
        rotation_step(&files, "cluster.local", start, &policy()).unwrap(),
        None
    );
    assert_eq!(bundle_of(&files, start), std::slice::from_ref(&first));

    // 1.5 days left of 10: the next root is announced, the old one still signs.
    let late = start + 8 * DAY + DAY / 2;
    let (announced, step) = rotation_step(&files, "cluster.local", late, &policy())
        .unwrap()
        .expect("due");
    assert_eq!(step, RotationStep::Announced);
    assert_eq!(signer_of(&announced), first);
    let next = announced.require(NEXT_CERT_FILE).unwrap().to_string();
    assert_eq!(bundle_of(&announced, late), [first.clone(), next.clone()]);
    // Announced, not yet switched: nothing more to do until the announcement has run (the
    // next root was made just now, whatever time the test pretends it is).
    let soon = SystemTime::now() + DAY / 2;
    assert_eq!(
        rotation_step(&announced, "cluster.local", soon, &policy()).unwrap(),
        None
    );

    // A day (plus the skew allowance) after the announcement, the next root signs.
    let switch_at = SystemTime::now() + DAY + Duration::from_secs(301);
    let (switched, step) = rotation_step(&announced, "cluster.local", switch_at, &policy())
        .unwrap()
        .expect("due");
    assert_eq!(step, RotationStep::Switched);
    assert_eq!(signer_of(&switched), next);
    assert_eq!(switched.get(NEXT_CERT_FILE), None);
    assert_eq!(
        bundle_of(&switched, switch_at),
        [next.clone(), first.clone()]
    );

    // The old root leaves the bundle once it has expired, and not before.
    let before_expiry = start + 9 * DAY;
    assert_eq!(
        rotation_step(&switched, "cluster.local", before_expiry, &policy()).unwrap(),
        None
    );
    let after_expiry = start + 10 * DAY + Duration::from_secs(1);
    let (pruned, step) = rotation_step(&switched, "cluster.local", after_expiry, &policy())
        .unwrap()
        .expect("due");
    assert_eq!(step, RotationStep::Pruned);
    assert_eq!(bundle_of(&pruned, after_expiry), [next]);
}

#[test]
fn a_certificate_signed_before_the_switch_verifies_against_the_bundle_after_it() {
    let empty = CaFiles::named("test", BTreeMap::new());
    let files = new_root_files(&empty, "cluster.local", &first_policy()).unwrap();
    let old = RootCa::from_files("cluster.local", &files).unwrap();
    let leaf = old
        .issue(&crate::SpiffeId::new("cluster.local", "a", "b"), DAY)
        .unwrap();
    let late = SystemTime::now() + 9 * DAY;
    let (announced, _) = rotation_step(&files, "cluster.local", late, &policy())
        .unwrap()
        .unwrap();
    let (switched, _) = rotation_step(&announced, "cluster.local", late + 2 * DAY, &policy())
        .unwrap()
        .unwrap();
    let state = state_from_files(&switched, "cluster.local", late).unwrap();
    assert_ne!(state.signer.certificate_pem(), old.certificate_pem());
    let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(leaf.certificate_pem.as_bytes()).unwrap();
    let leaf = leaf_pem.parse_x509().unwrap();
    let verified_by: Vec<bool> = state
        .trust_bundle
        .iter()
        .map(|root| {
            let (_, root) = x509_parser::pem::parse_x509_pem(root.as_bytes()).unwrap();
            let root = root.parse_x509().unwrap();
            leaf.verify_signature(Some(root.public_key())).is_ok()
        })
        .collect();
    assert_eq!(
        verified_by,
        [false, true],
        "only the old root, still in the bundle, signed it"
    );
}

#[test]
fn a_broken_bundle_is_an_error_naming_it() {
    let empty = CaFiles::named("Secret istio-system/istio-ca-secret", BTreeMap::new());
    let mut files = new_root_files(&empty, "cluster.local", &first_policy()).unwrap();
    files.insert(
        BUNDLE_FILE,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
    );
    let err = state_from_files(&files, "cluster.local", SystemTime::now()).unwrap_err();
    assert!(
        err.to_string()
            .contains("istio-ca-secret key root-cert.pem"),
        "{err}"
    );
}
