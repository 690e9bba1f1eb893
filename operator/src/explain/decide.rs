//! The decision capstan's config leads to for one call: how the caller's sidecar reaches the
//! workload (mutual TLS or not), whether the workload's sidecar takes that connection
//! (PeerAuthentication), then its RBAC filters in order (AuthorizationPolicy: AUDIT, DENY,
//! ALLOW), evaluated on the very rules the proxies get.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;

use super::rbac_eval::{Request, policy_matches};
use crate::model::sidecar_scope::{Covers, IngressPort, IngressVariants};
use crate::model::traffic_policy::TlsMode;
use crate::model::{Mesh, Port, Service};
use crate::translate::authorization::{
    CustomCheck, workload_custom, workload_rbac, workload_shadow_rbac,
};
use crate::translate::{Accepts, InboundMtls, auto_mtls, policy_in, takes_mutual_tls};

/// Who calls.
#[derive(Debug, Clone)]
pub struct Caller {
    pub namespace: String,
    /// `Some`: a workload with a sidecar running as this service account; `None`: a client
    /// without a sidecar (plain text, no identity).
    pub service_account: Option<String>,
    /// The caller's address, as the workload's sidecar sees it.
    pub address: Option<IpAddr>,
}

/// What is asked.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub path: Option<String>,
    pub method: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// `iss` and `sub` of a valid token the caller presents.
    pub jwt: BTreeMap<String, String>,
    /// What a CUSTOM policy's external authorizer answers, if asked (capstan cannot ask).
    pub ext_authz_allows: bool,
}

/// How the connection fares before any request is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    MutualTls {
        peer: String,
    },
    Plain,
    /// The workload's sidecar has no filter chain for it: the connection is closed.
    Refused(String),
}

/// The verdict on one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub address: String,
    pub port: u32,
    /// Why the caller's sidecar sends what it sends, and the workload's side accepts what.
    pub client_tls: String,
    pub server_mode: String,
    pub transport: Transport,
    /// The CUSTOM policies' check, first: its provider (none: unusable, its rules deny),
    /// and the first of its rules matching (if any).
    pub custom: Option<(Option<String>, Option<String>)>,
    /// Each RBAC filter on the way, with the first of its rules matching (if any).
    pub filters: Vec<(RbacAction, Option<String>)>,
    /// The dry-run policies' rules (`istio.io/dry-run`) per action, with the first matching:
    /// what Envoy counts and does not enforce.
    pub dry_run: Vec<(RbacAction, Option<String>)>,
    pub allowed: bool,
    /// Why, and the rule that decided (an RBAC policy name), if one did.
    pub because: String,
    pub rule: Option<String>,
    /// Checked as an HTTP request (else as a TCP connection).
    pub http: bool,
}

