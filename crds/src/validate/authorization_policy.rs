//! AuthorizationPolicy validation.

use super::Errors;
use super::authentication::selection;
use super::rules;
use crate::security::{Action, AuthorizationPolicySpec, Condition, Operation, Source};

/// Source fields an external (CUSTOM) authorizer cannot be given.
const CUSTOM_UNSUPPORTED_WHEN: [&str; 4] = [
    "source.namespace",
    "source.serviceAccount",
    "source.trustDomain",
    "source.principal",
];

pub(crate) fn validate(errors: &mut Errors, spec: &AuthorizationPolicySpec) {
    selection(
        errors,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let action = spec.action.unwrap_or_default();
    let never_matches = |action: &str| {
        format!(
            "a {action} policy without `rules` never applies; add an empty rule `{{}}` to apply it to every request"
        )
    };
    match action {
        Action::Custom => {
            if spec.rules.is_empty() {
                errors.add("spec.rules", never_matches("CUSTOM"));
            } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                errors.add(
                    "spec.provider.name",
                    "`provider.name` is required with action CUSTOM",
                );
            }
        }
        Action::Deny if spec.rules.is_empty() => errors.add("spec.rules", never_matches("DENY")),
        _ => {}
    }
    if spec.provider.is_some() && action != Action::Custom {
        errors.add(
            "spec.provider",
            "`provider` is only allowed with action CUSTOM",
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let ff = format!("{rf}.from[{j}].source");
            match &from.source {
                None => errors.add(ff, "`source` is required"),
                Some(source) => self::source(errors, &ff, source, action == Action::Custom),
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tf = format!("{rf}.to[{j}].operation");
            match &to.operation {
                None => errors.add(tf, "`operation` is required"),
                Some(operation) => self::operation(errors, &tf, operation),
            }
        }
        for (j, condition) in rule.when.iter().enumerate() {
            let wf = format!("{rf}.when[{j}]");
            self::condition(errors, &wf, condition);
            let key = condition.key.as_str();
            if action == Action::Custom
                && (CUSTOM_UNSUPPORTED_WHEN.contains(&key) || key.starts_with("request.auth."))
            {
                errors.add(
                    format!("{wf}.key"),
                    format!("`{key}` is not supported with action CUSTOM"),
                );
            }
        }
    }
}

/// The fields of a [`Source`] with their values, by name.
fn source_fields(source: &Source) -> [(&'static str, &Vec<String>); 14] {
    [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
        ("serviceAccounts", &source.service_accounts),
        ("notServiceAccounts", &source.not_service_accounts),
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
        ("trustDomains", &source.trust_domains),
        ("notTrustDomains", &source.not_trust_domains),
    ]
}

fn source(errors: &mut Errors, field: &str, source: &Source, custom: bool) {
    let fields = source_fields(source);
    if fields.iter().all(|(_, values)| values.is_empty()) {
        errors.add(field, "`source` must not be empty");
        return;
    }
    let identity = !source.principals.is_empty()
        || !source.not_principals.is_empty()
        || !source.namespaces.is_empty()
        || !source.not_namespaces.is_empty();
    let accounts = !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
    if identity && accounts {
        errors.add(
            format!("{field}.serviceAccounts"),
            "`serviceAccounts` cannot be combined with `principals` or `namespaces`",
        );
    }
    for (name, values) in fields {
        let vf = format!("{field}.{name}");
        if custom && !name.contains("IpBlocks") && !values.is_empty() {
            errors.add(&vf, format!("`{name}` is not supported with action CUSTOM"));
        }
        for (k, value) in values.iter().enumerate() {
            let check = if value.is_empty() {
                Err("value must not be empty".to_owned())
            } else if name.ends_with("pBlocks") {
                rules::ip_or_cidr(value)
            } else if name.ends_with("erviceAccounts") {
                service_account(value)
            } else if name.ends_with("rustDomains") {
                wildcard(value).and_then(|()| {
                    if value.contains('/') {
                        Err(format!("trust domain `{value}` must not contain `/`"))
                    } else {
                        Ok(())
                    }
                })
            } else {
                Ok(())
            };
            errors.check(format!("{vf}[{k}]"), check);
        }
        if name.ends_with("erviceAccounts") && values.len() > 16 {
            errors.add(&vf, "at most 16 service accounts are allowed");
        }
    }
}

fn operation(errors: &mut Errors, field: &str, operation: &Operation) {
    let fields: [(&str, &Vec<String>); 8] = [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("ports", &operation.ports),
        ("notPorts", &operation.not_ports),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ];
    if fields.iter().all(|(_, values)| values.is_empty()) {
        errors.add(field, "`operation` must not be empty");
        return;
    }
    for (name, values) in fields {
        for (k, value) in values.iter().enumerate() {
            let check = if value.is_empty() {
                Err("value must not be empty".to_owned())
            } else if name.ends_with("orts") {
                rules::port_string(value)
            } else if name.ends_with("aths") {
                path_template(value)
            } else {
                Ok(())
            };
            errors.check(format!("{field}.{name}[{k}]"), check);
        }
    }
}

fn condition(errors: &mut Errors, field: &str, condition: &Condition) {
    let key = condition.key.as_str();
    if key.is_empty() {
        errors.add(format!("{field}.key"), "`key` is required");
        return;
    }
    if condition.values.is_empty() && condition.not_values.is_empty() {
        errors.add(
            field,
            format!("at least one of `values` and `notValues` is required for key `{key}`"),
        );
        return;
    }
    let kind = match attribute(key) {
        Ok(kind) => kind,
        Err(message) => {
            errors.add(format!("{field}.key"), message);
            return;
        }
    };
    for (name, values) in [
        ("values", &condition.values),
        ("notValues", &condition.not_values),
    ] {
        for (k, value) in values.iter().enumerate() {
            let check = if value.is_empty() {
                Err("value must not be empty".to_owned())
            } else {
                match kind {
                    AttributeValue::Ip => rules::ip_or_cidr(value),
                    AttributeValue::Port => rules::port_string(value),
                    AttributeValue::ServiceAccount => service_account(value),
                    AttributeValue::Wildcard => wildcard(value),
                    AttributeValue::Any => Ok(()),
                }
            };
            errors.check(format!("{field}.{name}[{k}]"), check);
        }
    }
}

/// What the values of a condition attribute must look like.
#[derive(Clone, Copy)]
enum AttributeValue {
    Ip,
    Port,
    ServiceAccount,
    Wildcard,
    Any,
}

/// The attributes Istio supports in `when` conditions.
fn attribute(key: &str) -> Result<AttributeValue, String> {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 2 && rest.starts_with('[') && rest.ends_with(']'))
    };
    let value = match key {
        "source.ip" | "remote.ip" | "destination.ip" => AttributeValue::Ip,
        "destination.port" => AttributeValue::Port,
        "source.serviceAccount" => AttributeValue::ServiceAccount,
        "source.trustDomain" => AttributeValue::Wildcard,
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => AttributeValue::Any,
        "destination.namespace" => {
            return Err(format!("`{key}` is replaced by the policy's namespace"));
        }
        "destination.name" | "destination.user" => {
            return Err(format!("`{key}` is no longer supported"));
        }
        _ if bracketed("request.headers")
            || bracketed("request.auth.claims")
            || key.starts_with("experimental.envoy.filters.") =>
        {
            AttributeValue::Any
        }
        _ if key.starts_with("destination.labels") => {
            return Err(format!("`{key}` is replaced by the policy's selector"));
        }
        _ if key.starts_with("request.headers") || key.starts_with("request.auth.claims") => {
            return Err(format!("`{key}` must have the form `name[key]`"));
        }
        _ => return Err(format!("unknown attribute `{key}`")),
    };
    Ok(value)
}

