//! The config model: Istio objects indexed the way translation looks them up, with every host
//! name resolved to its fully qualified form.

pub mod authorization;
mod by_namespace;
pub mod cloud_map;
pub mod delegate;
mod egress_protocols;
pub mod gateway;
pub mod hostname;
pub mod kube;
pub mod peer_authentication;
pub mod request_authentication;
pub mod routing;
mod rule_lookup;
pub use rule_lookup::HostRules;
pub mod secret;
pub mod service;
pub mod sidecar_scope;
pub mod stream_routes;
pub mod traffic_policy;
pub mod unsupported;
mod workload_changes;
pub mod workloads;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use capstan_crds::{IstioObject, ObjectKey};

use crate::index::{Index, NsName, RecordKey};
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
    /// Its traffic policy (top level and per subset); `None` when it sets none.
    pub traffic_policy: Option<std::sync::Arc<traffic_policy::Policies>>,
    /// The namespaces whose proxies it applies to (`exportTo`).
    pub export_to: service::ExportTo,
    /// `workloadSelector`: the labels of the proxies of its own namespace it alone applies to.
    pub workload_selector: Option<BTreeMap<String, String>>,
}

/// A VirtualService's HTTP routing with its hosts resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub origin: ObjectKey,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<routing::HttpRoute>,
    /// Served on gateways, and on sidecars with capture-mode listeners.
    pub tcp: Vec<stream_routes::StreamRoute>,
    pub tls: Vec<stream_routes::StreamRoute>,
    /// The namespaces whose sidecars it routes (`exportTo`).
    pub export_to: service::ExportTo,
}

