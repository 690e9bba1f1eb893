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
    route: [{destination: {host: reviews}}]
",
    );
    assert_eq!(
        m,
        HttpMatch {
            name: Some("v2".into()),
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
fn source_matches_are_flagged() {
    let flagged = |http: &str| only_match(http).by_source;
    assert!(flagged(
        "  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews}}]
"
    ));
    assert!(flagged(
        "  - match: [{sourceNamespace: frontend}]
    route: [{destination: {host: reviews}}]
"
    ));
    assert!(!flagged(
        "  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: reviews}}]
"
    ));
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
            },
            // A name with a dot is taken as written, as Istio does.
            Destination {
                host: "ratings.other".into(),
                subset: None,
                port: Some(9090),
                weight: 20,
            },
            Destination {
                host: "details.other.svc.cluster.local".into(),
                subset: None,
                port: None,
                weight: 0,
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
                path: Some(RedirectPath::Replace("/new".into())),
                code: 302,
            }),
            &Action::Redirect(Redirect {
                scheme: None,
                authority: None,
                port: None,
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
",
    );
    assert_eq!(
        routes[0].rewrite,
        Rewrite {
            uri: Some("/v1".into()),
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
