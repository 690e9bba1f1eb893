//! The benchmark mesh of the bench-server contract, as Envoy resources: for each service `i`
//! an EDS cluster `svc-{i}` and its load assignment (E endpoints on port 8080, endpoint 0 the
//! one that changes), one listener `listener-0` whose HTTP connection manager takes route
//! configuration `route-0` over ADS, and `route-0` with one virtual host per service.
//!
//! [`Mesh`] keeps every resource encoded once and re-encodes only what a change touches; a
//! change hands back the one resource it re-encoded, for an incremental cache update.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_xds::{Resource, SnapshotBuilder, Update};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

pub const LISTENER_NAME: &str = "listener-0";
pub const ROUTE_NAME: &str = "route-0";
pub const LISTENER_PORT: u32 = 15001;
pub const SERVICE_PORT: u32 = 8080;

/// The cluster (and load assignment) name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// An EDS cluster whose endpoints come over ADS, as every mesh service (and every marker
/// cluster added through the control API) has.
pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            ..Default::default()
        }),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The address of endpoint `j` of service `i`: `10.{(i/256)%256}.{i%256}.{j%256}`.
pub fn endpoint_address(i: usize, j: usize) -> String {
    format!("10.{}.{}.{}", (i / 256) % 256, i % 256, j % 256)
}

