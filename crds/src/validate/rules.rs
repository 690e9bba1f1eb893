//! Field-level checks shared by the kinds. Each returns `Err(message)` on failure;
//! the callers attach the field path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::networking::{StringMatch, parse_duration};

pub(crate) type Check = Result<(), String>;

/// Which host forms a field accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostRules {
    /// `*.example.com` / `*example.com` (wildcard in the first label only).
    pub wildcard: bool,
    /// `*` on its own.
    pub star_alone: bool,
    /// IPv4/IPv6 addresses.
    pub ip: bool,
}

impl HostRules {
    pub const SERVICE_ENTRY: HostRules = HostRules {
        wildcard: true,
        star_alone: false,
        ip: false,
    };
    pub const DESTINATION_RULE: HostRules = HostRules {
        wildcard: true,
        star_alone: true,
        ip: false,
    };
    pub const VIRTUAL_SERVICE: HostRules = HostRules {
        wildcard: true,
        star_alone: true,
        ip: true,
    };
    /// Like Istio, a destination may name a wildcard host (e.g. `*.wikipedia.org`
    /// for TLS passthrough), but not `*` alone.
    pub const DESTINATION: HostRules = HostRules {
        wildcard: true,
        star_alone: false,
        ip: true,
    };
    /// A DNS name only (no wildcard, no IP).
    pub const FQDN: HostRules = HostRules {
        wildcard: false,
        star_alone: false,
        ip: false,
    };
}

use crate::protocol::Protocol;
pub(crate) use crate::protocol::ProtocolClass;

/// The class of a protocol name, or `None` when Istio does not know it.
pub(crate) fn protocol_class(name: &str) -> Option<ProtocolClass> {
    Protocol::parse(name).map(Protocol::class)
}

/// A known protocol name; empty means "detect" and is accepted.
pub(crate) fn protocol(name: &str) -> Check {
    if name.is_empty() || protocol_class(name).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = Protocol::names().collect();
    Err(format!(
        "unsupported protocol `{name}`; expected one of {}",
        known.join(", ")
    ))
}

/// The path of a `unix://` address: absolute and not a directory, or an abstract
/// socket (`@name`).
pub(crate) fn unix_address(path: &str) -> Check {
    if path.is_empty() {
        return Err("unix socket path must not be empty".into());
    }
    if path.starts_with('@') || (path.starts_with('/') && !path.ends_with('/')) {
        return Ok(());
    }
    Err(format!("`{path}` is not an absolute path to a socket file"))
}

/// An IPv4 or IPv6 address.
pub(crate) fn ip(value: &str) -> Check {
    value
        .parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("`{value}` is not an IP address"))
}

/// A host of a Gateway server (`gateway`) or of a Sidecar egress listener:
/// `namespace/dnsName`, where the namespace is `*`, `.`, a namespace name or (Sidecar
/// only) `~`-prefixed; a Gateway also accepts a bare `dnsName`. The DNS name is `*`, an
/// FQDN (short names are not allowed) with an optional `*.` prefix, or (Gateway only) an
/// IP address.
pub(crate) fn namespaced_host(value: &str, gateway: bool) -> Check {
    let (namespace, name) = match value.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None if gateway => (None, value),
        None => {
            return Err(format!(
                "host `{value}` must be of the form `namespace/dnsName` (e.g. `*/{value}`)"
            ));
        }
    };
    if let Some(ns) = namespace {
        if ns.is_empty() || name.is_empty() {
            return Err(format!(
                "host `{value}`: namespace and DNS name must not be empty"
            ));
        }
        let ns = if gateway {
            ns
        } else {
            ns.strip_prefix('~').unwrap_or(ns)
        };
        // `~` alone (Sidecar only) selects no namespace.
        if !matches!(ns, "*" | "." | "") && dns1123_label(ns).is_err() {
            return Err(format!(
                "host `{value}`: `{ns}` is not `*`, `.` or a namespace name"
            ));
        }
    }
    if name == "*" {
        return Ok(());
    }
    if gateway && name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.contains('*') && !name.starts_with("*.") {
        return Err(format!(
            "host `{value}`: partial wildcard `{name}` is not allowed; use `*` or `*.domain`"
        ));
    }
    if !name.contains('.') {
        return Err(format!(
            "host `{value}`: short name `{name}` is not allowed; use a fully qualified name such as `{name}.<namespace>.svc.cluster.local`"
        ));
    }
    host(name, HostRules::SERVICE_ENTRY).map_err(|e| format!("host `{value}`: {e}"))
}

