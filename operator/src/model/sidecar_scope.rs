//! Istio's `Sidecar` egress hosts: which services a namespace's or a workload's sidecars
//! receive.
//!
//! As in Istio, a `Sidecar` without a `workloadSelector` in the root namespace is the default
//! for every namespace without one of its own; one without a selector elsewhere covers its
//! namespace; one with a selector covers the workloads it selects. A service is visible under a
//! scope when an egress host names it (`namespace/dnsName`, with `*`, `.` and `~` for the
//! namespace), or when it is a destination of a VirtualService an egress host names (Istio
//! infers those, so that a route the sidecar receives has its clusters).

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::ObjectKey;
use capstan_crds::networking::sidecar::SidecarSpec;
use capstan_xds::{ProxyInfo, Role, Selector, Visibility};

use super::service::ExportTo;
use super::traffic_policy::{ConnectionPool, connection_pool};
use super::{Mesh, Problem, VirtualService, hostname};

/// Istio's default `meshConfig.rootNamespace`.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The namespace part of an egress host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum NamespacePattern {
    Any,
    /// `.`: the namespace of the proxy.
    Own,
    Named(String),
}

/// One `namespace/dnsName` of an egress listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EgressHost {
    namespace: NamespacePattern,
    /// `*`, `*.suffix` or a host.
    host: String,
    /// The egress listener's port: the host is seen on that port only (its routes); `None`:
    /// on every port.
    port: Option<u32>,
}

impl EgressHost {
    /// `None` for `~/…` (no namespace) and for text validation rejects.
    fn parse(text: &str) -> Option<Self> {
        let (namespace, host) = text.trim().split_once('/')?;
        let namespace = match namespace {
            "*" => NamespacePattern::Any,
            "." => NamespacePattern::Own,
            "~" | "" => return None,
            ns => NamespacePattern::Named(ns.to_string()),
        };
        Some(Self {
            namespace,
            host: host.to_string(),
            port: None,
        })
    }

    /// Whether it names `host` of an object in `namespace`; `own`: that namespace is the
    /// proxy's.
    fn names(&self, own: bool, namespace: &str, host: &str) -> bool {
        let namespace_matches = match &self.namespace {
            NamespacePattern::Any => true,
            NamespacePattern::Own => own,
            NamespacePattern::Named(ns) => ns == namespace,
        };
        namespace_matches && (self.host == "*" || hostname::matches(&self.host, host))
    }
}

/// The egress hosts of one `Sidecar`, and its outbound traffic policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarScope {
    pub origin: ObjectKey,
    /// The workloads it selects; empty: its whole namespace.
    pub labels: BTreeMap<String, String>,
    hosts: Vec<EgressHost>,
    /// `None`: the mesh's.
    outbound: Option<OutboundMode>,
    ingress: Vec<IngressPort>,
    /// Its egress listeners on sockets of their own (`captureMode: NONE`).
    bound: Vec<BoundEgress>,
    /// `inboundConnectionPool`: the limits of its sidecars' inbound clusters.
    inbound_pool: Option<ConnectionPool>,
    /// The protocols its egress listeners declare for their ports.
    declared: Vec<DeclaredProtocol>,
    /// What of it is not applied.
    problems: Vec<Problem>,
}

impl SidecarScope {
    /// What of this `Sidecar` is not applied (said by `validate` too).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The scope of `Sidecar` `origin`; names resolve with `domain_suffix`.
    pub fn new(origin: ObjectKey, spec: &SidecarSpec, domain_suffix: &str) -> Self {
        let outbound = spec
            .outbound_traffic_policy
            .as_ref()
            .map(|p| OutboundMode::of(p, &origin.namespace, domain_suffix));
        let inbound_pool = spec.inbound_connection_pool.as_ref().map(connection_pool);
        let mut problems = Vec::new();
        let mut report = |field: String, message: String| {
            problems.push(Problem {
                object: origin.clone(),
                field,
                message,
            })
        };
        Self {
            labels: spec
                .workload_selector
                .as_ref()
                .map(|s| s.labels.clone())
                .unwrap_or_default(),
            hosts: if spec.egress.is_empty() {
                // As istiod: a Sidecar without egress listeners sees what a sidecar without
                // a Sidecar would (its other settings are why it is there).
                vec![EgressHost {
                    namespace: NamespacePattern::Any,
                    host: "*".into(),
                    port: None,
                }]
            } else {
                spec.egress
                    .iter()
                    .flat_map(|listener| {
                        let port = listener.port.as_ref().map(|p| p.number);
                        listener.hosts.iter().filter_map(move |h| {
                            EgressHost::parse(h).map(|host| EgressHost { port, ..host })
                        })
                    })
                    .collect()
            },
            ingress: spec
                .ingress
                .iter()
                .enumerate()
                .filter_map(|(i, listener)| {
                    let field = format!("spec.ingress[{i}]");
                    IngressPort::new(
                        listener,
                        &origin,
                        inbound_pool.as_ref(),
                        &field,
                        &mut report,
                    )
                })
                .collect(),
            bound: (spec.egress.iter().enumerate())
                .filter_map(|(i, listener)| BoundEgress::of(listener, &origin, i))
                .collect(),
            declared: DeclaredProtocol::of(spec),
            problems,
            outbound,
            origin,
            inbound_pool,
        }
    }

