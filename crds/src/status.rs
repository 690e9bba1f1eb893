//! `IstioStatus`: the status every Istio resource carries.
//!
//! Status is written by controllers, not by users, so capstan keeps it as an opaque
//! JSON object (every field round-trips, unknown ones included). Its CRD schema
//! documents the fields Istio writes and keeps unknown ones, like Istio's
//! (`x-kubernetes-preserve-unknown-fields: true`).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Status of an Istio resource, kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct IstioStatus(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for IstioStatus {
    fn schema_name() -> Cow<'static, str> {
        "IstioStatus".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = StatusFields::json_schema(generator);
        schema.insert(
            "description".to_owned(),
            "Status of the resource, written by controllers; unknown fields are kept.".into(),
        );
        schema.insert(
            "x-kubernetes-preserve-unknown-fields".to_owned(),
            serde_json::Value::Bool(true),
        );
        schema
    }
}

/// The documented shape of [`IstioStatus`], for the schema only.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "only the derived schema is used")]
struct StatusFields {
    /// Current service state of the resource.
    #[serde(default)]
    conditions: Vec<IstioCondition>,
    /// Includes any errors or warnings detected by Istio's analyzers.
    #[serde(default)]
    validation_messages: Vec<AnalysisMessage>,
    /// Resource generation observed by the controller that wrote the status.
    #[serde(default)]
    #[schemars(schema_with = "int_or_string")]
    observed_generation: Option<String>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "only the derived schema is used")]
struct IstioCondition {
    /// Type of the condition.
    r#type: Option<String>,
    /// Status of the condition: `True`, `False` or `Unknown`.
    status: Option<String>,
    /// Last time the condition was probed.
    #[serde(default)]
    #[schemars(schema_with = "date_time")]
    last_probe_time: Option<String>,
    /// Last time the condition changed status.
    #[serde(default)]
    #[schemars(schema_with = "date_time")]
    last_transition_time: Option<String>,
    /// Unique, one-word, CamelCase reason for the last transition.
    reason: Option<String>,
    /// Human-readable details of the last transition.
    message: Option<String>,
    /// Resource generation the condition refers to.
    #[serde(default)]
    #[schemars(schema_with = "int_or_string")]
    observed_generation: Option<String>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "only the derived schema is used")]
struct AnalysisMessage {
    /// URL of the documentation for this kind of message.
    documentation_url: Option<String>,
    /// Severity of the message.
    level: Option<AnalysisLevel>,
    /// Code and name of the message type.
    r#type: Option<AnalysisMessageType>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code, reason = "only the derived schema is used")]
enum AnalysisLevel {
    Unknown,
    Error,
    Warning,
    Info,
}

#[derive(JsonSchema)]
#[allow(dead_code, reason = "only the derived schema is used")]
struct AnalysisMessageType {
    /// A 7 character code matching `^IST[0-9]{4}$`.
    code: Option<String>,
    /// Human-readable name of the message type.
    name: Option<String>,
}

fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

fn date_time(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}
