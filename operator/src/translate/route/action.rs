//! VirtualService `http` routes as Envoy routes: where a request goes (weighted clusters,
//! redirect or direct response) and how it is rewritten on the way.

use capstan_crds::networking::common::parse_duration;
use capstan_crds::networking::http_policy::{HttpDirectResponse, HttpRedirect};
use capstan_crds::networking::virtual_service::{HttpRoute, HttpRouteDestination};
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
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteAction, WeightedCluster,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::matching::route_match;
use crate::model::{Mesh, Problem, VirtualService, hostname};
use crate::translate::cluster_name;

/// Istio disables Envoy's default 15 s route timeout unless a VirtualService sets one.
pub const NO_TIMEOUT: Duration = Duration {
    seconds: 0,
    nanos: 0,
};

/// The Envoy routes of `vs` for requests arriving for service port `port`, in order.
pub fn routes(
    mesh: &Mesh,
    vs: &VirtualService,
    port: u32,
    problems: &mut Vec<Problem>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let Some(action) = action(mesh, vs, http, port, &field, problems) else {
            continue;
        };
        let matches: Vec<_> = if http.matches.is_empty() {
            vec![None]
        } else {
            http.matches.iter().map(Some).collect()
        };
        for (j, m) in matches.into_iter().enumerate() {
            if let Some(m) = m {
                if m.port != 0 && m.port != port {
                    continue;
                }
                if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
                    continue;
                }
                if !m.source_labels.is_empty() || !m.source_namespace.is_empty() {
                    problems.push(Problem {
                        object: vs.origin.clone(),
                        field: format!("{field}.match[{j}]"),
                        message: "sourceLabels and sourceNamespace matches are not supported yet; \
                                  this match is not served"
                            .into(),
                    });
                    continue;
                }
            }
            out.push(Route {
                name: route_name(http, i, m.map(|m| m.name.as_str())),
                r#match: Some(route_match(m)),
                action: Some(action.clone()),
                ..Default::default()
            });
        }
    }
    out
}

fn route_name(http: &HttpRoute, index: usize, match_name: Option<&str>) -> String {
    let base = if http.name.is_empty() {
        format!("http[{index}]")
    } else {
        http.name.clone()
    };
    match match_name {
        Some(m) if !m.is_empty() => format!("{base}.{m}"),
        _ => base,
    }
}

fn action(
    mesh: &Mesh,
    vs: &VirtualService,
    http: &HttpRoute,
    port: u32,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Action> {
    if let Some(redirect) = &http.redirect {
        return Some(Action::Redirect(redirect_action(redirect)));
    }
    if let Some(response) = &http.direct_response {
        return Some(Action::DirectResponse(direct_response(response)));
    }
    if http.delegate.is_some() {
        problems.push(Problem {
            object: vs.origin.clone(),
            field: format!("{field}.delegate"),
            message: "delegate is only supported for gateways; this route is not served".into(),
        });
        return None;
    }
    let destinations: Vec<&HttpRouteDestination> = if http.route.len() > 1 {
        // Istio drops zero-weight destinations from a split.
        http.route.iter().filter(|d| d.weight > 0).collect()
    } else {
        http.route.iter().collect()
    };
    let cluster_specifier = match destinations.as_slice() {
        [] => {
            problems.push(Problem {
                object: vs.origin.clone(),
                field: format!("{field}.route"),
                message: "no destination with a weight above 0; this route is not served".into(),
            });
            return None;
        }
        [only] => ClusterSpecifier::Cluster(destination_cluster(mesh, vs, only, port)),
        several => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|d| ClusterWeight {
                    name: destination_cluster(mesh, vs, d, port),
                    weight: Some(UInt32Value {
                        value: u32::try_from(d.weight).unwrap_or(0),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(NO_TIMEOUT),
        ..Default::default()
    };
    if let Some(timeout) = &http.timeout {
        match parse_duration(timeout) {
            Some(d) => {
                action.timeout = Some(Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                })
            }
            None => problems.push(Problem {
                object: vs.origin.clone(),
                field: format!("{field}.timeout"),
                message: format!("{timeout:?} is not a duration; no timeout applied"),
            }),
        }
    }
    if let Some(rewrite) = &http.rewrite {
        if !rewrite.uri.is_empty() {
            action.prefix_rewrite = rewrite.uri.clone();
        }
        if !rewrite.authority.is_empty() {
            action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(
                rewrite.authority.clone(),
            ));
        }
    }
    Some(Action::Route(action))
}

/// The cluster for a destination. Without a port, the destination service's only port is
/// used, else the port the request arrived for.
fn destination_cluster(
    mesh: &Mesh,
    vs: &VirtualService,
    d: &HttpRouteDestination,
    port: u32,
) -> String {
    let host = hostname::resolve(&d.destination.host, vs.namespace(), &mesh.domain_suffix);
    let port = match (&d.destination.port, mesh.services.get(&host)) {
        (Some(selected), _) => selected.number,
        (None, Some(service)) if service.ports.len() == 1 => service.ports[0].number,
        (None, _) => port,
    };
    cluster_name(port, &d.destination.subset, &host)
}

fn redirect_action(r: &HttpRedirect) -> RedirectAction {
    let response_code = match r.redirect_code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone(),
        port_redirect: r.port.unwrap_or(0),
        response_code: response_code as i32,
        scheme_rewrite_specifier: (!r.scheme.is_empty())
            .then(|| SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone())),
        path_rewrite_specifier: if !r.uri.is_empty() {
            Some(PathRewriteSpecifier::PathRedirect(r.uri.clone()))
        } else if !r.prefix_rewrite.is_empty() {
            Some(PathRewriteSpecifier::PrefixRewrite(
                r.prefix_rewrite.clone(),
            ))
        } else {
            None
        },
        ..Default::default()
    }
}

fn direct_response(r: &HttpDirectResponse) -> DirectResponseAction {
    DirectResponseAction {
        status: r.status,
        body: r
            .body
            .as_ref()
            .and_then(|b| b.string.clone())
            .map(|s| DataSource {
                specifier: Some(Specifier::InlineString(s)),
                ..Default::default()
            }),
        ..Default::default()
    }
}
