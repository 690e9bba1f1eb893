//! VirtualService `http` routes as Envoy routes: where a request goes (weighted clusters,
//! redirect or direct response), how it is rewritten on the way, and the route's policies
//! (retries, mirrors, header operations, fault and CORS per-filter config).

use std::collections::HashMap;
use std::sync::LazyLock;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier as ClusterWeightHostRewrite;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteAction, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::caller::Caller;
use super::convert::duration;
use super::cors::cors_policy;
use super::fault::http_fault;
use super::headers::{HeaderMutations, header_mutations};
use super::matching::route_match;
use super::mirror::mirror_policies;
use super::retry::retry_policy;
use crate::model::routing::{self, Destination, HttpRoute, RedirectPath};
use crate::model::{Mesh, Problem, VirtualService};
use crate::translate::cluster_name;
use crate::translate::http_filters::{CORS, FAULT};

/// Istio disables Envoy's default 15 s route timeout unless a VirtualService sets one.
pub const NO_TIMEOUT: Duration = Duration {
    seconds: 0,
    nanos: 0,
};

/// Which proxies routes are built for: sidecars (the reserved gateway `mesh`) or the proxies
/// of one Gateway, as (namespace, name); of one namespace and label class when matches name
/// them by source (a gateway proxy's own labels and namespace, as with istiod).
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    Mesh(&'a Caller),
    Gateway((&'a str, &'a str), &'a Caller),
}

impl<'a> Binding<'a> {
    /// Whether a match's `gateways` (as written in a VirtualService of `namespace`) name this.
    fn named_in(self, gateways: &[String], namespace: &str) -> bool {
        match self {
            Binding::Mesh(_) => gateways.iter().any(|g| g == "mesh"),
            Binding::Gateway(gateway, _) => {
                crate::model::gateway::names(gateways, namespace, gateway)
            }
        }
    }

    fn caller(self) -> &'a Caller {
        match self {
            Binding::Mesh(caller) | Binding::Gateway(_, caller) => caller,
        }
    }
}

/// The Envoy routes of `vs` for requests arriving for service port `port` from the sidecars
/// `caller` stands for, in order.
pub fn routes(
    mesh: &Mesh,
    vs: &VirtualService,
    port: u32,
    caller: &Caller,
    problems: &mut Vec<Problem>,
) -> Vec<Route> {
    routes_bound(mesh, vs, port, Binding::Mesh(caller), problems)
}

/// [`routes`] for the proxies of `binding`: a match naming other gateways is left out.
pub fn routes_bound(
    mesh: &Mesh,
    vs: &VirtualService,
    port: u32,
    binding: Binding<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let caller = binding.caller();
        let Some(template) = route_template(mesh, vs, http, port, caller, &field, problems) else {
            continue;
        };
        let matches: Vec<_> = if http.matches.is_empty() {
            vec![None]
        } else {
            http.matches.iter().map(Some).collect()
        };
        for m in matches {
            if let Some(m) = m {
                if m.port.is_some_and(|p| p != port) {
                    continue;
                }
                let applies = if !m.gateways.is_empty() {
                    // As istiod: a match naming its gateways is not narrowed by source.
                    binding.named_in(&m.gateways, &vs.origin.namespace)
                } else {
                    binding.caller().selects(m)
                };
                if !applies {
                    continue;
                }
            }
            out.push(Route {
                name: route_name(http, i, m.and_then(|m| m.name.as_deref())),
                r#match: Some(route_match(m)),
                stat_prefix: m.and_then(|m| m.stat_prefix.clone()).unwrap_or_default(),
                ..template.clone()
            });
        }
    }
    out
}

fn route_name(http: &HttpRoute, index: usize, match_name: Option<&str>) -> String {
    let base = match &http.name {
        Some(name) => name.clone(),
        None => format!("http[{index}]"),
    };
    match match_name {
        Some(m) => format!("{base}.{m}"),
        None => base,
    }
}