/// Service `i`'s load assignment: `endpoints` endpoints on port 8080, except endpoint 0, which
/// is on `port0`.
pub fn load_assignment(i: usize, endpoints: usize, port0: u32) -> ClusterLoadAssignment {
    let lb_endpoints =
        (0..endpoints)
            .map(|j| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: endpoint_address(i, j),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                if j == 0 { port0 } else { SERVICE_PORT },
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
    ClusterLoadAssignment {
        cluster_name: service_name(i),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `listener-0` on 0.0.0.0:15001: an HTTP connection manager with RDS `route-0` over ADS and
/// the router filter.
pub fn listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "outbound".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: ROUTE_NAME.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(LISTENER_PORT)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `route-0`: a virtual host `svc-{i}` per service (domains `svc-{i}` and `svc-{i}:8080`) whose
/// one route, prefix `/`, goes to cluster `svc-{i}`.
pub fn route_configuration(services: usize) -> RouteConfiguration {
    let virtual_hosts = (0..services)
        .map(|i| {
            let name = service_name(i);
            VirtualHost {
                domains: vec![name.clone(), format!("{name}:{SERVICE_PORT}")],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            name.clone(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                name,
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: ROUTE_NAME.into(),
        virtual_hosts,
        ..Default::default()
    }
}

/// A change the mesh refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("no service {0} (the mesh has {1})")]
    NoSuchService(usize, usize),
    #[error("port {0} is not a valid port")]
    BadPort(u32),
    #[error("a cluster name must not be empty")]
    EmptyName,
}

fn encode<M: prost::Message + prost::Name>(name: impl Into<Arc<str>>, message: &M) -> Resource {
    // Every message built here is of a type capstan serves, so encoding cannot be refused.
    Resource::encode(name, message)
        .unwrap_or_else(|| unreachable!("{} is a type capstan serves over ADS", M::full_name()))
}

/// The whole mesh, encoded, with the changes the control API makes.
#[derive(Debug, Clone)]
pub struct Mesh {
    endpoints: usize,
    clusters: Vec<Resource>,
    assignments: Vec<Resource>,
    listener: Resource,
    route: Resource,
    extra_clusters: BTreeMap<String, Resource>,
    extra_assignments: BTreeMap<String, Resource>,
}

impl Mesh {
    /// The initial mesh of `services` services with `endpoints` endpoints each.
    pub fn new(services: usize, endpoints: usize) -> Self {
        let clusters = (0..services)
            .map(|i| {
                let name = service_name(i);
                encode(name.as_str(), &cluster(&name))
            })
            .collect();
        let assignments = (0..services)
            .map(|i| {
                encode(
                    service_name(i),
                    &load_assignment(i, endpoints, SERVICE_PORT),
                )
            })
            .collect();
        Self {
            endpoints,
            clusters,
            assignments,
            listener: encode(LISTENER_NAME, &listener()),
            route: encode(ROUTE_NAME, &route_configuration(services)),
            extra_clusters: BTreeMap::new(),
            extra_assignments: BTreeMap::new(),
        }
    }

    pub fn services(&self) -> usize {
        self.clusters.len()
    }

    /// Moves endpoint 0 of service `service` to `port`; returns the new load assignment.
    pub fn set_endpoint_port(&mut self, service: usize, port: u32) -> Result<Resource, MeshError> {
        if port == 0 || port > u32::from(u16::MAX) {
            return Err(MeshError::BadPort(port));
        }
        let services = self.services();
        let slot = self
            .assignments
            .get_mut(service)
            .ok_or(MeshError::NoSuchService(service, services))?;
        *slot = encode(
            service_name(service),
            &load_assignment(service, self.endpoints, port),
        );
        Ok(slot.clone())
    }

    /// Adds (or replaces) cluster `name`, shaped like a service's cluster. A name that has no
    /// load assignment yet also gets an empty one, so that an Envoy can finish warming the
    /// cluster (and go-control-plane's snapshot cache, which the peer uses, stays consistent).
    /// Returns the resources that changed.
    pub fn add_cluster(&mut self, name: &str) -> Result<Vec<Resource>, MeshError> {
        if name.is_empty() {
            return Err(MeshError::EmptyName);
        }
        let cluster = encode(name, &cluster(name));
        self.extra_clusters
            .insert(name.to_string(), cluster.clone());
        let mut changed = vec![cluster];
        if !self.has_assignment(name) {
            let empty = ClusterLoadAssignment {
                cluster_name: name.to_string(),
                ..Default::default()
            };
            let assignment = encode(name, &empty);
            self.extra_assignments
                .insert(name.to_string(), assignment.clone());
            changed.push(assignment);
        }
        Ok(changed)
    }

    fn has_assignment(&self, name: &str) -> bool {
        let service = name
            .strip_prefix("svc-")
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i < self.services() && service_name(i) == name);
        service || self.extra_assignments.contains_key(name)
    }

    /// Every resource, clusters first, then load assignments, the listener and the route.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.clusters
            .iter()
            .chain(self.extra_clusters.values())
            .chain(&self.assignments)
            .chain(self.extra_assignments.values())
            .chain([&self.listener, &self.route])
    }

    /// The complete resource set, for the cache's initial content. Resources are shared, not
    /// copied.
    pub fn snapshot(&self) -> SnapshotBuilder {
        let mut builder = SnapshotBuilder::new();
        builder.extend(self.resources().cloned());
        builder
    }
}

/// An update that puts `resources` for every proxy.
pub fn put(resources: impl IntoIterator<Item = Resource>) -> Update {
    let mut update = Update::new();
    for resource in resources {
        update.put(resource);
    }
    update
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_xds::type_url;
    use prost::Message;

    fn count(mesh: &Mesh, type_url: &str) -> usize {
        mesh.resources()
            .filter(|r| r.type_url() == type_url)
            .count()
    }

    #[test]
    fn initial_mesh_has_every_resource() {
        let mesh = Mesh::new(3, 2);
        assert_eq!(count(&mesh, type_url::CLUSTER), 3);
        assert_eq!(count(&mesh, type_url::ENDPOINT), 3);
        assert_eq!(count(&mesh, type_url::LISTENER), 1);
        assert_eq!(count(&mesh, type_url::ROUTE), 1);
        assert_eq!(mesh.snapshot().len(), 8);
        let cla = mesh
            .resources()
            .find(|r| r.type_url() == type_url::ENDPOINT && r.name() == "svc-2")
            .expect("svc-2 assignment");
        let cla = ClusterLoadAssignment::decode(cla.body()).expect("decodes");
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
        let route = route_configuration(300);
        assert_eq!(
            route.virtual_hosts[299].domains,
            ["svc-299", "svc-299:8080"]
        );
        assert_eq!(endpoint_address(300, 1), "10.1.44.1");
    }

    #[test]
    fn changes_hand_back_what_they_touched() {
        let mut mesh = Mesh::new(4, 3);
        let before = mesh.resources().cloned().collect::<Vec<_>>();
        let changed = mesh.set_endpoint_port(0, 9000).expect("valid change");
        assert_eq!(
            (changed.type_url(), changed.name()),
            (type_url::ENDPOINT, "svc-0")
        );
        let after = mesh.resources().cloned().collect::<Vec<_>>();
        let differing: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a.version() != b.version())
            .map(|(a, _)| a.name())
            .collect();
        assert_eq!(differing, ["svc-0"]);
        let cla = ClusterLoadAssignment::decode(changed.body()).expect("decodes");
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 3);

        let marker = mesh.add_cluster("marker-0").expect("valid change");
        let kinds: Vec<(&str, &str)> = marker.iter().map(|r| (r.type_url(), r.name())).collect();
        assert_eq!(
            kinds,
            [
                (type_url::CLUSTER, "marker-0"),
                (type_url::ENDPOINT, "marker-0")
            ],
            "a new cluster comes with an empty load assignment"
        );
        assert_eq!(count(&mesh, type_url::CLUSTER), 5);
        assert_eq!(count(&mesh, type_url::ENDPOINT), 5);
        assert_eq!(put(marker).len(), 2);
        assert_eq!(
            mesh.add_cluster("marker-0").expect("valid").len(),
            1,
            "replaced"
        );
        assert_eq!(
            mesh.add_cluster("svc-1").expect("valid").len(),
            1,
            "keeps svc-1's"
        );
        assert_eq!(mesh.add_cluster("svc-9").expect("valid").len(), 2);
        assert_eq!(
            mesh.set_endpoint_port(4, 9000),
            Err(MeshError::NoSuchService(4, 4))
        );
        assert_eq!(
            mesh.set_endpoint_port(0, 70000),
            Err(MeshError::BadPort(70000))
        );
        assert_eq!(mesh.add_cluster(""), Err(MeshError::EmptyName));
    }
}
