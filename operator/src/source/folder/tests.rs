use std::fs;
use std::path::Path;
use std::time::Duration;

use super::FolderSource;

/// A settle window long enough that a test's own steps fit well inside it.
const TEST_SETTLE: Duration = Duration::from_millis(400);

/// Files written by a test are brand new: most tests do not wait for them to settle.
fn source(dir: &Path) -> FolderSource {
    FolderSource::new(dir).with_settle(Duration::ZERO)
}

fn settling_source(dir: &Path, settle: Duration) -> FolderSource {
    FolderSource::new(dir).with_settle(settle)
}

fn source_allowing_empty(dir: &Path) -> FolderSource {
    source(dir).allow_empty(true)
}

/// Whether the served objects changed, and the problems reported.
fn scan(source: &mut FolderSource) -> (bool, Vec<String>) {
    let report = source.scan().expect("scan");
    (report.changed(), report.problems)
}

/// Scans once every file has settled.
fn settled_scan(source: &mut FolderSource) -> (bool, Vec<String>) {
    std::thread::sleep(TEST_SETTLE);
    let report = source.scan().expect("scan");
    assert!(report.unsettled.is_empty(), "{report:?}");
    (report.changed(), report.problems)
}

const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"#;

const SE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"#;

fn names(source: &FolderSource) -> Vec<String> {
    source
        .objects()
        .0
        .iter()
        .map(|o| o.key().to_string())
        .collect()
}

fn subset_count(source: &FolderSource) -> usize {
    source
        .objects()
        .0
        .iter()
        .find_map(|o| o.as_destination_rule())
        .map_or(0, |dr| dr.spec.subsets.len())
}

#[test]
fn reads_multi_document_yaml_files_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("mesh.yaml"), format!("{SE}---\n{DR}")).expect("write");
    fs::write(dir.path().join("notes.txt"), "not config").expect("write");
    fs::write(dir.path().join(".mesh.yaml.swp"), "garbage: [").expect("write");
    let mut source = source(dir.path());
    let (changed, problems) = scan(&mut source);
    assert!(changed);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        names(&source),
        vec![
            "ServiceEntry bookinfo/reviews",
            "DestinationRule bookinfo/reviews"
        ]
    );
    // Nothing changed on disk: nothing changes.
    assert_eq!(scan(&mut source), (false, vec![]));
}

#[test]
fn broken_yaml_keeps_the_files_last_good_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dr.yaml");
    fs::write(&path, DR).expect("write");
    let mut source = source(dir.path());
    scan(&mut source);
    fs::write(&path, "apiVersion: [unclosed\n").expect("write");
    let (changed, problems) = scan(&mut source);
    assert!(!changed);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("dr.yaml"), "{problems:?}");
    assert!(problems[0].contains("keeping the file's last good content"));
    assert_eq!(names(&source), vec!["DestinationRule bookinfo/reviews"]);
}

#[test]
fn invalid_object_keeps_its_last_good_version_and_new_invalid_objects_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dr.yaml");
    fs::write(&path, DR).expect("write");
    let mut source = source(dir.path());
    scan(&mut source);

    // A typo in a field: the object is rejected, its previous version stays.
    fs::write(
        &path,
        DR.replace(
            "labels: {version: v1}}",
            "labels: {version: v1}}\n  - {name: v2, lables: {version: v2}}",
        ),
    )
    .expect("write");
    let (changed, problems) = scan(&mut source);
    assert!(!changed);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("dr.yaml"), "{problems:?}");
    assert!(
        problems[0].contains("DestinationRule bookinfo/reviews"),
        "{problems:?}"
    );
    assert!(problems[0].contains("lables"), "{problems:?}");
    assert!(problems[0].contains("keeping the object's last good version"));
    assert_eq!(subset_count(&source), 1);

    // A semantically invalid new object is skipped; the good one in the same file is kept.
    let bad = DR
        .replace("name: reviews,", "name: other,")
        .replace("name: v1,", "name: '',");
    fs::write(&path, format!("{DR}---\n{bad}")).expect("write");
    let (_, problems) = scan(&mut source);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("DestinationRule bookinfo/other") && p.contains("skipped")),
        "{problems:?}"
    );
    assert_eq!(names(&source), vec!["DestinationRule bookinfo/reviews"]);
}

