use std::collections::BTreeMap;
use std::time::Duration;

use capstan_crds::{IstioObject, ObjectKey};

use super::*;
use crate::index::{Index, IstioRecord, Record, Tag};
use crate::model::Mesh;

/// The `http` list of a VirtualService in `bookinfo`, as YAML; not validated, so tests can
/// feed what validation would reject.
fn parse(http: &str) -> (Vec<api::HttpRoute>, ObjectKey) {
    let object = object(http);
    let key = object.key();
    match object {
        IstioObject::VirtualService(vs) => (vs.spec.http, key),
        other => panic!("not a VirtualService: {other:?}"),
    }
}

fn object(http: &str) -> IstioObject {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
{http}"
    );
    capstan_crds::parse_single("t.yaml", &yaml)
        .expect("parses")
        .object
}

/// The converted routes; the conversion must find no problems.
fn routes(http: &str) -> Vec<HttpRoute> {
    let (api, key) = parse(http);
    let (routes, problems) = http_routes(&api, &key, "cluster.local");
    assert!(problems.is_empty(), "{problems:?}");
    routes
}

fn only_match(http: &str) -> HttpMatch {
    let mut routes = routes(http);
    assert_eq!(routes.len(), 1);
    let mut matches = std::mem::take(&mut routes[0].matches);
    assert_eq!(matches.len(), 1);
    matches.remove(0)
}

fn value(m: StringMatch) -> ValueMatch {
    ValueMatch::Value(m)
}

