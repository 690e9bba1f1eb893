//! The Sidecars whose egress listeners declare their ports' protocols, checked once every
//! file is read against the services the files' ServiceEntries define (as `run` checks them
//! against the mesh's): a named service with another kind of protocol on that port is
//! reported.

use std::collections::BTreeMap;

use capstan_crds::{Document, IstioObject};

use super::Problem;
use crate::model::hostname;
use crate::model::service::Service;
use crate::model::sidecar_scope::{DEFAULT_ROOT_NAMESPACE, SidecarScope};

/// A Sidecar declaring protocols: its scope, its warnings' common part and the lines of its
/// fields.
#[derive(Debug)]
struct Declaring {
    scope: SidecarScope,
    warning: Problem,
    lines: BTreeMap<String, Option<u64>>,
}

#[derive(Debug, Default)]
pub(super) struct EgressProtocols {
    sidecars: Vec<Declaring>,
    services: Vec<Service>,
}

impl EgressProtocols {
    /// Notes a valid document: a ServiceEntry's services, a Sidecar declaring protocols.
    /// `warning` carries what a warning about it says of the document.
    pub fn note(&mut self, document: &Document, warning: Problem) {
        let key = document.object.key();
        match &document.object {
            IstioObject::ServiceEntry(se) => {
                for host in &se.spec.hosts {
                    let host = hostname::resolve(host, &key.namespace, "cluster.local");
                    let service = Service::from_service_entry(host, key.clone(), &se.spec);
                    self.services.push(service);
                }
            }
            IstioObject::Sidecar(sc) => {
                let scope = SidecarScope::new(key, &sc.spec, "cluster.local");
                if !scope.declares_protocols() {
                    return;
                }
                let lines = (0..sc.spec.egress.len())
                    .map(|i| format!("spec.egress[{i}].port.protocol"))
                    .map(|field| {
                        let line = document.line_of(&field);
                        (field, line)
                    })
                    .collect();
                self.sidecars.push(Declaring {
                    scope,
                    warning,
                    lines,
                });
            }
            _ => {}
        }
    }

    /// The warnings, once every file is read.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for sidecar in &self.sidecars {
            for service in &self.services {
                let found = sidecar
                    .scope
                    .protocol_mismatches(service, DEFAULT_ROOT_NAMESPACE);
                out.extend(found.into_iter().map(|problem| Problem {
                    line: sidecar.lines.get(&problem.field).copied().flatten(),
                    field: Some(problem.field),
                    message: problem.message,
                    ..sidecar.warning.clone()
                }));
            }
        }
        out
    }
}
