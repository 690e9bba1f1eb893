use std::fs;

use super::FolderSource;

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
    let mut source = FolderSource::new(dir.path());
    let (changed, problems) = source.scan().expect("scan");
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
    assert_eq!(source.scan().expect("scan"), (false, vec![]));
}

#[test]
fn broken_yaml_keeps_the_files_last_good_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dr.yaml");
    fs::write(&path, DR).expect("write");
    let mut source = FolderSource::new(dir.path());
    source.scan().expect("scan");
    fs::write(&path, "apiVersion: [unclosed\n").expect("write");
    let (changed, problems) = source.scan().expect("scan");
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
    let mut source = FolderSource::new(dir.path());
    source.scan().expect("scan");

    // A typo in a field: the object is rejected, its previous version stays.
    fs::write(
        &path,
        DR.replace(
            "labels: {version: v1}}",
            "labels: {version: v1}}\n  - {name: v2, lables: {version: v2}}",
        ),
    )
    .expect("write");
    let (changed, problems) = source.scan().expect("scan");
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
    let (_, problems) = source.scan().expect("scan");
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
    let mut source = FolderSource::new(dir.path());
    source.scan().expect("scan");
    assert_eq!(names(&source).len(), 2);
    fs::remove_file(dir.path().join("dr.yml")).expect("remove");
    assert!(source.scan().expect("scan").0);
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
    let mut source = FolderSource::new(dir.path());
    source.scan().expect("scan");
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
