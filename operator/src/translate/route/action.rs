//! VirtualService `http` routes as Envoy routes: where a request goes (weighted clusters,
//! redirect or direct response) and how it is rewritten on the way.

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
use crate::model::routing::{self, Destination, HttpRoute, RedirectPath};
use crate::model::{Mesh, Problem, VirtualService};
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
                if m.port.is_some_and(|p| p != port) {
                    continue;
                }
                if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
                    continue;
                }
                if m.by_source {
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
                name: route_name(http, i, m.and_then(|m| m.name.as_deref())),
                r#match: Some(route_match(m)),
                action: Some(action.clone()),
                ..Default::default()
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

fn action(
    mesh: &Mesh,
    vs: &VirtualService,
    http: &HttpRoute,
    port: u32,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Action> {
    let all = match &http.action {
        routing::Action::Redirect(redirect) => {
            return Some(Action::Redirect(redirect_action(redirect)));
        }
        routing::Action::DirectResponse(response) => {
            return Some(Action::DirectResponse(direct_response(response)));
        }
        routing::Action::Delegate => {
            problems.push(Problem {
                object: vs.origin.clone(),
                field: format!("{field}.delegate"),
                message: "delegate is only supported for gateways; this route is not served".into(),
            });
            return None;
        }
        routing::Action::Forward(destinations) => destinations,
    };
    let destinations: Vec<&Destination> = if all.len() > 1 {
        // Istio drops zero-weight destinations from a split.
        all.iter().filter(|d| d.weight > 0).collect()
    } else {
        all.iter().collect()
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
        [only] => ClusterSpecifier::Cluster(destination_cluster(mesh, only, port)),
        several => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|d| ClusterWeight {
                    name: destination_cluster(mesh, d, port),
                    weight: Some(UInt32Value { value: d.weight }),
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
    if let Some(d) = http.timeout {
        action.timeout = Some(Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
    }
    if let Some(uri) = &http.rewrite.uri {
        action.prefix_rewrite = uri.clone();
    }
    if let Some(authority) = &http.rewrite.authority {
        action.host_rewrite_specifier =
            Some(HostRewriteSpecifier::HostRewriteLiteral(authority.clone()));
    }
    Some(Action::Route(action))
}

/// The cluster for a destination. Without a port, the destination service's only port is
/// used, else the port the request arrived for.
fn destination_cluster(mesh: &Mesh, d: &Destination, port: u32) -> String {
    let port = match (d.port, mesh.services.get(&d.host)) {
        (Some(selected), _) => selected,
        (None, Some(service)) if service.ports.len() == 1 => service.ports[0].number,
        (None, _) => port,
    };
    cluster_name(port, d.subset.as_deref().unwrap_or(""), &d.host)
}

fn redirect_action(r: &routing::Redirect) -> RedirectAction {
    let response_code = match r.code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
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
        body: r.body.clone().map(|s| DataSource {
            specifier: Some(Specifier::InlineString(s)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
