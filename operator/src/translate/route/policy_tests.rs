//! The route policies wired onto the routes built from VirtualService YAML: retries,
//! fault, mirrors, headers and CORS, on which actions they apply, and stable encoding.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use prost::Message;

use super::route_configurations;
use crate::translate::http_filters::{CORS, FAULT};
use crate::translate::test_support::{REVIEWS, mesh};

const VHOST: &str = "reviews.bookinfo.svc.cluster.local:9080";

/// The routes of a virtual host as Envoy applies them: a forwarding route without a retry
/// policy of its own has its virtual host's.
fn as_applied(virtual_host: VirtualHost) -> Vec<Route> {
    let shared = virtual_host.retry_policy;
    let mut routes = virtual_host.routes;
    for route in &mut routes {
        if let Some(Action::Route(action)) = &mut route.action
            && action.retry_policy.is_none()
        {
            action.retry_policy = shared.clone();
        }
    }
    routes
}

/// The routes of reviews' virtual host, as a proxy in `bookinfo` gets them, for a
/// VirtualService with this `http` list.
fn routes(http: &str) -> Vec<Route> {
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
    let (configs, problems) = route_configurations(&mesh(&yaml), super::RouteLayout::Shared, []);
    assert!(problems.is_empty(), "{problems:?}");
    let config: RouteConfiguration = configs
        .into_iter()
        .find(|(caller, _)| {
            caller.namespace.as_deref() == Some("bookinfo") && caller.labels.is_empty()
        })
        .map(|(_, c)| c)
        .expect("a bookinfo variant");
    as_applied(
        config
            .virtual_hosts
            .into_iter()
            .find(|v| v.name == VHOST)
            .expect("reviews' virtual host"),
    )
}

fn forward(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn headers_added(route: &Route) -> Vec<(String, String, i32)> {
    route
        .request_headers_to_add
        .iter()
        .map(|o| {
            let h = o.header.as_ref().expect("a header");
            (h.key.clone(), h.value.clone(), o.append_action)
        })
        .collect()
}

const SET: i32 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
const ADD: i32 = HeaderAppendAction::AppendIfExistsOrAdd as i32;

#[test]
fn every_policy_lands_on_the_route() {
    let routes = routes(
        r#"  - name: all
    match: [{uri: {prefix: /a}}, {uri: {prefix: /b}}]
    route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx"}
    fault:
      delay: {fixedDelay: 500ms, percentage: {value: 10}}
      abort: {httpStatus: 418, percentage: {value: 50}}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 25}
    headers:
      request: {set: {x-s: "1"}, add: {x-a: "2"}, remove: [x-r]}
      response: {set: {x-rs: "3"}, remove: [x-rr]}
    corsPolicy:
      allowOrigins: [{exact: "https://ok.example"}]
      allowMethods: [GET, POST]
      maxAge: 1m
"#,
    );
    // Each match gets the same policies.
    assert_eq!(routes.len(), 2);
    for route in &routes {
        let action = forward(route);
        let retry = action.retry_policy.as_ref().expect("retries");
        assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(3));
        assert_eq!(retry.retry_on, "5xx");
        assert_eq!(retry.per_try_timeout.as_ref().map(|d| d.seconds), Some(2));

        let mirrors: Vec<(&str, u32)> = action
            .request_mirror_policies
            .iter()
            .map(|m| {
                let share = m.runtime_fraction.as_ref().and_then(|f| f.default_value);
                (m.cluster.as_str(), share.map_or(0, |f| f.numerator))
            })
            .collect();
        assert_eq!(
            mirrors,
            [(
                "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                250_000
            )]
        );

        assert_eq!(
            headers_added(route),
            [
                ("x-s".to_string(), "1".to_string(), SET),
                ("x-a".to_string(), "2".to_string(), ADD)
            ]
        );
        assert_eq!(route.request_headers_to_remove, ["x-r"]);
        assert_eq!(route.response_headers_to_add.len(), 1);
        assert_eq!(route.response_headers_to_remove, ["x-rr"]);

        let mut keys: Vec<&str> = route
            .typed_per_filter_config
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, [CORS, FAULT]);
        let fault = HttpFault::decode(route.typed_per_filter_config[FAULT].value.as_slice())
            .expect("an HTTPFault");
        assert_eq!(
            fault.abort.and_then(|a| a.error_type),
            Some(ErrorType::HttpStatus(418))
        );
        assert!(fault.delay.is_some());
        let cors = CorsPolicy::decode(route.typed_per_filter_config[CORS].value.as_slice())
            .expect("a CorsPolicy");
        assert_eq!(cors.allow_methods, "GET,POST");
        assert_eq!(cors.max_age, "60");
    }
}

