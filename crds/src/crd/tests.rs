//! The checked-in manifests are current, and every schema is structural.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

use super::*;

fn generated_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join(GENERATED_DIR)
}

#[test]
fn checked_in_manifests_are_current() {
    let manifests = manifests().unwrap_or_else(|e| panic!("{e}"));
    let dir = generated_dir();
    let mut stale = Vec::new();
    for manifest in &manifests {
        let path = dir.join(&manifest.file_name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == manifest.contents => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    let expected: BTreeSet<&str> = manifests.iter().map(|m| m.file_name.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !expected.contains(name.as_str()) {
                stale.push(format!(
                    "{} is not generated any more",
                    dir.join(name).display()
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the CRD manifests under crds/generated are stale; run `make crds`:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
fn every_kind_is_served_at_istios_versions_with_one_schema() {
    let short_names = [
        (Kind::ServiceEntry, Some("se")),
        (Kind::DestinationRule, Some("dr")),
        (Kind::VirtualService, Some("vs")),
        (Kind::Gateway, Some("gw")),
        (Kind::Sidecar, None),
        (Kind::WorkloadEntry, Some("we")),
        (Kind::WorkloadGroup, Some("wg")),
        (Kind::PeerAuthentication, Some("pa")),
        (Kind::AuthorizationPolicy, Some("ap")),
        (Kind::RequestAuthentication, Some("ra")),
    ];
    for (kind, short) in short_names {
        let crd = definition(kind).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("{}.{}", kind.plural(), kind.group());
        assert_eq!(crd.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(crd.spec.group, kind.group());
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind.as_str());
        let shorts = crd.spec.names.short_names.clone().unwrap_or_default();
        assert_eq!(
            shorts,
            short.into_iter().map(str::to_owned).collect::<Vec<_>>()
        );
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        let group_category = kind.group().replace('.', "-");
        assert_eq!(categories, ["istio-io".to_owned(), group_category]);

        let versions: Vec<(&str, bool, bool)> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        let want: Vec<(&str, bool, bool)> = if kind.group() == "networking.istio.io" {
            vec![
                ("v1", true, true),
                ("v1alpha3", true, false),
                ("v1beta1", true, false),
            ]
        } else {
            vec![("v1", true, true), ("v1beta1", true, false)]
        };
        assert_eq!(versions, want, "{kind}");
        let first = &crd.spec.versions[0];
        for version in &crd.spec.versions {
            assert_eq!(version.schema, first.schema, "{kind} {}", version.name);
            assert_eq!(
                version.additional_printer_columns, first.additional_printer_columns,
                "{kind} {}",
                version.name
            );
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{kind} {} has no status subresource",
                version.name
            );
        }
    }
}

#[test]
fn printer_columns_match_istios() {
    let cases: [(Kind, &[&str]); 10] = [
        (
            Kind::ServiceEntry,
            &["Hosts", "Location", "Resolution", "Age"],
        ),
        (Kind::DestinationRule, &["Host", "Age"]),
        (Kind::VirtualService, &["Gateways", "Hosts", "Age"]),
        (Kind::Gateway, &[]),
        (Kind::Sidecar, &[]),
        (Kind::WorkloadEntry, &["Age", "Address"]),
        (Kind::WorkloadGroup, &["Age"]),
        (Kind::PeerAuthentication, &["Mode", "Age"]),
        (Kind::AuthorizationPolicy, &["Action", "Age"]),
        (Kind::RequestAuthentication, &[]),
    ];
    for (kind, want) in cases {
        let crd = definition(kind).unwrap_or_else(|e| panic!("{e}"));
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(columns, want, "{kind}");
    }
}

/// Checks the rules of a structural schema (Kubernetes "Specifying a structural
/// schema"), plus v1-only restrictions; returns one message per violation.
fn structural_problems(schema: &JSONSchemaProps, path: &str, in_junctor: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |message: &str| problems.push(format!("{path}: {message}"));
    let int_or_string = schema.x_kubernetes_int_or_string == Some(true);
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    if in_junctor {
        if schema.type_.is_some() || schema.description.is_some() || schema.default.is_some() {
            problem("type, description or default inside anyOf/allOf/oneOf/not");
        }
        if schema.additional_properties.is_some() || schema.nullable.is_some() {
            problem("additionalProperties or nullable inside anyOf/allOf/oneOf/not");
        }
    } else if schema.type_.is_none() && !int_or_string && !preserve {
        problem("no type");
    }
    if schema.ref_path.is_some() {
        problem("$ref is not allowed");
    }
    if schema.unique_items == Some(true) {
        problem("uniqueItems: true is not allowed");
    }
    if schema.x_kubernetes_preserve_unknown_fields == Some(false) {
        problem("x-kubernetes-preserve-unknown-fields must be true or absent");
    }
    if schema.default.is_some() {
        problem("default would be written into stored objects");
    }
    if schema.nullable.is_some() {
        problem("nullable is not used in Istio's schemas");
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        problem("properties and additionalProperties are mutually exclusive");
    }
    if let Some(values) = &schema.enum_ {
        let all_strings = values.iter().all(|v| v.0.is_string());
        if schema.type_.as_deref() != Some("string") || !all_strings {
            problem("enum values must be strings of a string schema");
        }
    }
    for required in schema.required.iter().flatten() {
        if !schema
            .properties
            .as_ref()
            .is_some_and(|p| p.contains_key(required))
        {
            problem(&format!("required field `{required}` is not a property"));
        }
    }
    match schema.type_.as_deref() {
        Some("array") if !matches!(schema.items, Some(JSONSchemaPropsOrArray::Schema(_))) => {
            problem("array without a single items schema");
        }
        Some("object") | None => {}
        Some(_) if schema.properties.is_some() || schema.additional_properties.is_some() => {
            problem("properties on a non-object");
        }
        _ => {}
    }
    for (name, child) in schema.properties.iter().flatten() {
        problems.extend(structural_problems(child, &format!("{path}.{name}"), false));
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => {
            problems.extend(structural_problems(items, &format!("{path}[]"), false));
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            problems.push(format!("{path}: items must be a single schema"));
        }
        None => {}
    }
    match &schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(values)) => {
            problems.extend(structural_problems(values, &format!("{path}.*"), false));
        }
        Some(JSONSchemaPropsOrBool::Bool(false)) => {
            problems.push(format!(
                "{path}: additionalProperties: false is not allowed"
            ));
        }
        _ => {}
    }
    let junctors = [&schema.all_of, &schema.any_of, &schema.one_of];
    for sub in junctors.into_iter().flatten().flatten() {
        problems.extend(structural_problems(sub, path, true));
    }
    if let Some(not) = &schema.not {
        problems.extend(structural_problems(not, path, true));
    }
    problems
}

/// Paths of every node with `x-kubernetes-preserve-unknown-fields: true`.
fn preserved_paths(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        out.push(path.to_owned());
    }
    for (name, child) in schema.properties.iter().flatten() {
        preserved_paths(child, &format!("{path}.{name}"), out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        preserved_paths(items, &format!("{path}[]"), out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        preserved_paths(values, &format!("{path}.*"), out);
    }
}

#[test]
fn schemas_are_structural() {
    for kind in Kind::ALL {
        let crd = definition(kind).unwrap_or_else(|e| panic!("{e}"));
        let Some(schema) = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        else {
            panic!("{kind}: no schema");
        };
        let problems = structural_problems(schema, "", false);
        assert!(problems.is_empty(), "{kind}:\n{}", problems.join("\n"));
        assert_eq!(schema.type_.as_deref(), Some("object"));
        let properties = schema.properties.clone().unwrap_or_default();
        let top: Vec<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(top, ["spec", "status"], "{kind}");

        // Only status keeps unknown fields, as in Istio's CRDs; a typo in spec is
        // pruned by the API server and rejected by validation.
        let mut preserved = Vec::new();
        preserved_paths(schema, "", &mut preserved);
        assert_eq!(preserved, [".status"], "{kind}");
    }
}

#[test]
fn the_structural_check_catches_violations() {
    let bad = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some(
            [(
                "x".to_owned(),
                JSONSchemaProps {
                    unique_items: Some(true),
                    ..JSONSchemaProps::default()
                },
            )]
            .into(),
        ),
        additional_properties: Some(JSONSchemaPropsOrBool::Bool(true)),
        ..JSONSchemaProps::default()
    };
    let problems = structural_problems(&bad, "", false);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn all_yaml_holds_every_crd() {
    let manifests = manifests().unwrap_or_else(|e| panic!("{e}"));
    let Some(all) = manifests.iter().find(|m| m.file_name == ALL_FILE) else {
        panic!("no {ALL_FILE}");
    };
    for manifest in manifests.iter().filter(|m| m.file_name != ALL_FILE) {
        let body = manifest.contents.trim_start_matches(HEADER);
        assert!(
            all.contents.contains(body),
            "{} missing",
            manifest.file_name
        );
    }
    // The header comment, then one `---` document per CRD.
    assert_eq!(all.contents.matches("\n---\n").count(), Kind::ALL.len());
}
