//! Delegate VirtualServices: a root's `http` route with `delegate` hands its requests to the
//! routes of another VirtualService (one without hosts), each under the root's match and its
//! own. The model expands them when it reads the root, so translation never sees a delegate;
//! as in Istio, only one level is followed and a delegate's match that contradicts the root's
//! is dropped (and reported). As istiod's `mergeHTTPRoute`, what a delegate route leaves
//! unset (rewrite, timeout, retries, fault, mirrors, headers, CORS) it takes from the root's
//! route, and its matches keep the root's source conditions.

use capstan_crds::networking::virtual_service as api;
use capstan_crds::{IstioObject, Kind, ObjectKey};

use super::Problem;
use super::routing::{self, Action, HttpMatch, HttpRoute, Retries, Rewrite, StringMatch};
use super::service::ExportTo;
use crate::index::Index;

/// The VirtualService a root's route delegates to.
pub fn target(delegate: &api::Delegate, root: &ObjectKey) -> ObjectKey {
    ObjectKey {
        kind: Kind::VirtualService,
        namespace: if delegate.namespace.is_empty() {
            root.namespace.clone()
        } else {
            delegate.namespace.clone()
        },
        name: delegate.name.clone(),
    }
}

/// `http` of root `key` with every delegating route replaced by its delegate's routes; the
/// delegates read are added to `delegates`.
pub fn expand(
    index: &Index,
    key: &ObjectKey,
    api_routes: &[api::HttpRoute],
    routes: Vec<HttpRoute>,
    domain_suffix: &str,
    delegates: &mut Vec<ObjectKey>,
    problems: &mut Vec<Problem>,
) -> Vec<HttpRoute> {
    let mut out = Vec::new();
    for (i, (api_route, route)) in api_routes.iter().zip(routes).enumerate() {
        let Some(delegate) = &api_route.delegate else {
            out.push(route);
            continue;
        };
        let field = format!("spec.http[{i}].delegate");
        let target = target(delegate, key);
        delegates.push(target.clone());
        let report = |message: String| Problem {
            object: key.clone(),
            field: field.clone(),
            message,
        };
        let Some(IstioObject::VirtualService(child)) =
            index.istio(&target).and_then(|r| r.object.as_deref())
        else {
            problems.push(report(format!(
                "no VirtualService {}/{}; these requests are not routed",
                target.namespace, target.name
            )));
            continue;
        };
        if !child.spec.hosts.is_empty() {
            problems.push(report(format!(
                "{}/{} has hosts, and a delegate must not; not followed",
                target.namespace, target.name
            )));
            continue;
        }
        // As istiod: a delegate serves the roots of the namespaces it is exported to.
        let export_to = ExportTo::parse(&child.spec.export_to, &target.namespace);
        if !export_to.includes(Some(&key.namespace)) {
            problems.push(report(format!(
                "{}/{} is not exported to namespace {}; not followed",
                target.namespace, target.name, key.namespace
            )));
            continue;
        }
        let (child_routes, child_problems) =
            routing::http_routes(&child.spec.http, &target, domain_suffix);
        problems.extend(child_problems);
        for (j, mut child_route) in child_routes.into_iter().enumerate() {
            if matches!(child_route.action, Action::Delegate) {
                problems.push(report(format!(
                    "{}/{} http[{j}] delegates again; only one level is followed",
                    target.namespace, target.name
                )));
                continue;
            }
            let merged = merged_matches(&route.matches, &child_route.matches);
            if merged.is_empty() {
                problems.push(report(format!(
                    "{}/{} http[{j}]: its match contradicts the root's; not served",
                    target.namespace, target.name
                )));
                continue;
            }
            child_route.matches = merged;
            child_route.name = Some(match (&route.name, &child_route.name) {
                (Some(root), Some(own)) => format!("{root}-{own}"),
                (None, Some(own)) => own.clone(),
                (root, None) => format!(
                    "{}.{}.http[{j}]",
                    root.clone().unwrap_or_else(|| format!("http[{i}]")),
                    target.name
                ),
            });
            inherit(&route, &mut child_route);
            out.push(child_route);
        }
    }
    out
}

/// What `child` leaves unset, from the root's route (istiod's `mergeHTTPRoute`).
fn inherit(root: &HttpRoute, child: &mut HttpRoute) {
    if child.rewrite == Rewrite::default() {
        child.rewrite = root.rewrite.clone();
    }
    if child.timeout.is_none() {
        child.timeout = root.timeout;
    }
    if child.retries == Retries::Default {
        child.retries = root.retries.clone();
    }
    if child.fault.is_none() {
        child.fault = root.fault.clone();
    }
    if child.mirrors.is_empty() {
        child.mirrors = root.mirrors.clone();
    }
    if child.headers.is_empty() {
        child.headers = root.headers.clone();
    }
    if child.cors.is_none() {
        child.cors = root.cors.clone();
    }
}

