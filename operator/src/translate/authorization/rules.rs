//! One AuthorizationPolicy rule as an Envoy RBAC policy, as istiod's `authz/model` builds it:
//! per `to` (or one, when there is none) a permission ANDing the operation's fields and the
//! `when` conditions about the destination; per `from` (or one) a principal ANDing the
//! source's fields and the conditions about the source. Each field ORs its values; its `not`
//! list is a NOT of an OR.
//!
//! On a TCP filter chain, a field only HTTP has (hosts, methods, paths, request principals,
//! request headers, JWT claims) cannot be checked: in an ALLOW policy the whole rule is then
//! dropped (allowing less), in a DENY or AUDIT policy only that field (denying more), as
//! istiod does.

use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::principal::Set as PrincipalSet;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, permission};

use capstan_crds::security::authorization_policy::Rule;

use crate::mesh_config::TrustDomains;

/// Whether a field the chain cannot check (an HTTP-only one on a TCP chain, or a condition
/// capstan does not read) makes the whole rule go (ALLOW: allowing less) or only itself
/// (DENY, AUDIT: denying more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfUnusable {
    DropRule,
    DropField,
}

/// The filter chain a rule is checked on, and the mesh's trust domains its principals name.
pub struct Chain<'a> {
    /// A TCP chain (else HTTP).
    pub for_tcp: bool,
    pub if_unusable: IfUnusable,
    pub trust: &'a TrustDomains,
}