/// Everything of the Envoy route for `http` but its name and match: the action, the
/// route's header operations (on whatever the action is, as istiod sets them) and the fault
/// and CORS policies for their filters.
fn route_template(
    mesh: &Mesh,
    vs: &VirtualService,
    http: &HttpRoute,
    port: u32,
    caller: &Caller,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    let headers = header_mutations(&http.headers);
    let authority = headers.authority.clone();
    let mut route = Route {
        request_headers_to_add: headers.request_to_add,
        request_headers_to_remove: headers.request_to_remove,
        response_headers_to_add: headers.response_to_add,
        response_headers_to_remove: headers.response_to_remove,
        typed_per_filter_config: per_filter_config(http),
        ..Default::default()
    };
    let action = match &http.action {
        routing::Action::Redirect(redirect) => Action::Redirect(redirect_action(redirect, port)),
        routing::Action::DirectResponse(response) => {
            Action::DirectResponse(direct_response(response))
        }
        routing::Action::Delegate => {
            problems.push(Problem {
                object: vs.origin.clone(),
                field: format!("{field}.delegate"),
                message: "delegate is only supported for gateways; this route is not served".into(),
            });
            return None;
        }
        routing::Action::Forward(all) => {
            let forward = Forward {
                all,
                port,
                authority,
                caller,
            };
            Action::Route(forward.action(mesh, vs, http, &mut route, field, problems)?)
        }
    };
    route.action = Some(action);
    Some(route)
}

/// The fault and CORS filters' config for the route, keyed by filter name.
///
/// Envoy's types hold these in a `HashMap`, which prost encodes in iteration order; a map of
/// its own random seed would encode the same route differently on each build (a new
/// content version, a push for nothing). Every map is cloned from one empty map, so all
/// share its seed, and the keys go in in one order: same content, same bytes.
fn per_filter_config(http: &HttpRoute) -> HashMap<String, Any> {
    static SEEDED: LazyLock<HashMap<String, Any>> = LazyLock::new(|| HashMap::with_capacity(2));
    let mut out = HashMap::new();
    if http.fault.is_none() && http.cors.is_none() {
        return out;
    }
    out.clone_from(&SEEDED);
    if let Some(fault) = &http.fault {
        out.insert(FAULT.to_string(), pack_any(http_fault(fault)));
    }
    if let Some(cors) = &http.cors {
        out.insert(CORS.to_string(), pack_any(cors_policy(cors)));
    }
    out
}

/// A forwarding route's destinations, for requests arriving for service port `port`.
struct Forward<'a> {
    all: &'a [Destination],
    port: u32,
    /// From the route's `headers` (`:authority`/`host`); `rewrite.authority` wins over it.
    authority: Option<String>,
    /// The proxies routing: whose DestinationRule a hash policy comes from.
    caller: &'a Caller,
}

impl Forward<'_> {
    /// The route action; a single destination's header operations join the route's.
    fn action(
        self,
        mesh: &Mesh,
        vs: &VirtualService,
        http: &HttpRoute,
        route: &mut Route,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<RouteAction> {
        let Forward {
            all,
            port,
            authority,
            caller,
        } = self;
        let destinations: Vec<&Destination> = if all.len() > 1 {
            // Istio drops zero-weight destinations from a split.
            all.iter().filter(|d| d.weight > 0).collect()
        } else {
            all.iter().collect()
        };
        let mut action = RouteAction {
            timeout: Some(NO_TIMEOUT),
            ..Default::default()
        };
        // The route's authority, then `rewrite.authority` over it.
        let mut host_rewrite = authority;
        let cluster_specifier = match destinations.as_slice() {
            [] => {
                problems.push(Problem {
                    object: vs.origin.clone(),
                    field: format!("{field}.route"),
                    message: "no destination with a weight above 0; this route is not served"
                        .into(),
                });
                return None;
            }
            [only] => {
                let mut own = header_mutations(&only.headers);
                let own_authority = own.authority.take();
                append_headers(route, own);
                // The destination's authority only where the route sets none, as istiod.
                if http.rewrite.authority.is_none() && host_rewrite.is_none() {
                    host_rewrite = own_authority;
                }
                ClusterSpecifier::Cluster(destination_cluster(mesh, only, port))
            }
            several => ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: several.iter().map(|d| weighted(mesh, d, port)).collect(),
                ..Default::default()
            }),
        };
        let single = matches!(cluster_specifier, ClusterSpecifier::Cluster(_));
        action.cluster_specifier = Some(cluster_specifier);
        // Each destination balanced by consistent hash adds its DestinationRule's hash key,
        // as istiod; a key repeated across a split is said once (the same requests stick).
        action.hash_policy = match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => super::hash::for_cluster(mesh, name, caller),
            Some(ClusterSpecifier::WeightedClusters(split)) => {
                let mut policies = Vec::new();
                for cluster in &split.clusters {
                    for policy in super::hash::for_cluster(mesh, &cluster.name, caller) {
                        if !policies.contains(&policy) {
                            policies.push(policy);
                        }
                    }
                }
                policies
            }
            _ => Vec::new(),
        };
        if let Some(d) = http.timeout {
            action.timeout = Some(duration(d));
        }
        if let Some((pattern, substitution)) = &http.rewrite.uri_regex {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: pattern.clone(),
                    ..Default::default()
                }),
                substitution: substitution.clone(),
            });
        } else if let Some(uri) = &http.rewrite.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(authority) = http.rewrite.authority.clone().or(host_rewrite) {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(authority));
        }
        action.request_mirror_policies = mirror_policies(mesh, &http.mirrors, port);
        // Last: a single destination balanced by consistent hash (it has a hash policy by
        // now) retries without preferring other hosts, as istiod.
        let consistent_hash = single && !action.hash_policy.is_empty();
        action.retry_policy = retry_policy(&http.retries, consistent_hash);
        Some(action)
    }
}

