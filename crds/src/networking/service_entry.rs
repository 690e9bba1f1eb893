//! `ServiceEntry`: adds entries (often external services) to the mesh's service registry.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{WorkloadSelector, is_default};
use super::workload_entry::WorkloadEntrySpec;
use crate::status::IstioStatus;

/// Spec of a `ServiceEntry` (`networking.istio.io`).
#[allow(
    clippy::duplicated_attributes,
    reason = "several printer columns share a type"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    status = "IstioStatus",
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hosts",
        description = "The hosts associated with the ServiceEntry"
    ),
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".spec.location",
        description = "Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)"
    ),
    printcolumn(
        name = "Resolution",
        type_ = "string",
        json_path = ".spec.resolution",
        description = "Service resolution mode for the hosts (NONE, STATIC, DNS or DNS_ROUND_ROBIN)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    doc = "Adds an entry (often an external service) to the mesh's service registry. See https://istio.io/docs/reference/config/networking/service-entry.html",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Hosts associated with the entry; may be wildcard-prefixed DNS names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs (or CIDR blocks) associated with the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports associated with the external service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Whether the service is part of the mesh.
    #[serde(default, skip_serializing_if = "is_default")]
    pub location: Location,
    /// How endpoints of the service are discovered.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resolution: Resolution,
    /// Endpoints of the service; mutually exclusive with `workloadSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects in-mesh workloads (Pods, WorkloadEntries) as endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the entry is visible to (`.`, `*`, `~` or namespace names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities allowed to serve this service (for TLS SAN verification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A port of a service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number (1..=65535); required.
    #[serde(default)]
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS, ... (case-insensitive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name (a DNS-1123 label, unique within the entry); required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Port on the endpoints traffic is sent to; defaults to `number`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub target_port: u32,
}

/// Whether a service entry describes something inside or outside the mesh.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// How the proxy resolves the endpoints of a service entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Traffic goes to the address the connection was originally made to.
    #[default]
    None,
    /// Use the IP addresses listed in `endpoints`.
    Static,
    /// Resolve endpoint (or host) names asynchronously via DNS; all IPs are used.
    Dns,
    /// Resolve via DNS and use only the first IP returned.
    DnsRoundRobin,
    /// Resolve wildcard hosts dynamically at the proxy.
    DynamicDns,
}

/// An endpoint of a ServiceEntry: the same message as a [`WorkloadEntry`](super::WorkloadEntry)'s
/// spec (address, ports, labels, network, locality, weight, service account).
pub type WorkloadEntry = WorkloadEntrySpec;

impl ServiceEntrySpec {
    /// The declared port with this name, if any.
    pub fn port_named(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }
}
