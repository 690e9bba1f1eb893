//! Services of the mesh, whichever registry they come from (ServiceEntry or Kubernetes
//! Service), in capstan's own types: translation reads these, never API structs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use capstan_crds::networking::service_entry::{self as se, Resolution as SeResolution};
use capstan_crds::networking::workload_entry::WorkloadEntrySpec;
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use crate::index::{Health, NsName};

/// Where a service was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Istio(ObjectKey),
    Kubernetes(NsName),
    /// A Cloud Map service (its namespace / name there), placed in a Kubernetes namespace.
    CloudMap {
        service: NsName,
        namespace: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Istio(key) => write!(f, "{key}"),
            Origin::Kubernetes(id) => write!(f, "Service {id}"),
            Origin::CloudMap { service, .. } => write!(f, "Cloud Map service {service}"),
        }
    }
}

/// How proxies find a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints come from capstan (EDS).
    Static,
    /// Every address of the endpoints' DNS names (STRICT_DNS).
    Dns,
    /// One address of one name at a time (LOGICAL_DNS).
    DnsRoundRobin,
    /// Traffic goes to the address the client dialled (ORIGINAL_DST).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub number: u32,
    /// `None`: not declared; Istio sniffs, capstan serves it as HTTP.
    pub protocol: Option<Protocol>,
    /// The endpoints' port when they declare none (0: `number`).
    pub target_port: u32,
}

impl From<&crate::index::KubeServicePort> for Port {
    /// A Kubernetes Service's port (or a Cloud Map service's, which has the same shape).
    fn from(p: &crate::index::KubeServicePort) -> Self {
        Port {
            name: p.name.clone(),
            number: p.port,
            protocol: p.protocol,
            target_port: p.target_port,
        }
    }
}

impl Port {
    /// Served through the outbound HTTP listener.
    pub fn is_http(&self) -> bool {
        self.protocol
            .is_none_or(|p| p.class() == ProtocolClass::Http && p != Protocol::HttpProxy)
    }

    pub fn is_http2(&self) -> bool {
        self.protocol.is_some_and(Protocol::is_http2)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Shared with the index record it came from (a rebuild copies no address).
    pub address: Arc<str>,
    /// Port name → the endpoint's own port for it.
    pub ports: Arc<BTreeMap<String, u32>>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// `region/zone/subzone`.
    pub locality: String,
    /// 0: the default weight.
    pub weight: u32,
    pub service_account: Arc<str>,
    pub health: Health,
}

impl From<&WorkloadEntrySpec> for Endpoint {
    /// A ServiceEntry's endpoint or a WorkloadEntry (one type in Istio's API), ready.
    fn from(entry: &WorkloadEntrySpec) -> Self {
        Endpoint {
            address: entry.address.as_str().into(),
            ports: Arc::new(entry.ports.clone()),
            labels: Arc::new(entry.labels.clone()),
            locality: entry.locality.clone(),
            weight: entry.weight,
            service_account: entry.service_account.as_str().into(),
            health: Health::Ready,
        }
    }
}

impl Endpoint {
    /// The port this endpoint serves `port` on: its own mapping for the port's name, else the
    /// service's target port, else the service port itself. (The one rule, for every registry.)
    pub fn port_for(&self, port: &Port) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .filter(|p| *p != 0)
            .or((port.target_port != 0).then_some(port.target_port))
            .unwrap_or(port.number)
    }

    /// Whether the endpoint carries every label of `selector` (a subset's labels).
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        labels_include(&self.labels, selector)
    }
}

/// Whether `labels` has every label of `selector` (a selector without labels: any).
pub fn labels_include(
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Which namespaces' proxies see a service (`exportTo`; Istio's mesh default: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExportTo {
    #[default]
    All,
    /// These namespaces only (none: `~`, hidden from every proxy).
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Reads `exportTo` of an object in `namespace`: `*` all, `.` its own namespace, `~` none,
    /// any other entry a namespace; empty: the default, all.
    pub fn parse<S: AsRef<str>>(entries: &[S], namespace: &str) -> Self {
        if entries.is_empty() || entries.iter().any(|e| e.as_ref().trim() == "*") {
            return ExportTo::All;
        }
        ExportTo::Namespaces(
            entries
                .iter()
                .map(|e| e.as_ref().trim())
                .filter(|e| *e != "~" && !e.is_empty())
                .map(|e| if e == "." { namespace } else { e }.to_string())
                .collect(),
        )
    }

    /// Whether proxies of `namespace` (`None`: a proxy that says none) see it.
    pub fn includes(&self, namespace: Option<&str>) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(set) => namespace.is_some_and(|ns| set.contains(ns)),
        }
    }
}

/// A service in the registry: one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    pub origin: Origin,
    /// The virtual addresses clients dial (ServiceEntry `addresses`, a Service's cluster
    /// IPs): what tells TCP services on one port apart.
    pub addresses: Vec<String>,
    pub export_to: ExportTo,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub endpoints: Vec<Endpoint>,
    /// A ServiceEntry's `location: MESH_EXTERNAL` (its default): clients never originate the
    /// mesh's mutual TLS to it on their own.
    pub mesh_external: bool,
    /// A ServiceEntry's `subjectAltNames`: identities its servers present besides those of
    /// its endpoints' service accounts (what an ISTIO_MUTUAL client accepts).
    pub subject_alt_names: Vec<String>,
}

impl Service {
    /// The namespace that defines it: its ServiceEntry's or its Kubernetes Service's (a
    /// Cloud Map service's: the one it was placed in).
    pub fn namespace(&self) -> &str {
        match &self.origin {
            Origin::Istio(key) => &key.namespace,
            Origin::Kubernetes(id) => &id.namespace,
            Origin::CloudMap { namespace, .. } => namespace,
        }
    }

    /// One host of a ServiceEntry.
    pub fn from_service_entry(
        host: String,
        origin: ObjectKey,
        spec: &se::ServiceEntrySpec,
    ) -> Self {
        let export_to = ExportTo::parse(&spec.export_to, &origin.namespace);
        Service {
            host,
            origin: Origin::Istio(origin),
            addresses: spec.addresses.clone(),
            export_to,
            ports: spec
                .ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone(),
                    number: p.number,
                    // Validation rejects unknown names; an empty one is "not declared".
                    protocol: Protocol::parse(&p.protocol),
                    target_port: p.target_port,
                })
                .collect(),
            resolution: match spec.resolution {
                SeResolution::Static => Resolution::Static,
                SeResolution::Dns => Resolution::Dns,
                SeResolution::DnsRoundRobin | SeResolution::DynamicDns => Resolution::DnsRoundRobin,
                SeResolution::None => Resolution::Passthrough,
            },
            endpoints: spec.endpoints.iter().map(Endpoint::from).collect(),
            mesh_external: spec.location == se::Location::MeshExternal,
            subject_alt_names: spec.subject_alt_names.clone(),
        }
    }
}