/// The verdict for every workload of `service` on `port`.
pub fn explain(
    mesh: &Mesh,
    caller: &Caller,
    service: &Service,
    port: &Port,
    call: &Call,
) -> Vec<Verdict> {
    let namespace = service.namespace();
    let ingress_variants = mesh.sidecar_scopes.ingress_variants();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for endpoint in &service.endpoints {
        if !seen.insert(endpoint.address.clone()) {
            continue;
        }
        let target = endpoint.port_for(port);
        let (mtls_out, client_tls) = client_mutual_tls(mesh, caller, service, port, || {
            takes_mutual_tls(mesh, namespace, endpoint, target)
        });
        let inbound = InboundMtls::of(mesh, namespace, &endpoint.labels);
        // A Sidecar listing ingress listeners: its ports instead of the service's.
        let ingress = sidecar_ingress(&ingress_variants, namespace, &endpoint.labels);
        let listed = ingress.iter().find(|p| p.port == target);
        // Not listed: the passthrough takes it, held to the workload's mode and policies
        // as the listed ports are, HTTP by what the sidecar sees.
        let passthrough = !ingress.is_empty() && listed.is_none();
        let accepts = match listed {
            // Its own `tls` is what the port terminates.
            Some(listener) if listener.tls.is_some() => Accepts::Anything,
            _ => inbound.for_port(target),
        };
        let server_mode = match accepts {
            Accepts::Mutual => "mutual TLS only (STRICT)",
            Accepts::Both => "the mesh's mutual TLS and plain text (PERMISSIVE)",
            Accepts::Plain => "plain text only (DISABLE)",
            Accepts::Anything => "any connection, passed on undecrypted (no sidecar label)",
        }
        .to_string();
        let server_mode = if passthrough {
            format!(
                "{server_mode}, on the passthrough (its Sidecar's ingress listeners do not list \
                 this port)"
            )
        } else {
            server_mode
        };
        let transport = match (mtls_out, accepts) {
            (true, Accepts::Plain) => Transport::Refused(
                "mutual TLS to a port whose PeerAuthentication is DISABLE".into(),
            ),
            (false, Accepts::Mutual) => {
                Transport::Refused("plain text to a port whose PeerAuthentication is STRICT".into())
            }
            (true, _) => Transport::MutualTls {
                peer: caller_identity(mesh, caller),
            },
            (false, _) => Transport::Plain,
        };
        let mut verdict = Verdict {
            address: endpoint.address.to_string(),
            port: target,
            client_tls,
            server_mode,
            transport: transport.clone(),
            custom: None,
            filters: Vec::new(),
            dry_run: Vec::new(),
            allowed: false,
            because: String::new(),
            rule: None,
            http: port.is_http(),
        };
        if let Transport::Refused(why) = &transport {
            verdict.because = why.clone();
            out.push(verdict);
            continue;
        }
        // A port without a declared protocol is HTTP when the sidecar sees HTTP: plain text
        // it inspects; mutual TLS from capstan's sidecars carries no per-request HTTP ALPN
        // (Istio's `istio.alpn` filter), so it takes the TCP chain.
        let http = match port.protocol {
            Some(_) if !passthrough => port.is_http(),
            _ => !matches!(transport, Transport::MutualTls { .. }),
        };
        let request = Request {
            peer: match &transport {
                Transport::MutualTls { peer } => Some(peer.clone()),
                _ => None,
            },
            source: caller.address,
            destination: endpoint.address.parse().ok(),
            port: target,
            headers: request_headers(service, call, http),
            jwt: call.jwt.clone(),
        };
        authorize(
            mesh,
            namespace,
            &endpoint.labels,
            !http,
            &request,
            call.ext_authz_allows,
            &mut verdict,
        );
        verdict.http = http;
        out.push(verdict);
    }
    out
}

/// The ingress listeners of the Sidecar in force for the workload in `namespace` with
/// `labels` (empty: none, its service ports apply).
fn sidecar_ingress<'a>(
    variants: &'a IngressVariants,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> &'a [IngressPort] {
    let workload = Covers::Workload(namespace.to_string(), labels.clone()).selector();
    variants.for_proxies(&workload)
}

/// Whether the caller's sidecar originates the mesh's mutual TLS, and why.
fn client_mutual_tls(
    mesh: &Mesh,
    caller: &Caller,
    service: &Service,
    port: &Port,
    endpoint_takes_it: impl Fn() -> bool,
) -> (bool, String) {
    if caller.service_account.is_none() {
        return (false, "plain text: the caller has no sidecar".into());
    }
    let rule = mesh.rule_for(&service.host, Some(&caller.namespace));
    if let Some(tls) = policy_in(rule, None, port.number).tls {
        let origin = rule.map_or(String::new(), |r| format!(" ({})", r.origin));
        return match tls.mode {
            TlsMode::IstioMutual => (true, format!("ISTIO_MUTUAL by its DestinationRule{origin}")),
            mode => (
                false,
                format!("{mode:?} by its DestinationRule{origin}: not the mesh's mutual TLS"),
            ),
        };
    }
    if auto_mtls(mesh, service) && endpoint_takes_it() {
        (
            true,
            "auto mTLS: the endpoint has a sidecar and takes it on this port".into(),
        )
    } else {
        (
            false,
            "plain text: auto mTLS does not apply (no sidecar label, outside the mesh, or DISABLE)"
                .into(),
        )
    }
}

