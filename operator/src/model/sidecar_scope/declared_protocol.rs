//! The protocol an egress listener's `port` declares. istiod builds the sidecars' listener
//! on that port with it, whatever the services there say; capstan handles each service's
//! traffic by the service's own protocol. The two agree while the declared protocol is the
//! services' kind (HTTP, TLS or TCP), so a service whose port says otherwise is reported,
//! naming the listener's field.

use capstan_crds::networking::sidecar::{CaptureMode, SidecarSpec};
use capstan_crds::{Protocol, ProtocolClass};

use super::{BoundEgress, SidecarScope};
use crate::model::Problem;
use crate::model::service::Service;

/// `spec.egress[listener].port`: `number` declared as `protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeclaredProtocol {
    listener: usize,
    port: u32,
    protocol: Protocol,
}

impl DeclaredProtocol {
    /// The captured egress listeners with a port and a protocol (one bound to a socket of
    /// its own is an HTTP port's, or reported).
    pub(super) fn of(spec: &SidecarSpec) -> Vec<Self> {
        spec.egress
            .iter()
            .enumerate()
            .filter(|(_, l)| l.capture_mode != Some(CaptureMode::None))
            .filter(|(_, l)| !BoundEgress::binds(l))
            .filter_map(|(listener, l)| {
                let port = l.port.as_ref().filter(|p| p.number != 0)?;
                Some(Self {
                    listener,
                    port: port.number,
                    protocol: Protocol::parse(&port.protocol)?,
                })
            })
            .collect()
    }
}

/// How capstan handles a service port: by its protocol, HTTP when it declares none.
fn class_of(protocol: Option<Protocol>) -> ProtocolClass {
    protocol.map_or(ProtocolClass::Http, Protocol::class)
}

impl SidecarScope {
    /// Whether an egress listener declares its port's protocol.
    pub fn declares_protocols(&self) -> bool {
        !self.declared.is_empty()
    }

    /// The egress listeners whose declared protocol is not `service`'s on that port, for a
    /// service their hosts name (for some proxy of the scope: `.` names the proxies' own
    /// namespace, every namespace's for the mesh default in `root_namespace`).
    pub fn protocol_mismatches(&self, service: &Service, root_namespace: &str) -> Vec<Problem> {
        let namespace = service.namespace();
        let own = self.origin.namespace == namespace
            || (self.origin.namespace == root_namespace && self.labels.is_empty());
        self.declared
            .iter()
            .filter_map(|declared| {
                let port = (service.ports.iter()).find(|p| p.number == declared.port)?;
                if class_of(port.protocol) == declared.protocol.class() {
                    return None;
                }
                let named = (self.hosts.iter())
                    .filter(|h| h.port == Some(declared.port))
                    .any(|h| h.names(own, namespace, &service.host));
                named.then(|| Problem {
                    object: self.origin.clone(),
                    field: format!("spec.egress[{}].port.protocol", declared.listener),
                    message: format!(
                        "{host} is {theirs} on port {number}, not {ours}: capstan handles its \
                         traffic as {theirs} (istiod would build the port's listener as {ours})",
                        host = service.host,
                        theirs = port.protocol.map_or("HTTP (undeclared)", Protocol::name),
                        number = declared.port,
                        ours = declared.protocol.name(),
                    ),
                })
            })
            .collect()
    }
}