/// Labels of a policy selector: non-empty keys, no wildcards, Kubernetes label syntax.
pub(crate) fn selector_labels(map: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in map {
        if key.contains('*') || value.contains('*') {
            out.push(format!(
                "wildcards are not supported in selectors: `{key}={value}`"
            ));
        } else if let Err(e) = label(key, value) {
            out.push(e);
        }
    }
    out
}

/// A port number given as a string (`"8080"`), 0..=65535 like Istio's policies.
pub(crate) fn port_string(value: &str) -> Check {
    match value.parse::<u32>() {
        Ok(n) if n <= 65535 => Ok(()),
        _ => Err(format!("`{value}` is not a port number (0..=65535)")),
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A DNS label, case-insensitive: alphanumerics and inner `-`, 1..=63 characters.
fn is_host_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.starts_with(is_alnum)
        && label.ends_with(is_alnum)
        && label.chars().all(|c| is_alnum(c) || c == '-')
}

/// A host name as used in Istio `hosts` fields: a short name (`reviews`), an FQDN
/// (`reviews.prod.svc.cluster.local`, optionally with a trailing dot), with the rules'
/// wildcard and IP allowances.
pub(crate) fn host(host: &str, rules: HostRules) -> Check {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host == "*" {
        return if rules.star_alone {
            Ok(())
        } else {
            Err(
                "`*` alone is not allowed here; use a wildcard domain such as `*.example.com`"
                    .into(),
            )
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return if rules.ip {
            Ok(())
        } else {
            Err(format!(
                "`{host}` is an IP address; a host name is required"
            ))
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err(format!("host `{host}` is longer than 253 characters"));
    }
    for (i, label) in name.split('.').enumerate() {
        if let Some(rest) = label.strip_prefix('*') {
            if i != 0 {
                return Err(format!(
                    "host `{host}`: a wildcard `*` is only allowed at the start of the first label"
                ));
            }
            if !rules.wildcard {
                return Err(format!("host `{host}`: wildcards are not allowed here"));
            }
            if rest.is_empty() || is_host_label(rest) {
                continue;
            }
        } else if is_host_label(label) {
            continue;
        }
        return Err(format!(
            "host `{host}` is not a valid DNS name (label `{label}` invalid)"
        ));
    }
    Ok(())
}

/// A Kubernetes DNS-1123 label: lowercase alphanumerics and inner `-`, 1..=63 chars.
pub(crate) fn dns1123_label(value: &str) -> Check {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not a valid DNS-1123 label (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"
        ))
    }
}

/// A Kubernetes DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 chars.
pub(crate) fn dns1123_subdomain(value: &str) -> Check {
    if value.len() > 253 || value.split('.').any(|l| dns1123_label(l).is_err()) {
        return Err(format!("`{value}` is not a valid DNS-1123 subdomain"));
    }
    Ok(())
}

/// A port number, 1..=65535.
pub(crate) fn port(number: u32) -> Check {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!("port {number} is out of range 1..=65535"))
    }
}

/// A duration in Go syntax (`5s`, `100ms`, `1m30s`).
pub(crate) fn duration(text: &str) -> Check {
    match parse_duration(text) {
        Some(_) => Ok(()),
        None => Err(format!(
            "invalid duration `{text}`; expected e.g. `5s`, `250ms`, `1m30s`"
        )),
    }
}

/// Like [`duration`], and also strictly positive.
pub(crate) fn positive_duration(text: &str) -> Check {
    match parse_duration(text) {
        Some(d) if !d.is_zero() => Ok(()),
        Some(_) => Err("duration must be greater than zero".into()),
        None => duration(text),
    }
}