    /// Whether an egress host names `host` of an object in `namespace`, for a proxy whose
    /// namespace is `own` (or is not that namespace).
    fn names(&self, own: bool, namespace: &str, host: &str) -> bool {
        self.hosts.iter().any(|h| h.names(own, namespace, host))
    }

    /// As [`Self::names`], on `port`: by an egress listener of that port or of none.
    fn names_on(&self, own: bool, namespace: &str, host: &str, port: u32) -> bool {
        self.hosts
            .iter()
            .any(|h| h.port.is_none_or(|p| p == port) && h.names(own, namespace, host))
    }

    /// Whether an egress listener has a port (the scope then sees some hosts on some ports
    /// only).
    fn has_ports(&self) -> bool {
        self.hosts.iter().any(|h| h.port.is_some())
    }
}

/// Which proxies a scope covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Covers {
    /// Every sidecar without a scope of its own namespace or workload (the root namespace's
    /// `Sidecar` without selector).
    Default,
    Namespace(String),
    Workload(String, BTreeMap<String, String>),
}

impl Covers {
    pub fn selector(&self) -> Selector {
        let mut selector = Selector::role(Role::Sidecar);
        match self {
            Covers::Default => {}
            Covers::Namespace(ns) => selector.namespace = Some(ns.as_str().into()),
            Covers::Workload(ns, labels) => {
                selector.namespace = Some(ns.as_str().into());
                selector.labels = labels.clone();
            }
        }
        selector
    }
}

/// Every `Sidecar`'s egress scope, by object.
#[derive(Debug)]
pub struct Scopes {
    pub(super) root_namespace: String,
    pub(super) by_key: BTreeMap<ObjectKey, SidecarScope>,
}

impl Default for Scopes {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            by_key: BTreeMap::new(),
        }
    }
}

impl Scopes {
    /// Where a `Sidecar` without selector is every namespace's default (Istio's
    /// `meshConfig.rootNamespace`); set before any `Sidecar` is read.
    pub fn set_root_namespace(&mut self, namespace: &str) {
        self.root_namespace = namespace.to_string();
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Which proxies `scope` covers, if in force.
    fn covers(&self, scope: &SidecarScope) -> Covers {
        let ns = scope.origin.namespace.clone();
        if !scope.labels.is_empty() {
            Covers::Workload(ns, scope.labels.clone())
        } else if ns == self.root_namespace {
            Covers::Default
        } else {
            Covers::Namespace(ns)
        }
    }

    /// The scopes in force, each with what it covers; and the problems: the `Sidecar`s that
    /// lose to another covering the same proxies (Istio too applies one per namespace or
    /// workload set: the first by name here), and what each `Sidecar` sets that is not
    /// applied.
    pub fn in_force(&self) -> (Vec<(Covers, &SidecarScope)>, Vec<Problem>) {
        let mut chosen: BTreeMap<Covers, &SidecarScope> = BTreeMap::new();
        let mut problems = Vec::new();
        for scope in self.by_key.values() {
            problems.extend(scope.problems.iter().cloned());
            let covers = self.covers(scope);
            // The root namespace's own sidecars read the default as their namespace's.
            match chosen.get(&covers) {
                Some(first) => problems.push(Problem {
                    object: scope.origin.clone(),
                    field: "spec".into(),
                    message: format!(
                        "{} already scopes the same sidecars; this Sidecar is not applied",
                        first.origin
                    ),
                }),
                None => {
                    chosen.insert(covers, scope);
                }
            }
        }
        (chosen.into_iter().collect(), problems)
    }
}

/// A scope as one set of proxies reads it: the proxies' namespace decides what `.` means.
#[derive(Clone, Copy)]
pub struct ScopeView<'a> {
    scope: &'a SidecarScope,
    /// `None`: proxies of a namespace the view is not about (`.` names nothing of interest).
    namespace: Option<&'a str>,
    /// Destinations of the VirtualServices its egress hosts name: those any namespace's
    /// proxies see (shared by every namespace's view of the scope), and those only this
    /// namespace's do (`.`, or exported to it alone).
    inferred: Option<&'a Counts>,
    own_inferred: Option<&'a Counts>,
}

