//! Semantic validation of parsed objects, modelled on istiod's validation webhook.
//!
//! [`validate`] returns every problem found, each with the path of the field
//! (`spec.http[0].route[1].weight`, the same format the parser uses), so a caller can
//! report all of them at once and map them to lines with
//! [`Document::line_of`](crate::parse::Document::line_of).

mod authentication;
mod authorization_policy;
mod destination_rule;
mod gateway;
mod rules;
mod service_entry;
mod sidecar;
mod virtual_service;
mod workload;

#[cfg(test)]
mod tests;

/// The syntax checks of names that sources outside Istio YAML (the Cloud Map source) must
/// meet before their data becomes an object here; each error says what is wrong.
pub mod names {
    use super::rules::{self, HostRules};

    /// A Kubernetes label (`[prefix/]name` and value).
    pub fn label(key: &str, value: &str) -> Result<(), String> {
        rules::label(key, value)
    }

    /// A DNS-1123 label: a namespace or object name.
    pub fn dns1123_label(value: &str) -> Result<(), String> {
        rules::dns1123_label(value)
    }

    /// A service's host name: a DNS name, no wildcard, no address.
    pub fn service_host(host: &str) -> Result<(), String> {
        rules::host(
            host,
            HostRules {
                wildcard: false,
                star_alone: false,
                ip: false,
            },
        )
    }
}

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::object::{IstioObject, Kind};
use crate::security::Action;

/// Annotation that turns an AuthorizationPolicy into a dry run (logged, not enforced).
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// One validation failure.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub struct ValidationError {
    /// Path of the offending field, e.g. `spec.subsets[1].name`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Validates an object; an empty result means it is valid.
pub fn validate(object: &IstioObject) -> Vec<ValidationError> {
    let mut errors = Errors::default();
    metadata(&mut errors, object.metadata());
    dry_run(&mut errors, object);
    match object {
        IstioObject::ServiceEntry(o) => service_entry::validate(&mut errors, &o.spec),
        IstioObject::DestinationRule(o) => destination_rule::validate(&mut errors, &o.spec),
        IstioObject::VirtualService(o) => virtual_service::validate(&mut errors, &o.spec),
        IstioObject::Gateway(o) => gateway::validate(&mut errors, &o.metadata, &o.spec),
        IstioObject::Sidecar(o) => sidecar::validate(&mut errors, &o.spec),
        IstioObject::WorkloadEntry(o) => workload::validate_entry(&mut errors, &o.spec),
        IstioObject::WorkloadGroup(o) => workload::validate_group(&mut errors, &o.spec),
        IstioObject::PeerAuthentication(o) => authentication::validate_peer(&mut errors, &o.spec),
        IstioObject::AuthorizationPolicy(o) => authorization_policy::validate(&mut errors, &o.spec),
        IstioObject::RequestAuthentication(o) => {
            authentication::validate_request(&mut errors, &o.spec);
        }
    }
    errors.0
}

/// Accumulates errors; the helpers attach a field path to check results.
#[derive(Default)]
pub(crate) struct Errors(Vec<ValidationError>);

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, against `field`.
    pub fn check(&mut self, field: impl Into<String>, result: rules::Check) {
        if let Err(message) = result {
            self.add(field, message);
        }
    }

    /// Records every message against `field`.
    pub fn check_all(&mut self, field: &str, messages: Vec<String>) {
        for message in messages {
            self.add(field, message);
        }
    }

    /// Checks an optional duration field.
    pub fn duration(&mut self, field: impl Into<String>, value: &Option<String>) {
        if let Some(value) = value {
            self.check(field, rules::duration(value));
        }
    }

    pub fn export_to(&mut self, field: &str, values: &[String]) {
        for (i, message) in rules::export_to(values) {
            self.add(format!("{field}[{i}]"), message);
        }
    }
}

fn metadata(errors: &mut Errors, meta: &ObjectMeta) {
    let generate_name = meta.generate_name.as_deref().filter(|g| !g.is_empty());
    match (meta.name.as_deref(), generate_name) {
        (None | Some(""), None) => errors.add("metadata.name", "name is required"),
        (None | Some(""), Some(prefix)) => {
            // The API server appends five characters to the prefix.
            errors.check(
                "metadata.generateName",
                rules::dns1123_subdomain(&format!("{prefix}xxxxx")),
            );
        }
        (Some(name), _) => errors.check("metadata.name", rules::dns1123_subdomain(name)),
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        errors.check("metadata.namespace", rules::dns1123_label(ns));
    }
}

/// `istio.io/dry-run` is only meaningful on ALLOW and DENY AuthorizationPolicies, with
/// a boolean value.
fn dry_run(errors: &mut Errors, object: &IstioObject) {
    let Some(value) = object
        .metadata()
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    else {
        return;
    };
    let field = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
    let Some(policy) = object.as_authorization_policy() else {
        errors.add(
            field,
            format!(
                "annotation {DRY_RUN_ANNOTATION} is only supported on AuthorizationPolicy, not {}",
                object.kind()
            ),
        );
        return;
    };
    debug_assert_eq!(object.kind(), Kind::AuthorizationPolicy);
    let action = policy.spec.action.unwrap_or_default();
    if !matches!(action, Action::Allow | Action::Deny) {
        errors.add(
            field,
            format!("annotation {DRY_RUN_ANNOTATION} is only supported with action ALLOW or DENY"),
        );
    } else if !matches!(
        value.as_str(),
        "true" | "false" | "True" | "False" | "TRUE" | "FALSE" | "t" | "f" | "T" | "F" | "1" | "0"
    ) {
        errors.add(
            field,
            format!("annotation {DRY_RUN_ANNOTATION} must be `true` or `false`, got `{value}`"),
        );
    }
}
