//! `extensionProviders`: the external authorizers (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`)
//! checked as istiod checks them (`processExtensionProvider`); other kinds (tracing, logging)
//! kept by kind only, as not applied.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::StatusCode;
use serde::Deserialize;

/// istiod's timeout for a check when the provider sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One extension provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    ExtAuthzHttp(ExtAuthzHttp),
    ExtAuthzGrpc(ExtAuthzGrpc),
    /// An external authorizer with a bad field: the reason.
    Invalid(String),
    /// A kind capstan does not serve (`zipkin`, `envoyFileAccessLog`, …).
    Unsupported(String),
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<host>` of the authorizer's service.
    pub service: String,
    pub port: u32,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default)]
    pub status_on_error: String,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Deprecated in Istio; read when the field above is empty.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBody>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default)]
    pub status_on_error: String,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBody>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

impl ExtAuthzHttp {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The headers sent to the authorizer (Istio's deprecated field when the new is empty).
    pub fn request_headers(&self) -> &[String] {
        if self.include_request_headers_in_check.is_empty() {
            &self.include_headers_in_check
        } else {
            &self.include_request_headers_in_check
        }
    }
}

impl ExtAuthzGrpc {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// The status sent when the authorizer cannot be reached (none: Envoy's 403).
pub fn status_on_error(status: &str) -> Option<StatusCode> {
    status
        .parse::<i32>()
        .ok()
        .and_then(|code| StatusCode::try_from(code).ok())
}

/// One entry of `extensionProviders`: its name and provider. Err: why the entry itself is
/// unusable (no name, no kind, several kinds).
pub(super) fn provider(value: serde_json::Value) -> Result<(String, Provider), String> {
    let serde_json::Value::Object(mut fields) = value else {
        return Err("not a map".into());
    };
    let name = match fields.remove("name") {
        Some(serde_json::Value::String(name)) if !name.is_empty() => name,
        _ => return Err("name: missing (a non-empty string)".into()),
    };
    let mut kinds = fields.into_iter();
    let (kind, config) = match (kinds.next(), kinds.next()) {
        (Some(only), None) => only,
        (None, _) => return Err(format!("{name}: names no provider kind")),
        (Some((a, _)), Some((b, _))) => {
            return Err(format!("{name}: has several provider kinds ({a}, {b})"));
        }
    };
    let provider = match kind.as_str() {
        "envoyExtAuthzHttp" => match serde_json::from_value::<ExtAuthzHttp>(config) {
            Ok(http) => checked(http_errors(&http), Provider::ExtAuthzHttp(http)),
            Err(e) => Provider::Invalid(format!("envoyExtAuthzHttp: {e}")),
        },
        "envoyExtAuthzGrpc" => match serde_json::from_value::<ExtAuthzGrpc>(config) {
            Ok(grpc) => checked(
                common_errors(grpc.port, &grpc.status_on_error),
                Provider::ExtAuthzGrpc(grpc),
            ),
            Err(e) => Provider::Invalid(format!("envoyExtAuthzGrpc: {e}")),
        },
        _ => Provider::Unsupported(kind),
    };
    Ok((name, provider))
}

fn checked(errors: Vec<String>, provider: Provider) -> Provider {
    if errors.is_empty() {
        provider
    } else {
        Provider::Invalid(errors.join("; "))
    }
}

fn common_errors(port: u32, status: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !(1..=65535).contains(&port) {
        out.push(format!("port must be in [1, 65535], found {port}"));
    }
    if !status.is_empty() && status_on_error(status).is_none() {
        out.push(format!(
            "statusOnError {status:?} is not an HTTP status Envoy knows"
        ));
    }
    out
}

fn http_errors(http: &ExtAuthzHttp) -> Vec<String> {
    let mut out = common_errors(http.port, &http.status_on_error);
    if !http.path_prefix.is_empty() && !http.path_prefix.starts_with('/') {
        out.push(format!(
            "pathPrefix must begin with `/`, found {:?}",
            http.path_prefix
        ));
    }
    for (field, values) in [
        ("includeRequestHeadersInCheck", http.request_headers()),
        (
            "headersToUpstreamOnAllow",
            &http.headers_to_upstream_on_allow,
        ),
        (
            "headersToDownstreamOnDeny",
            &http.headers_to_downstream_on_deny,
        ),
        (
            "headersToDownstreamOnAllow",
            &http.headers_to_downstream_on_allow,
        ),
    ] {
        if values.iter().any(|v| v == "*") {
            out.push(format!(
                "{field}: a single wildcard (\"*\") is not supported; use a prefix or suffix"
            ));
        }
    }
    out
}

/// A protobuf JSON duration: decimal seconds with an `s` (`"0.5s"`, `"10s"`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let seconds = text
        .strip_suffix('s')
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 315_576_000_000.0)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "timeout {text:?} is not a duration in seconds such as \"0.5s\""
            ))
        })?;
    Ok(Some(Duration::from_secs_f64(seconds)))
}