fn caller_identity(mesh: &Mesh, caller: &Caller) -> String {
    let account = caller.service_account.as_deref().unwrap_or("default");
    let trust_domain = mesh.settings.trust_domains.local();
    capstan_ca::SpiffeId::new(trust_domain, &caller.namespace, account).to_string()
}

fn request_headers(service: &Service, call: &Call, http: bool) -> BTreeMap<String, String> {
    let mut headers: BTreeMap<String, String> = call
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if http {
        headers.insert(
            ":path".into(),
            call.path.clone().unwrap_or_else(|| "/".into()),
        );
        headers.insert(
            ":method".into(),
            call.method.clone().unwrap_or_else(|| "GET".into()),
        );
        headers
            .entry(":authority".into())
            .or_insert_with(|| service.host.clone());
    }
    headers
}

/// Runs the workload's filters in order: the CUSTOM check (a matching rule puts the call to
/// the external authorizer, whose answer `ext_authz_allows` stands for), then the RBAC
/// filters: the first DENY match refuses, then, with ALLOW policies, the first ALLOW match
/// lets through (none: refused).
fn authorize(
    mesh: &Mesh,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    for_tcp: bool,
    request: &Request,
    ext_authz_allows: bool,
    verdict: &mut Verdict,
) {
    verdict.allowed = true;
    verdict.because = "no AuthorizationPolicy refuses it".into();
    verdict.rule = None;
    let first_match =
        |rules: &BTreeMap<String, envoy_types::pb::envoy::config::rbac::v3::Policy>| {
            rules
                .iter()
                .find(|(_, p)| policy_matches(p, request))
                .map(|(name, _)| name.clone())
        };
    // Counted whatever the enforced filters decide.
    for (action, policies) in workload_shadow_rbac(mesh, namespace, labels, for_tcp) {
        verdict.dry_run.push((action, first_match(&policies)));
    }
    match workload_custom(mesh, namespace, labels, for_tcp) {
        None => {}
        Some(CustomCheck::Deny { reason, rules }) => {
            let matched = first_match(&rules);
            verdict.custom = Some((None, matched.clone()));
            if let Some(name) = matched {
                verdict.allowed = false;
                verdict.because =
                    format!("a CUSTOM rule matches it and its provider cannot be used ({reason})");
                verdict.rule = Some(name);
                return;
            }
        }
        Some(CustomCheck::Ask { provider, rules }) => {
            let matched = first_match(&rules);
            verdict.custom = Some((Some(provider.clone()), matched.clone()));
            if let Some(name) = matched {
                verdict.rule = Some(name);
                if !ext_authz_allows {
                    verdict.allowed = false;
                    verdict.because = format!(
                        "a CUSTOM rule puts it to the external authorizer {provider:?}, which \
                         denies it (as --ext-authz deny says)"
                    );
                    return;
                }
                verdict.because = format!(
                    "the external authorizer {provider:?} allows it (as --ext-authz allow \
                     says), and no AuthorizationPolicy refuses it"
                );
            }
        }
    }
    for (action, policies) in workload_rbac(mesh, namespace, labels, for_tcp) {
        let matched = policies
            .iter()
            .find(|(_, p)| policy_matches(p, request))
            .map(|(name, _)| name.clone());
        verdict.filters.push((action, matched.clone()));
        match (action, matched) {
            (RbacAction::Deny, Some(name)) => {
                verdict.allowed = false;
                verdict.because = "a DENY rule matches it".into();
                verdict.rule = Some(name);
                return;
            }
            (RbacAction::Allow, Some(name)) => {
                verdict.because = "an ALLOW rule matches it".into();
                verdict.rule = Some(name);
            }
            (RbacAction::Allow, None) => {
                verdict.allowed = false;
                verdict.because = "no ALLOW policy matches it".into();
            }
            _ => {}
        }
    }
}
