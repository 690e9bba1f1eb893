//! `WorkloadEntry`: a non-Kubernetes workload (a VM, a bare-metal server) in the mesh.
//!
//! The same message describes the endpoints of a `ServiceEntry` and the template of a
//! `WorkloadGroup`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::is_default;
use crate::status::IstioStatus;

/// Spec of a `WorkloadEntry` (`networking.istio.io`): the properties of one workload.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    plural = "workloadentries",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    status = "IstioStatus",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.address",
        description = "Address associated with the network endpoint"
    ),
    doc = "Describes a non-Kubernetes workload, such as a VM or a bare-metal server, as it is onboarded into the mesh. See https://istio.io/docs/reference/config/networking/workload-entry.html",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// Address of the endpoint: an IP address, a DNS name (with DNS resolution in a
    /// ServiceEntry) or a `unix://` socket path; required unless `network` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port name (as declared by the service) to the endpoint's port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint belongs to; endpoints on other networks are reached
    /// through that network's gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Locality of the endpoint, `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load-balancing weight; 0 means the default weight.
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight: u32,
    /// Service account of the workload, in the namespace of the config.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}
