//! What the simulated proxies read from discovery responses, found by field scans (see
//! [`crate::wire`]) rather than full decoding: the response header, each resource's bytes, a
//! cluster's name and EDS service, a load assignment's name and ports, a listener's RDS route
//! names.
//!
//! Field numbers are those of the Envoy v3 API (`envoy-types`); the tests check every scan
//! against prost-encoded messages.

use crate::wire::{self, WireError};

/// `envoy.config.cluster.v3.Cluster.DiscoveryType.EDS`.
const DISCOVERY_TYPE_EDS: u64 = 3;
/// The type URL suffix of the HTTP connection manager filter config.
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The header fields of a state-of-the-world `DiscoveryResponse`; resources are read lazily.
#[derive(Debug, Clone, Copy)]
pub struct SotwResponse<'a> {
    pub version_info: &'a str,
    pub type_url: &'a str,
    pub nonce: &'a str,
    message: &'a [u8],
}

impl<'a> SotwResponse<'a> {
    /// Reads the header of an encoded `DiscoveryResponse`.
    pub fn parse(message: &'a [u8]) -> Result<Self, WireError> {
        let mut response = Self {
            version_info: "",
            type_url: "",
            nonce: "",
            message,
        };
        for field in wire::fields(message) {
            let field = field?;
            let Some(bytes) = field.bytes() else { continue };
            match field.number {
                1 => response.version_info = wire::utf8(bytes, 1)?,
                4 => response.type_url = wire::utf8(bytes, 4)?,
                5 => response.nonce = wire::utf8(bytes, 5)?,
                _ => {}
            }
        }
        Ok(response)
    }

    /// The encoded body of each resource (the `value` of each `Any` in field 2).
    pub fn resources(&self) -> impl Iterator<Item = Result<&'a [u8], WireError>> + 'a {
        self.anys().map(|any| any_value(any?))
    }

    /// The resources as sent: encoded `google.protobuf.Any`s (see [`any_value`]).
    pub fn anys(&self) -> impl Iterator<Item = Result<&'a [u8], WireError>> + 'a {
        wire::repeated(self.message, 2)
    }
}

/// The value of an encoded `google.protobuf.Any` (field 2).
pub fn any_value(any: &[u8]) -> Result<&[u8], WireError> {
    Ok(wire::last_bytes(any, 2)?.unwrap_or_default())
}

/// The header fields of a `DeltaDiscoveryResponse`; resources and removals are read lazily.
#[derive(Debug, Clone, Copy)]
pub struct DeltaResponse<'a> {
    pub type_url: &'a str,
    pub nonce: &'a str,
    message: &'a [u8],
}

/// One resource of a Delta response: its name and encoded body (empty when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaResource<'a> {
    pub name: &'a str,
    pub body: &'a [u8],
}

impl<'a> DeltaResponse<'a> {
    /// Reads the header of an encoded `DeltaDiscoveryResponse`.
    pub fn parse(message: &'a [u8]) -> Result<Self, WireError> {
        let mut response = Self {
            type_url: "",
            nonce: "",
            message,
        };
        for field in wire::fields(message) {
            let field = field?;
            let Some(bytes) = field.bytes() else { continue };
            match field.number {
                4 => response.type_url = wire::utf8(bytes, 4)?,
                5 => response.nonce = wire::utf8(bytes, 5)?,
                _ => {}
            }
        }
        Ok(response)
    }