/// A percentage, 0..=100.
pub(crate) fn percent(value: f64) -> Check {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("percentage {value} is out of range 0..=100"))
    }
}

/// An RE2-compatible regular expression (checked with the `regex` crate).
pub(crate) fn regex(pattern: &str) -> Check {
    regex::Regex::new(pattern).map(|_| ()).map_err(|err| {
        let text = err.to_string();
        let detail: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("invalid regex `{pattern}`: {}", detail.join(" "))
    })
}

/// A string match: at most one criterion; at least one unless `allow_empty` (presence
/// matching); a non-empty prefix; a compiling regex.
pub(crate) fn string_match(m: &StringMatch, allow_empty: bool) -> Check {
    match m.criteria_count() {
        0 if allow_empty => return Ok(()),
        0 => return Err("one of `exact`, `prefix` or `regex` must be set".into()),
        1 => {}
        _ => return Err("only one of `exact`, `prefix` or `regex` may be set".into()),
    }
    if m.prefix.as_deref() == Some("") {
        return Err("`prefix` must not be empty".into());
    }
    match &m.regex {
        Some(pattern) => regex(pattern),
        None => Ok(()),
    }
}

/// An HTTP header name: an RFC 7230 token (matched case-insensitively), optionally a
/// `:`-prefixed pseudo-header when `allow_pseudo`.
pub(crate) fn header_name(name: &str, allow_pseudo: bool) -> Check {
    let token = match name.strip_prefix(':') {
        Some(_) if !allow_pseudo => {
            return Err(format!("pseudo-header `{name}` cannot be used here"));
        }
        Some(rest) => rest,
        None => name,
    };
    let is_tchar = |c: char| is_alnum(c) || "!#$%&'*+-.^_`|~".contains(c);
    if token.is_empty() || !token.chars().all(is_tchar) {
        return Err(format!("`{name}` is not a valid HTTP header name"));
    }
    Ok(())
}

/// Kubernetes label syntax for keys (`[prefix/]name`) and values.
pub(crate) fn label(key: &str, value: &str) -> Check {
    fn is_label_name(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.starts_with(is_alnum)
            && s.ends_with(is_alnum)
            && s.chars()
                .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if dns1123_subdomain(prefix).is_err() {
                return Err(format!(
                    "label key `{key}`: prefix `{prefix}` is not a DNS-1123 subdomain"
                ));
            }
            name
        }
        None => key,
    };
    if !is_label_name(name) {
        return Err(format!("`{key}` is not a valid label key"));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(format!(
            "`{value}` is not a valid label value (label `{key}`)"
        ));
    }
    Ok(())
}

/// Every label of a map; returns one message per bad label.
pub(crate) fn labels(map: &BTreeMap<String, String>) -> Vec<String> {
    map.iter().filter_map(|(k, v)| label(k, v).err()).collect()
}

/// An IP address or CIDR block.
pub(crate) fn ip_or_cidr(value: &str) -> Check {
    let (addr, prefix) = match value.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (value, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(format!("`{value}` is not an IP address or CIDR block"));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.map(str::parse::<u8>) {
        None => Ok(()),
        Some(Ok(len)) if len <= max => Ok(()),
        Some(_) => Err(format!("`{value}`: invalid CIDR prefix length")),
    }
}

/// `exportTo` values: `.`, `*`, `~` or namespace names; no duplicates; `~` and `*`
/// cannot be combined with anything else.
pub(crate) fn export_to(values: &[String]) -> Vec<(usize, String)> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        if !seen.insert(value.as_str()) {
            errors.push((i, format!("duplicate exportTo value `{value}`")));
            continue;
        }
        match value.as_str() {
            "." => {}
            "*" | "~" if values.len() > 1 => errors.push((
                i,
                format!("exportTo `{value}` cannot be combined with other values"),
            )),
            "*" | "~" => {}
            ns => {
                if let Err(e) = dns1123_label(ns) {
                    errors.push((i, format!("invalid namespace: {e}")));
                }
            }
        }
    }
    errors
}