/// Every root match combined with every delegate match (either side empty matches all); the
/// contradictory pairs are left out, so an empty result with both sides set means none hold.
fn merged_matches(root: &[HttpMatch], child: &[HttpMatch]) -> Vec<HttpMatch> {
    match (root.is_empty(), child.is_empty()) {
        (true, _) => child.to_vec(),
        (false, true) => root.to_vec(),
        (false, false) => root
            .iter()
            .flat_map(|r| child.iter().filter_map(move |c| merge(r, c)))
            .collect(),
    }
}

/// A request matching both `root` and `child`; `None` when no request can.
fn merge(root: &HttpMatch, child: &HttpMatch) -> Option<HttpMatch> {
    let mut out = child.clone();
    out.uri = merge_uri(root.uri.as_ref(), child.uri.as_ref())?;
    out.ignore_uri_case = root.ignore_uri_case || child.ignore_uri_case;
    out.scheme = same(&root.scheme, &child.scheme)?;
    out.method = same(&root.method, &child.method)?;
    out.authority = same(&root.authority, &child.authority)?;
    out.port = same(&root.port, &child.port)?;
    for (map, root_map) in [
        (&mut out.headers, &root.headers),
        (&mut out.without_headers, &root.without_headers),
        (&mut out.query_params, &root.query_params),
    ] {
        for (name, value) in root_map {
            match map.get(name) {
                Some(existing) if existing != value => return None,
                _ => {
                    map.insert(name.clone(), value.clone());
                }
            }
        }
    }
    // The root's gateways, of which the delegate may name some (istiod's `hasConflict`).
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    } else if !root.gateways.is_empty() && !out.gateways.iter().all(|g| root.gateways.contains(g)) {
        return None;
    }
    // The root's callers, which the delegate may narrow.
    out.source_namespace = same(&root.source_namespace, &child.source_namespace)?;
    for (name, value) in &root.source_labels {
        match out.source_labels.get(name) {
            Some(existing) if existing != value => return None,
            _ => {
                out.source_labels.insert(name.clone(), value.clone());
            }
        }
    }
    out.name = match (&root.name, &child.name) {
        (Some(r), Some(c)) => Some(format!("{r}-{c}")),
        (r, c) => c.clone().or_else(|| r.clone()),
    };
    if out.stat_prefix.is_none() {
        out.stat_prefix = root.stat_prefix.clone();
    }
    Some(out)
}

/// Both set and different: no request matches both.
fn same<T: Clone + PartialEq>(root: &Option<T>, child: &Option<T>) -> Option<Option<T>> {
    match (root, child) {
        (Some(r), Some(c)) if r != c => None,
        (Some(r), _) => Some(Some(r.clone())),
        (None, c) => Some(c.clone()),
    }
}

