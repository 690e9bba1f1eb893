//! VirtualService HTTP routes in capstan's own types: what translation needs of a route,
//! read once from the API structs when the model reads the object, with destination hosts
//! resolved and the timeout parsed. The policies (retries, fault, mirrors, headers, CORS)
//! are in [`policy`].

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_crds::ObjectKey;
use capstan_crds::networking::common::{self as api_common, StringMatchKind, parse_duration};
use capstan_crds::networking::http_policy as api_policy;
use capstan_crds::networking::virtual_service as api;

use super::{Problem, hostname};

mod policy;

pub use policy::{
    AbortError, Cors, Fault, FaultAbort, FaultDelay, Fraction, HeaderOps, Headers, Mirror, Retries,
    RetryPolicy,
};

/// One entry of a VirtualService's `http` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    /// Names the Envoy route; `None` gives it a name from its position.
    pub name: Option<String>,
    /// OR-ed; none matches every request.
    pub matches: Vec<HttpMatch>,
    pub action: Action,
    /// Applied to forwarded requests only.
    pub rewrite: Rewrite,
    /// `None`: no timeout, as Istio does unless a route sets one.
    pub timeout: Option<Duration>,
    /// Applied to forwarded requests only.
    pub retries: Retries,
    pub fault: Option<Fault>,
    /// Applied to forwarded requests only.
    pub mirrors: Vec<Mirror>,
    /// On every request the route takes and its response.
    pub headers: Headers,
    pub cors: Option<Cors>,
}

impl HttpRoute {
    /// Where the route forwards to; none unless it forwards.
    pub fn destinations(&self) -> &[Destination] {
        match &self.action {
            Action::Forward(destinations) => destinations,
            _ => &[],
        }
    }

    /// Every host the route sends requests to: its destinations' and its mirrors'.
    pub fn destination_hosts(&self) -> impl Iterator<Item = &str> {
        let forward = self.destinations().iter().map(|d| d.host.as_str());
        forward.chain(self.mirrors.iter().map(|m| m.host.as_str()))
    }
}

/// A match condition; every field set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpMatch {
    /// Appended to the route's name.
    pub name: Option<String>,
    /// The Envoy route's own stats prefix.
    pub stat_prefix: Option<String>,
    pub uri: Option<StringMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// By name as written; header names are case-insensitive, so translation folds them.
    pub headers: BTreeMap<String, ValueMatch>,
    pub without_headers: BTreeMap<String, ValueMatch>,
    pub query_params: BTreeMap<String, ValueMatch>,
    /// The service port the request arrived for; `None`: any.
    pub port: Option<u32>,
    /// Overrides the VirtualService's gateways for this match; empty: no override.
    pub gateways: Vec<String>,
    /// The calling proxy's namespace must be this one (`sourceNamespace`); sidecars of
    /// other namespaces skip the match.
    pub source_namespace: Option<String>,
    /// The calling workload's labels must include these (`sourceLabels`); empty: any.
    pub source_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2 syntax; the whole value must match.
    Regex(String),
}

/// A header or query parameter condition. Istio gives the empty match `{}` its own meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The header or parameter is there, whatever its value.
    Present,
    Value(StringMatch),
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send it to these destinations, split by weight.
    Forward(Vec<Destination>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
    /// Hand the decision to another VirtualService; only gateways do that.
    Delegate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Fully qualified.
    pub host: String,
    pub subset: Option<String>,
    /// `None`: the service's only port, else the port the request arrived for.
    pub port: Option<u32>,
    /// As written (negative counts as 0); a split drops zero weights.
    pub weight: u32,
    /// Header operations when the request goes to this destination.
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    /// `derivePort: FROM_REQUEST_PORT`: the port the request came in on.
    pub port_from_request: bool,
    pub path: Option<RedirectPath>,
    /// As written; 0 is the default (301).
    pub code: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectPath {
    /// The whole path.
    Replace(String),
    /// The part the route's URI prefix matched.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u32,
    /// `string`, or `bytes` decoded (validation checked it is base64).
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the matched path prefix.
    pub uri: Option<String>,
    /// `uriRegexRewrite`: the RE2 pattern and its substitution; wins over `uri`.
    pub uri_regex: Option<(String, String)>,
    pub authority: Option<String>,
}

/// The routes of a VirtualService `key`, and what in them cannot be honoured. Destination
/// hosts resolve in the VirtualService's namespace.
pub fn http_routes(
    routes: &[api::HttpRoute],
    key: &ObjectKey,
    domain_suffix: &str,
) -> (Vec<HttpRoute>, Vec<Problem>) {
    let mut problems = Vec::new();
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let timeout = route.timeout.as_ref().and_then(|text| {
                let parsed = parse_duration(text);
                if parsed.is_none() {
                    // Validation rejects this, so only an unvalidated object gets here.
                    problems.push(Problem {
                        object: key.clone(),
                        field: format!("spec.http[{i}].timeout"),
                        message: format!("{text:?} is not a duration; no timeout applied"),
                    });
                }
                parsed
            });
            let mut policies = policy::PolicyReader {
                key,
                field: format!("spec.http[{i}]"),
                problems: &mut problems,
            };
            let retries = policies.retries(route.retries.as_ref());
            let fault = policies.fault(route.fault.as_ref());
            let mirrors = policies.mirrors(route, &key.namespace, domain_suffix);
            let cors = policies.cors(route.cors_policy.as_ref());
            HttpRoute {
                name: non_empty(&route.name),
                matches: route.matches.iter().map(http_match).collect(),
                action: action(route, &key.namespace, domain_suffix),
                rewrite: route.rewrite.as_ref().map(rewrite).unwrap_or_default(),
                timeout,
                retries,
                fault,
                mirrors,
                headers: policy::headers(route.headers.as_ref()),
                cors,
            }
        })
        .collect();
    (routes, problems)
}

