//! What the index holds: each watched object reduced, at the edge, to the fields the mesh uses.
//! Nothing here is a Kubernetes or `crds` API struct except the validated Istio object itself,
//! which the model reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_crds::{IstioObject, ObjectKey, Protocol};

use crate::status::Observed;

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

impl NsName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for NsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An Istio object as last watched: its newest generation, the last version of it that
/// validated (served), and what is wrong with the newest one, if anything.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioRecord {
    pub key: ObjectKey,
    pub generation: i64,
    /// The last valid version (shared: the index keeps it across invalid versions and
    /// re-lists without copying); `None` if no version of the object ever validated.
    pub object: Option<Arc<IstioObject>>,
    /// Why the newest generation is not served (empty: it is).
    pub errors: Vec<String>,
    /// capstan's condition as found on the object, and its whole status (kept so a status
    /// write preserves other controllers' conditions).
    pub observed: Option<Observed>,
    pub status: Option<Arc<serde_json::Value>>,
    /// `metadata.resourceVersion` as last watched: a status patch is made conditional on it,
    /// so it never overwrites what another controller wrote since (`None` outside Kubernetes).
    pub resource_version: Option<String>,
}

impl IstioRecord {
    /// A record of an object that validated (the folder source validates as it reads).
    pub fn valid(object: IstioObject) -> Self {
        IstioRecord {
            key: object.key(),
            generation: object.metadata().generation.unwrap_or(0),
            object: Some(Arc::new(object)),
            errors: Vec::new(),
            observed: None,
            status: None,
            resource_version: None,
        }
    }

    /// Whether `other` differs in what is served or reported, ignoring status.
    pub fn same_config(&self, other: &IstioRecord) -> bool {
        self.generation == other.generation
            && self.object == other.object
            && self.errors == other.errors
    }
}

/// A Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeService {
    pub id: NsName,
    pub ports: Vec<KubeServicePort>,
    /// `clusterIP: None`: clients connect to the endpoints' own addresses.
    pub headless: bool,
    /// `clusterIPs`: the addresses clients dial (a sidecar's TCP listeners match them).
    pub cluster_ips: Vec<String>,
    /// The `networking.istio.io/exportTo` annotation's entries (none: every namespace).
    pub export_to: Vec<String>,
    /// `type: ExternalName`: a DNS alias of this name.
    pub external_name: Option<String>,
    /// `spec.selector`: the WorkloadEntries of its namespace carrying these labels are its
    /// endpoints too, beside its EndpointSlices' (as istiod's); empty: none.
    pub selector: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeServicePort {
    pub name: String,
    pub port: u32,
    /// From `appProtocol` or the port name; `None`: unknown (Istio sniffs it).
    pub protocol: Option<Protocol>,
    /// A numeric `targetPort` (0 when named or absent: the EndpointSlice says).
    pub target_port: u32,
}

/// Health of an endpoint as its EndpointSlice reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// `ready`: takes new requests.
    Ready,
    /// Terminating but still `serving`: finishes what it has, gets no new requests.
    Draining,
    /// Neither: not sent to proxies.
    NotReady,
}

/// A `discovery.k8s.io/v1` EndpointSlice of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRecord {
    pub id: NsName,
    /// The Service (same namespace) from the `kubernetes.io/service-name` label.
    pub service: String,
    /// Port name → port number on the endpoints (shared by every endpoint built from it).
    pub ports: Arc<BTreeMap<String, u32>>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: Arc<str>,
    pub health: Health,
    /// The Pod behind the endpoint (`targetRef`), same namespace.
    pub pod: Option<String>,
    pub node: Option<String>,
    pub zone: Option<String>,
}

/// What the mesh reads of a Pod: labels select subsets, the service account is the identity;
/// its address and readiness make it the endpoint of a ServiceEntry selecting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub id: NsName,
    /// Shared with the endpoints that carry them (a mesh rebuild copies no label map).
    pub labels: Arc<BTreeMap<String, String>>,
    pub service_account: Arc<str>,
    pub node: Option<String>,
    /// `status.podIP` (none before the pod has one).
    pub ip: Option<Arc<str>>,
    /// Its `Ready` condition is true and it is not being deleted.
    pub ready: bool,
}

