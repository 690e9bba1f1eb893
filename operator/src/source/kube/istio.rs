//! Istio objects from the API server → index records. They are watched untyped
//! (`DynamicObject`) and read by the same parser and validator as files and the admission
//! webhook, so an object the schema admits but capstan cannot read is reported on that object
//! (field and reason) instead of failing the whole watch.

use capstan_crds::{Kind, ObjectKey, parse_json};
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::index::{IstioRecord, Record, RecordKey};
use crate::status::Observed;

/// The storage version every Istio kind is watched in.
pub const VERSION: &str = "v1";

pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group(), VERSION, kind.as_str()),
        kind.plural(),
    )
}

pub fn key(kind: Kind, object: &DynamicObject) -> RecordKey {
    RecordKey::Istio(ObjectKey {
        kind,
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
    })
}

/// Metadata fields that change without the object's meaning changing (the resource version
/// changes with every status write): left out so they never look like a config change.
const VOLATILE_METADATA: &[&str] = &[
    "resourceVersion",
    "managedFields",
    "uid",
    "creationTimestamp",
    "selfLink",
];

pub fn record(kind: Kind, object: &DynamicObject) -> Option<Record> {
    let RecordKey::Istio(key) = key(kind, object) else {
        return None;
    };
    let generation = object.metadata.generation.unwrap_or(0);
    let resource_version = object.metadata.resource_version.clone();
    let mut value = serde_json::to_value(object).ok()?;
    let fields = value.as_object_mut()?;
    let status = fields.remove("status");
    if let Some(Value::Object(metadata)) = fields.get_mut("metadata") {
        for field in VOLATILE_METADATA {
            metadata.remove(*field);
        }
    }
    // DynamicObject serializes the type it was watched as; make sure parsing sees it.
    fields.insert(
        "apiVersion".into(),
        Value::String(format!("{}/{VERSION}", kind.group())),
    );
    fields.insert("kind".into(), Value::String(kind.as_str().into()));
    let source = key.to_string();
    let (object, errors) = match parse_json(&source, &value) {
        Ok(document) => {
            let errors: Vec<String> = document
                .validate()
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            (
                errors
                    .is_empty()
                    .then(|| std::sync::Arc::new(document.object)),
                errors,
            )
        }
        Err(err) => {
            let field = err.field.clone().unwrap_or_default();
            let message = if field.is_empty() {
                err.message.clone()
            } else {
                format!("{field}: {}", err.message)
            };
            (None, vec![message])
        }
    };
    Some(Record::Istio(IstioRecord {
        key,
        generation,
        object,
        errors,
        observed: status.as_ref().and_then(Observed::from_status),
        status: status.map(std::sync::Arc::new),
        resource_version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("a dynamic object")
    }

    #[test]
    fn a_valid_object_is_served_and_volatile_metadata_ignored() {
        let make = |rv: &str| {
            dynamic(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "reviews", "namespace": "bookinfo", "generation": 3,
                             "resourceVersion": rv, "uid": "u-1"},
                "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
                "status": {"conditions": [{"type": "Reconciled", "status": "True",
                           "reason": "Accepted", "message": "", "observedGeneration": 3}]}
            }))
        };
        let Some(Record::Istio(a)) = record(Kind::DestinationRule, &make("10")) else {
            panic!("a record")
        };
        let Some(Record::Istio(b)) = record(Kind::DestinationRule, &make("11")) else {
            panic!("a record")
        };
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        assert!(a.object.is_some());
        assert_eq!(a.generation, 3);
        assert!(
            a.same_config(&b),
            "a new resourceVersion alone is no config change"
        );
        // ... but it is kept, for status patches conditional on it.
        assert_eq!(a.resource_version.as_deref(), Some("10"));
        assert_eq!(b.resource_version.as_deref(), Some("11"));
        assert_eq!(
            a.observed.as_ref().map(|o| o.reason.as_str()),
            Some("Accepted")
        );
    }

    #[test]
    fn an_invalid_object_names_the_field() {
        let object = dynamic(serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "bookinfo", "generation": 2},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": 150}]}]}
        }));
        let Some(Record::Istio(r)) = record(Kind::VirtualService, &object) else {
            panic!("a record")
        };
        assert!(r.object.is_none());
        assert_eq!(r.generation, 2);
        assert!(
            r.errors.iter().any(|e| e.contains("spec.http[0].route")),
            "{:?}",
            r.errors
        );
    }
}