    /// The added or updated resources (field 2, `envoy.service.discovery.v3.Resource`).
    pub fn resources(&self) -> impl Iterator<Item = Result<DeltaResource<'a>, WireError>> + 'a {
        wire::repeated(self.message, 2).map(|resource| {
            let resource = resource?;
            let mut out = DeltaResource {
                name: "",
                body: &[],
            };
            for field in wire::fields(resource) {
                let field = field?;
                let Some(bytes) = field.bytes() else { continue };
                match field.number {
                    3 => out.name = wire::utf8(bytes, 3)?,
                    2 => out.body = any_value(bytes)?,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// Names of removed resources (field 6).
    pub fn removed(&self) -> impl Iterator<Item = Result<&'a str, WireError>> + 'a {
        wire::repeated(self.message, 6).map(|name| wire::utf8(name?, 6))
    }
}

/// What a proxy needs of a `Cluster`: its name and, for an EDS cluster, the name of the load
/// assignment to ask for (`eds_cluster_config.service_name`, else the cluster name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterScan<'a> {
    pub name: &'a str,
    pub eds_service: Option<&'a str>,
}

/// Scans an encoded `envoy.config.cluster.v3.Cluster`.
pub fn cluster(body: &[u8]) -> Result<ClusterScan<'_>, WireError> {
    let mut name = "";
    let mut eds = false;
    let mut service_name = "";
    for field in wire::fields(body) {
        let field = field?;
        match (field.number, field.value) {
            (1, wire::Value::Bytes(b)) => name = wire::utf8(b, 1)?,
            (2, wire::Value::Varint(t)) => eds = t == DISCOVERY_TYPE_EDS,
            (3, wire::Value::Bytes(config)) => service_name = wire::string(config, 2)?,
            _ => {}
        }
    }
    let eds_service = eds.then_some(if service_name.is_empty() {
        name
    } else {
        service_name
    });
    Ok(ClusterScan { name, eds_service })
}

/// The `name` (field 1) of an encoded resource: Cluster, Listener, RouteConfiguration, or the
/// `cluster_name` of a ClusterLoadAssignment.
pub fn resource_name(body: &[u8]) -> Result<&str, WireError> {
    wire::string(body, 1)
}

/// Whether an encoded `ClusterLoadAssignment` has an endpoint with socket port `port`.
pub fn load_assignment_has_port(body: &[u8], port: u32) -> Result<bool, WireError> {
    for locality in wire::repeated(body, 2) {
        for lb_endpoint in wire::repeated(locality?, 2) {
            let Some(endpoint) = wire::last_bytes(lb_endpoint?, 1)? else {
                continue;
            };
            let Some(address) = wire::last_bytes(endpoint, 1)? else {
                continue;
            };
            let Some(socket) = wire::last_bytes(address, 1)? else {
                continue;
            };
            for field in wire::fields(socket) {
                let field = field?;
                if field.number == 3 && field.varint() == Some(u64::from(port)) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The RDS route configuration names an encoded `Listener` refers to, through HTTP connection
/// managers in its filter chains (field 3) and default filter chain (field 25).
pub fn listener_route_names(body: &[u8]) -> Result<Vec<String>, WireError> {
    let mut names = Vec::new();
    for field in wire::fields(body) {
        let field = field?;
        let (3 | 25) = field.number else { continue };
        let Some(chain) = field.bytes() else { continue };
        for filter in wire::repeated(chain, 3) {
            let Some(any) = wire::last_bytes(filter?, 4)? else {
                continue;
            };
            if !wire::string(any, 1)?.ends_with(HCM_TYPE) {
                continue;
            }
            let hcm = any_value(any)?;
            if let Some(rds) = wire::last_bytes(hcm, 3)? {
                let name = wire::string(rds, 2)?;
                if !name.is_empty() {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh;
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    fn any<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn sotw_response_header_and_resources() {
        let clusters = [mesh::cluster("svc-0"), mesh::cluster("svc-1")];
        let response = DiscoveryResponse {
            version_info: "v7".into(),
            resources: clusters.iter().map(any).collect(),
            type_url: Cluster::type_url(),
            nonce: "n3".into(),
            ..Default::default()
        };
        let bytes = response.encode_to_vec();
        let scan = SotwResponse::parse(&bytes).expect("valid");
        assert_eq!(scan.version_info, "v7");
        assert_eq!(scan.nonce, "n3");
        assert_eq!(scan.type_url, Cluster::type_url());
        let names: Vec<&str> = scan
            .resources()
            .map(|r| resource_name(r.expect("valid")).expect("valid"))
            .collect();
        assert_eq!(names, ["svc-0", "svc-1"]);
    }

    #[test]
    fn delta_response_resources_and_removals() {
        let response = DeltaDiscoveryResponse {
            resources: vec![Resource {
                name: "svc-3".into(),
                version: "1".into(),
                resource: Some(any(&mesh::load_assignment(3, 2, 8080))),
                ..Default::default()
            }],
            type_url: "t".into(),
            nonce: "9".into(),
            removed_resources: vec!["svc-4".into(), "svc-5".into()],
            ..Default::default()
        };
        let bytes = response.encode_to_vec();
        let scan = DeltaResponse::parse(&bytes).expect("valid");
        assert_eq!((scan.type_url, scan.nonce), ("t", "9"));
        let resources: Vec<DeltaResource<'_>> =
            scan.resources().collect::<Result<_, _>>().expect("valid");
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0].name, "svc-3");
        assert_eq!(resource_name(resources[0].body).expect("valid"), "svc-3");
        let removed: Vec<&str> = scan.removed().collect::<Result<_, _>>().expect("valid");
        assert_eq!(removed, ["svc-4", "svc-5"]);
    }

    #[test]
    fn cluster_scan_finds_eds_service() {
        let eds = mesh::cluster("svc-1").encode_to_vec();
        assert_eq!(
            cluster(&eds).expect("valid"),
            ClusterScan {
                name: "svc-1",
                eds_service: Some("svc-1")
            }
        );
        let mut renamed = mesh::cluster("outbound|80||a");
        if let Some(config) = renamed.eds_cluster_config.as_mut() {
            config.service_name = "a-endpoints".into();
        }
        let renamed = renamed.encode_to_vec();
        assert_eq!(
            cluster(&renamed).expect("valid").eds_service,
            Some("a-endpoints")
        );
        let static_cluster = Cluster {
            name: "static".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32,
            )),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(cluster(&static_cluster).expect("valid").eds_service, None);
    }

    #[test]
    fn load_assignment_ports() {
        let cla = mesh::load_assignment(7, 3, 9999).encode_to_vec();
        assert_eq!(resource_name(&cla).expect("valid"), "svc-7");
        assert!(load_assignment_has_port(&cla, 9999).expect("valid"));
        assert!(load_assignment_has_port(&cla, 8080).expect("valid"));
        assert!(!load_assignment_has_port(&cla, 8081).expect("valid"));
        let one = mesh::load_assignment(7, 1, 9999).encode_to_vec();
        assert!(!load_assignment_has_port(&one, 8080).expect("valid"));
    }

    #[test]
    fn listener_route_names_through_hcm() {
        let listener = mesh::listener().encode_to_vec();
        assert_eq!(
            listener_route_names(&listener).expect("valid"),
            [mesh::ROUTE_NAME]
        );
        let mut inline = mesh::listener();
        inline.default_filter_chain = inline.filter_chains.first().cloned();
        inline.filter_chains.clear();
        assert_eq!(
            listener_route_names(&inline.encode_to_vec()).expect("valid"),
            [mesh::ROUTE_NAME]
        );
        let route = mesh::route_configuration(3).encode_to_vec();
        assert_eq!(resource_name(&route).expect("valid"), mesh::ROUTE_NAME);
    }
}
