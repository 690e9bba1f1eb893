//! The config model: Istio objects indexed the way translation looks them up, with every host
//! name resolved to its fully qualified form.

pub mod hostname;

use std::collections::BTreeMap;
use std::fmt;

use capstan_crds::networking::destination_rule::Subset;
use capstan_crds::networking::service_entry::{Resolution, ServicePort, WorkloadEntry};
use capstan_crds::networking::virtual_service::HttpRoute;
use capstan_crds::{IstioObject, ObjectKey};

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

/// A service in the registry: one host of a ServiceEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub host: String,
    pub origin: ObjectKey,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub endpoints: Vec<WorkloadEntry>,
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
    /// Indexes `objects`. Where two objects claim the same host, the first by namespace and
    /// name wins and the other is reported.
    pub fn build<'a>(
        objects: impl IntoIterator<Item = &'a IstioObject>,
        domain_suffix: &str,
    ) -> (Mesh, Vec<Problem>) {
        let mut objects: Vec<&IstioObject> = objects.into_iter().collect();
        objects.sort_by_key(|o| o.key());
        let mut mesh = Mesh {
            domain_suffix: domain_suffix.to_string(),
            ..Mesh::default()
        };
        let mut problems = Vec::new();
        for object in objects {
            let origin = object.key();
            match object {
                IstioObject::ServiceEntry(se) => {
                    for (i, host) in se.spec.hosts.iter().enumerate() {
                        let host = hostname::resolve(host, &origin.namespace, domain_suffix);
                        if let Some(existing) = mesh.services.get(&host) {
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
                        mesh.services.insert(
                            host.clone(),
                            Service {
                                host,
                                origin: origin.clone(),
                                ports: se.spec.ports.clone(),
                                resolution: se.spec.resolution,
                                endpoints: se.spec.endpoints.clone(),
                            },
                        );
                    }
                }
                IstioObject::DestinationRule(dr) => {
                    let host = hostname::resolve(&dr.spec.host, &origin.namespace, domain_suffix);
                    if let Some(existing) = mesh.destination_rules.get(&host) {
                        problems.push(Problem {
                            object: origin.clone(),
                            field: "spec.host".into(),
                            message: format!(
                                "host {host} already has {}; this rule is ignored",
                                existing.origin
                            ),
                        });
                        continue;
                    }
                    mesh.destination_rules.insert(
                        host.clone(),
                        DestinationRule {
                            host,
                            origin,
                            subsets: dr.spec.subsets.clone(),
                        },
                    );
                }
                IstioObject::VirtualService(vs) => {
                    let hosts = vs
                        .spec
                        .hosts
                        .iter()
                        .map(|h| hostname::resolve(h, &origin.namespace, domain_suffix))
                        .collect();
                    mesh.virtual_services.push(VirtualService {
                        origin,
                        hosts,
                        gateways: vs.spec.gateways.clone(),
                        http: vs.spec.http.clone(),
                    });
                }
                // Gateways, Sidecars, workloads and security policies are parsed and
                // validated, but not translated yet.
                _ => {}
            }
        }
        (mesh, problems)
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