impl VirtualService {
    /// Sidecars are the reserved gateway `mesh`, which a VirtualService without gateways
    /// binds to implicitly.
    pub fn applies_to_sidecars(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

/// What a problem of an object is about, so a rebuild of one part replaces exactly the
/// problems that part found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Topic {
    /// Fields set but not honoured (`unsupported`).
    Fields,
    /// The object's claim on a host (another object already has it).
    Host(String),
    /// VirtualService routes the model could not read in full (`routing`).
    Routes,
    /// A Sidecar scoping the same sidecars as another.
    Scope,
    /// A Sidecar egress listener declaring a protocol a service on its port does not have.
    EgressProtocol(String),
}

#[derive(Debug, Default)]
pub struct Mesh {
    pub domain_suffix: String,
    pub services: BTreeMap<String, Service>,
    /// Host → the DestinationRule the proxies of each namespace read.
    pub destination_rules: BTreeMap<String, rule_lookup::HostRules>,
    /// By kind, namespace and name: for a host claimed by several, the first wins.
    pub virtual_services: BTreeMap<ObjectKey, VirtualService>,
    pub gateways: BTreeMap<ObjectKey, gateway::Gateway>,
    /// The `Sidecar` resources' egress scopes.
    pub sidecar_scopes: sidecar_scope::Scopes,
    /// What the scopes see through VirtualServices, kept across changes.
    pub inferred_destinations: sidecar_scope::InferredDestinations,
    /// The PeerAuthentications, by namespace.
    pub peer_authentications: peer_authentication::PeerAuthentications,
    /// The AuthorizationPolicies, by namespace.
    pub authorization_policies: authorization::AuthorizationPolicies,
    /// The RequestAuthentications, by namespace.
    pub request_authentications: request_authentication::RequestAuthentications,
    /// What translation reads of the mesh config (`CUSTOM` providers, auto mTLS).
    pub settings: std::sync::Arc<crate::mesh_config::MeshSettings>,
    /// The TLS Secrets gateways may read credentials from, read (or why they cannot be).
    secrets: BTreeMap<NsName, Result<secret::TlsSecret, secret::SecretError>>,
    /// Exact host → the VirtualServices naming it; and those with a wildcard host. Finding
    /// a host's VirtualService is then a lookup, not a scan of every VirtualService.
    virtual_services_by_host: HashMap<String, BTreeSet<ObjectKey>>,
    wildcard_virtual_services: BTreeSet<ObjectKey>,
    /// The hosts each ServiceEntry and DestinationRule claimed when last read, so a new
    /// version (or a deletion) finds what it no longer claims.
    claims: HashMap<ObjectKey, Vec<String>>,
    /// Host → the ServiceEntries, and the DestinationRules, claiming it.
    entry_claimants: HashMap<String, BTreeSet<ObjectKey>>,
    rule_claimants: HashMap<String, BTreeSet<ObjectKey>>,
    /// The wildcard hosts DestinationRules claim (`*.local`, `*`): a service no rule names
    /// takes the most specific of them that covers it.
    wildcard_rules: BTreeSet<String>,
    /// Namespace → the ServiceEntries there with a `workloadSelector`: a WorkloadEntry change
    /// in the namespace rebuilds the hosts of those its labels meet.
    selecting: HashMap<String, BTreeSet<ObjectKey>>,
    /// The Sidecars whose egress listeners declare their ports' protocols: each service
    /// refreshed is checked against them.
    declaring_protocols: BTreeSet<ObjectKey>,
    /// Each WorkloadEntry's labels when last read: a change rebuilds the hosts its old labels
    /// met, as well as those its new ones meet.
    entry_labels: HashMap<ObjectKey, BTreeMap<String, String>>,
    /// VirtualService → the roots delegating to it, and root → its delegates: a delegate's
    /// change re-reads its roots.
    delegated_by: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    delegates_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    problems: BTreeMap<ObjectKey, BTreeMap<Topic, Vec<Problem>>>,
    /// The hosts Cloud Map services claim.
    cloud_map: cloud_map::CloudMapHosts,
}

/// What an update changed, for translation to rebuild.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Affected {
    /// Hosts whose service or DestinationRule may have changed: their clusters, load
    /// assignments and virtual hosts are rebuilt.
    pub hosts: BTreeSet<String>,
    /// Host patterns of VirtualServices that changed: the virtual hosts of every service
    /// they cover are rebuilt.
    pub routes: BTreeSet<String>,
    /// The VirtualServices that changed (or went).
    pub virtual_services: BTreeSet<ObjectKey>,
    /// The Gateways that changed (or went).
    pub gateways: BTreeSet<ObjectKey>,
    /// The Secrets that changed (or went).
    pub secrets: BTreeSet<NsName>,
    /// Whether a Sidecar changed (or went): what each sidecar sees is worked out again.
    pub sidecars: bool,
    /// The namespaces where a PeerAuthentication changed (or went): what their workloads
    /// accept and how clients reach them are worked out again (everywhere for the root
    /// namespace).
    pub peer_authentications: BTreeSet<String>,
    /// Where security policies (PeerAuthentication, AuthorizationPolicy,
    /// RequestAuthentication) that changed (or went) applied before and apply now: the
    /// inbound side of the workloads there is built again.
    pub policy_scopes: Vec<PolicyScope>,
}

/// The workloads a security policy selects: those of `namespace` (every namespace, for the
/// root namespace) carrying every label of `selector` (empty: all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyScope {
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
}

impl PolicyScope {
    fn of(key: &ObjectKey, selector: Option<&capstan_crds::types::MatchLabelsSelector>) -> Self {
        let labels = selector.map(|s| s.match_labels.clone()).unwrap_or_default();
        Self::with_labels(key, labels)
    }

    fn with_labels(key: &ObjectKey, selector: BTreeMap<String, String>) -> Self {
        Self {
            namespace: key.namespace.clone(),
            selector,
        }
    }

    /// Whether it covers a workload of `namespace` with `labels`.
    pub fn covers(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        (self.namespace == root_namespace || self.namespace == namespace)
            && service::labels_include(labels, &self.selector)
    }
}

impl Mesh {
    pub fn new(domain_suffix: &str) -> Self {
        Mesh {
            domain_suffix: domain_suffix.to_string(),
            ..Mesh::default()
        }
    }

