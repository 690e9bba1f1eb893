use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::route_configurations;
use crate::translate::test_support::{REVIEWS, mesh};

/// The route configuration a proxy in namespace `bookinfo` gets.
fn config(yaml: &str) -> (RouteConfiguration, Vec<String>) {
    config_in(yaml, Some("bookinfo"))
}

fn config_in(yaml: &str, namespace: Option<&str>) -> (RouteConfiguration, Vec<String>) {
    let (configs, problems) = route_configurations(&mesh(yaml), super::RouteLayout::Shared, []);
    let config = configs
        .into_iter()
        .find(|(caller, _)| caller.namespace.as_deref() == namespace && caller.labels.is_empty())
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no variant for namespace {namespace:?}"));
    (config, problems.iter().map(ToString::to_string).collect())
}

fn vhost<'a>(config: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    config
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name}"))
}

fn route_action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn cluster(route: &Route) -> &str {
    match &route_action(route).cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not a single cluster: {other:?}"),
    }
}

#[test]
fn service_without_virtual_service_gets_a_default_route_and_short_names() {
    let (config, problems) = config(REVIEWS);
    assert!(problems.is_empty());
    let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
    for domain in [
        "reviews.bookinfo.svc.cluster.local",
        "reviews.bookinfo.svc.cluster.local:9080",
        "reviews.bookinfo.svc",
        "reviews.bookinfo",
        "reviews",
        "reviews:9080",
    ] {
        assert!(
            vh.domains.iter().any(|d| d == domain),
            "missing {domain} in {:?}",
            vh.domains
        );
    }
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(
        cluster(&vh.routes[0]),
        "outbound|9080||reviews.bookinfo.svc.cluster.local"
    );
}

#[test]
fn header_match_and_weighted_split() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /reviews}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews.bookinfo.svc.cluster.local, subset: v3, port: {number: 9080}}
      weight: 20
"#
    );
    let (config, problems) = config(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
    assert_eq!(vh.routes.len(), 2);

    let jason = &vh.routes[0];
    let m = jason.r#match.as_ref().expect("match");
    assert_eq!(
        m.path_specifier,
        Some(PathSpecifier::Prefix("/reviews".into()))
    );
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, "end-user");
    match &m.headers[0].header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            assert_eq!(s.match_pattern, Some(MatchPattern::Exact("jason".into())))
        }
        other => panic!("unexpected header match {other:?}"),
    }
    assert_eq!(
        cluster(jason),
        "outbound|9080|v2|reviews.bookinfo.svc.cluster.local"
    );

    match &route_action(&vh.routes[1]).cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let got: Vec<(&str, u32)> = w
                .clusters
                .iter()
                .map(|c| (c.name.as_str(), c.weight.as_ref().map_or(0, |w| w.value)))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("outbound|9080|v1|reviews.bookinfo.svc.cluster.local", 80),
                    ("outbound|9080|v3|reviews.bookinfo.svc.cluster.local", 20)
                ]
            );
        }
        other => panic!("not weighted: {other:?}"),
    }
}

#[test]
fn virtual_service_bound_to_a_gateway_does_not_route_sidecars() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"#
    );
    let (config, _) = config(&yaml);
    let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
    assert_eq!(
        cluster(&vh.routes[0]),
        "outbound|9080||reviews.bookinfo.svc.cluster.local"
    );
}

/// A second `reviews`, in namespace `other`.
const OTHER_REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: other}
spec:
  hosts: [reviews.other.svc.cluster.local]
  ports:
  - {number: 9080, name: http}
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.9}
"#;

#[test]
fn domains_are_never_claimed_twice() {
    // Two services whose short names collide: `reviews` in two namespaces would both claim
    // the bare names `reviews`, which Envoy would reject.
    let yaml = format!("{REVIEWS}---\n{OTHER_REVIEWS}");
    for namespace in [None, Some("bookinfo"), Some("other")] {
        let (config, _) = config_in(&yaml, namespace);
        let mut all: Vec<&String> = config
            .virtual_hosts
            .iter()
            .flat_map(|v| &v.domains)
            .collect();
        let before = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), before, "duplicate domains for {namespace:?}");
        assert!(
            vhost(&config, "reviews.other.svc.cluster.local:9080")
                .domains
                .iter()
                .any(|d| d == "reviews.other")
        );
    }
}