#[test]
fn uri_and_pseudo_header_matches() {
    let m = only_match(
        "  - match:
    - name: v2
      uri: {prefix: /reviews}
      ignoreUriCase: true
      scheme: {exact: https}
      method: {regex: 'GET|HEAD'}
      authority: {prefix: reviews}
      port: 9080
      gateways: [mesh]
      statPrefix: reviews_v2
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(
        m,
        HttpMatch {
            name: Some("v2".into()),
            stat_prefix: Some("reviews_v2".into()),
            uri: Some(StringMatch::Prefix("/reviews".into())),
            ignore_uri_case: true,
            scheme: Some(StringMatch::Exact("https".into())),
            method: Some(StringMatch::Regex("GET|HEAD".into())),
            authority: Some(StringMatch::Prefix("reviews".into())),
            port: Some(9080),
            gateways: vec!["mesh".into()],
            ..HttpMatch::default()
        }
    );
    let exact = only_match(
        "  - match: [{uri: {exact: /a}}]
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(exact.uri, Some(StringMatch::Exact("/a".into())));
    assert_eq!(exact.name, None);
    assert_eq!(exact.port, None, "port 0 is any port");
}

#[test]
fn empty_map_matches_mean_present() {
    let m = only_match(
        "  - match:
    - headers:
        end-user: {exact: jason}
        x-canary: {}
      withoutHeaders:
        x-debug: {}
        x-tier: {prefix: free}
      queryParams:
        v: {regex: '[0-9]+'}
        preview: {}
    route: [{destination: {host: reviews}}]
",
    );
    let map = |entries: [(&str, ValueMatch); 2]| -> BTreeMap<String, ValueMatch> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    assert_eq!(
        m.headers,
        map([
            ("end-user", value(StringMatch::Exact("jason".into()))),
            ("x-canary", ValueMatch::Present),
        ])
    );
    assert_eq!(
        m.without_headers,
        map([
            ("x-debug", ValueMatch::Present),
            ("x-tier", value(StringMatch::Prefix("free".into()))),
        ])
    );
    assert_eq!(
        m.query_params,
        map([
            ("preview", ValueMatch::Present),
            ("v", value(StringMatch::Regex("[0-9]+".into()))),
        ])
    );
}

#[test]
fn source_matches_are_read() {
    let labels = only_match(
        "  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(
        labels.source_labels,
        BTreeMap::from([("app".to_string(), "productpage".to_string())])
    );
    assert_eq!(labels.source_namespace, None);
    let namespace = only_match(
        "  - match: [{sourceNamespace: frontend}]
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(namespace.source_namespace.as_deref(), Some("frontend"));
    assert!(namespace.source_labels.is_empty());
    let neither = only_match(
        "  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: reviews}}]
",
    );
    assert!(neither.source_labels.is_empty() && neither.source_namespace.is_none());
}

#[test]
fn destinations_resolve_in_the_virtual_services_namespace() {
    let routes = routes(
        "  - name: split
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: ratings.other, port: {number: 9090}}
      weight: 20
    - destination: {host: Details.Other.svc.cluster.local}
",
    );
    assert_eq!(routes[0].name.as_deref(), Some("split"));
    assert_eq!(
        routes[0].action,
        Action::Forward(vec![
            Destination {
                host: "reviews.bookinfo.svc.cluster.local".into(),
                subset: Some("v1".into()),
                port: None,
                weight: 80,
                headers: Headers::default(),
            },
            // A name with a dot is taken as written, as Istio does.
            Destination {
                host: "ratings.other".into(),
                subset: None,
                port: Some(9090),
                weight: 20,
                headers: Headers::default(),
            },
            Destination {
                host: "details.other.svc.cluster.local".into(),
                subset: None,
                port: None,
                weight: 0,
                headers: Headers::default(),
            },
        ])
    );
    assert_eq!(routes[0].destinations().len(), 3);
}

#[test]
fn redirect_direct_response_and_delegate() {
    let routes = routes(
        "  - redirect: {uri: /new, authority: example.com, scheme: https, port: 8443, redirectCode: 302}
  - redirect: {prefixRewrite: /v2}
  - directResponse: {status: 418, body: {string: teapot}}
  - directResponse: {status: 204}
  - delegate: {name: reviews-routes}
",
    );
    let actions: Vec<&Action> = routes.iter().map(|r| &r.action).collect();
    assert_eq!(
        actions,
        vec![
            &Action::Redirect(Redirect {
                scheme: Some("https".into()),
                authority: Some("example.com".into()),
                port: Some(8443),
                port_from_request: false,
                path: Some(RedirectPath::Replace("/new".into())),
                code: 302,
            }),
            &Action::Redirect(Redirect {
                scheme: None,
                authority: None,
                port: None,
                port_from_request: false,
                path: Some(RedirectPath::Prefix("/v2".into())),
                code: 0,
            }),
            &Action::DirectResponse(DirectResponse {
                status: 418,
                body: Some("teapot".into()),
            }),
            &Action::DirectResponse(DirectResponse {
                status: 204,
                body: None,
            }),
            &Action::Delegate,
        ]
    );
    assert!(routes.iter().all(|r| r.destinations().is_empty()));
}

#[test]
fn rewrite_and_timeout() {
    let routes = routes(
        "  - rewrite: {uri: /v1, authority: reviews.internal}
    timeout: 1.5s
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
  - rewrite: {uriRegexRewrite: {match: '^/v1/(.*)', rewrite: '/\\1'}}
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(
        routes[2].rewrite.uri_regex,
        Some(("^/v1/(.*)".to_string(), r"/\1".to_string()))
    );
    assert_eq!(
        routes[0].rewrite,
        Rewrite {
            uri: Some("/v1".into()),
            uri_regex: None,
            authority: Some("reviews.internal".into()),
        }
    );
    assert_eq!(routes[0].timeout, Some(Duration::from_millis(1500)));
    assert_eq!(routes[1].rewrite, Rewrite::default());
    assert_eq!(routes[1].timeout, None);
}

const BAD_TIMEOUT: &str = "  - route: [{destination: {host: reviews}}]
  - timeout: soon
    route: [{destination: {host: reviews}}]
";

#[test]
fn an_invalid_timeout_is_a_problem_and_no_timeout() {
    let (api, key) = parse(BAD_TIMEOUT);
    let (routes, problems) = http_routes(&api, &key, "cluster.local");
    assert_eq!(routes.len(), 2, "the route is still served");
    assert_eq!(routes[1].timeout, None);
    assert_eq!(
        problems,
        vec![Problem {
            object: key,
            field: "spec.http[1].timeout".into(),
            message: "\"soon\" is not a duration; no timeout applied".into(),
        }]
    );
}

#[test]
fn the_mesh_reports_an_invalid_timeout_until_it_is_fixed() {
    let tags: Vec<Tag> = capstan_crds::Kind::ALL
        .iter()
        .map(|k| Tag::Istio(*k))
        .collect();
    // The index holds what the source gives it; this object skipped validation.
    let load = |index: &mut Index, http: &str| {
        index.reset(&tags, vec![Record::Istio(IstioRecord::valid(object(http)))]);
    };
    let mut index = Index::new();
    load(&mut index, BAD_TIMEOUT);
    let (mut mesh, problems) = Mesh::build(&index, "cluster.local");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, vec!["spec.http[1].timeout"]);
    let key = problems[0].object.clone();
    assert_eq!(mesh.virtual_services[&key].http.len(), 2);

    load(&mut index, "  - route: [{destination: {host: reviews}}]\n");
    mesh.update(&index, &crate::model::everything(&index));
    assert_eq!(mesh.problems().filter(|p| p.object == key).count(), 0);
}

/// The routes and the problems found converting them.
fn routes_with_problems(http: &str) -> (Vec<HttpRoute>, Vec<String>) {
    let (api, key) = parse(http);
    let (routes, problems) = http_routes(&api, &key, "cluster.local");
    (routes, problems.iter().map(|p| p.field.clone()).collect())
}

#[test]
fn retries_default_disabled_or_set() {
    let routes = routes(
        "  - route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 0, retryOn: 5xx}
  - route: [{destination: {host: reviews}}]
    retries:
      attempts: 3
      perTryTimeout: 250ms
      retryOn: 5xx,503
      retryRemoteLocalities: true
",
    );
    assert_eq!(routes[0].retries, Retries::Default);
    assert_eq!(routes[1].retries, Retries::Disabled);
    assert_eq!(
        routes[2].retries,
        Retries::Policy(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(250)),
            retry_on: Some("5xx,503".into()),
            retry_remote_localities: true,
            retry_ignore_previous_hosts: None,
            backoff: None,
        })
    );
}