#[test]
fn deleted_files_take_their_objects_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("se.yaml"), SE).expect("write");
    fs::write(dir.path().join("dr.yml"), DR).expect("write");
    let mut source = source(dir.path());
    scan(&mut source);
    assert_eq!(names(&source).len(), 2);
    fs::remove_file(dir.path().join("dr.yml")).expect("remove");
    assert!(scan(&mut source).0);
    assert_eq!(names(&source), vec!["ServiceEntry bookinfo/reviews"]);
}

#[test]
fn an_object_defined_in_two_files_is_served_once_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), DR).expect("write");
    fs::write(
        dir.path().join("b.yaml"),
        DR.replace("name: v1,", "name: v9,"),
    )
    .expect("write");
    let mut source = source(dir.path());
    scan(&mut source);
    let (objects, problems) = source.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("b.yaml") && problems[0].contains("a.yaml"),
        "{problems:?}"
    );
    assert_eq!(subset_count(&source), 1);
    assert_eq!(
        source.objects().0[0]
            .as_destination_rule()
            .map(|d| d.spec.subsets[0].name.as_str()),
        Some("v1")
    );
}

/// A two-subset DestinationRule, and the same file cut after its first subset: still valid
/// YAML, one subset short.
fn dr_v1_v2() -> String {
    format!("{DR}  - {{name: v2, labels: {{version: v2}}}}\n")
}

#[test]
fn a_truncated_file_keeps_its_last_good_content_until_writes_settle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dr.yaml");
    fs::write(&path, dr_v1_v2()).expect("write");
    let mut source = settling_source(dir.path(), TEST_SETTLE);
    settled_scan(&mut source);
    assert_eq!(subset_count(&source), 2);

    // A writer truncated the file and has written only the first subset so far.
    fs::write(&path, DR).expect("write");
    let report = source.scan().expect("scan");
    assert!(!report.changed());
    assert_eq!(report.unsettled, vec![path.clone()]);
    assert!(
        report
            .rescan_after
            .is_some_and(|after| after <= TEST_SETTLE)
    );
    assert_eq!(subset_count(&source), 2, "the half-written file was served");

    // It stays that way: the writer was done after all.
    let (changed, _) = settled_scan(&mut source);
    assert!(changed);
    assert_eq!(subset_count(&source), 1);
}

/// A settling source serving `se.yaml` and `dr.yaml` written to `dir`.
fn settled_service_and_rule(dir: &Path) -> FolderSource {
    fs::write(dir.join("se.yaml"), SE).expect("write");
    fs::write(dir.join("dr.yaml"), DR).expect("write");
    let mut source = settling_source(dir, TEST_SETTLE);
    settled_scan(&mut source);
    source
}

#[test]
fn an_emptied_file_keeps_its_objects_until_writes_settle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = settled_service_and_rule(dir.path());
    assert_eq!(names(&source).len(), 2);

    fs::write(dir.path().join("dr.yaml"), "").expect("truncate");
    assert!(!scan(&mut source).0);
    assert_eq!(names(&source).len(), 2, "the emptied file lost its objects");

    assert!(settled_scan(&mut source).0);
    assert_eq!(names(&source), vec!["ServiceEntry bookinfo/reviews"]);
}

#[test]
fn a_removed_file_keeps_its_objects_until_it_has_been_gone_for_the_settle_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = settled_service_and_rule(dir.path());

    fs::remove_file(dir.path().join("dr.yaml")).expect("remove");
    let report = source.scan().expect("scan");
    assert!(!report.changed(), "{report:?}");
    assert_eq!(report.unsettled, vec![dir.path().join("dr.yaml")]);
    assert!(
        report
            .rescan_after
            .is_some_and(|after| after <= TEST_SETTLE)
    );
    assert_eq!(names(&source).len(), 2, "the removal was served at once");

    assert!(settled_scan(&mut source).0);
    assert_eq!(names(&source), vec!["ServiceEntry bookinfo/reviews"]);
}

#[test]
fn a_file_removed_and_put_back_within_the_settle_window_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = settled_service_and_rule(dir.path());

    fs::remove_file(dir.path().join("dr.yaml")).expect("remove");
    assert!(!scan(&mut source).0);
    fs::write(dir.path().join("dr.yaml"), DR).expect("write");
    assert!(!settled_scan(&mut source).0);
    assert_eq!(names(&source).len(), 2);
}

