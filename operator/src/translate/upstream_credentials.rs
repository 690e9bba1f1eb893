//! DestinationRule `tls.credentialName`: the Secrets gateway proxies originate SIMPLE or
//! MUTUAL TLS with (Istio's egress gateway with TLS origination). The cluster's TLS context
//! names SDS secrets `kubernetes://<name>` (client certificate and key) and
//! `kubernetes://<name>-cacert` (the CA the server must chain to, from Secret
//! `<name>-cacert` or the CA entry of Secret `<name>`, as for gateway servers); this module
//! serves them. istiod looks a rule's Secret up in the namespace of each gateway proxy
//! reading the rule, so each namespace holding such a Secret has it served to its gateway
//! proxies (selector: role router, that namespace). Sidecars never get these clusters' TLS
//! (see `cluster::tls`).
//!
//! Rebuilt whole when a rule naming a credential or a Secret of such a name changes: a scan
//! of the Secrets per credential name, nothing per proxy.

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::ObjectKey;
use capstan_xds::{Role, Selector};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::index::NsName;
use crate::model::traffic_policy::{ClientTls, Policies, TlsMode};
use crate::model::{Mesh, Problem};
use crate::translate::gateway::credentials::{
    CredentialError, SecretLookup, ca_secret, certificate_secret, client_ca,
};

/// One place a DestinationRule names a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub rule: ObjectKey,
    /// Where in the rule, e.g. `spec.trafficPolicy.tls`.
    pub field: String,
    pub host: String,
    pub credential: String,
    pub mutual: bool,
    pub verifies: bool,
}

/// The credentials the DestinationRules of `host` (for every namespace's proxies) name.
pub fn uses_of(mesh: &Mesh, host: &str) -> Vec<CredentialUse> {
    let Some(rules) = mesh.destination_rules.get(host) else {
        return Vec::new();
    };
    let rules = rules
        .everyone
        .iter()
        .chain(rules.by_namespace.values().flatten());
    let mut out: Vec<CredentialUse> = Vec::new();
    for rule in rules {
        let Some(policies) = &rule.traffic_policy else {
            continue;
        };
        for found in uses_in(&rule.origin, host, policies) {
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    out
}

/// Where rule `origin` for `host` names credentials.
pub fn uses_in(origin: &ObjectKey, host: &str, policies: &Policies) -> Vec<CredentialUse> {
    (policies.credentials.iter())
        .filter_map(|(field, tls)| {
            Some(CredentialUse {
                rule: origin.clone(),
                field: field.clone(),
                host: host.to_string(),
                credential: tls.credential()?.to_string(),
                mutual: tls.mode == TlsMode::Mutual,
                verifies: verifies(tls),
            })
        })
        .collect()
}

fn verifies(tls: &ClientTls) -> bool {
    !tls.insecure_skip_verify
}

/// The Secret resources for gateway proxies, and what cannot be served.
#[derive(Debug, Default)]
pub struct UpstreamCredentials {
    pub secrets: Vec<(Selector, Secret)>,
    pub problems: Vec<Problem>,
}

/// The Secrets every use needs, per namespace holding one of that name.
pub fn build<'a>(
    secrets: &impl SecretLookup,
    uses: impl IntoIterator<Item = &'a CredentialUse>,
) -> UpstreamCredentials {
    let mut by_name: BTreeMap<&str, Vec<&CredentialUse>> = BTreeMap::new();
    for u in uses {
        by_name.entry(u.credential.as_str()).or_default().push(u);
    }
    let mut out = UpstreamCredentials::default();
    for (name, uses) in by_name {
        let ca_name = format!("{name}-cacert");
        let mut namespaces = secrets.namespaces_with(name);
        namespaces.extend(secrets.namespaces_with(&ca_name));
        let namespaces: BTreeSet<String> = namespaces.into_iter().collect();
        if namespaces.is_empty() {
            for u in &uses {
                out.problems.push(problem(
                    u,
                    format!(
                        "no Secret {name} (or {ca_name}) in any namespace; gateway proxies \
                         reading this rule originate TLS to {} once one is in their namespace",
                        u.host
                    ),
                ));
            }
            continue;
        }
        let mutual = uses.iter().any(|u| u.mutual);
        let verifies = uses.iter().any(|u| u.verifies);
        for namespace in &namespaces {
            let namespace = namespace.as_str();
            let selector = Selector {
                role: Some(Role::Router),
                namespace: Some(namespace.into()),
                ..Selector::default()
            };
            let id = NsName::new(namespace, name);
            let certificate = match secrets.secret(&id) {
                Some(Ok(secret)) => secret
                    .certificate
                    .as_ref()
                    .ok_or(CredentialError::NoCertificate(id)),
                Some(Err(err)) => Err(CredentialError::Unusable(id, err.clone())),
                None => Err(CredentialError::Missing(id)),
            };
            match certificate {
                Ok(pair) => out
                    .secrets
                    .push((selector.clone(), certificate_secret(name, pair))),
                Err(err) if mutual => {
                    for u in uses.iter().filter(|u| u.mutual) {
                        out.problems.push(unserved(u, namespace, &err));
                    }
                }
                Err(_) => {}
            }
            let mut consulted = BTreeSet::new();
            match client_ca(secrets, namespace, name, &mut consulted) {
                Ok((_, ca, crl)) => out.secrets.push((selector, ca_secret(name, ca, crl))),
                Err(err) if verifies => {
                    for u in uses.iter().filter(|u| u.verifies) {
                        out.problems.push(unserved(u, namespace, &err));
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

fn problem(u: &CredentialUse, message: String) -> Problem {
    Problem {
        object: u.rule.clone(),
        field: format!("{}.credentialName", u.field),
        message,
    }
}

fn unserved(u: &CredentialUse, namespace: &str, err: &CredentialError) -> Problem {
    let why = match err {
        // The gateway servers' wording speaks of client certificates.
        CredentialError::NoClientCa { separate, same } => format!(
            "no CA to verify the server with: there is no Secret {separate} and Secret {same} \
             has no ca.crt or cacert"
        ),
        other => other.to_string(),
    };
    problem(
        u,
        format!(
            "{why}; gateway proxies in namespace {namespace} cannot originate TLS to {}",
            u.host
        ),
    )
}
