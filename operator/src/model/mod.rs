//! The config model: Istio objects indexed the way translation looks them up, with every host
//! name resolved to its fully qualified form.

pub mod hostname;
pub mod kube;
pub mod service;
pub mod unsupported;

use std::collections::BTreeMap;
use std::fmt;

use capstan_crds::networking::virtual_service::HttpRoute;
use capstan_crds::{IstioObject, ObjectKey};

use crate::index::Index;
pub use service::{Origin, Port, Resolution, Service};

/// Something in otherwise valid config that capstan cannot honour, reported and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// A named set of a service's endpoints, selected by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The subsets a DestinationRule declares for a host.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub host: String,
    pub origin: ObjectKey,
    pub subsets: Vec<Subset>,
}

/// A VirtualService's HTTP routing with its hosts resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub origin: ObjectKey,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

impl VirtualService {
    pub fn namespace(&self) -> &str {
        &self.origin.namespace
    }

    /// Sidecars are the reserved gateway `mesh`, which a VirtualService without gateways
    /// binds to implicitly.
    pub fn applies_to_sidecars(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

#[derive(Debug, Default)]
pub struct Mesh {
    pub domain_suffix: String,
    pub services: BTreeMap<String, Service>,
    pub destination_rules: BTreeMap<String, DestinationRule>,
    /// Ordered by namespace and name: for a host claimed by several, the first wins.
    pub virtual_services: Vec<VirtualService>,
}

impl Mesh {
    /// The mesh of everything `index` serves. Kubernetes Services come first: a ServiceEntry
    /// for the host of a Service is reported and ignored for that host. Among Istio objects
    /// claiming one host, the first by namespace and name wins and the others are reported.
    pub fn build(index: &Index, domain_suffix: &str) -> (Mesh, Vec<Problem>) {
        let mut mesh = Mesh {
            domain_suffix: domain_suffix.to_string(),
            ..Mesh::default()
        };
        for service in index.services() {
            let service = kube::service(index, service, domain_suffix);
            mesh.services.insert(service.host.clone(), service);
        }
        let mut problems = Vec::new();
        // The index iterates in key order: kind, then namespace and name.
        for object in index.istio_objects() {
            mesh.add(object, &mut problems);
            problems.extend(unsupported::fields(object));
        }
        (mesh, problems)
    }

    fn add(&mut self, object: &IstioObject, problems: &mut Vec<Problem>) {
        let origin = object.key();
        let domain_suffix = self.domain_suffix.clone();
        match object {
            IstioObject::ServiceEntry(se) => {
                for (i, host) in se.spec.hosts.iter().enumerate() {
                    let host = hostname::resolve(host, &origin.namespace, &domain_suffix);
                    if let Some(existing) = self.services.get(&host) {
                        problems.push(Problem {
                            object: origin.clone(),
                            field: format!("spec.hosts[{i}]"),
                            message: format!(
                                "host {host} is already defined by {}; this entry is ignored for it",
                                existing.origin
                            ),
                        });
                        continue;
                    }
                    let service =
                        Service::from_service_entry(host.clone(), origin.clone(), &se.spec);
                    self.services.insert(host, service);
                }
            }
            IstioObject::DestinationRule(dr) => {
                let host = hostname::resolve(&dr.spec.host, &origin.namespace, &domain_suffix);
                if let Some(existing) = self.destination_rules.get(&host) {
                    problems.push(Problem {
                        object: origin.clone(),
                        field: "spec.host".into(),
                        message: format!(
                            "host {host} already has {}; this rule is ignored",
                            existing.origin
                        ),
                    });
                    return;
                }
                let subsets = dr
                    .spec
                    .subsets
                    .iter()
                    .map(|s| Subset {
                        name: s.name.clone(),
                        labels: s.labels.clone(),
                    })
                    .collect();
                self.destination_rules.insert(
                    host.clone(),
                    DestinationRule {
                        host,
                        origin,
                        subsets,
                    },
                );
            }
            IstioObject::VirtualService(vs) => {
                let hosts = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| hostname::resolve(h, &origin.namespace, &domain_suffix))
                    .collect();
                self.virtual_services.push(VirtualService {
                    origin,
                    hosts,
                    gateways: vs.spec.gateways.clone(),
                    http: vs.spec.http.clone(),
                });
            }
            // Gateways, Sidecars, workloads and security policies are parsed and validated,
            // but not translated yet (their status condition says so).
            _ => {}
        }
    }

    /// Re-reads the endpoints of Kubernetes Service `id` from `index`; returns the service
    /// when it is in the mesh (a ServiceEntry never shadows a Service, so its host is its own).
    pub fn refresh_endpoints(
        &mut self,
        index: &Index,
        id: &crate::index::NsName,
    ) -> Option<&Service> {
        let host = kube::host(id, &self.domain_suffix);
        let service = self.services.get_mut(&host)?;
        if service.origin != Origin::Kubernetes(id.clone()) || service.resolution == Resolution::Dns
        {
            return None;
        }
        service.endpoints = kube::endpoints(index, id);
        self.services.get(&host)
    }

    /// The subsets declared for `host` (none without a DestinationRule).
    pub fn subsets(&self, host: &str) -> &[Subset] {
        self.destination_rules
            .get(host)
            .map_or(&[], |dr| dr.subsets.as_slice())
    }

    /// The VirtualService routing `host`: the first (by namespace/name) naming it exactly,
    /// else the first whose wildcard host covers it.
    pub fn virtual_service_for(&self, host: &str) -> Option<&VirtualService> {
        let sidecar = || {
            self.virtual_services
                .iter()
                .filter(|vs| vs.applies_to_sidecars())
        };
        sidecar()
            .find(|vs| vs.hosts.iter().any(|h| h == host))
            .or_else(|| sidecar().find(|vs| vs.hosts.iter().any(|h| hostname::matches(h, host))))
    }
}