#[test]
fn istio_default_retries_unless_attempts_is_zero() {
    let routes = routes(
        "  - match: [{headers: {x-none: {exact: '1'}}}]
    route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 0}
  - route: [{destination: {host: reviews, subset: v2}}]
",
    );
    assert_eq!(forward(&routes[0]).retry_policy, None);
    let default = forward(&routes[1]).retry_policy.as_ref().expect("retries");
    assert_eq!(default.num_retries.as_ref().map(|n| n.value), Some(2));
    assert_eq!(default.retriable_status_codes, [503]);
    assert_eq!(default.host_selection_retry_max_attempts, 5);
}

#[test]
fn the_default_route_retries_as_istio_does() {
    let (configs, _) = route_configurations(&mesh(REVIEWS), super::RouteLayout::Shared, []);
    let (_, config) = configs.into_iter().next().expect("a variant");
    let routes = as_applied(config.virtual_hosts[0].clone());
    let retry = forward(&routes[0]).retry_policy.as_ref().expect("retries");
    assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(2));
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
}

#[test]
fn headers_fault_and_cors_apply_to_a_direct_response_retries_do_not() {
    let routes = routes(
        "  - directResponse: {status: 204}
    headers: {response: {set: {x-direct: 'yes'}}}
    fault: {abort: {httpStatus: 503}}
    corsPolicy: {allowOrigins: [{prefix: 'https://'}]}
",
    );
    let route = &routes[0];
    assert!(matches!(route.action, Some(Action::DirectResponse(_))));
    assert_eq!(route.response_headers_to_add.len(), 1);
    assert!(route.typed_per_filter_config.contains_key(FAULT));
    assert!(route.typed_per_filter_config.contains_key(CORS));
}

#[test]
fn destination_headers_join_a_single_route_and_stay_on_split_entries() {
    let single = routes(
        "  - route:
    - destination: {host: reviews, subset: v1}
      headers: {request: {set: {x-dest: v1, host: v1.example}}}
    headers: {request: {set: {x-route: r}}}
",
    );
    let route = &single[0];
    let names: Vec<String> = headers_added(route).into_iter().map(|h| h.0).collect();
    assert_eq!(names, ["x-route", "x-dest"]);
    // The destination's host header is a host rewrite, the route setting none.
    assert_eq!(
        forward(route).host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "v1.example".to_string()
        ))
    );

    let split = routes(
        "  - route:
    - destination: {host: reviews, subset: v1}
      weight: 60
      headers: {response: {add: {x-from: v1}}, request: {set: {host: a.example}}}
    - destination: {host: reviews, subset: v2}
      weight: 40
",
    );
    let route = &split[0];
    assert!(route.response_headers_to_add.is_empty());
    let Some(ClusterSpecifier::WeightedClusters(weighted)) = &forward(route).cluster_specifier
    else {
        panic!("not a split: {route:?}");
    };
    let v1 = &weighted.clusters[0];
    assert_eq!(v1.response_headers_to_add.len(), 1);
    assert_eq!(
        v1.host_rewrite_specifier,
        Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
            "a.example".to_string()
        ))
    );
    assert!(weighted.clusters[1].response_headers_to_add.is_empty());
}