/// A destination of a split, with its own header operations and authority.
fn weighted(mesh: &Mesh, d: &Destination, port: u32) -> ClusterWeight {
    let headers = header_mutations(&d.headers);
    ClusterWeight {
        name: destination_cluster(mesh, d, port),
        weight: Some(UInt32Value { value: d.weight }),
        request_headers_to_add: headers.request_to_add,
        request_headers_to_remove: headers.request_to_remove,
        response_headers_to_add: headers.response_to_add,
        response_headers_to_remove: headers.response_to_remove,
        host_rewrite_specifier: headers
            .authority
            .map(ClusterWeightHostRewrite::HostRewriteLiteral),
        ..Default::default()
    }
}

/// A single destination's header operations, after the route's (so its `set` wins).
fn append_headers(route: &mut Route, headers: HeaderMutations) {
    route.request_headers_to_add.extend(headers.request_to_add);
    route
        .request_headers_to_remove
        .extend(headers.request_to_remove);
    route
        .response_headers_to_add
        .extend(headers.response_to_add);
    route
        .response_headers_to_remove
        .extend(headers.response_to_remove);
}

/// The cluster for a destination. Without a port, the destination service's only port is
/// used, else the port the request arrived for.
fn destination_cluster(mesh: &Mesh, d: &Destination, port: u32) -> String {
    cluster_for(mesh, &d.host, d.subset.as_deref(), d.port, port)
}

/// The cluster of `host`'s `subset` on port `selected`; without one, the service's only
/// port, else `port`, the port the request arrived for.
pub(in crate::translate) fn cluster_for(
    mesh: &Mesh,
    host: &str,
    subset: Option<&str>,
    selected: Option<u32>,
    port: u32,
) -> String {
    let port = match (selected, mesh.services.get(host)) {
        (Some(selected), _) => selected,
        (None, Some(service)) if service.ports.len() == 1 => service.ports[0].number,
        (None, _) => port,
    };
    cluster_name(port, subset.unwrap_or(""), host)
}

/// `port`: the port the route serves, which is the request's (Envoy cannot read the port
/// from the request; istiod does the same).
fn redirect_action(r: &routing::Redirect, port: u32) -> RedirectAction {
    let response_code = match r.code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        // 0: the scheme's default port (`derivePort: FROM_PROTOCOL_DEFAULT`, or none set).
        port_redirect: if r.port_from_request {
            port
        } else {
            r.port.unwrap_or(0)
        },
        response_code: response_code as i32,
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r.path.as_ref().map(|path| match path {
            RedirectPath::Replace(p) => PathRewriteSpecifier::PathRedirect(p.clone()),
            RedirectPath::Prefix(p) => PathRewriteSpecifier::PrefixRewrite(p.clone()),
        }),
        ..Default::default()
    }
}

fn direct_response(r: &routing::DirectResponse) -> DirectResponseAction {
    DirectResponseAction {
        status: r.status,
        body: r.body.clone().map(|body| DataSource {
            specifier: Some(match String::from_utf8(body) {
                Ok(text) => Specifier::InlineString(text),
                Err(bytes) => Specifier::InlineBytes(bytes.into_bytes()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