impl<'a> ScopeView<'a> {
    /// Whether the proxies see the service `host` (defined in `namespace`).
    pub fn sees(&self, namespace: &str, host: &str) -> bool {
        let own = self.namespace == Some(namespace);
        self.scope.names(own, namespace, host) || self.infers(host)
    }

    /// Whether the proxies see the service `host` on `port` (its routes and listeners there):
    /// an egress listener of that port, or of none, names it. In a scope without listener
    /// ports, a VirtualService it names sending to the host counts too, as for [`Self::sees`];
    /// with them, as istiod, only the listeners' hosts are routed on their ports. Clusters
    /// are seen by [`Self::sees`], as istiod gives a sidecar the clusters of every service
    /// in its scope whatever the listener's port.
    pub fn sees_on(&self, namespace: &str, host: &str, port: u32) -> bool {
        let own = self.namespace == Some(namespace);
        self.scope.names_on(own, namespace, host, port)
            || (!self.scope.has_ports() && self.infers(host))
    }

    /// Whether the scope has egress listeners with a port.
    pub fn has_ports(&self) -> bool {
        self.scope.has_ports()
    }

    fn infers(&self, host: &str) -> bool {
        let has = |counts: Option<&Counts>| counts.is_some_and(|c| c.contains_key(host));
        has(self.inferred) || has(self.own_inferred)
    }
}

/// A scope as every namespace reads it: what the VirtualServices it names send to, for any
/// namespace and for each namespace where `.` or `exportTo` make a difference (kept in
/// [`InferredDestinations`]).
#[derive(Clone, Copy)]
struct ScopeReadings<'a> {
    scope: &'a SidecarScope,
    inferred: &'a InferredDestinations,
}

impl<'a> ScopeReadings<'a> {
    /// The scope as the proxies of a namespace it says nothing particular about read it.
    fn general(&self) -> ScopeView<'a> {
        ScopeView {
            scope: self.scope,
            namespace: None,
            inferred: self.inferred.general(&self.scope.origin),
            own_inferred: None,
        }
    }

    /// The scope as the proxies of `namespace` read it.
    fn view<'b>(&self, namespace: &'b str) -> ScopeView<'b>
    where
        'a: 'b,
    {
        ScopeView {
            scope: self.scope,
            namespace: Some(namespace),
            inferred: self.inferred.general(&self.scope.origin),
            own_inferred: self.inferred.own(&self.scope.origin, namespace),
        }
    }
}

/// Every host `vs` sends to (routes and mirrors, http, tcp and tls).
pub(crate) fn virtual_service_destinations(vs: &VirtualService) -> impl Iterator<Item = &str> {
    vs.http.iter().flat_map(|r| r.destination_hosts()).chain(
        vs.tcp
            .iter()
            .chain(&vs.tls)
            .flat_map(|r| r.destinations.iter().map(|d| d.host.as_str())),
    )
}

/// The scopes in force, read once per change: what each set of sidecars sees.
pub struct ScopeViews<'a> {
    /// The view of each scope in force; the default's as read by a namespace it says nothing
    /// particular about.
    views: Vec<(Selector, ScopeView<'a>)>,
    /// The default scope, which each namespace without a scope of its own reads as that
    /// namespace does (`.`, VirtualServices exported to it): read per namespace on demand
    /// (reading it for every namespace of the mesh up front took a pass over every service
    /// per change).
    default: Option<ScopeReadings<'a>>,
    /// The namespaces with a scope of their own.
    own_scope: BTreeSet<&'a str>,
    /// Which namespaces' VirtualServices route to each host.
    inferred: &'a InferredDestinations,
}

impl<'a> ScopeViews<'a> {
    pub fn new(mesh: &'a Mesh) -> Self {
        let (in_force, _) = mesh.sidecar_scopes.in_force();
        let inferred = &mesh.inferred_destinations;
        let mut views = Vec::new();
        let mut default = None;
        let mut own_scope = BTreeSet::new();
        for (covers, scope) in in_force {
            let readings = ScopeReadings { scope, inferred };
            let view = match &covers {
                Covers::Default => {
                    let general = readings.general();
                    default = Some(readings);
                    general
                }
                Covers::Namespace(_) | Covers::Workload(..) => {
                    let ns = scope.origin.namespace.as_str();
                    if matches!(covers, Covers::Namespace(_)) {
                        own_scope.insert(ns);
                    }
                    readings.view(ns)
                }
            };
            views.push((covers.selector(), view));
        }
        Self {
            views,
            default,
            own_scope,
            inferred,
        }
    }