/// The delegate's URI must narrow the root's: within its prefix, or equal to its exact path.
fn merge_uri(
    root: Option<&StringMatch>,
    child: Option<&StringMatch>,
) -> Option<Option<StringMatch>> {
    match (root, child) {
        (None, c) => Some(c.cloned()),
        (Some(r), None) => Some(Some(r.clone())),
        (
            Some(StringMatch::Prefix(p)),
            Some(c @ (StringMatch::Prefix(q) | StringMatch::Exact(q))),
        ) if q.starts_with(p.as_str()) => Some(Some(c.clone())),
        (Some(r), Some(c)) if r == c => Some(Some(c.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::routing::ValueMatch;

    fn uri_prefix(p: &str) -> HttpMatch {
        HttpMatch {
            uri: Some(StringMatch::Prefix(p.into())),
            ..HttpMatch::default()
        }
    }

    #[test]
    fn a_delegate_match_narrows_the_root_or_is_dropped() {
        let root = [uri_prefix("/reviews")];
        let mut jason = uri_prefix("/reviews/v2");
        jason.headers.insert(
            "end-user".into(),
            ValueMatch::Value(StringMatch::Exact("jason".into())),
        );
        let outside = uri_prefix("/ratings");
        let merged = merged_matches(&root, &[jason.clone(), outside]);
        assert_eq!(merged, vec![jason], "/ratings is outside /reviews");
        assert_eq!(merged_matches(&root, &[]), root.to_vec());
        let exact = HttpMatch {
            uri: Some(StringMatch::Exact("/reviews/1".into())),
            ..HttpMatch::default()
        };
        assert_eq!(
            merged_matches(&root, std::slice::from_ref(&exact)),
            vec![exact]
        );
    }

    #[test]
    fn conflicting_headers_methods_and_ports_do_not_merge() {
        let mut root = HttpMatch {
            method: Some(StringMatch::Exact("GET".into())),
            port: Some(80),
            ..HttpMatch::default()
        };
        root.headers.insert("x-team".into(), ValueMatch::Present);
        let post = HttpMatch {
            method: Some(StringMatch::Exact("POST".into())),
            ..HttpMatch::default()
        };
        assert_eq!(merge(&root, &post), None);
        let other_port = HttpMatch {
            port: Some(8080),
            ..HttpMatch::default()
        };
        assert_eq!(merge(&root, &other_port), None);
        let mut other_value = HttpMatch::default();
        other_value.headers.insert(
            "x-team".into(),
            ValueMatch::Value(StringMatch::Exact("a".into())),
        );
        assert_eq!(merge(&root, &other_value), None);
        let mut extra = HttpMatch::default();
        extra
            .query_params
            .insert("debug".into(), ValueMatch::Present);
        let merged = merge(&root, &extra).expect("compatible");
        assert_eq!(merged.method, root.method);
        assert_eq!(merged.port, Some(80));
        assert!(merged.headers.contains_key("x-team"));
        assert!(merged.query_params.contains_key("debug"));
    }
}

#[cfg(test)]
mod expansion_tests {
    use std::time::Duration;

    use crate::model::routing::{Action, Retries};
    use crate::translate::test_support::{REVIEWS, mesh, mesh_and_problems};

    /// istiod's `mergeHTTPRoute`: a delegate route takes what it leaves unset from the
    /// root's route, keeps what it sets; its matches keep the root's callers and gateways,
    /// and one naming a gateway the root does not is dropped.
    #[test]
    fn delegate_routes_take_what_they_leave_unset_from_the_root() {
        let (mesh, problems) = mesh_and_problems(&format!(
            r#"{REVIEWS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: bookinfo}}
spec:
  hosts: [reviews]
  gateways: [mesh, edge]
  http:
  - name: root
    match: [{{uri: {{prefix: /reviews}}, sourceLabels: {{app: web}}, gateways: [mesh]}}]
    delegate: {{name: team, namespace: team}}
    timeout: 3s
    retries: {{attempts: 0}}
    headers: {{request: {{set: {{x-root: "1"}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team, namespace: team}}
spec:
  http:
  - name: two
    match: [{{uri: {{prefix: /reviews/2}}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
    timeout: 1s
  - match: [{{uri: {{prefix: /reviews/3}}, gateways: [edge]}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v1}}}}]
    headers: {{request: {{set: {{x-team: "1"}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: private, namespace: team}}
spec:
  exportTo: [.]
  http:
  - route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other-root, namespace: bookinfo}}
spec:
  hosts: [ratings.example.com]
  http:
  - delegate: {{name: private, namespace: team}}
"#
        ));
        let problems: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            problems,
            [
                "team/private is not exported to namespace bookinfo; not followed",
                "team/team http[1]: its match contradicts the root's; not served"
            ]
        );
        let root = mesh
            .virtual_service_for("reviews.bookinfo.svc.cluster.local")
            .expect("routed");
        let names: Vec<Option<&str>> = root.http.iter().map(|r| r.name.as_deref()).collect();
        assert_eq!(
            names,
            [Some("root-two"), Some("root.team.http[2]")],
            "the edge-only match is not within the root's gateways"
        );
        let (two, rest) = (&root.http[0], &root.http[1]);
        assert_eq!(two.timeout, Some(Duration::from_secs(1)), "its own");
        assert_eq!(rest.timeout, Some(Duration::from_secs(3)), "the root's");
        assert_eq!(
            (&two.retries, &rest.retries),
            (&Retries::Disabled, &Retries::Disabled)
        );
        assert!(two.headers.request.set.contains_key("x-root"));
        assert!(
            !rest.headers.request.set.contains_key("x-root"),
            "its own headers"
        );
        for route in &root.http {
            let m = &route.matches[0];
            assert_eq!(m.gateways, ["mesh"]);
            assert_eq!(m.source_labels.get("app").map(String::as_str), Some("web"));
        }
    }

    #[test]
    fn the_root_carries_the_delegate_routes_that_narrow_its_match() {
        let mesh = mesh(&format!(
            r#"{REVIEWS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /reviews}}}}]
    delegate: {{name: team, namespace: team}}
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team, namespace: team}}
spec:
  http:
  - match: [{{uri: {{prefix: /reviews/2}}}}]
    route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local, subset: v2}}}}]
"#
        ));
        let root = mesh
            .virtual_service_for("reviews.bookinfo.svc.cluster.local")
            .expect("routed");
        assert_eq!(root.http.len(), 2);
        let Action::Forward(destinations) = &root.http[0].action else {
            panic!("{:?}", root.http[0].action);
        };
        assert_eq!(destinations[0].subset.as_deref(), Some("v2"));
        assert_eq!(
            format!("{:?}", root.http[0].matches[0].uri),
            r#"Some(Prefix("/reviews/2"))"#
        );
    }
}
