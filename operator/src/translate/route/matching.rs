//! VirtualService `match` blocks as Envoy route matches.

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, QueryParameterMatcher, RouteMatch};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::model::routing::{HttpMatch, StringMatch, ValueMatch};

/// The Envoy match for one `HTTPMatchRequest`; `None` matches every request.
pub fn route_match(m: Option<&HttpMatch>) -> RouteMatch {
    let Some(m) = m else {
        return prefix("/");
    };
    let mut out = match &m.uri {
        Some(StringMatch::Exact(path)) => path_match(PathSpecifier::Path(path.clone())),
        Some(StringMatch::Prefix(p)) => path_match(PathSpecifier::Prefix(p.clone())),
        Some(StringMatch::Regex(r)) => path_match(PathSpecifier::SafeRegex(regex(r))),
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
            out.headers.push(header(
                name,
                HeaderMatchSpecifier::StringMatch(string_matcher(value)),
                false,
            ));
        }
    }
    for (name, value) in &m.headers {
        out.headers.push(header(
            &name.to_ascii_lowercase(),
            header_specifier(value),
            false,
        ));
    }
    for (name, value) in &m.without_headers {
        out.headers.push(header(
            &name.to_ascii_lowercase(),
            header_specifier(value),
            true,
        ));
    }
    for (name, value) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match value {
                ValueMatch::Value(v) => {
                    QueryParameterMatchSpecifier::StringMatch(string_matcher(v))
                }
                ValueMatch::Present => QueryParameterMatchSpecifier::PresentMatch(true),
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

/// A header condition; `Present` is Envoy's present match.
fn header_specifier(value: &ValueMatch) -> HeaderMatchSpecifier {
    match value {
        ValueMatch::Value(v) => HeaderMatchSpecifier::StringMatch(string_matcher(v)),
        ValueMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
    }
}

fn header(name: &str, specifier: HeaderMatchSpecifier, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

pub(super) fn string_matcher(value: &StringMatch) -> StringMatcher {
    let pattern = match value {
        StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => MatchPattern::SafeRegex(regex(v)),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}
