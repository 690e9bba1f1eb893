//! `networking.istio.io` kinds: ServiceEntry, DestinationRule, VirtualService, Gateway,
//! Sidecar, WorkloadEntry and WorkloadGroup.
//!
//! Field names and semantics follow Istio's `networking/v1alpha3` protos (served as
//! `v1`, `v1beta1` and `v1alpha3`); JSON/YAML names are the protos' camelCase names.
//! Every struct rejects unknown fields, so a typo such as `lables:` is reported
//! instead of being dropped.

pub mod common;
pub mod destination_rule;
pub mod gateway;
pub mod http_policy;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;
pub mod workload_group;

pub use common::{
    MatchLabelsSelector, Percent, PortSelector, StringMatch, StringMatchKind, WorkloadSelector,
    parse_duration,
};
pub use destination_rule::{DestinationRule, DestinationRuleSpec, Subset, TlsMode, TrafficPolicy};
pub use gateway::{Gateway, GatewaySpec, Server, ServerTlsMode, ServerTlsSettings};
pub use service_entry::{Location, Resolution, ServiceEntry, ServiceEntrySpec, ServicePort};
pub use sidecar::{IstioEgressListener, IstioIngressListener, Sidecar, SidecarSpec};
pub use virtual_service::{
    Destination, HttpMatchRequest, HttpRoute, HttpRouteDestination, VirtualService,
    VirtualServiceSpec,
};
pub use workload_entry::{WorkloadEntry, WorkloadEntrySpec};
pub use workload_group::{WorkloadGroup, WorkloadGroupSpec};

/// API group of all kinds in this module.
pub const GROUP: &str = "networking.istio.io";

/// Versions of [`GROUP`] accepted when reading; all share one schema. Objects are
/// written back as `v1`.
pub const ACCEPTED_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// The derived schemas must pass kube's structural-schema rewrite (it panics on
    /// shapes Kubernetes cannot represent).
    #[test]
    fn crds_generate() {
        let crds = [
            ServiceEntry::crd(),
            DestinationRule::crd(),
            VirtualService::crd(),
            Gateway::crd(),
            Sidecar::crd(),
            WorkloadEntry::crd(),
            WorkloadGroup::crd(),
        ];
        let names: Vec<Option<&str>> = crds.iter().map(|c| c.metadata.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("serviceentries.networking.istio.io"),
                Some("destinationrules.networking.istio.io"),
                Some("virtualservices.networking.istio.io"),
                Some("gateways.networking.istio.io"),
                Some("sidecars.networking.istio.io"),
                Some("workloadentries.networking.istio.io"),
                Some("workloadgroups.networking.istio.io"),
            ]
        );
        let json = serde_json::to_string(&crds[2]).unwrap_or_default();
        assert!(
            json.contains("\"maxProperties\":1"),
            "StringMatch schema: {json}"
        );
    }

    #[test]
    fn enums_use_istio_spelling() {
        let cases = [
            (
                serde_json::to_value(Resolution::DnsRoundRobin).ok(),
                "DNS_ROUND_ROBIN",
            ),
            (serde_json::to_value(Resolution::Static).ok(), "STATIC"),
            (
                serde_json::to_value(Location::MeshInternal).ok(),
                "MESH_INTERNAL",
            ),
            (
                serde_json::to_value(TlsMode::IstioMutual).ok(),
                "ISTIO_MUTUAL",
            ),
            (
                serde_json::to_value(destination_rule::SimpleLb::LeastRequest).ok(),
                "LEAST_REQUEST",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(value, Some(serde_json::Value::from(want)));
        }
    }
}
