//! The routes of one service port's virtual host, per set of sidecars that reads them
//! differently: those a VirtualService's matches name by source (`sourceNamespace`,
//! `sourceLabels`) or exports to by name, and those reading another DestinationRule for a
//! destination (their namespace's, or one selecting their labels), whose hash policy may
//! differ. Every other sidecar reads `rest`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteMatch};

use super::{Caller, Labels, action, caller, class_of, hash, label_classes, retry};
use crate::model::service::ExportTo;
use crate::model::{Mesh, Problem, Service};
use crate::translate::cluster_name;

/// The routes of a service port's virtual host: for the callers named apart, and for every
/// other sidecar.
pub(crate) struct PortRoutes {
    pub rest: Vec<Route>,
    pub by_caller: BTreeMap<Caller, Vec<Route>>,
    /// The label selectors that set sidecars apart: the VirtualService's `sourceLabels` and
    /// the `workloadSelector`s of the rules its destinations have.
    pub selectors: Vec<Labels>,
}

impl PortRoutes {
    /// The routes the sidecars of `namespace` whose labels include `labels` get.
    pub fn for_caller(&self, namespace: Option<&str>, labels: &Labels) -> &Vec<Route> {
        let class = class_of(&self.selectors, labels);
        let named = namespace.and_then(|ns| self.by_caller.get(&Caller::new(Some(ns), &class)));
        named
            .or_else(|| self.by_caller.get(&Caller::new(None, &class)))
            .unwrap_or(&self.rest)
    }

    /// Adds the routes of `caller` where they differ from what it would read without.
    fn add_if_apart(&mut self, caller: Caller, routes: Vec<Route>) {
        let fallback =
            (self.by_caller.get(&Caller::new(None, &caller.labels))).unwrap_or(&self.rest);
        if routes != *fallback {
            self.by_caller.insert(caller, routes);
        }
    }
}

/// The routes of a service port's virtual host: its VirtualService's, or one default route.
pub(crate) fn host_port_routes(
    mesh: &Mesh,
    service: &Service,
    port: u32,
    problems: &mut Vec<Problem>,
) -> PortRoutes {
    let Some(vs) = mesh.virtual_service_for(&service.host) else {
        let default = |caller: &Caller| vec![default_route(mesh, service, port, caller)];
        let (namespaces, selectors) =
            namespaces_and_selectors(rule_readers(mesh, [service.host.as_str()]));
        let mut routes = PortRoutes {
            rest: default(&Caller::anyone()),
            by_caller: BTreeMap::new(),
            selectors,
        };
        for labels in label_classes(&routes.selectors) {
            for ns in &namespaces {
                let caller = Caller::new(Some(ns), &labels);
                routes.add_if_apart(caller.clone(), default(&caller));
            }
        }
        return routes;
    };
    // Sidecars of namespaces a match names by `sourceNamespace` get routes of their own; so
    // do those of the namespaces a VirtualService exported by name is exported to, while
    // every other sidecar routes as if there were none. Each of these, and every other
    // sidecar, has routes per label class of the matches' `sourceLabels`.
    let mut named: BTreeSet<&str> = vs
        .http
        .iter()
        .flat_map(|h| &h.matches)
        .filter_map(|m| m.source_namespace.as_deref())
        .collect();
    // Its problems, said once, as for any VirtualService.
    let anyone = action::routes(mesh, vs, port, &Caller::anyone(), problems);
    let exported_to_all = vs.export_to == ExportTo::All;
    let default = |caller: &Caller| vec![default_route(mesh, service, port, caller)];
    let rest = if exported_to_all {
        anyone
    } else {
        default(&Caller::anyone())
    };
    if let ExportTo::Namespaces(exported) = &vs.export_to {
        named.extend(exported.iter().map(String::as_str));
    }
    let routes_for = |caller: &Caller| {
        if vs.export_to.includes(caller.namespace.as_deref()) {
            action::routes(mesh, vs, port, caller, &mut Vec::new())
        } else {
            default(caller)
        }
    };
    // Proxies reading another DestinationRule for a host the routes send to (or this one,
    // for the default route) may hash otherwise.
    let destinations = vs
        .http
        .iter()
        .flat_map(|h| h.destination_hosts())
        .chain([service.host.as_str()]);
    let (hashing, rule_selectors) = namespaces_and_selectors(rule_readers(mesh, destinations));
    let mut selectors: BTreeSet<Labels> = caller::source_selectors(vs);
    selectors.extend(rule_selectors);
    let mut routes = PortRoutes {
        rest,
        by_caller: BTreeMap::new(),
        selectors: selectors.into_iter().collect(),
    };
    let classes = label_classes(&routes.selectors);
    for labels in &classes {
        if !labels.is_empty() {
            let caller = Caller::new(None, labels);
            let for_class = if exported_to_all {
                action::routes(mesh, vs, port, &caller, &mut Vec::new())
            } else {
                routes.rest.clone()
            };
            routes.add_if_apart(caller, for_class);
        }
        let exported = named.iter().filter(|ns| vs.export_to.includes(Some(ns)));
        for ns in exported {
            let caller = Caller::new(Some(ns), labels);
            let for_caller = routes_for(&caller);
            routes.by_caller.insert(caller, for_caller);
        }
        for ns in hashing.iter().filter(|ns| !named.contains(*ns)) {
            let caller = Caller::new(Some(ns), labels);
            let for_caller = routes_for(&caller);
            routes.add_if_apart(caller, for_caller);
        }
    }
    routes
}

