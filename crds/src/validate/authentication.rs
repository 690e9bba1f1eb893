//! PeerAuthentication and RequestAuthentication validation, and the workload
//! selection (selector or target references) shared with AuthorizationPolicy.

use super::Errors;
use super::rules;
use crate::security::{JwtRule, PeerAuthenticationSpec, RequestAuthenticationSpec};
use crate::types::{MatchLabelsSelector, PolicyTargetReference};

/// Kinds a policy's `targetRef` may name: (group, kind), the core group being `""`.
const TARGET_KINDS: [(&str, &str); 4] = [
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// `selector`, `targetRef` and `targetRefs`: at most one, each well-formed.
pub(crate) fn selection(
    errors: &mut Errors,
    selector: Option<&MatchLabelsSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    errors.check(
        "spec",
        rules::one_of(
            &[
                ("selector", selector.is_some()),
                ("targetRef", target_ref.is_some()),
                ("targetRefs", !target_refs.is_empty()),
            ],
            false,
        ),
    );
    if let Some(selector) = selector {
        errors.check_all(
            "spec.selector.matchLabels",
            rules::selector_labels(&selector.match_labels),
        );
    }
    if let Some(target) = target_ref {
        target_reference(errors, "spec.targetRef", target);
    }
    for (i, target) in target_refs.iter().enumerate() {
        target_reference(errors, &format!("spec.targetRefs[{i}]"), target);
    }
}

fn target_reference(errors: &mut Errors, field: &str, target: &PolicyTargetReference) {
    if target.name.is_empty() {
        errors.add(format!("{field}.name"), "name is required");
    }
    if !target.namespace.is_empty() {
        errors.add(
            format!("{field}.namespace"),
            "namespace must not be set; cross-namespace references are not supported",
        );
    }
    let group = if target.group == "core" {
        ""
    } else {
        target.group.as_str()
    };
    if !TARGET_KINDS.contains(&(group, target.kind.as_str())) {
        let allowed: Vec<String> = TARGET_KINDS
            .iter()
            .map(|(g, k)| {
                if g.is_empty() {
                    (*k).to_owned()
                } else {
                    format!("{g}/{k}")
                }
            })
            .collect();
        errors.add(
            format!("{field}.kind"),
            format!(
                "targetRef must be one of {}, got `{}/{}`",
                allowed.join(", "),
                target.group,
                target.kind
            ),
        );
    }
}

pub(crate) fn validate_peer(errors: &mut Errors, spec: &PeerAuthenticationSpec) {
    let selects_workloads = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !selects_workloads && !spec.port_level_mtls.is_empty() {
        errors.add(
            "spec.portLevelMtls",
            "port-level mTLS needs a `selector` with labels; namespace- and mesh-wide policies cannot have it",
        );
    }
    for port in spec.port_level_mtls.keys() {
        let valid = port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            errors.add(
                format!("spec.portLevelMtls.{port}"),
                format!("`{port}` is not a port number (1..=65535)"),
            );
        }
    }
    if let Some(selector) = &spec.selector {
        errors.check_all(
            "spec.selector.matchLabels",
            rules::selector_labels(&selector.match_labels),
        );
    }
}

pub(crate) fn validate_request(errors: &mut Errors, spec: &RequestAuthenticationSpec) {
    selection(
        errors,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(errors, &format!("spec.jwtRules[{i}]"), rule);
    }
}

fn jwt_rule(errors: &mut Errors, field: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() && rule.jwks_uri.is_empty() {
        errors.add(
            format!("{field}.issuer"),
            "`issuer` is required (or `jwksUri`)",
        );
    }
    for (k, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            errors.add(
                format!("{field}.audiences[{k}]"),
                "audience must not be empty",
            );
        }
    }
    if !rule.jwks_uri.is_empty() {
        errors.check(format!("{field}.jwksUri"), jwks_uri(&rule.jwks_uri));
    }
    if !rule.jwks.is_empty() {
        errors.check(format!("{field}.jwks"), jwks(&rule.jwks));
    }
    for (k, header) in rule.from_headers.iter().enumerate() {
        if header.name.is_empty() {
            errors.add(
                format!("{field}.fromHeaders[{k}].name"),
                "header name is required",
            );
        }
    }
    for (name, values) in [
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
    ] {
        for (k, value) in values.iter().enumerate() {
            if value.is_empty() {
                errors.add(format!("{field}.{name}[{k}]"), "must not be empty");
            }
        }
    }
    for (k, output) in rule.output_claim_to_headers.iter().enumerate() {
        let of = format!("{field}.outputClaimToHeaders[{k}]");
        if output.claim.is_empty() {
            errors.add(format!("{of}.claim"), "claim is required");
        }
        if output.header.is_empty() {
            errors.add(format!("{of}.header"), "header is required");
        } else {
            errors.check(
                format!("{of}.header"),
                rules::header_name(&output.header, false),
            );
        }
    }
    if let Some(timeout) = &rule.timeout {
        errors.check(
            format!("{field}.timeout"),
            rules::positive_duration(timeout),
        );
    }
}

/// An `http` or `https` URL with a host and, if given, a numeric port.
fn jwks_uri(uri: &str) -> rules::Check {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("`{uri}` is not a URL"));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "URL scheme `{scheme}` is not supported; use http or https"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(format!("`{uri}`: unterminated IPv6 address")),
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{uri}` has no host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("`{uri}`: `{port}` is not a port number"));
    }
    Ok(())
}

/// A JSON Web Key Set (`{"keys": [...]}`) or a single JSON Web Key (`{"kty": ...}`).
fn jwks(text: &str) -> rules::Check {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks is not valid JSON: {e}"))?;
    let is_key = |v: &serde_json::Value| v.get("kty").is_some_and(|k| k.is_string());
    match value.get("keys") {
        Some(serde_json::Value::Array(keys)) if keys.iter().all(is_key) => Ok(()),
        Some(_) => Err("jwks: every entry of `keys` must be a JSON Web Key with `kty`".into()),
        None if is_key(&value) => Ok(()),
        None => Err("jwks must be a JSON Web Key Set (`{\"keys\": [...]}`)".into()),
    }
}