/// `rm *.yaml` under load: the unlinks straddle scans, and the first file's window ends
/// before the last's. Nothing is dropped until the last removal has settled, and then all
/// are, together.
#[test]
fn removals_spread_over_scans_land_together_once_the_last_has_settled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_rule = DR.replace("name: reviews", "name: ratings");
    fs::write(dir.path().join("keep.yaml"), other_rule).expect("write");
    let mut source = settled_service_and_rule(dir.path());

    fs::remove_file(dir.path().join("se.yaml")).expect("remove");
    assert!(!scan(&mut source).0);
    std::thread::sleep(TEST_SETTLE * 3 / 4);
    fs::remove_file(dir.path().join("dr.yaml")).expect("remove");
    assert!(!scan(&mut source).0);
    std::thread::sleep(TEST_SETTLE / 2);
    // se.yaml has been gone longer than the window, dr.yaml not yet.
    let report = source.scan().expect("scan");
    assert!(!report.changed(), "{report:?}");
    assert_eq!(report.unsettled.len(), 2, "{report:?}");
    assert_eq!(names(&source).len(), 3, "one removal was served alone");

    let report = {
        std::thread::sleep(TEST_SETTLE);
        source.scan().expect("scan")
    };
    assert!(report.unsettled.is_empty(), "{report:?}");
    assert_eq!(report.affected.len(), 2, "{report:?}");
    assert_eq!(names(&source), vec!["DestinationRule bookinfo/ratings"]);
}

/// An object moved to another file (the old one removed, a settled new one renamed in):
/// the new definition is served at once, and the old file waiting out its removal is not
/// reported as repeating it.
#[test]
fn an_object_moved_to_another_file_is_served_from_it_at_once_without_a_duplicate_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), DR).expect("write");
    // Hidden files are not config: written aside, it settles before it is renamed in.
    fs::write(dir.path().join(".b.yaml"), dr_v1_v2()).expect("write");
    let mut source = settling_source(dir.path(), TEST_SETTLE);
    settled_scan(&mut source);
    assert_eq!(subset_count(&source), 1);

    fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    fs::rename(dir.path().join(".b.yaml"), dir.path().join("b.yaml")).expect("rename");
    let report = source.scan().expect("scan");
    assert_eq!(report.unsettled, vec![dir.path().join("a.yaml")]);
    assert!(report.changed());
    assert_eq!(
        subset_count(&source),
        2,
        "b.yaml's definition is not served"
    );
    assert_eq!(source.duplicates_of(&report.affected), Vec::<String>::new());
    assert_eq!(source.objects().1, Vec::<String>::new());

    assert!(settled_scan(&mut source).0);
    assert_eq!(subset_count(&source), 2);
    assert_eq!(source.objects().1, Vec::<String>::new());
}

/// Where two files define one object, the first by name is served; while it is missing the
/// other is, and when it comes back in time it is again — each switch reported, so that the
/// index always holds what is served.
#[test]
fn a_file_back_in_time_is_served_again_before_a_later_file_defining_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), DR).expect("write");
    fs::write(dir.path().join("b.yaml"), dr_v1_v2()).expect("write");
    let mut source = settling_source(dir.path(), TEST_SETTLE);
    settled_scan(&mut source);
    assert_eq!(subset_count(&source), 1, "a.yaml's, first by name");

    fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    let report = source.scan().expect("scan");
    assert_eq!(subset_count(&source), 2, "b.yaml's while a.yaml is missing");
    assert_eq!(report.affected.len(), 1, "{report:?}");

    fs::write(dir.path().join("a.yaml"), DR).expect("write");
    let report = source.scan().expect("scan");
    assert_eq!(subset_count(&source), 1, "a.yaml's again");
    assert_eq!(
        report.affected.len(),
        1,
        "the switch back is not reported: {report:?}"
    );
}

/// `rm -r` unlinks one file at a time: a scan between two unlinks must not serve the files
/// left (here, a DestinationRule without its ServiceEntry), and the folder put back as it was
/// is no change at all.
#[test]
fn a_folder_removed_file_by_file_never_serves_what_is_left_midway() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("config");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("se.yaml"), SE).expect("write");
    fs::write(dir.join("dr.yaml"), DR).expect("write");
    let mut source = settling_source(&dir, TEST_SETTLE);
    settled_scan(&mut source);

    fs::remove_file(dir.join("se.yaml")).expect("remove");
    assert!(!scan(&mut source).0, "the folder was served half removed");
    fs::remove_dir_all(&dir).expect("remove the folder");
    assert!(source.scan().is_err());
    assert_eq!(names(&source).len(), 2);

    std::thread::sleep(TEST_SETTLE);
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("se.yaml"), SE).expect("write");
    fs::write(dir.join("dr.yaml"), DR).expect("write");
    assert!(!settled_scan(&mut source).0);
    assert_eq!(names(&source).len(), 2);
}