    /// The default scope as the proxies of `namespace` read it; `None` where the namespace
    /// has a scope of its own, or there is no default.
    fn default_for<'b>(&'b self, namespace: &'b str) -> Option<ScopeView<'b>> {
        if self.own_scope.contains(namespace) {
            return None;
        }
        Some(self.default?.view(namespace))
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The view of the sidecars `selector` picks by namespace and labels: that of the most
    /// specific scope picking them, as the snapshot picks a proxy's variant; else the
    /// default's, as their namespace reads it.
    pub fn for_proxies<'b>(&'b self, selector: &'b Selector) -> Option<ScopeView<'b>> {
        let sidecar = ProxyInfo {
            role: Role::Sidecar,
            namespace: selector.namespace.clone(),
            labels: selector.labels.clone(),
            ..ProxyInfo::default()
        };
        let default = Covers::Default.selector();
        let scoped = self
            .views
            .iter()
            .filter(|(s, _)| *s != default && s.matches(&sidecar))
            .max_by_key(|(s, _)| s.specificity());
        if let Some((_, view)) = scoped {
            return Some(*view);
        }
        let by_namespace = selector
            .namespace
            .as_deref()
            .and_then(|ns| self.default_for(ns));
        by_namespace.or_else(|| {
            self.views
                .iter()
                .find(|(s, _)| *s == default)
                .map(|(_, view)| *view)
        })
    }

    /// The selectors of the scopes in force (namespace and workload ones; the default is the
    /// variant for everyone else).
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        self.views.iter().map(|(s, _)| s)
    }

    /// Which sidecars see the service `host` defined in `namespace` and exported to
    /// `export_to`; `None`: all of them.
    pub fn visibility(
        &self,
        namespace: &str,
        host: &str,
        export_to: &ExportTo,
    ) -> Option<Visibility> {
        self.visibility_by(namespace, host, export_to, |view| {
            view.sees(namespace, host)
        })
    }

    /// Which sidecars see the service on `port` (its listeners there), as [`Self::visibility`].
    pub fn visibility_on(
        &self,
        namespace: &str,
        host: &str,
        export_to: &ExportTo,
        port: u32,
    ) -> Option<Visibility> {
        self.visibility_by(namespace, host, export_to, |view| {
            view.sees_on(namespace, host, port)
        })
    }

    /// Whether some scope in force sees hosts on some ports only.
    pub fn have_ports(&self) -> bool {
        self.views.iter().any(|(_, view)| view.has_ports())
    }

    fn visibility_by(
        &self,
        namespace: &str,
        host: &str,
        export_to: &ExportTo,
        sees: impl Fn(&ScopeView<'_>) -> bool,
    ) -> Option<Visibility> {
        let mut rules: Vec<(Selector, bool)> = self
            .views
            .iter()
            .map(|(selector, view)| (selector.clone(), sees(view)))
            .collect();
        // The default reads `.` and VirtualServices differently in the service's own
        // namespace and in those with VirtualServices routing to it: a rule each (a
        // namespace with its own scope has none of these).
        let namespaces = std::iter::once(namespace).chain(self.inferred.routed_from(host));
        for ns in namespaces {
            if let Some(view) = self.default_for(ns) {
                let selector = Covers::Namespace(ns.to_string()).selector();
                rules.push((selector, sees(&view)));
            }
        }
        let visibility = Visibility::new(exported_only(rules, export_to));
        (!visibility.is_everyone()).then_some(visibility)
    }
}

/// `rules` narrowed to the namespaces a service is exported to: a sidecar sees it when its
/// scope does and it is exported to the sidecar's namespace.
fn exported_only(mut rules: Vec<(Selector, bool)>, export_to: &ExportTo) -> Vec<(Selector, bool)> {
    let ExportTo::Namespaces(exported) = export_to else {
        return rules;
    };
    let everyone = Covers::Default.selector();
    // What a namespace without a rule of its own reads: the default's rule, if any.
    let by_default = rules
        .iter()
        .find(|(s, _)| *s == everyone)
        .is_none_or(|(_, visible)| *visible);
    rules.retain(|(s, _)| *s != everyone);
    for (selector, visible) in &mut rules {
        let namespace = selector.namespace.as_deref();
        *visible &= namespace.is_some_and(|ns| exported.contains(ns));
    }
    for ns in exported {
        let selector = Covers::Namespace(ns.clone()).selector();
        if !rules.iter().any(|(s, _)| *s == selector) {
            rules.push((selector, by_default));
        }
    }
    rules.push((everyone, false));
    rules
}

mod bound_egress;
mod declared_protocol;
mod inbound_pool;
mod inferred;
mod ingress;
mod outbound;
mod per_scope;
pub use bound_egress::{BoundEgress, BoundEgressVariants, Carries, Streams};
use declared_protocol::DeclaredProtocol;
pub use inbound_pool::InboundPools;
use inferred::Counts;
pub use inferred::InferredDestinations;
pub use ingress::{IngressEndpoint, IngressPort, IngressProtocol, IngressVariants, bound_address};
pub use outbound::{EgressProxy, OutboundMode, OutboundModes};
pub use per_scope::PerScope;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