/// A rule's policy for an HTTP or TCP filter chain; `None` when the rule cannot be checked
/// there (see [`IfUnusable`]), or names something capstan cannot express. Principals and
/// trust domains naming the mesh's trust domain (or `cluster.local`) name each of its
/// trust domains, as istiod's `MigrateTrustDomain` makes them.
pub fn policy(rule: &Rule, namespace: &str, chain: &Chain<'_>) -> Option<Policy> {
    let ctx = Ctx {
        for_tcp: chain.for_tcp,
        if_unusable: chain.if_unusable,
        namespace,
    };
    let named = |list: &[String]| expand(list, |p| chain.trust.principals(p));
    let domains = |list: &[String]| expand(list, |d| chain.trust.domains(d));
    // The `when` conditions, split as istiod splits them.
    let mut base_permission = Vec::new();
    let mut base_principal = Vec::new();
    for condition in &rule.when {
        let key = condition.key.as_str();
        let values = (&condition.values, &condition.not_values);
        match key {
            "destination.ip" => base_permission.push(ctx.permissions(values, destination_ip)?),
            "destination.port" => base_permission.push(ctx.permissions(values, destination_port)?),
            "connection.sni" => base_permission.push(ctx.permissions(values, sni)?),
            "source.ip" => base_principal.push(ctx.principals(values, direct_remote_ip)?),
            "remote.ip" => base_principal.push(ctx.principals(values, remote_ip)?),
            "source.namespace" => base_principal.push(ctx.principals(values, source_namespace)?),
            "source.principal" => {
                let values = (&named(values.0), &named(values.1));
                base_principal.push(ctx.principals(values, source_principal)?)
            }
            "source.serviceAccount" => {
                base_principal.push(ctx.principals(values, |v| ctx.service_account(v))?)
            }
            "source.trustDomain" => {
                let values = (&domains(values.0), &domains(values.1));
                base_principal.push(ctx.principals(values, trust_domain)?)
            }
            "request.auth.principal" => {
                base_principal.push(ctx.http_principals(values, request_principal)?)
            }
            "request.auth.audiences" => {
                base_principal.push(ctx.http_principals(values, |v| claim(&["aud"], v))?)
            }
            "request.auth.presenter" => {
                base_principal.push(ctx.http_principals(values, |v| claim(&["azp"], v))?)
            }
            _ if key.starts_with("request.headers[") => {
                let name = bracketed(&key["request.headers".len()..])?;
                base_principal.push(ctx.http_principals(values, |v| {
                    Some(principal_of(Identifier::Header(header(&name, v, false))))
                })?)
            }
            _ if key.starts_with("request.auth.claims[") => {
                let claims = nested_brackets(&key["request.auth.claims".len()..])?;
                let claims: Vec<&str> = claims.iter().map(String::as_str).collect();
                base_principal.push(ctx.http_principals(values, |v| claim(&claims, v))?)
            }
            // `experimental.envoy.filters.*` (reported as not applied): as a field a chain
            // cannot check.
            _ => match ctx.if_unusable {
                IfUnusable::DropRule => return None,
                IfUnusable::DropField => continue,
            },
        }
    }
    let mut permissions = Vec::new();
    for to in rule
        .to
        .iter()
        .map(|t| t.operation.clone().unwrap_or_default())
    {
        let mut and = vec![
            ctx.http_permissions((&to.hosts, &to.not_hosts), |v| {
                Some(permission_of(permission::Rule::Header(header(
                    ":authority",
                    v,
                    true,
                ))))
            })?,
            ctx.http_permissions((&to.methods, &to.not_methods), |v| {
                Some(permission_of(permission::Rule::Header(header(
                    ":method", v, false,
                ))))
            })?,
            ctx.http_permissions((&to.paths, &to.not_paths), path)?,
            ctx.permissions((&to.ports, &to.not_ports), destination_port)?,
        ];
        and.extend(base_permission.iter().cloned());
        permissions.push(and_permissions(and.into_iter().flatten().collect()));
    }
    if rule.to.is_empty() {
        permissions.push(and_permissions(
            base_permission.into_iter().flatten().collect(),
        ));
    }
    let mut principals = Vec::new();
    for from in rule
        .from
        .iter()
        .map(|f| f.source.clone().unwrap_or_default())
    {
        let from_principals = (&named(&from.principals), &named(&from.not_principals));
        let from_domains = (
            &domains(&from.trust_domains),
            &domains(&from.not_trust_domains),
        );
        let mut and = vec![
            ctx.principals(from_principals, source_principal)?,
            ctx.http_principals(
                (&from.request_principals, &from.not_request_principals),
                request_principal,
            )?,
            ctx.principals((&from.service_accounts, &from.not_service_accounts), |v| {
                ctx.service_account(v)
            })?,
            ctx.principals(from_domains, trust_domain)?,
            ctx.principals((&from.namespaces, &from.not_namespaces), source_namespace)?,
            ctx.principals(
                (&from.remote_ip_blocks, &from.not_remote_ip_blocks),
                remote_ip,
            )?,
            ctx.principals((&from.ip_blocks, &from.not_ip_blocks), direct_remote_ip)?,
        ];
        and.extend(base_principal.iter().cloned());
        principals.push(and_principals(and.into_iter().flatten().collect()));
    }
    if rule.from.is_empty() {
        principals.push(and_principals(
            base_principal.into_iter().flatten().collect(),
        ));
    }
    Some(Policy {
        permissions,
        principals,
        ..Default::default()
    })
}

/// The policy no request matches: what a policy without rules is (an ALLOW one allows
/// nothing, as `spec: {}` denies all).
pub fn never() -> Policy {
    Policy {
        permissions: vec![permission_of(permission::Rule::NotRule(Box::new(
            permission_of(permission::Rule::Any(true)),
        )))],
        principals: vec![principal_of(Identifier::NotId(Box::new(principal_of(
            Identifier::Any(true),
        ))))],
        ..Default::default()
    }
}

/// Each value of `list` as the values it stands for, each once, in order.
fn expand(list: &[String], each: impl Fn(&str) -> Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for value in list.iter().flat_map(|v| each(v)) {
        if !out.contains(&value) {
            out.push(value);
        }
    }
    out
}

struct Ctx<'a> {
    for_tcp: bool,
    if_unusable: IfUnusable,
    /// The policy's namespace: a bare service account is in it.
    namespace: &'a str,
}

type Values<'a> = (&'a Vec<String>, &'a Vec<String>);