#[cfg(unix)]
#[test]
fn a_file_that_cannot_be_inspected_keeps_its_last_good_content_and_is_reported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("se.yaml"), SE).expect("write");
    fs::write(real.path().join("dr.yaml"), DR).expect("write");
    std::os::unix::fs::symlink(real.path().join("dr.yaml"), dir.path().join("dr.yaml"))
        .expect("symlink");
    let mut source = source(dir.path());
    scan(&mut source);
    assert_eq!(names(&source).len(), 2);

    // The link now dangles: the file cannot be inspected, which is not the same as deleted.
    fs::remove_file(real.path().join("dr.yaml")).expect("remove");
    let (changed, problems) = scan(&mut source);
    assert!(!changed);
    assert_eq!(names(&source).len(), 2, "{problems:?}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("dr.yaml") && problems[0].contains("keeping its last good content"),
        "{problems:?}"
    );
    assert_eq!(scan(&mut source), (false, vec![]), "reported twice");

    // Deleting the link itself does remove the objects.
    fs::remove_file(dir.path().join("dr.yaml")).expect("remove");
    assert!(scan(&mut source).0);
    assert_eq!(names(&source), vec!["ServiceEntry bookinfo/reviews"]);
}

#[test]
fn a_folder_emptied_of_objects_keeps_the_last_good_config_unless_allowed() {
    for allow in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("se.yaml"), SE).expect("write");
        fs::write(dir.path().join("dr.yaml"), DR).expect("write");
        let mut source = if allow {
            source_allowing_empty(dir.path())
        } else {
            source(dir.path())
        };
        scan(&mut source);
        fs::remove_file(dir.path().join("se.yaml")).expect("remove");
        fs::remove_file(dir.path().join("dr.yaml")).expect("remove");
        let (changed, problems) = scan(&mut source);
        if allow {
            assert!(changed);
            assert!(names(&source).is_empty());
        } else {
            assert!(!changed);
            assert_eq!(
                names(&source).len(),
                2,
                "emptied without --allow-empty-config"
            );
            assert!(
                problems.iter().any(|p| p.contains("--allow-empty-config")
                    && p.contains("keeping the last good config")),
                "{problems:?}"
            );
            // Objects coming back are served as usual.
            fs::write(dir.path().join("dr.yaml"), DR).expect("write");
            assert!(scan(&mut source).0);
            assert_eq!(names(&source), vec!["DestinationRule bookinfo/reviews"]);
        }
    }
}

/// A TLS Secret in `data` form ("Y2VydA==" is "cert", `key` is base64 already).
fn tls_secret(name: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: edge}}\n\
         type: kubernetes.io/tls\ndata: {{tls.crt: Y2VydA==, tls.key: {key}}}\n"
    )
}

/// A Secret's entries, by name.
type Entries = Vec<(String, Vec<u8>)>;

fn secret_entries(source: &FolderSource) -> Vec<(String, Entries)> {
    source
        .secrets()
        .0
        .iter()
        .map(|s| {
            let entries = s
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.to_vec()))
                .collect();
            (s.id.to_string(), entries)
        })
        .collect()
}

