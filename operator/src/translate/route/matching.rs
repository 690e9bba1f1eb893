//! VirtualService `match` blocks as Envoy route matches.

use capstan_crds::networking::common::{StringMatch, StringMatchKind};
use capstan_crds::networking::virtual_service::HttpMatchRequest;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, QueryParameterMatcher, RouteMatch};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;

/// The Envoy match for one `HTTPMatchRequest`; `None` matches every request.
pub fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return prefix("/");
    };
    let mut out = match m.uri.as_ref().and_then(StringMatch::kind) {
        Some(StringMatchKind::Exact(path)) => path_match(PathSpecifier::Path(path.to_string())),
        Some(StringMatchKind::Prefix(p)) => path_match(PathSpecifier::Prefix(p.to_string())),
        Some(StringMatchKind::Regex(r)) => path_match(PathSpecifier::SafeRegex(regex(r))),
        None => prefix("/"),
    };
    if m.ignore_uri_case {
        out.case_sensitive = Some(BoolValue { value: false });
    }
    let pseudo = [
        (":scheme", &m.scheme),
        (":method", &m.method),
        (":authority", &m.authority),
    ];
    for (name, value) in pseudo {
        if let Some(value) = value {
            out.headers.push(header(name, value, false));
        }
    }
    for (name, value) in &m.headers {
        out.headers
            .push(header(&name.to_ascii_lowercase(), value, false));
    }
    for (name, value) in &m.without_headers {
        out.headers
            .push(header(&name.to_ascii_lowercase(), value, true));
    }
    for (name, value) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(value) {
                Some(matcher) => QueryParameterMatchSpecifier::StringMatch(matcher),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        });
    }
    out
}

fn prefix(p: &str) -> RouteMatch {
    path_match(PathSpecifier::Prefix(p.to_string()))
}

fn path_match(path: PathSpecifier) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(path),
        ..Default::default()
    }
}

/// A header condition; an empty match (`{}`) means "present".
fn header(name: &str, value: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match string_matcher(value) {
            Some(matcher) => HeaderMatchSpecifier::StringMatch(matcher),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

fn string_matcher(value: &StringMatch) -> Option<StringMatcher> {
    let pattern = match value.kind()? {
        StringMatchKind::Exact(v) => MatchPattern::Exact(v.to_string()),
        StringMatchKind::Prefix(v) => MatchPattern::Prefix(v.to_string()),
        StringMatchKind::Regex(v) => MatchPattern::SafeRegex(regex(v)),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}