/// The proxies that read a DestinationRule of their own for one of some hosts, whose hash
/// policies may differ from everyone's: see [`rule_readers`].
pub(crate) struct RuleReaders<'a> {
    /// The namespaces whose proxies read another rule than everyone's.
    pub namespaces: BTreeSet<&'a str>,
    /// Per namespace, the `workloadSelector`s of its rules selecting some of its proxies.
    pub selecting: BTreeSet<(&'a str, &'a Labels)>,
}

/// The [`RuleReaders`] of `hosts`.
pub(crate) fn rule_readers<'a>(
    mesh: &'a Mesh,
    hosts: impl IntoIterator<Item = &'a str>,
) -> RuleReaders<'a> {
    let mut readers = RuleReaders {
        namespaces: BTreeSet::new(),
        selecting: BTreeSet::new(),
    };
    for rules in hosts
        .into_iter()
        .filter_map(|host| mesh.destination_rules.get(host))
    {
        (readers.namespaces).extend(rules.by_namespace.keys().map(String::as_str));
        readers.selecting.extend(rules.workload_selectors());
    }
    readers
}

/// The namespaces of `readers`, those of the selecting rules among them, and the selecting
/// rules' selectors, each once.
fn namespaces_and_selectors<'a>(readers: RuleReaders<'a>) -> (BTreeSet<&'a str>, Vec<Labels>) {
    let mut namespaces = readers.namespaces;
    let mut selectors = BTreeSet::new();
    for (ns, selector) in readers.selecting {
        namespaces.insert(ns);
        selectors.insert(selector.clone());
    }
    (namespaces, selectors.into_iter().collect())
}

/// The route of a service port no VirtualService routes: to the whole service, with Istio's
/// default retries and, as istiod, the hash policy of the DestinationRule the proxies
/// `caller` stands for read for it.
fn default_route(mesh: &Mesh, service: &Service, port: u32, caller: &Caller) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
                port,
                "",
                &service.host,
            ))),
            timeout: Some(action::NO_TIMEOUT),
            // Istio's default retries, as on a VirtualService route without `retries`.
            retry_policy: Some(retry::default_policy()),
            hash_policy: hash::hash_policies(mesh, &service.host, None, port, caller),
            ..Default::default()
        })),
        ..Default::default()
    }
}