fn http_match(m: &api::HttpMatchRequest) -> HttpMatch {
    // Validation rejects `{}` (and more than one criterion) outside the maps; were one to
    // get through, it constrains nothing.
    let single = |m: &Option<api_common::StringMatch>| m.as_ref().and_then(string_match);
    // Anything but a single criterion is "present" in a map, as `{}` means there.
    let map = |m: &BTreeMap<String, api_common::StringMatch>| {
        m.iter()
            .map(|(name, value)| {
                let value = string_match(value).map_or(ValueMatch::Present, ValueMatch::Value);
                (name.clone(), value)
            })
            .collect()
    };
    HttpMatch {
        name: non_empty(&m.name),
        stat_prefix: non_empty(&m.stat_prefix),
        uri: single(&m.uri),
        ignore_uri_case: m.ignore_uri_case,
        scheme: single(&m.scheme),
        method: single(&m.method),
        authority: single(&m.authority),
        headers: map(&m.headers),
        without_headers: map(&m.without_headers),
        query_params: map(&m.query_params),
        port: (m.port != 0).then_some(m.port),
        gateways: m.gateways.clone(),
        source_namespace: non_empty(&m.source_namespace),
        source_labels: m.source_labels.clone(),
    }
}

fn string_match(m: &api_common::StringMatch) -> Option<StringMatch> {
    Some(match m.kind()? {
        StringMatchKind::Exact(v) => StringMatch::Exact(v.to_string()),
        StringMatchKind::Prefix(v) => StringMatch::Prefix(v.to_string()),
        StringMatchKind::Regex(v) => StringMatch::Regex(v.to_string()),
    })
}

/// Validation allows one action; should several be set, this order decides, as it always
/// has.
fn action(route: &api::HttpRoute, namespace: &str, domain_suffix: &str) -> Action {
    if let Some(r) = &route.redirect {
        return Action::Redirect(redirect(r));
    }
    if let Some(r) = &route.direct_response {
        return Action::DirectResponse(DirectResponse {
            status: r.status,
            body: r.body.as_ref().and_then(body_bytes),
        });
    }
    if route.delegate.is_some() {
        return Action::Delegate;
    }
    let destinations = route
        .route
        .iter()
        .map(|d| Destination {
            host: hostname::resolve(&d.destination.host, namespace, domain_suffix),
            subset: non_empty(&d.destination.subset),
            port: d.destination.port.as_ref().map(|p| p.number),
            weight: u32::try_from(d.weight).unwrap_or(0),
            headers: policy::headers(d.headers.as_ref()),
        })
        .collect();
    Action::Forward(destinations)
}

fn body_bytes(body: &api_policy::HttpBody) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match (&body.string, &body.bytes) {
        (Some(text), _) => Some(text.clone().into_bytes()),
        (None, Some(bytes)) => base64::engine::general_purpose::STANDARD.decode(bytes).ok(),
        (None, None) => None,
    }
}

fn redirect(r: &api_policy::HttpRedirect) -> Redirect {
    let path = if !r.uri.is_empty() {
        Some(RedirectPath::Replace(r.uri.clone()))
    } else {
        non_empty(&r.prefix_rewrite).map(RedirectPath::Prefix)
    };
    Redirect {
        scheme: non_empty(&r.scheme),
        authority: non_empty(&r.authority),
        port: r.port,
        port_from_request: r.derive_port
            == Some(api_policy::RedirectPortSelection::FromRequestPort),
        path,
        code: r.redirect_code,
    }
}

fn rewrite(r: &api_policy::HttpRewrite) -> Rewrite {
    Rewrite {
        uri: non_empty(&r.uri),
        uri_regex: r
            .uri_regex_rewrite
            .as_ref()
            .map(|re| (re.pattern.clone(), re.rewrite.clone())),
        authority: non_empty(&r.authority),
    }
}

/// The API leaves a string field empty for "not set".
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests;
