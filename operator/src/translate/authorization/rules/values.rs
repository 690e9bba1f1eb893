//! Istio's value forms as Envoy matchers: `*`, `*suffix`, `prefix*` and exact strings, CIDR
//! blocks, ports, paths and path templates, SPIFFE ids, and the claims of an accepted JWT.

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, path_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::{and_principals, permission_of, principal_of};
/// Where RequestAuthentication's filter puts the payload of the token it accepted (without
/// one, nothing matches).
use crate::translate::authentication::{JWT_FILTER, JWT_PAYLOAD};

pub(super) fn string_matcher(pattern: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

pub(super) fn regex(pattern: &str) -> StringMatcher {
    string_matcher(
        MatchPattern::SafeRegex(RegexMatcher {
            regex: pattern.to_string(),
            ..Default::default()
        }),
        false,
    )
}

/// Istio's value forms: `*` any non-empty value, `*x` a suffix, `x*` a prefix, else exact;
/// `prefix` goes before the value (`spiffe://` for principals).
pub(super) fn istio_string(value: &str, prefix: &str) -> StringMatcher {
    if value == "*" {
        return regex(".+");
    }
    if let Some(suffix) = value.strip_prefix('*') {
        if prefix.is_empty() {
            return string_matcher(MatchPattern::Suffix(suffix.to_string()), false);
        }
        return regex(&format!("{prefix}.*{}", regex::escape(suffix)));
    }
    if let Some(start) = value.strip_suffix('*') {
        return string_matcher(MatchPattern::Prefix(format!("{prefix}{start}")), false);
    }
    string_matcher(MatchPattern::Exact(format!("{prefix}{value}")), false)
}

/// A header matcher in Istio's value forms (`*` presence; `ignore_case` for hosts).
pub(super) fn header(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    let specifier = if value == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else if let Some(suffix) = value.strip_prefix('*') {
        HeaderMatchSpecifier::StringMatch(string_matcher(
            MatchPattern::Suffix(suffix.into()),
            ignore_case,
        ))
    } else if let Some(start) = value.strip_suffix('*') {
        HeaderMatchSpecifier::StringMatch(string_matcher(
            MatchPattern::Prefix(start.into()),
            ignore_case,
        ))
    } else {
        HeaderMatchSpecifier::StringMatch(string_matcher(
            MatchPattern::Exact(value.into()),
            ignore_case,
        ))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

pub(super) fn cidr(value: &str) -> Option<CidrRange> {
    let (address, length) = match value.split_once('/') {
        Some((address, length)) => (address, length.parse().ok()?),
        None => {
            let ip: std::net::IpAddr = value.parse().ok()?;
            (value, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    address.parse::<std::net::IpAddr>().ok()?;
    Some(CidrRange {
        address_prefix: address.to_string(),
        prefix_len: Some(UInt32Value { value: length }),
    })
}

pub(super) fn destination_ip(value: &str) -> Option<Permission> {
    Some(permission_of(permission::Rule::DestinationIp(cidr(value)?)))
}

pub(super) fn destination_port(value: &str) -> Option<Permission> {
    let port: u32 = value.parse().ok().filter(|p| *p <= 65535)?;
    Some(permission_of(permission::Rule::DestinationPort(port)))
}

pub(super) fn sni(value: &str) -> Option<Permission> {
    Some(permission_of(permission::Rule::RequestedServerName(
        istio_string(value, ""),
    )))
}

/// A path: a `{*}`/`{**}` template through Envoy's URI template matcher, else Istio's forms.
pub(super) fn path(value: &str) -> Option<Permission> {
    if value.contains("{*}") || value.contains("{**}") {
        let config = UriTemplateMatchConfig {
            path_template: value.to_string(),
        };
        return Some(permission_of(permission::Rule::UriTemplate(
            TypedExtensionConfig {
                name: "uri-template".into(),
                typed_config: Some(pack_any(config)),
            },
        )));
    }
    Some(permission_of(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(istio_string(value, ""))),
    })))
}

pub(super) fn authenticated(name: StringMatcher) -> Principal {
    principal_of(Identifier::Authenticated(Authenticated {
        principal_name: Some(name),
    }))
}

pub(super) fn direct_remote_ip(value: &str) -> Option<Principal> {
    Some(principal_of(Identifier::DirectRemoteIp(cidr(value)?)))
}

pub(super) fn remote_ip(value: &str) -> Option<Principal> {
    Some(principal_of(Identifier::RemoteIp(cidr(value)?)))
}

pub(super) fn source_principal(value: &str) -> Option<Principal> {
    Some(authenticated(istio_string(value, "spiffe://")))
}

pub(super) fn source_namespace(value: &str) -> Option<Principal> {
    let namespace: Vec<String> = value.split('*').map(regex::escape).collect();
    Some(authenticated(regex(&format!(
        ".*/ns/{}/.*",
        namespace.join(".*")
    ))))
}

pub(super) fn trust_domain(value: &str) -> Option<Principal> {
    let matcher = if value == "*" {
        string_matcher(MatchPattern::Prefix("spiffe://".into()), false)
    } else if let Some((start, end)) = value.split_once('*') {
        regex(&format!(
            "spiffe://{}[^/]*{}/.*",
            regex::escape(start),
            regex::escape(end)
        ))
    } else {
        string_matcher(MatchPattern::Prefix(format!("spiffe://{value}/")), false)
    };
    Some(authenticated(matcher))
}

// Deprecated for `sourced_metadata` (Envoy 1.31+), which says the same for the request's
// metadata; istiod still sends this form, which every Envoy it supports reads.
#[allow(deprecated)]
pub(super) fn metadata(path: &[&str], value: ValueMatcher) -> Principal {
    principal_of(Identifier::Metadata(MetadataMatcher {
        filter: JWT_FILTER.into(),
        path: std::iter::once(JWT_PAYLOAD)
            .chain(path.iter().copied())
            .map(|key| PathSegment {
                segment: Some(Segment::Key(key.to_string())),
            })
            .collect(),
        value: Some(value),
        ..Default::default()
    }))
}

pub(super) fn string_value(matcher: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(ValuePattern::StringMatch(matcher)),
    }
}

/// A claim holding `value` (itself, or one of its list's items).
pub(super) fn claim(path: &[&str], value: &str) -> Option<Principal> {
    let one = string_value(istio_string(value, ""));
    let either = ValueMatcher {
        match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
            value_matchers: vec![
                one.clone(),
                ValueMatcher {
                    match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                        match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(one))),
                    }))),
                },
            ],
        })),
    };
    Some(metadata(path, either))
}