/// As istiod, a service's addresses are Host values that reach it (a client calling a
/// Kubernetes Service by its cluster IP, say from `REVIEWS_SERVICE_HOST`); a CIDR range is not
/// one destination and is left out.
#[test]
fn a_service_is_reached_by_its_addresses_too() {
    let yaml = REVIEWS.replace(
        "  resolution: STATIC",
        "  addresses: [240.0.0.7, \"2001:db8::7\", 10.1.0.0/24]\n  resolution: STATIC",
    );
    let (config, problems) = config(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let domains = &vhost(&config, "reviews.bookinfo.svc.cluster.local:9080").domains;
    for domain in [
        "240.0.0.7:9080",
        "240.0.0.7",
        "[2001:db8::7]:9080",
        "[2001:db8::7]",
    ] {
        assert!(
            domains.iter().any(|d| d == domain),
            "{domain} in {domains:?}"
        );
    }
    assert!(
        !domains.iter().any(|d| d.starts_with("10.1.0.0")),
        "{domains:?}"
    );
}

#[test]
fn short_names_resolve_in_the_proxys_namespace() {
    let yaml = format!("{REVIEWS}---\n{OTHER_REVIEWS}");
    let owner = |namespace: Option<&str>, domain: &str| {
        let (config, _) = config_in(&yaml, namespace);
        config
            .virtual_hosts
            .iter()
            .find(|v| v.domains.iter().any(|d| d == domain))
            .map(|v| v.name.clone())
    };
    assert_eq!(
        owner(Some("bookinfo"), "reviews").as_deref(),
        Some("reviews.bookinfo.svc.cluster.local:9080")
    );
    assert_eq!(
        owner(Some("other"), "reviews:9080").as_deref(),
        Some("reviews.other.svc.cluster.local:9080")
    );
    // A proxy of a namespace without services of its own has no bare names to resolve.
    assert_eq!(owner(None, "reviews"), None);
    assert_eq!(
        owner(None, "reviews.other").as_deref(),
        Some("reviews.other.svc.cluster.local:9080")
    );
}

#[test]
fn redirect_and_direct_response() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - directResponse: {status: 418, body: {string: teapot}}
"#
    );
    let (config, problems) = config(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
    assert_eq!(vh.routes.len(), 2);
    assert_eq!(
        vh.routes[0]
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.clone()),
        Some(PathSpecifier::Path("/old".into())),
        "the redirect applies to /old only"
    );
    match &vh.routes[0].action {
        Some(Action::Redirect(r)) => {
            assert_eq!(r.response_code, RedirectResponseCode::Found as i32);
            assert_eq!(
                r.path_rewrite_specifier,
                Some(PathRewriteSpecifier::PathRedirect("/new".into()))
            );
            assert!(r.host_redirect.is_empty(), "same host");
        }
        other => panic!("not a redirect: {other:?}"),
    }
    assert_eq!(
        vh.routes[1]
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.clone()),
        Some(PathSpecifier::Prefix("/".into())),
        "the direct response catches everything else"
    );
    match &vh.routes[1].action {
        Some(Action::DirectResponse(d)) => {
            assert_eq!(d.status, 418);
            assert_eq!(
                d.body.as_ref().and_then(|b| b.specifier.clone()),
                Some(Specifier::InlineString("teapot".into()))
            );
        }
        other => panic!("not a direct response: {other:?}"),
    }
}

#[test]
fn virtual_service_for_an_unknown_host_is_reported() {
    let yaml = format!(
        "{REVIEWS}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost, namespace: bookinfo}
spec:
  hosts: [ghost]
  http:
  - route:
    - destination: {host: ghost}
"#
    );
    let (_, problems) = config(&yaml);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("VirtualService bookinfo/ghost: spec.hosts[0]"),
        "{problems:?}"
    );
}

#[test]
fn a_default_route_hashes_as_the_services_destination_rule_says() {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    // reviews' rule, replaced by one hashing on a header; no VirtualService.
    let rule = REVIEWS.split("---").nth(1).expect("the rule").replace(
        "spec:\n",
        "spec:\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n",
    );
    let se = REVIEWS.split("---").next().expect("the entry");
    let (config, problems) = config(&format!("{se}---{rule}"));
    assert!(problems.is_empty(), "{problems:?}");
    let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
    let hashes = &route_action(&vh.routes[0]).hash_policy;
    assert!(
        matches!(
            hashes.as_slice(),
            [h] if matches!(&h.policy_specifier, Some(PolicySpecifier::Header(x)) if x.header_name == "x-user")
        ),
        "{hashes:?}"
    );
    // Without the rule's hash, none.
    let (plain, _) = self::config(REVIEWS);
    let vh = vhost(&plain, "reviews.bookinfo.svc.cluster.local:9080");
    assert!(route_action(&vh.routes[0]).hash_policy.is_empty());
}

#[test]
fn routes_hash_as_the_destination_rule_of_the_callers_namespace_says() {
    let hashing = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: team-a}
spec:
  host: reviews.bookinfo.svc.cluster.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-team}}}
"#;
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"#;
    let header = |yaml: &str, namespace: Option<&str>| {
        let (config, problems) = config_in(yaml, namespace);
        assert!(problems.is_empty(), "{problems:?}");
        let vh = vhost(&config, "reviews.bookinfo.svc.cluster.local:9080");
        crate::translate::test_support::hash_keys(&vh.routes[0])
    };
    // The default route, then a VirtualService's.
    for yaml in [
        format!("{REVIEWS}---{hashing}"),
        format!("{REVIEWS}---{hashing}---{vs}"),
    ] {
        assert_eq!(header(&yaml, Some("team-a")), ["x-team"]);
        assert_eq!(header(&yaml, Some("bookinfo")), [] as [String; 0]);
        assert_eq!(header(&yaml, None), [] as [String; 0]);
    }
}