#[test]
fn tls_secrets_are_read_beside_istio_objects_and_keep_their_last_good_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("certs.yaml");
    let generic = "apiVersion: v1\nkind: Secret\nmetadata: {name: shop-cert-cacert, namespace: edge}\n\
                   stringData: {cacert: CA}\n";
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: edge}\n\
                  stringData: {password: hunter2}\n";
    fs::write(
        &path,
        format!(
            "{DR}---\n{}---\n{generic}---\n{opaque}",
            tls_secret("shop-cert", "a2V5")
        ),
    )
    .expect("write");
    let mut source = source(dir.path());
    let (changed, problems) = scan(&mut source);
    assert!(changed);
    // The Secret without TLS entries is named, never its content.
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("document 4 (Secret edge/db)")
            && problems[0].contains("not a gateway credential"),
        "{problems:?}"
    );
    assert!(!problems[0].contains("hunter2"));
    assert_eq!(names(&source), vec!["DestinationRule bookinfo/reviews"]);
    let entry = |k: &str, v: &[u8]| (k.to_string(), v.to_vec());
    assert_eq!(
        secret_entries(&source),
        vec![
            (
                "edge/shop-cert".to_string(),
                vec![entry("tls.crt", b"cert"), entry("tls.key", b"key")]
            ),
            (
                "edge/shop-cert-cacert".to_string(),
                vec![entry("cacert", b"CA")]
            ),
        ]
    );

    // A new certificate replaces the old.
    fs::write(&path, tls_secret("shop-cert", "bmV3LWtleQ==")).expect("write");
    let (changed, problems) = scan(&mut source);
    assert!(changed && problems.is_empty(), "{problems:?}");
    assert_eq!(
        secret_entries(&source)[0].1,
        vec![entry("tls.crt", b"cert"), entry("tls.key", b"new-key")]
    );

    // Broken base64 keeps the last good version, and is not quoted.
    fs::write(&path, tls_secret("shop-cert", "'*not-base64*'")).expect("write");
    let (changed, problems) = scan(&mut source);
    assert!(!changed);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("(Secret edge/shop-cert): data.tls.key: not valid base64")
            && problems[0].contains("keeping the object's last good version")
            && !problems[0].contains("not-base64"),
        "{problems:?}"
    );
    assert_eq!(
        secret_entries(&source)[0].1[1],
        entry("tls.key", b"new-key")
    );

    // Removed from the file: gone.
    fs::write(&path, DR).expect("write");
    assert!(scan(&mut source).0);
    assert!(source.secrets().0.is_empty());
}

fn affected(source: &mut FolderSource) -> Vec<String> {
    let report = source.scan().expect("scan");
    // These folders hold no Secrets: what changed is the objects named.
    assert!(!report.secrets_changed);
    report.affected.iter().map(|k| k.to_string()).collect()
}

fn served_subsets(source: &FolderSource) -> Option<usize> {
    let key = "DestinationRule bookinfo/reviews";
    let object = source
        .objects()
        .0
        .into_iter()
        .find(|o| o.key().to_string() == key)?;
    let served = source.served(&object.key()).expect("served");
    assert_eq!(served, object, "served() agrees with objects()");
    served.as_destination_rule().map(|dr| dr.spec.subsets.len())
}

#[test]
fn a_rescan_names_only_the_objects_an_edit_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), format!("{SE}---\n{DR}")).expect("write");
    fs::write(dir.path().join("b.yaml"), SE.replace("reviews", "ratings")).expect("write");
    let mut source = source(dir.path());
    assert_eq!(
        affected(&mut source),
        [
            "ServiceEntry bookinfo/ratings",
            "ServiceEntry bookinfo/reviews",
            "DestinationRule bookinfo/reviews"
        ]
    );
    // One object of a.yaml edited: it alone, though the file was read again.
    let two_subsets = DR.replace(
        "labels: {version: v1}}",
        "labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}",
    );
    fs::write(dir.path().join("a.yaml"), format!("{SE}---\n{two_subsets}")).expect("write");
    assert_eq!(affected(&mut source), ["DestinationRule bookinfo/reviews"]);
    assert_eq!(served_subsets(&source), Some(2));
    // Rewritten with the same objects in another order, or touched: nothing.
    fs::write(dir.path().join("a.yaml"), format!("{two_subsets}---\n{SE}")).expect("write");
    assert_eq!(affected(&mut source), Vec::<String>::new());
    // A file removed: its objects.
    fs::remove_file(dir.path().join("b.yaml")).expect("remove");
    assert_eq!(affected(&mut source), ["ServiceEntry bookinfo/ratings"]);
    assert!(
        source
            .objects()
            .0
            .iter()
            .all(|o| o.key().to_string() != "ServiceEntry bookinfo/ratings")
    );
}