    /// The mesh of everything `index` serves, and its problems.
    pub fn build(index: &Index, domain_suffix: &str) -> (Mesh, Vec<Problem>) {
        let mut mesh = Mesh::new(domain_suffix);
        mesh.update(index, &everything(index));
        let problems = mesh.problems().cloned().collect();
        (mesh, problems)
    }

    /// Re-reads the objects of `keys` from `index` (a key no longer there is removed) and
    /// rebuilds the hosts they claimed or claim. Kubernetes Services come first: a
    /// ServiceEntry for the host of a Service is reported and ignored for that host. Among
    /// Istio objects claiming one host, the first by namespace and name wins and the others
    /// are reported.
    pub fn update<'a>(
        &mut self,
        index: &Index,
        keys: impl IntoIterator<Item = &'a RecordKey>,
    ) -> Affected {
        let mut affected = Affected::default();
        for key in keys {
            match key {
                RecordKey::Service(id) => {
                    affected.hosts.insert(kube::host(id, &self.domain_suffix));
                }
                RecordKey::Istio(key) => self.reread(index, key, &mut affected),
                RecordKey::CloudMap(id) => affected.hosts.extend(self.cloud_map.reread(index, id)),
                // A pod a ServiceEntry's `workloadSelector` may pick (the index names only
                // pods of namespaces with such entries, which are few).
                RecordKey::Pod(id) => {
                    let hosts = self.selecting_entry_hosts(index, &id.namespace, |_| true);
                    affected.hosts.extend(hosts);
                }
                RecordKey::Secret(id) => {
                    match index.secret(id) {
                        Some(record) => self.secrets.insert(id.clone(), secret::read(record)),
                        None => self.secrets.remove(id),
                    };
                    affected.secrets.insert(id.clone());
                }
                _ => {}
            }
        }
        for host in &affected.hosts {
            self.refresh_host(index, host);
        }
        self.rescope_custom_policies(&mut affected);
        // Clients reach these services' endpoints with mutual TLS or without, by the modes
        // of the services' namespaces and of the endpoints' workloads.
        if !affected.peer_authentications.is_empty() {
            let everywhere = affected
                .peer_authentications
                .contains(self.sidecar_scopes.root_namespace());
            let hosts: Vec<String> = self
                .services
                .values()
                .filter(|s| everywhere || affected.peer_authentications.contains(s.namespace()))
                .map(|s| s.host.clone())
                .collect();
            affected.hosts.extend(hosts);
        }
        if affected.sidecars {
            self.refresh_scope_conflicts();
        }
        self.inferred_destinations.refresh(
            &self.sidecar_scopes,
            &self.virtual_services,
            &affected.virtual_services,
            affected.sidecars,
        );
        affected
    }

    /// Reports the Sidecars that lose to another scoping the same sidecars, and what of each
    /// is not applied.
    fn refresh_scope_conflicts(&mut self) {
        for topics in self.problems.values_mut() {
            topics.remove(&Topic::Scope);
        }
        let (_, conflicts) = self.sidecar_scopes.in_force();
        for problem in conflicts {
            self.problems
                .entry(problem.object.clone())
                .or_default()
                .entry(Topic::Scope)
                .or_default()
                .push(problem);
        }
        self.problems.retain(|_, topics| !topics.is_empty());
    }

    fn reread(&mut self, index: &Index, key: &ObjectKey, affected: &mut Affected) {
        self.reread_one(index, key, affected);
        // Roots expand their delegates when read: they are read again (once: a root's own
        // roots are not followed, as Istio follows one level).
        let roots: Vec<ObjectKey> = self
            .delegated_by
            .get(key)
            .into_iter()
            .flatten()
            .filter(|root| *root != key)
            .cloned()
            .collect();
        for root in roots {
            self.reread_one(index, &root, affected);
        }
    }

    fn reread_one(&mut self, index: &Index, key: &ObjectKey, affected: &mut Affected) {
        for target in self.delegates_of.remove(key).unwrap_or_default() {
            if let Some(roots) = self.delegated_by.get_mut(&target) {
                roots.remove(key);
                if roots.is_empty() {
                    self.delegated_by.remove(&target);
                }
            }
        }
        for host in self.claims.remove(key).unwrap_or_default() {
            for claimants in [&mut self.entry_claimants, &mut self.rule_claimants] {
                if let Some(set) = claimants.get_mut(&host) {
                    set.remove(key);
                    if set.is_empty() {
                        claimants.remove(&host);
                    }
                }
            }
            if key.kind == capstan_crds::Kind::DestinationRule && is_wildcard(&host) {
                if !self.rule_claimants.contains_key(&host) {
                    self.wildcard_rules.remove(&host);
                }
                affected.hosts.extend(self.covered_by_rule(&host));
            }
            affected.hosts.insert(host);
        }
        if key.kind == capstan_crds::Kind::VirtualService {
            affected.virtual_services.insert(key.clone());
        }
        if key.kind == capstan_crds::Kind::Gateway {
            affected.gateways.insert(key.clone());
            self.gateways.remove(key);
        }
        if key.kind == capstan_crds::Kind::Sidecar {
            affected.sidecars = true;
            self.sidecar_scopes.by_key.remove(key);
            self.declaring_protocols.remove(key);
        }
        if key.kind == capstan_crds::Kind::AuthorizationPolicy
            && let Some(old) = self.authorization_policies.remove(key)
        {
            let selector = old.spec.selector.as_ref();
            affected.policy_scopes.push(PolicyScope::of(key, selector));
        }
        if key.kind == capstan_crds::Kind::RequestAuthentication
            && let Some(old) = self.request_authentications.remove(key)
        {
            affected
                .policy_scopes
                .push(PolicyScope::of(key, old.selector.as_ref()));
        }
        if key.kind == capstan_crds::Kind::PeerAuthentication {
            if let Some(selector) = self.peer_authentications.remove(key) {
                affected
                    .policy_scopes
                    .push(PolicyScope::with_labels(key, selector));
            }
            affected.peer_authentications.insert(key.namespace.clone());
        }
        if key.kind == capstan_crds::Kind::WorkloadEntry {
            self.reread_workload_entry(index, key, affected);
        }
        if key.kind == capstan_crds::Kind::ServiceEntry
            && let Some(set) = self.selecting.get_mut(&key.namespace)
        {
            set.remove(key);
            if set.is_empty() {
                self.selecting.remove(&key.namespace);
            }
        }
        if let Some(old) = self.virtual_services.remove(key) {
            for host in &old.hosts {
                if is_wildcard(host) {
                    self.wildcard_virtual_services.remove(key);
                } else if let Some(set) = self.virtual_services_by_host.get_mut(host) {
                    set.remove(key);
                    if set.is_empty() {
                        self.virtual_services_by_host.remove(host);
                    }
                }
            }
            affected.routes.extend(old.hosts);
        }
        self.problems.remove(key);
        let Some(object) = index.istio(key).and_then(|r| r.object.as_deref()) else {
            return;
        };
        let fields = unsupported::fields(object);
        if !fields.is_empty() {
            self.problems
                .entry(key.clone())
                .or_default()
                .insert(Topic::Fields, fields);
        }
        let resolve = |host: &str| hostname::resolve(host, &key.namespace, &self.domain_suffix);
        match object {
            IstioObject::ServiceEntry(se) => {
                let mut hosts: Vec<String> = se.spec.hosts.iter().map(|h| resolve(h)).collect();
                hosts.sort();
                hosts.dedup();
                for host in &hosts {
                    claim(&mut self.entry_claimants, host, key);
                }
                if se.spec.workload_selector.is_some() {
                    claim(&mut self.selecting, &key.namespace, key);
                }
                affected.hosts.extend(hosts.iter().cloned());
                self.claims.insert(key.clone(), hosts);
            }
            IstioObject::DestinationRule(dr) => {
                let host = resolve(&dr.spec.host);
                claim(&mut self.rule_claimants, &host, key);
                if is_wildcard(&host) {
                    self.wildcard_rules.insert(host.clone());
                    affected.hosts.extend(self.covered_by_rule(&host));
                }
                affected.hosts.insert(host.clone());
                self.claims.insert(key.clone(), vec![host]);
            }
            IstioObject::VirtualService(vs) => {
                let hosts: Vec<String> = vs.spec.hosts.iter().map(|h| resolve(h)).collect();
                affected.routes.extend(hosts.iter().cloned());
                let (http, mut problems) =
                    routing::http_routes(&vs.spec.http, key, &self.domain_suffix);
                let tcp = stream_routes::tcp_routes(&vs.spec.tcp, key, &self.domain_suffix);
                let tls = stream_routes::tls_routes(&vs.spec.tls, key, &self.domain_suffix);
                let mut delegates = Vec::new();
                let http = delegate::expand(
                    index,
                    key,
                    &vs.spec.http,
                    http,
                    &self.domain_suffix,
                    &mut delegates,
                    &mut problems,
                );
                for target in &delegates {
                    self.delegated_by
                        .entry(target.clone())
                        .or_default()
                        .insert(key.clone());
                }
                if !delegates.is_empty() {
                    self.delegates_of.insert(key.clone(), delegates);
                }
                if !problems.is_empty() {
                    self.problems
                        .entry(key.clone())
                        .or_default()
                        .insert(Topic::Routes, problems);
                }
                for host in &hosts {
                    if is_wildcard(host) {
                        self.wildcard_virtual_services.insert(key.clone());
                    } else {
                        claim(&mut self.virtual_services_by_host, host, key);
                    }
                }
                self.virtual_services.insert(
                    key.clone(),
                    VirtualService {
                        origin: key.clone(),
                        hosts,
                        gateways: vs.spec.gateways.clone(),
                        http,
                        tcp,
                        tls,
                        export_to: service::ExportTo::parse(&vs.spec.export_to, &key.namespace),
                    },
                );
            }
            IstioObject::Gateway(gw) => {
                // What it cannot serve is among the unsupported fields (above).
                let (gateway, _) = gateway::gateway(key, &gw.spec);
                self.gateways.insert(key.clone(), gateway);
            }
            IstioObject::Sidecar(sc) => {
                let scope =
                    sidecar_scope::SidecarScope::new(key.clone(), &sc.spec, &self.domain_suffix);
                self.check_declared_protocols_of(key, &scope);
                self.sidecar_scopes.by_key.insert(key.clone(), scope);
            }
            IstioObject::AuthorizationPolicy(ap) => {
                let dry_run = authorization::dry_run(&ap.metadata);
                self.authorization_policies.insert(key, &ap.spec, dry_run);
                let selector = ap.spec.selector.as_ref();
                affected.policy_scopes.push(PolicyScope::of(key, selector));
            }
            IstioObject::RequestAuthentication(ra) => {
                self.request_authentications.insert(key, &ra.spec);
                let selector = ra.spec.selector.as_ref();
                affected.policy_scopes.push(PolicyScope::of(key, selector));
            }
            IstioObject::PeerAuthentication(pa) => {
                let created = pa.metadata.creation_timestamp.as_ref();
                self.peer_authentications.insert(key, &pa.spec, created);
                let selector = pa.spec.selector.as_ref();
                affected.policy_scopes.push(PolicyScope::of(key, selector));
            }
            IstioObject::WorkloadGroup(_) | IstioObject::WorkloadEntry(_) => {}
        }
    }

    /// Decides who defines `host` now: its Kubernetes Service, else the first ServiceEntry
    /// claiming it; and which DestinationRule applies. The losers are reported.
    fn refresh_host(&mut self, index: &Index, host: &str) {
        let entries: Vec<ObjectKey> = self
            .entry_claimants
            .get(host)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let topic = Topic::Host(host.to_string());
        for key in &entries {
            if let Some(topics) = self.problems.get_mut(key) {
                topics.remove(&topic);
            }
        }
        let mut service = kube::id_of_host(host, &self.domain_suffix)
            .and_then(|id| index.service(&id))
            .map(|s| kube::service(index, s, &self.domain_suffix));
        for key in &entries {
            let Some(IstioObject::ServiceEntry(se)) =
                index.istio(key).and_then(|r| r.object.as_deref())
            else {
                continue;
            };
            match &service {
                None => {
                    let mut selected =
                        Service::from_service_entry(host.to_string(), key.clone(), &se.spec);
                    if let Some(selector) = &se.spec.workload_selector {
                        selected.endpoints =
                            workloads::selected_endpoints(index, &key.namespace, &selector.labels);
                    }
                    service = Some(selected);
                }
                Some(existing) => {
                    let i = se
                        .spec
                        .hosts
                        .iter()
                        .position(|h| {
                            hostname::resolve(h, &key.namespace, &self.domain_suffix) == host
                        })
                        .unwrap_or(0);
                    let problem = Problem {
                        object: key.clone(),
                        field: format!("spec.hosts[{i}]"),
                        message: format!(
                            "host {host} is already defined by {}; this entry is ignored for it",
                            existing.origin
                        ),
                    };
                    self.report(key, topic.clone(), problem);
                }
            }
        }
        for id in self.cloud_map.claimants(host) {
            match &service {
                None => service = index.cloud_map_service(id).map(cloud_map::service),
                Some(existing) => tracing::warn!(
                    %host,
                    cloud_map_service = %id,
                    "host is already defined by {}; the Cloud Map service is not served under it",
                    existing.origin
                ),
            }
        }
        match service {
            Some(service) => self.services.insert(host.to_string(), service),
            None => self.services.remove(host),
        };
        self.check_declared_protocols(host);
        self.refresh_rule(index, host);
    }

    fn report(&mut self, key: &ObjectKey, topic: Topic, problem: Problem) {
        self.problems
            .entry(key.clone())
            .or_default()
            .entry(topic)
            .or_default()
            .push(problem);
    }

    /// Every problem the model found, by object.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flat_map(|t| t.values().flatten())
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

    /// Re-reads the instances of Cloud Map service `id`; returns its host when the mesh
    /// serves it (no Kubernetes Service or ServiceEntry took the host).
    pub fn refresh_cloud_map_endpoints(&mut self, index: &Index, id: &NsName) -> Option<String> {
        let host = self.cloud_map.host_of(id)?.to_string();
        let record = index.cloud_map_service(id)?;
        let service = self.services.get_mut(&host)?;
        if !matches!(&service.origin, Origin::CloudMap { service, .. } if service == id) {
            return None;
        }
        service.endpoints = cloud_map::endpoints(record);
        Some(host)
    }

    /// What the workload in `namespace` with `labels` accepts (its PeerAuthentication modes).
    pub fn workload_mtls(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> peer_authentication::WorkloadMtls {
        let root = self.sidecar_scopes.root_namespace();
        self.peer_authentications.workload(root, namespace, labels)
    }

    /// The AuthorizationPolicies applying to the sidecar of the workload in `namespace` with
    /// `labels`.
    /// CUSTOM AuthorizationPolicies reach their authorizer through its service's cluster:
    /// when that service changes (comes, goes), the workloads they apply to are built again.
    fn rescope_custom_policies(&self, affected: &mut Affected) {
        let providers = &self.settings.extension_providers;
        if affected.hosts.is_empty() || providers.is_empty() {
            return;
        }
        let scopes: Vec<PolicyScope> = self
            .authorization_policies
            .policies()
            .filter(|p| p.action() == capstan_crds::security::authorization_policy::Action::Custom)
            .filter(|p| {
                providers
                    .service_host(p.provider())
                    .is_some_and(|host| affected.hosts.contains(host))
            })
            .map(|p| PolicyScope::of(&p.key, p.spec.selector.as_ref()))
            .collect();
        affected.policy_scopes.extend(scopes);
    }

    pub fn authorization_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> authorization::WorkloadPolicies<'_> {
        let root = self.sidecar_scopes.root_namespace();
        self.authorization_policies
            .for_workload(root, namespace, labels)
    }

    /// The mode of `namespace` as a whole, which clients read.
    pub fn namespace_mtls(&self, namespace: &str) -> peer_authentication::MtlsMode {
        let root = self.sidecar_scopes.root_namespace();
        self.peer_authentications.namespace_mode(root, namespace)
    }

    /// Secret `id` as a credential: `None` when there is no such TLS Secret.
    pub fn secret(&self, id: &NsName) -> Option<&Result<secret::TlsSecret, secret::SecretError>> {
        self.secrets.get(id)
    }

    /// The namespaces holding a Secret named `name` (a scan of every Secret).
    pub fn namespaces_with_secret<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.secrets
            .keys()
            .filter(move |id| id.name == name)
            .map(|id| id.namespace.as_str())
    }

    /// The DestinationRule the proxies of `namespace` (`None`: of a namespace no rule names)
    /// read for `host`.
    pub fn rule_for(&self, host: &str, namespace: Option<&str>) -> Option<&DestinationRule> {
        self.destination_rules
            .get(host)
            .and_then(|rules| rules.for_namespace(namespace))
    }

    /// The DestinationRule the proxies of `namespace` carrying `labels` read for `host`: one
    /// selecting them by `workloadSelector`, else [`Self::rule_for`].
    pub fn rule_for_workload(
        &self,
        host: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Option<&DestinationRule> {
        self.destination_rules
            .get(host)
            .and_then(|rules| rules.for_workload(namespace, labels))
    }

    /// The VirtualService routing `host`: the first (by namespace/name) naming it exactly,
    /// else the first whose wildcard host covers it.
    pub fn virtual_service_for(&self, host: &str) -> Option<&VirtualService> {
        let sidecar = |key: &ObjectKey| {
            self.virtual_services
                .get(key)
                .filter(|vs| vs.applies_to_sidecars())
        };
        let exact = self
            .virtual_services_by_host
            .get(host)
            .into_iter()
            .flatten()
            .find_map(sidecar);
        exact.or_else(|| {
            self.wildcard_virtual_services
                .iter()
                .filter_map(sidecar)
                .find(|vs| vs.hosts.iter().any(|h| hostname::matches(h, host)))
        })
    }

    /// Every VirtualService (bound to sidecars or not) with a host covering `host`.
    pub fn virtual_services_covering<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a ObjectKey> + 'a {
        let exact = self
            .virtual_services_by_host
            .get(host)
            .into_iter()
            .flatten();
        let wildcard = self.wildcard_virtual_services.iter().filter(move |key| {
            self.virtual_services
                .get(*key)
                .is_some_and(|vs| vs.hosts.iter().any(|h| hostname::matches(h, host)))
        });
        exact.chain(wildcard)
    }
}

fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

fn claim(claimants: &mut HashMap<String, BTreeSet<ObjectKey>>, host: &str, key: &ObjectKey) {
    claimants
        .entry(host.to_string())
        .or_default()
        .insert(key.clone());
}

/// The keys of every object in `index` the model reads.
pub fn everything(index: &Index) -> Vec<RecordKey> {
    index
        .istio_records()
        .map(|r| RecordKey::Istio(r.key.clone()))
        .chain(index.services().map(|s| RecordKey::Service(s.id.clone())))
        .chain(index.secrets().map(|s| RecordKey::Secret(s.id.clone())))
        .chain(
            index
                .cloud_map_services()
                .map(|s| RecordKey::CloudMap(s.id.clone())),
        )
        .collect()
}

#[cfg(test)]
mod tests;