impl Ctx<'_> {
    /// `values` ORed, and `not` values NOTed, as permissions; `Some(None)` when the field is
    /// empty (or dropped), `None` when the whole rule goes.
    fn permissions(
        &self,
        (values, not): Values<'_>,
        each: impl Fn(&str) -> Option<Permission>,
    ) -> Option<Option<Permission>> {
        let or = |list: &Vec<String>| -> Option<Option<Permission>> {
            let mut out = Vec::new();
            for value in list {
                out.push(each(value)?);
            }
            Some((!out.is_empty()).then(|| or_permissions(out)))
        };
        let yes = or(values)?;
        let no = or(not)?.map(|p| permission_of(permission::Rule::NotRule(Box::new(p))));
        Some(and_some_permissions(yes, no))
    }

    fn principals(
        &self,
        (values, not): Values<'_>,
        each: impl Fn(&str) -> Option<Principal>,
    ) -> Option<Option<Principal>> {
        let or = |list: &Vec<String>| -> Option<Option<Principal>> {
            let mut out = Vec::new();
            for value in list {
                out.push(each(value)?);
            }
            Some((!out.is_empty()).then(|| or_principals(out)))
        };
        let yes = or(values)?;
        let no = or(not)?.map(|p| principal_of(Identifier::NotId(Box::new(p))));
        Some(and_some_principals(yes, no))
    }

    /// An HTTP-only field: on a TCP chain, the rule goes or the field does.
    fn http_permissions(
        &self,
        values: Values<'_>,
        each: impl Fn(&str) -> Option<Permission>,
    ) -> Option<Option<Permission>> {
        if self.for_tcp && !(values.0.is_empty() && values.1.is_empty()) {
            return match self.if_unusable {
                IfUnusable::DropRule => None,
                IfUnusable::DropField => Some(None),
            };
        }
        self.permissions(values, each)
    }

    fn http_principals(
        &self,
        values: Values<'_>,
        each: impl Fn(&str) -> Option<Principal>,
    ) -> Option<Option<Principal>> {
        if self.for_tcp && !(values.0.is_empty() && values.1.is_empty()) {
            return match self.if_unusable {
                IfUnusable::DropRule => None,
                IfUnusable::DropField => Some(None),
            };
        }
        self.principals(values, each)
    }

    /// `sa` or `ns/sa`: the peer's SPIFFE id names that account.
    fn service_account(&self, value: &str) -> Option<Principal> {
        let (ns, sa) = value.split_once('/').unwrap_or((self.namespace, value));
        let pattern = format!(
            "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
            regex::escape(ns),
            regex::escape(sa)
        );
        Some(authenticated(regex(&pattern)))
    }
}

fn permission_of(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn principal_of(identifier: Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn or_permissions(mut list: Vec<Permission>) -> Permission {
    if list.len() == 1 {
        return list.remove(0);
    }
    permission_of(permission::Rule::OrRules(permission::Set { rules: list }))
}

fn and_permissions(list: Vec<Permission>) -> Permission {
    let rules = if list.is_empty() {
        vec![permission_of(permission::Rule::Any(true))]
    } else {
        list
    };
    permission_of(permission::Rule::AndRules(permission::Set { rules }))
}

fn and_some_permissions(a: Option<Permission>, b: Option<Permission>) -> Option<Permission> {
    match (a, b) {
        (Some(a), Some(b)) => Some(permission_of(permission::Rule::AndRules(permission::Set {
            rules: vec![a, b],
        }))),
        (a, b) => a.or(b),
    }
}

fn or_principals(mut list: Vec<Principal>) -> Principal {
    if list.len() == 1 {
        return list.remove(0);
    }
    principal_of(Identifier::OrIds(PrincipalSet { ids: list }))
}

fn and_principals(list: Vec<Principal>) -> Principal {
    let ids = if list.is_empty() {
        vec![principal_of(Identifier::Any(true))]
    } else {
        list
    };
    principal_of(Identifier::AndIds(PrincipalSet { ids }))
}

fn and_some_principals(a: Option<Principal>, b: Option<Principal>) -> Option<Principal> {
    match (a, b) {
        (Some(a), Some(b)) => Some(principal_of(Identifier::AndIds(PrincipalSet {
            ids: vec![a, b],
        }))),
        (a, b) => a.or(b),
    }
}

mod values;
use values::{
    authenticated, bracketed, claim, destination_ip, destination_port, direct_remote_ip, header,
    nested_brackets, path, regex, remote_ip, request_principal, sni, source_namespace,
    source_principal, trust_domain,
};
