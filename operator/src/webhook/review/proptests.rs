//! Property tests of the AdmissionReview handler: whatever arrives, it answers a well-formed
//! AdmissionReview or a clear error, never panics, and its answer stays proportional to the
//! request (the HTTP layer caps requests at `MAX_BODY`).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// An answer may list one problem per field of the object, each naming the field: it is
/// bounded by a constant times the request, never more.
const ANSWER_PER_REQUEST_BYTE: usize = 16;
const ANSWER_OVERHEAD: usize = 4096;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9*./~:_-]{0,12}".prop_map(Value::from),
        Just(Value::from("networking.istio.io/v1")),
        Just(Value::from("VirtualService")),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "apiVersion",
            "kind",
            "metadata",
            "name",
            "namespace",
            "spec",
            "hosts",
            "http",
            "route",
            "destination",
            "host",
            "subset",
            "weight",
            "match",
            "gateways",
        ])
        .prop_map(str::to_owned),
        "[a-z]{1,8}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An Istio object's header over an arbitrary spec and metadata.
fn istio_object() -> impl Strategy<Value = Value> {
    let kinds = capstan_crds::Kind::ALL.to_vec();
    (prop::sample::select(kinds), json(), json()).prop_map(|(kind, metadata, spec)| {
        json!({
            "apiVersion": format!("{}/v1", kind.group()),
            "kind": kind.as_str(),
            "metadata": metadata,
            "spec": spec,
        })
    })
}

fn review(uid: &str, operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "request": {
            "uid": uid,
            "namespace": "bookinfo",
            "operation": operation,
            "object": object,
        }
    }))
    .unwrap_or_default()
}

/// The answer to `body`: a well-formed AdmissionReview, or an error with a message.
fn check(body: &[u8]) -> Result<Value, TestCaseError> {
    match respond(body) {
        Ok(answer) => {
            prop_assert!(
                answer.len() <= ANSWER_OVERHEAD + ANSWER_PER_REQUEST_BYTE * body.len(),
                "a {} byte request got a {} byte answer",
                body.len(),
                answer.len()
            );
            let answer: Value = serde_json::from_slice(&answer)
                .map_err(|e| TestCaseError::fail(format!("the answer is not JSON: {e}")))?;
            prop_assert_eq!(&answer["apiVersion"], API_VERSION);
            prop_assert_eq!(&answer["kind"], KIND);
            let response = &answer["response"];
            prop_assert!(response["uid"].is_string(), "{answer}");
            prop_assert!(response["allowed"].is_boolean(), "{answer}");
            if response["allowed"] == false {
                prop_assert_eq!(&response["status"]["code"], 400);
                let message = response["status"]["message"].as_str().unwrap_or_default();
                prop_assert!(!message.is_empty(), "a denial without a reason: {answer}");
            }
            Ok(answer)
        }
        Err(err) => {
            prop_assert!(!err.to_string().is_empty());
            Ok(Value::Null)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_get_an_answer_or_an_error(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&body)?;
    }

    #[test]
    fn arbitrary_json_gets_an_answer_or_an_error(value in json()) {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        check(&body)?;
    }

    #[test]
    fn reviews_of_arbitrary_objects_are_decided(
        uid in "[a-f0-9-]{1,36}",
        operation in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT", ""]),
        object in prop_oneof![json(), istio_object()],
    ) {
        let answer = check(&review(&uid, operation, object))?;
        // A review with a request is always answered, for the request it names.
        prop_assert_eq!(&answer["response"]["uid"], uid.as_str());
    }

    #[test]
    fn istio_objects_with_arbitrary_specs_are_decided(object in istio_object()) {
        let answer = check(&review("u", "CREATE", object))?;
        prop_assert!(answer["response"]["allowed"].is_boolean());
    }
}

/// Deeper nesting than the parser allows is an error, not a stack overflow.
#[test]
fn deeply_nested_objects_are_refused() {
    let depth = 100_000;
    let object = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(
        r#"{{"apiVersion":"{API_VERSION}","kind":"{KIND}","request":{{"uid":"u","object":{object}}}}}"#
    );
    assert!(matches!(decide(body.as_bytes()), Err(ReviewError::Json(_))));
}