#[test]
fn an_object_defined_twice_is_served_from_the_first_file_until_it_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two_subsets = DR.replace(
        "labels: {version: v1}}",
        "labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}",
    );
    fs::write(dir.path().join("a.yaml"), DR).expect("write");
    fs::write(dir.path().join("b.yaml"), &two_subsets).expect("write");
    let mut source = source(dir.path());
    scan(&mut source);
    assert_eq!(served_subsets(&source), Some(1));
    let key = source.objects().0[0].key();
    let duplicates = source.duplicates_of([&key]);
    assert_eq!(duplicates.len(), 1, "{duplicates:?}");
    assert!(duplicates[0].contains("b.yaml") && duplicates[0].contains("a.yaml"));
    assert_eq!(duplicates, source.objects().1);
    // The second definition edited: named, and still the first is served.
    fs::write(dir.path().join("b.yaml"), DR).expect("write");
    assert_eq!(affected(&mut source), ["DestinationRule bookinfo/reviews"]);
    assert_eq!(served_subsets(&source), Some(1));
    fs::write(dir.path().join("b.yaml"), &two_subsets).expect("write");
    scan(&mut source);
    // The first file gone: the second definition is served.
    fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    assert_eq!(affected(&mut source), ["DestinationRule bookinfo/reviews"]);
    assert_eq!(served_subsets(&source), Some(2));
    assert!(source.duplicates_of([&key]).is_empty());
}

#[test]
fn an_object_defined_twice_in_one_file_is_reported_as_objects_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), format!("{DR}---\n{SE}---\n{DR}")).expect("write");
    fs::write(dir.path().join("b.yaml"), DR).expect("write");
    let mut source = source(dir.path());
    scan(&mut source);
    let key = source
        .objects()
        .0
        .iter()
        .find(|o| o.as_destination_rule().is_some())
        .expect("the DestinationRule")
        .key();
    let duplicates = source.duplicates_of([&key]);
    assert_eq!(duplicates.len(), 2, "{duplicates:?}");
    assert!(duplicates[0].contains("defined twice in this file"));
    assert!(duplicates[1].contains("b.yaml"));
    assert_eq!(duplicates, source.objects().1);
    assert_eq!(served_subsets(&source), Some(1));
}

/// The name of the first subset of the DestinationRule served.
fn served_subset_name(source: &FolderSource) -> Option<String> {
    let key = source
        .objects()
        .0
        .into_iter()
        .find(|o| o.as_destination_rule().is_some())?
        .key();
    let dr = source.served(&key)?.as_destination_rule()?;
    dr.spec.subsets.first().map(|s| s.name.clone())
}

/// Waits until files changed now are old enough for their metadata to vouch for them.
fn past_racy_window() {
    std::thread::sleep(Duration::from_millis(150));
}

fn files_read(source: &mut FolderSource) -> (usize, Vec<String>) {
    let report = source.scan().expect("scan");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let affected = report.affected.iter().map(|k| k.to_string()).collect();
    (report.files_read, affected)
}

#[test]
fn a_rescan_reads_only_the_files_whose_metadata_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    fs::write(&a, SE).expect("write");
    fs::write(&b, DR).expect("write");
    let mut source = source(dir.path());
    assert_eq!(files_read(&mut source).0, 2);
    // Read right after being written: not vouched for yet, so read once more.
    past_racy_window();
    assert_eq!(files_read(&mut source), (2, vec![]));
    assert_eq!(files_read(&mut source), (0, vec![]));
    // Rewritten in place with as many bytes: read, and its object reported.
    fs::write(&b, DR.replace("name: v1", "name: v2")).expect("write");
    assert_eq!(
        files_read(&mut source),
        (1, vec!["DestinationRule bookinfo/reviews".to_string()])
    );
    assert_eq!(served_subset_name(&source).as_deref(), Some("v2"));
    // Another file renamed over it, same size and modification time: another inode.
    past_racy_window();
    files_read(&mut source);
    let modified = fs::metadata(&b).and_then(|m| m.modified()).expect("mtime");
    let staged = dir.path().join("staged.txt");
    fs::write(&staged, DR.replace("name: v1", "name: v3")).expect("write");
    fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(modified))
        .expect("set mtime");
    fs::rename(&staged, &b).expect("rename");
    assert_eq!(
        files_read(&mut source),
        (1, vec!["DestinationRule bookinfo/reviews".to_string()])
    );
    assert_eq!(served_subset_name(&source).as_deref(), Some("v3"));
    // A file gone and one added: only the new one read.
    past_racy_window();
    files_read(&mut source);
    fs::remove_file(&a).expect("remove");
    fs::write(dir.path().join("c.yaml"), SE.replace("reviews", "ratings")).expect("write");
    let (read, affected) = files_read(&mut source);
    assert_eq!(read, 1);
    assert_eq!(
        affected,
        [
            "ServiceEntry bookinfo/ratings",
            "ServiceEntry bookinfo/reviews"
        ]
    );
}