/// A Node's place: `topology.kubernetes.io/region` and `/zone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub region: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A Secret that may hold a gateway credential: only its certificate, key and CA entries are
/// kept (`source::secret` decides which), so nothing else of a Secret reaches the index.
/// Its `Debug` names the entries and their sizes, never their content: records end up in
/// logs and panic messages.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub id: NsName,
    /// `type`, e.g. `kubernetes.io/tls` or `Opaque` (empty when unset).
    pub secret_type: String,
    /// Entry name → value (decoded bytes).
    pub data: BTreeMap<String, Arc<[u8]>>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("secret_type", &self.secret_type)
            .field("entry_sizes", &sizes)
            .finish()
    }
}

/// A service of AWS Cloud Map as the Cloud Map source made it: one host, its ports, and the
/// instances that may take traffic (the source drops the others). Config (host, ports) and
/// endpoints are compared apart: an instance change rebuilds only load assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMapService {
    /// Cloud Map namespace name / service name.
    pub id: NsName,
    pub host: String,
    /// The Kubernetes namespace it belongs to: its DestinationRules' and `exportTo`'s.
    pub namespace: String,
    pub ports: Vec<KubeServicePort>,
    /// The instances are DNS names (`AWS_INSTANCE_CNAME`), not addresses.
    pub dns: bool,
    pub endpoints: Vec<CloudMapEndpoint>,
}

impl CloudMapService {
    /// Whether `other` differs in more than its endpoints.
    pub fn same_config(&self, other: &CloudMapService) -> bool {
        self.host == other.host
            && self.namespace == other.namespace
            && self.ports == other.ports
            && self.dns == other.dns
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMapEndpoint {
    /// `AWS_INSTANCE_IPV4` (or the CNAME).
    pub address: Arc<str>,
    /// Port name → the instance's port for it (`AWS_INSTANCE_PORT` or the port map).
    pub ports: Arc<BTreeMap<String, u32>>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// `region/zone` from the `REGION` and `AVAILABILITY_ZONE` attributes.
    pub locality: String,
}

/// The kinds of record, each fed by one watcher (or, for Istio kinds, the folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    Istio(capstan_crds::Kind),
    Service,
    Slice,
    Pod,
    Node,
    Namespace,
    Secret,
    CloudMap,
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tag::Istio(kind) => write!(f, "{kind}"),
            Tag::Service => f.write_str("Service"),
            Tag::Slice => f.write_str("EndpointSlice"),
            Tag::Pod => f.write_str("Pod"),
            Tag::Node => f.write_str("Node"),
            Tag::Namespace => f.write_str("Namespace"),
            Tag::Secret => f.write_str("Secret"),
            Tag::CloudMap => f.write_str("Cloud Map service"),
        }
    }
}

/// One record of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Istio(IstioRecord),
    Service(KubeService),
    Slice(SliceRecord),
    Pod(PodRecord),
    Node(NodeRecord),
    Namespace(NamespaceRecord),
    Secret(SecretRecord),
    CloudMap(CloudMapService),
}

/// The identity of a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    Istio(ObjectKey),
    Service(NsName),
    Slice(NsName),
    Pod(NsName),
    Node(String),
    Namespace(String),
    Secret(NsName),
    CloudMap(NsName),
}

impl Record {
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Istio(r) => RecordKey::Istio(r.key.clone()),
            Record::Service(r) => RecordKey::Service(r.id.clone()),
            Record::Slice(r) => RecordKey::Slice(r.id.clone()),
            Record::Pod(r) => RecordKey::Pod(r.id.clone()),
            Record::Node(r) => RecordKey::Node(r.name.clone()),
            Record::Namespace(r) => RecordKey::Namespace(r.name.clone()),
            Record::Secret(r) => RecordKey::Secret(r.id.clone()),
            Record::CloudMap(r) => RecordKey::CloudMap(r.id.clone()),
        }
    }

    pub fn tag(&self) -> Tag {
        self.key().tag()
    }
}

impl RecordKey {
    pub fn tag(&self) -> Tag {
        match self {
            RecordKey::Istio(k) => Tag::Istio(k.kind),
            RecordKey::Service(_) => Tag::Service,
            RecordKey::Slice(_) => Tag::Slice,
            RecordKey::Pod(_) => Tag::Pod,
            RecordKey::Node(_) => Tag::Node,
            RecordKey::Namespace(_) => Tag::Namespace,
            RecordKey::Secret(_) => Tag::Secret,
            RecordKey::CloudMap(_) => Tag::CloudMap,
        }
    }
}
