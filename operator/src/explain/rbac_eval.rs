//! Envoy's RBAC matching, for `capstan explain`: whether one request matches a policy capstan
//! sends. The explanation evaluates the very rules the proxies get, so it cannot disagree with
//! translation; the end-to-end tests check it against what real Envoys do.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{MetadataMatcher, StringMatcher, ValueMatcher};

/// What the workload's sidecar knows of one request (or TCP connection).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The peer's SPIFFE id, when it came over the mesh's mutual TLS.
    pub peer: Option<String>,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub port: u32,
    /// Lower-case names; `:method`, `:path` and `:authority` included for HTTP.
    pub headers: BTreeMap<String, String>,
    /// The payload of an accepted JWT (`iss`, `sub`, …), when there was one.
    pub jwt: BTreeMap<String, String>,
}

impl Request {
    fn path(&self) -> Option<&str> {
        let path = self.headers.get(":path")?;
        Some(path.split(['?', '#']).next().unwrap_or(path))
    }
}

pub fn policy_matches(policy: &Policy, request: &Request) -> bool {
    policy.permissions.iter().any(|p| permission(p, request))
        && policy.principals.iter().any(|p| principal(p, request))
}

fn permission(p: &Permission, request: &Request) -> bool {
    match &p.rule {
        Some(Rule::AndRules(set)) => set.rules.iter().all(|r| permission(r, request)),
        Some(Rule::OrRules(set)) => set.rules.iter().any(|r| permission(r, request)),
        Some(Rule::Any(any)) => *any,
        Some(Rule::NotRule(inner)) => !permission(inner, request),
        Some(Rule::Header(h)) => header(h, request),
        Some(Rule::UrlPath(m)) => match (&m.rule, request.path()) {
            (Some(path_matcher::Rule::Path(s)), Some(path)) => string(s, path),
            _ => false,
        },
        Some(Rule::DestinationPort(port)) => *port == request.port,
        Some(Rule::DestinationIp(cidr)) => request.destination.is_some_and(|ip| in_cidr(cidr, ip)),
        Some(Rule::RequestedServerName(_)) => false,
        Some(Rule::UriTemplate(t)) => {
            use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
            use prost::Message;
            let template = t
                .typed_config
                .as_ref()
                .and_then(|any| UriTemplateMatchConfig::decode(any.value.as_slice()).ok());
            match (template, request.path()) {
                (Some(t), Some(path)) => uri_template(&t.path_template, path),
                _ => false,
            }
        }
        _ => false,
    }
}

#[allow(deprecated)]
fn principal(p: &Principal, request: &Request) -> bool {
    match &p.identifier {
        Some(Identifier::AndIds(set)) => set.ids.iter().all(|i| principal(i, request)),
        Some(Identifier::OrIds(set)) => set.ids.iter().any(|i| principal(i, request)),
        Some(Identifier::Any(any)) => *any,
        Some(Identifier::NotId(inner)) => !principal(inner, request),
        Some(Identifier::Authenticated(a)) => match (&a.principal_name, &request.peer) {
            (Some(m), Some(peer)) => string(m, peer),
            (None, Some(_)) => true,
            _ => false,
        },
        Some(Identifier::DirectRemoteIp(cidr) | Identifier::RemoteIp(cidr)) => {
            request.source.is_some_and(|ip| in_cidr(cidr, ip))
        }
        Some(Identifier::Header(h)) => header(h, request),
        Some(Identifier::Metadata(m)) => metadata(m, request),
        _ => false,
    }
}

fn header(h: &HeaderMatcher, request: &Request) -> bool {
    let value = request.headers.get(&h.name.to_ascii_lowercase());
    let matched = match (&h.header_match_specifier, value) {
        (Some(HeaderMatchSpecifier::PresentMatch(present)), v) => v.is_some() == *present,
        (Some(HeaderMatchSpecifier::StringMatch(m)), Some(v)) => string(m, v),
        _ => false,
    };
    matched != h.invert_match
}

/// `payload.<claim>` of the accepted token: a string, or one of a list's items.
fn metadata(m: &MetadataMatcher, request: &Request) -> bool {
    let keys: Vec<&str> = m
        .path
        .iter()
        .filter_map(|s| s.segment.as_ref().map(|Segment::Key(k)| k.as_str()))
        .collect();
    let [_, claim] = keys.as_slice() else {
        return false;
    };
    let Some(value) = request.jwt.get(*claim) else {
        return false;
    };
    m.value.as_ref().is_some_and(|v| value_matches(v, value))
}

fn value_matches(v: &ValueMatcher, value: &str) -> bool {
    match &v.match_pattern {
        Some(ValuePattern::StringMatch(s)) => string(s, value),
        Some(ValuePattern::OrMatch(or)) => {
            or.value_matchers.iter().any(|m| value_matches(m, value))
        }
        Some(ValuePattern::ListMatch(list)) => match &list.match_pattern {
            Some(
                envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern::OneOf(one),
            ) => value.split(' ').any(|item| value_matches(one, item)),
            None => false,
        },
        _ => false,
    }
}

fn string(m: &StringMatcher, value: &str) -> bool {
    let fold = |s: &str| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let value = fold(value);
    match &m.match_pattern {
        Some(MatchPattern::Exact(e)) => value == fold(e),
        Some(MatchPattern::Prefix(p)) => value.starts_with(&fold(p)),
        Some(MatchPattern::Suffix(s)) => value.ends_with(&fold(s)),
        Some(MatchPattern::Contains(c)) => value.contains(&fold(c)),
        Some(MatchPattern::SafeRegex(r)) => {
            regex::Regex::new(&format!("^(?:{})$", r.regex)).is_ok_and(|re| re.is_match(&value))
        }
        _ => false,
    }
}

fn in_cidr(cidr: &CidrRange, ip: IpAddr) -> bool {
    let Ok(base) = cidr.address_prefix.parse::<IpAddr>() else {
        return false;
    };
    let len = cidr.prefix_len.map_or(0, |l| l.value);
    match (base, ip) {
        (IpAddr::V4(b), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(b) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(b), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(b) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Envoy's URI templates: `{*}` one path segment, `{**}` any number of them.
fn uri_template(template: &str, path: &str) -> bool {
    let pattern: String = template
        .split('/')
        .map(|segment| match segment {
            "{*}" => "[^/]+".to_string(),
            "{**}" => ".*".to_string(),
            other => regex::escape(other),
        })
        .collect::<Vec<_>>()
        .join("/");
    regex::Regex::new(&format!("^{pattern}$")).is_ok_and(|re| re.is_match(path))
}
