//! The route and match fields translation handles besides the policies, checked on the
//! Envoy routes built from VirtualService YAML: regex and case-insensitive paths, absent
//! headers, query parameters, port-specific matches, the timeout and prefix rewrite, and
//! what is reported instead of served (source matches).

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::google::protobuf::BoolValue;

use super::route_configurations;
use crate::translate::test_support::{REVIEWS, mesh};

/// Reviews' routes (port 9080) for a VirtualService with this `http` list, and the
/// problems translation reported.
fn routes_and_problems(http: &str) -> (Vec<Route>, Vec<String>) {
    let yaml = format!(
        "{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
{http}"
    );
    let (configs, problems) = route_configurations(&mesh(&yaml));
    let config: RouteConfiguration = configs
        .into_iter()
        .find(|(ns, _)| ns.as_deref() == Some("bookinfo"))
        .map(|(_, c)| c)
        .expect("a bookinfo variant");
    let routes = config
        .virtual_hosts
        .into_iter()
        .find(|v| v.name == "reviews.bookinfo.svc.cluster.local:9080")
        .expect("reviews' virtual host")
        .routes;
    (routes, problems.iter().map(ToString::to_string).collect())
}

#[test]
fn match_fields_timeout_and_rewrite_on_the_envoy_route() {
    let (routes, problems) = routes_and_problems(
        "  - name: r
    match:
    - name: a
      uri: {regex: '/r/[0-9]+'}
      ignoreUriCase: true
      withoutHeaders: {x-skip: {}}
      queryParams: {q: {exact: '1'}}
      port: 9080
    - uri: {prefix: /elsewhere}
      port: 9999
    rewrite: {uri: /new}
    timeout: 1.5s
    route: [{destination: {host: reviews, subset: v1}}]
  - match:
    - uri: {exact: /x}
      method: {exact: POST}
      scheme: {exact: http}
      authority: {prefix: rev}
    route: [{destination: {host: reviews, subset: v2}}]
",
    );
    assert!(problems.is_empty(), "{problems:?}");
    // The match for another port is not served on this one.
    assert_eq!(routes.len(), 2, "{routes:?}");
    let pseudo = routes[1].r#match.as_ref().expect("a match");
    assert_eq!(routes[1].name, "http[1]");
    assert_eq!(
        pseudo.path_specifier,
        Some(PathSpecifier::Path("/x".into()))
    );
    let names: Vec<&str> = pseudo.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, [":scheme", ":method", ":authority"]);
    let route = &routes[0];
    assert_eq!(route.name, "r.a");
    let m = route.r#match.as_ref().expect("a match");
    assert!(
        matches!(&m.path_specifier, Some(PathSpecifier::SafeRegex(r)) if r.regex == "/r/[0-9]+")
    );
    assert_eq!(m.case_sensitive, Some(BoolValue { value: false }));
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, "x-skip");
    assert!(m.headers[0].invert_match);
    assert_eq!(
        m.headers[0].header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(m.query_parameters.len(), 1);
    assert_eq!(m.query_parameters[0].name, "q");
    assert!(matches!(
        m.query_parameters[0].query_parameter_match_specifier,
        Some(QueryParameterMatchSpecifier::StringMatch(_))
    ));
    let Some(Action::Route(action)) = &route.action else {
        panic!("not forwarded: {route:?}");
    };
    assert_eq!(action.prefix_rewrite, "/new");
    let timeout = action.timeout.expect("a timeout");
    assert_eq!((timeout.seconds, timeout.nanos), (1, 500_000_000));
}

#[test]
fn source_matches_are_reported_not_served() {
    let (routes, problems) = routes_and_problems(
        "  - match: [{sourceLabels: {app: productpage}}, {uri: {prefix: /all}}]
    route: [{destination: {host: reviews, subset: v1}}]
",
    );
    assert_eq!(
        routes.len(),
        1,
        "only the match without a source: {routes:?}"
    );
    assert!(matches!(
        &routes[0].r#match.as_ref().and_then(|m| m.path_specifier.clone()),
        Some(PathSpecifier::Prefix(p)) if p == "/all"
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("spec.http[0].match[0]"),
        "{problems:?}"
    );
}
