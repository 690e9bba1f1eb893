//! `PeerAuthentication`: which mutual-TLS mode workloads accept connections with.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::IstioStatus;
use crate::types::MatchLabelsSelector;

/// Spec of a `PeerAuthentication` (`security.istio.io`).
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    status = "IstioStatus",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mtls.mode",
        description = "Defines the mTLS mode used for peer authentication"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    doc = "Peer authentication configuration for workloads. See https://istio.io/docs/reference/config/security/peer_authentication.html",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads the policy applies to; the whole namespace (or mesh, in the root
    /// namespace) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<MatchLabelsSelector>,
    /// Mutual-TLS settings for the workloads; inherited from the parent scope when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the workload's port number (needs a `selector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// Mutual-TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// `UNSET` (inherit) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<MutualTlsMode>,
}

/// Which connections a workload accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MutualTlsMode {
    /// Inherit from the parent scope; `PERMISSIVE` at the top.
    #[default]
    Unset,
    /// Plain text only.
    Disable,
    /// Both mutual TLS and plain text.
    Permissive,
    /// Mutual TLS only.
    Strict,
}