/// `iss/sub` (the issuer may hold `/`: split at the last one), with Istio's `*` forms.
pub(super) fn request_principal(value: &str) -> Option<Principal> {
    let any = regex(".+");
    let exact = |v: &str| string_matcher(MatchPattern::Exact(v.into()), false);
    let (issuer, subject) = match value.rsplit_once('/') {
        _ if value == "*" => (any.clone(), any),
        Some((iss, sub)) if value.starts_with('*') => (
            if iss == "*" {
                any
            } else {
                string_matcher(MatchPattern::Suffix(iss[1..].into()), false)
            },
            exact(sub),
        ),
        None if value.starts_with('*') => (
            any,
            string_matcher(MatchPattern::Suffix(value[1..].into()), false),
        ),
        Some((iss, sub)) if value.ends_with('*') => (
            exact(iss),
            if sub == "*" {
                any
            } else {
                string_matcher(MatchPattern::Prefix(sub[..sub.len() - 1].into()), false)
            },
        ),
        None if value.ends_with('*') => (
            string_matcher(MatchPattern::Prefix(value[..value.len() - 1].into()), false),
            any,
        ),
        Some((iss, sub)) => (exact(iss), exact(sub)),
        None => (exact(value), exact("")),
    };
    Some(and_principals(vec![
        metadata(&["iss"], string_value(issuer)),
        metadata(&["sub"], string_value(subject)),
    ]))
}

/// `[name]`'s name.
pub(super) fn bracketed(text: &str) -> Option<String> {
    Some(text.strip_prefix('[')?.strip_suffix(']')?.to_string())
}

/// `[a][b]` as `a`, `b`; a single `[a.b]` as one name.
pub(super) fn nested_brackets(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        if inner[..end].contains('[') {
            return bracketed(text).map(|n| vec![n]);
        }
        out.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}