/// A gateway reference: `mesh`, or `[namespace/]name`.
pub(crate) fn gateway_ref(value: &str) -> Check {
    if value == "mesh" {
        return Ok(());
    }
    let (namespace, name) = match value.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, value),
    };
    if let Some(ns) = namespace {
        dns1123_label(ns).map_err(|e| format!("gateway `{value}`: invalid namespace: {e}"))?;
    }
    dns1123_subdomain(name).map_err(|e| format!("gateway `{value}`: invalid name: {e}"))
}

/// `Err` unless at most one (or, when `required`, exactly one) of the named options is
/// set.
pub(crate) fn one_of(options: &[(&str, bool)], required: bool) -> Check {
    let set: Vec<&str> = options.iter().filter(|o| o.1).map(|o| o.0).collect();
    let names = || {
        options
            .iter()
            .map(|o| format!("`{}`", o.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match set.len() {
        0 if required => Err(format!("one of {} must be set", names())),
        0 | 1 => Ok(()),
        _ => Err(format!(
            "only one of {} may be set (found {})",
            names(),
            set.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let se = HostRules::SERVICE_ENTRY;
        let vs = HostRules::VIRTUAL_SERVICE;
        let dest = HostRules::DESTINATION;
        let cases: &[(&str, HostRules, bool)] = &[
            ("reviews", dest, true),
            ("reviews.prod.svc.cluster.local", dest, true),
            ("api.example.com.", se, true),
            ("*.example.com", se, true),
            ("*example.com", se, true),
            ("*", se, false),
            ("*", vs, true),
            ("*.example.com", dest, true),
            ("*", dest, false),
            ("a.*.example.com", dest, false),
            ("a.*.example.com", se, false),
            ("-bad.example.com", se, false),
            ("bad_.example.com", se, false),
            ("", vs, false),
            ("10.0.0.1", vs, true),
            ("::1", vs, true),
            ("10.0.0.1", se, false),
            ("exa mple.com", vs, false),
        ];
        for (value, rules, ok) in cases {
            assert_eq!(
                host(value, *rules).is_ok(),
                *ok,
                "host({value:?}, {rules:?})"
            );
        }
    }

    #[test]
    fn labels_and_names() {
        assert!(label("app", "reviews").is_ok());
        assert!(label("app.kubernetes.io/name", "my_app-1.0").is_ok());
        assert!(label("version", "").is_ok());
        assert!(label("-app", "x").is_err());
        assert!(label("app", "bad value").is_err());
        assert!(label("Bad_Prefix/x", "y").is_err());
        assert!(dns1123_label("v1").is_ok());
        assert!(dns1123_label("V1").is_err());
        assert!(dns1123_label("").is_err());
        assert!(header_name("end-user", false).is_ok());
        assert!(header_name("X-Request-Id", false).is_ok());
        assert!(header_name(":authority", true).is_ok());
        assert!(header_name(":authority", false).is_err());
        assert!(header_name("bad header", false).is_err());
        assert!(header_name("", false).is_err());
    }

    #[test]
    fn addresses_and_misc() {
        assert!(ip_or_cidr("10.1.0.0/16").is_ok());
        assert!(ip_or_cidr("2001:db8::/32").is_ok());
        assert!(ip_or_cidr("10.1.0.0/33").is_err());
        assert!(ip_or_cidr("example.com").is_err());
        assert!(gateway_ref("mesh").is_ok());
        assert!(gateway_ref("istio-system/ingress").is_ok());
        assert!(gateway_ref("Bad/ingress").is_err());
        assert_eq!(export_to(&[".".into(), "prod".into()]), vec![]);
        assert_eq!(export_to(&["~".into(), ".".into()]).len(), 1);
        assert_eq!(export_to(&["a".into(), "a".into()]).len(), 1);
        assert!(one_of(&[("a", true), ("b", false)], true).is_ok());
        assert!(one_of(&[("a", false), ("b", false)], true).is_err());
        assert!(one_of(&[("a", false), ("b", false)], false).is_ok());
        assert!(one_of(&[("a", true), ("b", true)], false).is_err());
        assert!(regex("^/api/v[0-9]+$").is_ok());
        assert!(regex("(unclosed").is_err());
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("1s").is_ok());
    }
}