#[test]
fn fault_percentages_as_istio_reads_them() {
    let routes = routes(
        "  - route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 1.5s, percent: 30}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.5}}
  - route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {httpStatus: 503}
",
    );
    assert_eq!(
        routes[0].fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed: Duration::from_millis(1500),
                percentage: Fraction::PerHundred(30),
            }),
            abort: Some(FaultAbort {
                error: AbortError::GrpcStatus(14),
                percentage: Some(Fraction::PerMillion(5_000)),
            }),
        })
    );
    assert_eq!(
        routes[1].fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed: Duration::from_secs(2),
                percentage: Fraction::PerMillion(125_000),
            }),
            abort: Some(FaultAbort {
                error: AbortError::HttpStatus(503),
                percentage: None,
            }),
        })
    );
}

#[test]
fn faults_istio_cannot_apply_are_problems_and_left_out() {
    let (routes, problems) = routes_with_problems(
        "  - route: [{destination: {host: reviews}}]
    fault:
      delay: {exponentialDelay: 1s, percentage: {value: 10}}
      abort: {http2Error: REFUSED_STREAM}
  - route: [{destination: {host: reviews}}]
    fault:
      abort: {grpcStatus: NOT_A_STATUS}
      delay: {fixedDelay: 1s}
",
    );
    assert_eq!(routes[0].fault, None);
    // The delay stays: without a percentage or percent, at 0%, as istiod builds it.
    assert_eq!(
        routes[1].fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed: Duration::from_secs(1),
                percentage: Fraction::PerHundred(0),
            }),
            abort: None,
        })
    );
    assert_eq!(
        problems,
        [
            "spec.http[0].fault.delay.exponentialDelay",
            "spec.http[0].fault.abort.http2Error",
            "spec.http[1].fault.abort.grpcStatus",
        ]
    );
}