/// `SA` or `NS/SA`, no wildcards, at most 320 characters.
fn service_account(value: &str) -> rules::Check {
    if value.contains('*') {
        return Err(format!(
            "wildcards are not allowed in service accounts: `{value}`"
        ));
    }
    if value.len() > 320 {
        return Err(format!(
            "service account `{value}` is longer than 320 characters"
        ));
    }
    let malformed = match value.split_once('/') {
        Some((ns, sa)) => ns.is_empty() || sa.is_empty() || sa.contains('/'),
        None => false,
    };
    if malformed {
        return Err(format!(
            "`{value}` must be `serviceAccount` or `namespace/serviceAccount`"
        ));
    }
    Ok(())
}

/// At most one `*`, at the start or the end.
fn wildcard(value: &str) -> rules::Check {
    match value.matches('*').count() {
        0 => Ok(()),
        1 if value.starts_with('*') || value.ends_with('*') => Ok(()),
        1 => Err(format!(
            "`{value}`: a wildcard is only allowed at the start or end"
        )),
        _ => Err(format!("`{value}`: at most one wildcard is allowed")),
    }
}

/// A path, possibly a template with `{*}` (one segment) and `{**}` (the rest, last).
fn path_template(path: &str) -> rules::Check {
    let template = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if seen_any => {
                return Err(format!("path `{path}`: `{{**}}` must be the last operator"));
            }
            "{*}" => {}
            "{**}" => seen_any = true,
            _ if segment.contains(['{', '}']) => {
                return Err(format!(
                    "path `{path}`: `{{` and `}}` are only allowed as the operators `{{*}}` and `{{**}}`"
                ));
            }
            _ if template && !segment.chars().all(is_path_literal) => {
                return Err(format!(
                    "path `{path}`: segment `{segment}` has characters not allowed in a path template"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_path_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c)
}
