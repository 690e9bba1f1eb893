//! The route and match fields translation handles besides the policies, checked on the
//! Envoy routes built from VirtualService YAML: regex and case-insensitive paths, absent
//! headers, query parameters, port-specific matches, the timeout and prefix rewrite, and
//! the routes sidecars get by their namespace and labels (source matches).

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{Labels, route_configurations};
use crate::translate::test_support::{REVIEWS, mesh};

/// Reviews' routes (port 9080) for a VirtualService with this `http` list, and the
/// problems translation reported.
fn routes_and_problems(http: &str) -> (Vec<Route>, Vec<String>) {
    routes_for(http, Some("bookinfo"), &[])
}

/// [`routes_and_problems`] as the sidecars of `namespace` with `labels` get them.
fn routes_for(
    http: &str,
    namespace: Option<&str>,
    labels: &[(&str, &str)],
) -> (Vec<Route>, Vec<String>) {
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
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (configs, problems) = route_configurations(&mesh(&yaml), super::RouteLayout::Shared, []);
    let config: RouteConfiguration = configs
        .into_iter()
        .find(|(caller, _)| caller.namespace.as_deref() == namespace && caller.labels == labels)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no variant for {namespace:?} {labels:?}"));
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
fn source_labels_matches_are_in_the_routes_of_the_sidecars_they_select() {
    let http = "  - match: [{sourceLabels: {app: productpage}}, {uri: {prefix: /all}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: front-v2
    match: [{sourceLabels: {version: v2}, sourceNamespace: front}]
    route: [{destination: {host: reviews, subset: v2}}]
";
    // Each route as (name, path prefix).
    let shape = |namespace: Option<&str>, labels: &[(&str, &str)]| {
        let (routes, problems) = routes_for(http, namespace, labels);
        assert_eq!(problems, Vec::<String>::new());
        routes
            .iter()
            .map(|r| {
                let prefix = match r.r#match.as_ref().and_then(|m| m.path_specifier.clone()) {
                    Some(PathSpecifier::Prefix(p)) => p,
                    other => panic!("{other:?}"),
                };
                (r.name.clone(), prefix)
            })
            .collect::<Vec<_>>()
    };
    let all = ("http[0]".to_string(), "/all".to_string());
    let productpage = ("http[0]".to_string(), "/".to_string());
    let front_v2 = ("front-v2".to_string(), "/".to_string());
    assert_eq!(shape(Some("bookinfo"), &[]), vec![all.clone()]);
    assert_eq!(shape(None, &[]), vec![all.clone()]);
    assert_eq!(
        shape(Some("bookinfo"), &[("app", "productpage")]),
        [productpage.clone(), all.clone()]
    );
    assert_eq!(
        shape(None, &[("app", "productpage")]),
        [productpage.clone(), all.clone()],
        "sourceLabels picks workloads of any namespace"
    );
    assert_eq!(
        shape(Some("bookinfo"), &[("version", "v2")]),
        vec![all.clone()],
        "sourceNamespace still holds"
    );
    assert_eq!(
        shape(Some("front"), &[("version", "v2")]),
        [all.clone(), front_v2.clone()]
    );
    assert_eq!(
        shape(Some("front"), &[("app", "productpage"), ("version", "v2")]),
        [productpage, all, front_v2],
        "a workload both selectors pick gets both matches"
    );
}

#[test]
fn a_match_naming_its_gateways_is_not_narrowed_by_source() {
    // As istiod: `gateways` on a match decides alone whether sidecars get it.
    let http =
        "  - match: [{sourceLabels: {app: productpage}, gateways: [mesh], uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{sourceNamespace: front, gateways: [mesh], uri: {prefix: /b}}]
    route: [{destination: {host: reviews, subset: v1}}]
";
    let (routes, problems) = routes_for(http, Some("bookinfo"), &[]);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(routes.len(), 2, "{routes:?}");
}
