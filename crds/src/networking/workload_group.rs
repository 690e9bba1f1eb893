//! `WorkloadGroup`: a template for `WorkloadEntry`s registered automatically by VMs.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::is_default;
use super::workload_entry::WorkloadEntrySpec;
use crate::status::IstioStatus;

/// Spec of a `WorkloadGroup` (`networking.istio.io`).
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadGroup",
    plural = "workloadgroups",
    shortname = "wg",
    category = "istio-io",
    category = "networking-istio-io",
    status = "IstioStatus",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    doc = "Describes a collection of workload instances. See https://istio.io/docs/reference/config/networking/workload-group.html",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupSpec {
    /// Labels and annotations copied to every WorkloadEntry of the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMetadata>,
    /// Template of the group's WorkloadEntries; `address` and `labels` are filled in
    /// per workload. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntrySpec>,
    /// Readiness check run by the workloads' proxies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// Labels and annotations for the generated WorkloadEntries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A readiness check; exactly one of `httpGet`, `tcpSocket`, `exec` and `grpc`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    /// Seconds after start before the first check.
    #[serde(default, skip_serializing_if = "is_default")]
    pub initial_delay_seconds: i32,
    /// Seconds after which a check times out (default 1).
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeout_seconds: i32,
    /// Seconds between checks (default 10).
    #[serde(default, skip_serializing_if = "is_default")]
    pub period_seconds: i32,
    /// Consecutive successes needed after a failure (default 1).
    #[serde(default, skip_serializing_if = "is_default")]
    pub success_threshold: i32,
    /// Consecutive failures needed after a success (default 3).
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_threshold: i32,
    /// An HTTP GET that must answer 200..=399.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheck>,
    /// A TCP connection that must be accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheck>,
    /// A command that must exit with status 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheck>,
    /// A gRPC health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path of the request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Port of the workload; required.
    #[serde(default)]
    pub port: u32,
    /// Host to connect to; the workload's IP by default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `HTTP` (default) or `HTTPS`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    /// Headers sent with the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {
    /// Host to connect to; the workload's IP by default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Port of the workload; required.
    #[serde(default)]
    pub port: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheck {
    /// Command and arguments; required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// Port of the workload.
    #[serde(default, skip_serializing_if = "is_default")]
    pub port: u32,
    /// Service name sent in the health-check request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}