#[test]
fn rewrite_authority_wins_over_the_host_header() {
    let routes = routes(
        "  - route: [{destination: {host: reviews}}]
    rewrite: {authority: rewritten.example}
    headers: {request: {set: {host: header.example}}}
",
    );
    assert_eq!(
        forward(&routes[0]).host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "rewritten.example".to_string()
        ))
    );
    // Envoy cannot set `host` as a header; it is a rewrite or nothing.
    assert!(routes[0].request_headers_to_add.is_empty());
}

#[test]
fn a_route_with_fault_and_cors_encodes_the_same_every_time() {
    let http = "  - route: [{destination: {host: reviews}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET]}
";
    let first = routes(http)[0].encode_to_vec();
    for _ in 0..20 {
        assert_eq!(routes(http)[0].encode_to_vec(), first);
    }
}

#[test]
fn regex_rewrite_wins_over_uri_and_matches_keep_their_stat_prefix() {
    let routes = routes(
        r"  - match: [{uri: {prefix: /v1}, statPrefix: reviews_v1}, {uri: {prefix: /x}}]
    rewrite: {uriRegexRewrite: {match: '^/v1/(.*)', rewrite: '/\1'}}
    route: [{destination: {host: reviews}}]
",
    );
    let rewrite = forward(&routes[0])
        .regex_rewrite
        .as_ref()
        .expect("a regex rewrite");
    assert_eq!(
        rewrite.pattern.as_ref().map(|p| p.regex.as_str()),
        Some("^/v1/(.*)")
    );
    assert_eq!(rewrite.substitution, r"/\1");
    assert_eq!(forward(&routes[0]).prefix_rewrite, "");
    assert_eq!(routes[0].stat_prefix, "reviews_v1");
    assert_eq!(routes[1].stat_prefix, "");
}

/// The routes of the first virtual host a bookinfo sidecar gets from `yaml`, as applied.
fn bookinfo_routes(yaml: &str) -> Vec<Route> {
    let (configs, problems) = route_configurations(&mesh(yaml), super::RouteLayout::Shared, []);
    assert!(problems.is_empty(), "{problems:?}");
    let (_, config) = configs
        .into_iter()
        .find(|(caller, _)| {
            caller.namespace.as_deref() == Some("bookinfo") && caller.labels.is_empty()
        })
        .expect("a bookinfo variant");
    as_applied(config.virtual_hosts[0].clone())
}

/// reviews with one endpoint, for the hash policy tests.
const ONE_ENDPOINT: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
---
";

#[test]
fn a_consistent_hash_destination_retries_without_the_previous_hosts_predicate() {
    let yaml = ONE_ENDPOINT.to_string()
        + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
"#;
    let routes = bookinfo_routes(&yaml);
    let action = forward(&routes[0]);
    assert_eq!(action.hash_policy.len(), 1, "{action:?}");
    let retry = action.retry_policy.as_ref().expect("retries");
    assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(2));
    assert!(retry.retry_host_predicate.is_empty(), "{retry:?}");
}

#[test]
fn a_split_hashes_on_each_destinations_key_once_and_keeps_the_default_retries() {
    let yaml = ONE_ENDPOINT.to_string()
        + r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 0s}}}}
  - name: v3
    labels: {version: v3}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 40}
    - {destination: {host: reviews}, weight: 30}
    - {destination: {host: reviews, subset: v2}, weight: 20}
    - {destination: {host: reviews, subset: v3}, weight: 10}
"#;
    let routes = bookinfo_routes(&yaml);
    let action = forward(&routes[0]);
    assert!(
        matches!(
            &action.cluster_specifier,
            Some(ClusterSpecifier::WeightedClusters(split)) if split.clusters.len() == 4
        ),
        "{action:?}"
    );
    // v1 and the whole service share the top level's header key: said once; v2's cookie
    // after it; v3 balances round robin and adds none.
    assert_eq!(
        crate::translate::test_support::hash_keys(&routes[0]),
        ["x-user", "cookie session"]
    );
    // A split retries as any route: on other hosts too, as istiod's split does.
    let retry = action.retry_policy.as_ref().expect("retries");
    assert!(!retry.retry_host_predicate.is_empty(), "{retry:?}");
}
