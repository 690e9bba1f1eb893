//! `admission.k8s.io/v1` AdmissionReview handling: the decision, independent of HTTP.
//!
//! The object under review goes through the same parser and validator as files
//! (`capstan_crds`); any problem denies the request with every problem, as
//! `field: reason`, in `status.message` (and in `status.details.causes`).

use capstan_crds::{Kind, parse_json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The body is not an AdmissionReview this webhook can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected apiVersion {API_VERSION} and kind {KIND}, got {api_version} {kind}")]
    Version { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest>,
}

/// The request of an AdmissionReview, as both webhooks read it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The request of a serialized `admission.k8s.io/v1` AdmissionReview.
pub(crate) fn read_request(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body)?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Decides on a serialized AdmissionReview; returns the serialized answer.
pub fn respond(body: &[u8]) -> Result<Vec<u8>, ReviewError> {
    let response = decide(body)?;
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "response": response,
    });
    Ok(serde_json::to_vec(&review)?)
}

/// Decides on a serialized AdmissionReview.
pub fn decide(body: &[u8]) -> Result<AdmissionResponse, ReviewError> {
    let request = read_request(body)?;
    let allow = |warnings: Vec<String>| AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        status: None,
        warnings,
    };
    let operation = request.operation.as_deref().unwrap_or("CREATE");
    let Some(mut object) = request
        .object
        .filter(|_| matches!(operation, "CREATE" | "UPDATE"))
    else {
        return Ok(allow(Vec::new()));
    };
    let group = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.split_once('/'))
        .map(|(group, _)| group.to_owned())
        .unwrap_or_default();
    if Kind::ALL.iter().all(|k| k.group() != group) {
        return Ok(allow(vec![format!(
            "capstan does not validate API group `{group}`; the object was admitted unchecked"
        )]));
    }
    // On CREATE the namespace often comes only from the request URL.
    if let (Some(namespace), Some(metadata)) = (
        request.namespace.filter(|ns| !ns.is_empty()),
        object.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        metadata
            .entry("namespace")
            .or_insert_with(|| Value::from(namespace));
    }

    let problems: Vec<(String, String)> = match parse_json("request.object", &object) {
        Err(err) => vec![(err.field.unwrap_or_default(), err.message)],
        Ok(document) => document
            .validate()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect(),
    };
    if problems.is_empty() {
        return Ok(allow(Vec::new()));
    }
    let what = describe(&object);
    let listed: Vec<String> = problems
        .iter()
        .map(|(field, message)| {
            if field.is_empty() {
                message.clone()
            } else {
                format!("{field}: {message}")
            }
        })
        .collect();
    tracing::info!(object = %what, problems = %listed.join("; "), "denied invalid configuration");
    let causes: Vec<Value> = problems
        .iter()
        .map(|(field, message)| json!({"reason": "FieldValueInvalid", "field": field, "message": message}))
        .collect();
    Ok(AdmissionResponse {
        uid: request.uid,
        allowed: false,
        status: Some(json!({
            "status": "Failure",
            "code": 400,
            "reason": "Invalid",
            "message": format!("{what} is invalid: {}", listed.join("; ")),
            "details": {"causes": causes},
        })),
        warnings: Vec::new(),
    })
}

/// `Kind namespace/name` of an object, as far as it can be read.
fn describe(object: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = text(object.get("kind"));
    let metadata = object.get("metadata");
    let name = text(metadata.and_then(|m| m.get("name")));
    match text(metadata.and_then(|m| m.get("namespace"))) {
        ns if ns.is_empty() => format!("{kind} {name}"),
        ns => format!("{kind} {ns}/{name}"),
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn review(operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
                "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
                "namespace": "bookinfo",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": null,
                "dryRun": false,
            }
        }))
        .unwrap_or_default()
    }

    fn virtual_service(weights: [i32; 2]) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "uid": "abc", "generation": 1},
            "spec": {
                "hosts": ["reviews"],
                "http": [{"route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights[0]},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights[1]},
                ]}]
            }
        })
    }

    fn decided(body: &[u8]) -> AdmissionResponse {
        decide(body).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn valid_objects_are_allowed() {
        let response = decided(&review("CREATE", virtual_service([80, 20])));
        assert!(response.allowed, "{response:?}");
        assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response.status, None);
    }

    #[test]
    fn invalid_objects_are_denied_with_every_problem() {
        let mut object = virtual_service([80, 10]);
        object["spec"]["hosts"] = json!(["*"]);
        let response = decided(&review("UPDATE", object));
        assert!(!response.allowed);
        let status = response.status.unwrap_or_default();
        assert_eq!(
            status["message"],
            "VirtualService bookinfo/reviews is invalid: spec.hosts[0]: `*` is only allowed when the VirtualService is bound to gateways (not `mesh`); spec.http[0].route: weights must sum to 100, got 90"
        );
        assert_eq!(status["code"], 400);
        assert_eq!(
            status["details"]["causes"][1]["field"],
            "spec.http[0].route"
        );
    }

    #[test]
    fn unknown_fields_are_denied() {
        let mut object = virtual_service([80, 20]);
        object["spec"]["htpp"] = json!([]);
        let response = decided(&review("CREATE", object));
        assert!(!response.allowed);
        let message = response.status.unwrap_or_default()["message"].clone();
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.contains("spec.htpp: unknown field `htpp`")),
            "{message}"
        );
    }

    #[test]
    fn deletes_and_foreign_groups_are_allowed() {
        assert!(decided(&review("DELETE", Value::Null)).allowed);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let response = decided(&review("CREATE", pod));
        assert!(response.allowed);
        assert_eq!(response.warnings.len(), 1);
    }

    #[test]
    fn malformed_reviews_are_errors() {
        assert!(matches!(decide(b"{"), Err(ReviewError::Json(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
        assert!(matches!(decide(v1beta1), Err(ReviewError::Version { .. })));
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(decide(empty), Err(ReviewError::NoRequest)));
    }

    #[test]
    fn the_answer_is_an_admission_review() {
        let bytes = respond(&review("CREATE", virtual_service([50, 50]))).unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
    }
}
