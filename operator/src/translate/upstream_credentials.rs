//! DestinationRule `tls.credentialName`: the Secrets gateway proxies originate SIMPLE or
//! MUTUAL TLS with (Istio's egress gateway with TLS origination). The cluster's TLS context
//! names SDS secrets `kubernetes://<name>` (client certificate and key) and
//! `kubernetes://<name>-cacert` (the CA the server must chain to, from Secret
//! `<name>-cacert` or the CA entry of Secret `<name>`, as for gateway servers); this module
//! serves them. istiod looks a rule's Secret up in the namespace of each gateway proxy
//! reading the rule, so each namespace holding such a Secret has it served to its gateway
//! proxies (selector: role router, that namespace). Sidecars get these clusters' TLS only
//! from a rule with a `workloadSelector`, which hands them the Secret of its own namespace
//! (selector: that namespace and the rule's labels); see `cluster::tls`.
//!
//! Rebuilt whole when a rule naming a credential or a Secret of such a name changes: a scan
//! of the Secrets per credential name, nothing per proxy.

use std::collections::{BTreeMap, BTreeSet};

use capstan_crds::ObjectKey;
use capstan_xds::{Role, Selector};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::index::NsName;
use crate::model::traffic_policy::{Policies, TlsMode};
use crate::model::{Mesh, Problem};
use crate::translate::gateway::credentials::{
    CredentialError, SecretLookup, ca_secret, certificate_in, certificate_secret, client_ca,
};

/// One place a DestinationRule names a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub rule: ObjectKey,
    /// Where in the rule, e.g. `spec.trafficPolicy.tls`.
    pub field: String,
    pub host: String,
    pub credential: String,
    /// MUTUAL: the Secret must hold a certificate and key.
    pub mutual: bool,
    /// Not `insecureSkipVerify`: the Secret (or its `-cacert`) must hold a CA.
    pub verifies: bool,
    /// The rule's `workloadSelector`: its Secret goes to the workloads it selects, in its
    /// namespace, rather than to gateway proxies.
    pub workload: Option<Labels>,
}

/// The credentials the DestinationRules of `host` (for every namespace's proxies) name.
pub fn uses_of(mesh: &Mesh, host: &str) -> Vec<CredentialUse> {
    let Some(rules) = mesh.destination_rules.get(host) else {
        return Vec::new();
    };
    let rules = (rules.everyone.iter())
        .chain(rules.by_namespace.values().flatten())
        .chain(rules.by_workload.values().flatten());
    let mut out: Vec<CredentialUse> = Vec::new();
    for rule in rules {
        let Some(policies) = &rule.traffic_policy else {
            continue;
        };
        for found in uses_in(
            &rule.origin,
            host,
            policies,
            rule.workload_selector.as_ref(),
        ) {
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    out
}

/// Where rule `origin` for `host` (selecting `workload`, if any) names credentials.
pub fn uses_in(
    origin: &ObjectKey,
    host: &str,
    policies: &Policies,
    workload: Option<&Labels>,
) -> Vec<CredentialUse> {
    (policies.credentials.iter())
        .filter_map(|(field, tls)| {
            Some(CredentialUse {
                rule: origin.clone(),
                field: field.clone(),
                host: host.to_string(),
                credential: tls.credential()?.to_string(),
                mutual: tls.mode == TlsMode::Mutual,
                verifies: !tls.insecure_skip_verify,
                workload: workload.cloned(),
            })
        })
        .collect()
}

/// The Secret resources to serve, and what cannot be served.
#[derive(Debug, Default)]
pub struct UpstreamCredentials {
    pub secrets: Vec<(Selector, Secret)>,
    pub problems: Vec<Problem>,
}

/// The Secrets every use needs: for gateway proxies, per namespace holding one of that
/// name; for the workloads a rule selects, from the rule's own namespace.
pub fn build<'a>(
    secrets: &impl SecretLookup,
    uses: impl IntoIterator<Item = &'a CredentialUse>,
) -> UpstreamCredentials {
    let mut for_gateways: BTreeMap<&str, Vec<&CredentialUse>> = BTreeMap::new();
    let mut for_workloads: BTreeMap<(&str, &str, &Labels), Vec<&CredentialUse>> = BTreeMap::new();
    for u in uses {
        match &u.workload {
            None => for_gateways
                .entry(u.credential.as_str())
                .or_default()
                .push(u),
            Some(labels) => {
                let key = (u.credential.as_str(), u.rule.namespace.as_str(), labels);
                for_workloads.entry(key).or_default().push(u);
            }
        }
    }
    let mut out = UpstreamCredentials::default();
    for (name, uses) in for_gateways {
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
        for namespace in &namespaces {
            let selector = Selector {
                role: Some(Role::Router),
                namespace: Some(namespace.as_str().into()),
                ..Selector::default()
            };
            serve(secrets, (namespace, name), selector, &uses, &mut out);
        }
    }
    for ((name, namespace, labels), uses) in for_workloads {
        let selector = Selector {
            namespace: Some(namespace.into()),
            labels: labels.clone(),
            ..Selector::default()
        };
        serve(secrets, (namespace, name), selector, &uses, &mut out);
    }
    out
}

type Labels = BTreeMap<String, String>;

/// Serves credential `name` of `namespace` to `to`; what it lacks for `uses` is reported.
fn serve(
    secrets: &impl SecretLookup,
    (namespace, name): (&str, &str),
    to: Selector,
    uses: &[&CredentialUse],
    out: &mut UpstreamCredentials,
) {
    let mutual = uses.iter().any(|u| u.mutual);
    let verifies = uses.iter().any(|u| u.verifies);
    let id = NsName::new(namespace, name);
    match certificate_in(secrets, &id) {
        Ok(pair) => out
            .secrets
            .push((to.clone(), certificate_secret(name, pair))),
        Err(err) if mutual => {
            for u in uses.iter().filter(|u| u.mutual) {
                out.problems.push(unserved(u, namespace, &err));
            }
        }
        Err(_) => {}
    }
    let mut consulted = BTreeSet::new();
    match client_ca(secrets, namespace, name, &mut consulted) {
        Ok((_, ca, crl)) => out.secrets.push((to, ca_secret(name, ca, crl))),
        Err(err) if verifies => {
            for u in uses.iter().filter(|u| u.verifies) {
                out.problems.push(unserved(u, namespace, &err));
            }
        }
        Err(_) => {}
    }
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
    let who = match u.workload {
        None => format!("gateway proxies in namespace {namespace}"),
        Some(_) => "the workloads this rule selects".to_string(),
    };
    problem(
        u,
        format!("{why}; {who} cannot originate TLS to {}", u.host),
    )
}