#[test]
fn mirrors_with_their_percentages_and_zero_left_out() {
    let routes = routes(
        "  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews, subset: v2}
  - route: [{destination: {host: reviews}}]
    mirror: {host: ratings.other, port: {number: 9090}}
    mirrorPercent: 40
    mirrorPercentage: {value: 2.5}
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
    mirrorPercent: 40
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
    mirrorPercentage: {value: 0}
  - route: [{destination: {host: reviews}}]
    mirrors:
    - destination: {host: reviews, subset: v3}
    - destination: {host: reviews, subset: v2}
      percentage: {value: 50}
    - destination: {host: reviews, subset: v1}
      percentage: {value: 0}
",
    );
    let mirror = |host: &str, subset: Option<&str>, port, percentage| Mirror {
        host: host.into(),
        subset: subset.map(Into::into),
        port,
        percentage,
    };
    let reviews = "reviews.bookinfo.svc.cluster.local";
    assert_eq!(
        routes[0].mirrors,
        [mirror(reviews, Some("v2"), None, Fraction::ALL)]
    );
    assert_eq!(
        routes[1].mirrors,
        [mirror(
            "ratings.other",
            None,
            Some(9090),
            Fraction::PerMillion(25_000)
        )]
    );
    assert_eq!(
        routes[2].mirrors,
        [mirror(reviews, None, None, Fraction::PerHundred(40))]
    );
    assert_eq!(routes[3].mirrors, []);
    assert_eq!(
        routes[4].mirrors,
        [
            mirror(reviews, Some("v3"), None, Fraction::ALL),
            mirror(reviews, Some("v2"), None, Fraction::PerMillion(500_000)),
        ]
    );
    let hosts: Vec<&str> = routes[1].destination_hosts().collect();
    assert_eq!(hosts, [reviews, "ratings.other"]);
}

#[test]
fn headers_on_the_route_and_its_destinations() {
    let routes = routes(
        "  - route:
    - destination: {host: reviews}
      headers: {response: {remove: [x-b]}}
    headers:
      request: {set: {x-s: '1'}, add: {x-a: '2'}, remove: [x-r]}
",
    );
    let route = &routes[0];
    assert_eq!(route.headers.request.set["x-s"], "1");
    assert_eq!(route.headers.request.add["x-a"], "2");
    assert_eq!(route.headers.request.remove, ["x-r"]);
    assert!(route.headers.response.is_empty());
    let destination = &route.destinations()[0];
    assert_eq!(destination.headers.response.remove, ["x-b"]);
    assert!(destination.headers.request.is_empty());
}

#[test]
fn cors_origins_methods_and_preflights() {
    let routes = routes(
        "  - route: [{destination: {host: reviews}}]
    corsPolicy:
      allowOrigins: [{exact: 'https://a.example'}, {regex: 'https://.*'}]
      allowOrigin: ['https://ignored.example']
      allowMethods: [GET]
      maxAge: 24h
      allowCredentials: false
      unmatchedPreflights: IGNORE
  - route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigin: ['https://old.example']}
",
    );
    assert_eq!(
        routes[0].cors,
        Some(Cors {
            allow_origins: vec![
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Regex("https://.*".into()),
            ],
            allow_methods: vec!["GET".into()],
            allow_headers: vec![],
            expose_headers: vec![],
            max_age: Some(Duration::from_secs(86_400)),
            allow_credentials: Some(false),
            ignore_unmatched_preflights: true,
        })
    );
    let old = routes[1].cors.as_ref().expect("cors");
    assert_eq!(
        old.allow_origins,
        [StringMatch::Exact("https://old.example".into())]
    );
    assert!(!old.ignore_unmatched_preflights);
}

#[test]
fn unparsable_policy_durations_are_problems_and_ignored() {
    let (routes, problems) = routes_with_problems(
        "  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2, perTryTimeout: soon}
    corsPolicy: {maxAge: forever}
",
    );
    let Retries::Policy(policy) = &routes[0].retries else {
        panic!("no policy: {:?}", routes[0].retries);
    };
    assert_eq!(policy.per_try_timeout, None);
    assert_eq!(routes[0].cors.as_ref().and_then(|c| c.max_age), None);
    assert_eq!(
        problems,
        [
            "spec.http[0].retries.perTryTimeout",
            "spec.http[0].corsPolicy.maxAge"
        ]
    );
}
