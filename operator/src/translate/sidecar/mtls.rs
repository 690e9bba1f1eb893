//! What a workload's inbound side accepts on each port, from its `PeerAuthentication` modes,
//! as istiod's inbound filter chain options (`filterchain_options.go`): under STRICT only
//! mutual TLS, under PERMISSIVE mutual TLS from the mesh (told apart by Istio's ALPN) and
//! plain text alike, under DISABLE plain text only. Mutual TLS is terminated with the
//! workload's certificate (`default`) and the mesh roots (`ROOTCA`) over SDS from its agent,
//! as for ISTIO_MUTUAL clusters.
//!
//! Only a workload whose endpoints carry `security.istio.io/tlsMode: istio` (what Istio's
//! injector puts on every pod it gives a sidecar) has an identity to terminate with; the
//! others' ports accept whatever comes, as before PeerAuthentication was read, unless a
//! policy says STRICT.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsParameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::DETECTED_HTTP;
use super::inbound::Served;
use crate::model::Mesh;
use crate::model::peer_authentication::{MtlsMode, WorkloadMtls};
use crate::translate::cluster::tls::{SDS_CERTIFICATE, SDS_ROOTS, sds_secret};

/// The label Istio's injector puts on a pod it gives a sidecar (and users on a WorkloadEntry
/// or ServiceEntry endpoint with one), and the value saying so.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";

/// ALPN an Istio client offers for HTTP over mutual TLS (set by its `istio.alpn` filter).
const MTLS_HTTP_ALPN: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// ALPN an Istio client's TCP (or not yet told apart) mutual TLS offers.
const MTLS_TCP_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Any ALPN of Istio's mutual TLS.
const MTLS_ALPN: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
const TLS: &str = "tls";
const PLAIN: &str = "raw_buffer";
/// istiod's ciphers for the mesh's mutual TLS.
const CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// Whether `labels` say the workload has a sidecar with an identity.
pub fn has_sidecar_label(labels: &BTreeMap<String, String>) -> bool {
    labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
}

/// What one inbound port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// The workload has no identity: any connection, TLS or not, goes on as it comes.
    Anything,
    /// DISABLE: plain text.
    Plain,
    /// PERMISSIVE: mutual TLS from the mesh, and plain text.
    Both,
    /// STRICT: mutual TLS only.
    Mutual,
}

/// What a workload's inbound ports accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMtls {
    /// The workload's endpoints say it has a sidecar with an identity.
    identity: bool,
    modes: WorkloadMtls,
    /// The trust domains a peer's SPIFFE id must be in (the mesh's and its aliases), as
    /// istiod's `TrustDomainsForValidation`; none: any the roots certify.
    peer_domains: Vec<String>,
}

impl InboundMtls {
    /// For a listener with no workload ports.
    pub fn none() -> Self {
        Self {
            identity: false,
            modes: WorkloadMtls::default(),
            peer_domains: Vec::new(),
        }
    }

    /// For the workload in `namespace` with `labels` (its endpoints' labels together).
    pub fn of(mesh: &Mesh, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        Self {
            identity: has_sidecar_label(labels),
            modes: mesh.workload_mtls(namespace, labels),
            peer_domains: mesh.settings.trust_domains.all().to_vec(),
        }
    }

    /// See the field.
    pub fn peer_domains(&self) -> &[String] {
        &self.peer_domains
    }

    pub fn for_port(&self, port: u32) -> Accepts {
        self.accepts(self.modes.for_port(port))
    }

    /// What the passthrough takes (connections to a port the workload does not declare), as
    /// istiod: the workload's mode (`None`: any port), and each port a port-level mode names
    /// that `declared` does not hold, with that mode.
    pub fn passthrough(&self, declared: impl Fn(u32) -> bool) -> Vec<(Option<u32>, Accepts)> {
        let ports = self
            .modes
            .ports
            .iter()
            .filter(|(port, _)| !declared(**port));
        let ports = ports.map(|(port, mode)| (Some(*port), self.accepts(*mode)));
        std::iter::once((None, self.accepts(self.modes.mode)))
            .chain(ports)
            .collect()
    }

    fn accepts(&self, mode: MtlsMode) -> Accepts {
        match (mode, self.identity) {
            (MtlsMode::Strict, _) => Accepts::Mutual,
            (_, false) => Accepts::Anything,
            (MtlsMode::Permissive, true) => Accepts::Both,
            (MtlsMode::Disable, true) => Accepts::Plain,
        }
    }
}

/// One filter chain of a port: what it matches and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainOption {
    /// Appended to the cluster name to name the chain.
    pub suffix: &'static str,
    /// `tls`, `raw_buffer`, or empty (any).
    pub transport: &'static str,
    pub application_protocols: &'static [&'static str],
    /// An HTTP connection manager, else a TCP proxy.
    pub http: bool,
    /// Terminates mutual TLS.
    pub mtls: bool,
}

const fn option(
    suffix: &'static str,
    transport: &'static str,
    application_protocols: &'static [&'static str],
    http: bool,
    mtls: bool,
) -> ChainOption {
    ChainOption {
        suffix,
        transport,
        application_protocols,
        http,
        mtls,
    }
}

/// The chains of a port served as `served` accepting `accepts`, most specific first.
pub fn chain_options(served: Served, accepts: Accepts) -> Vec<ChainOption> {
    let http = matches!(served, Served::Http { .. });
    match (accepts, served) {
        (Accepts::Anything, Served::Detected) => vec![
            option("http", "", &DETECTED_HTTP, true, false),
            option("", "", &[], false, false),
        ],
        (Accepts::Anything, _) => vec![option("", "", &[], http, false)],
        (Accepts::Plain, Served::Detected) => vec![
            option("http", PLAIN, &DETECTED_HTTP, true, false),
            option("", PLAIN, &[], false, false),
        ],
        (Accepts::Plain, _) => vec![option("", PLAIN, &[], http, false)],
        (Accepts::Both, Served::Http { .. }) => vec![
            option("mtls", TLS, &MTLS_ALPN, true, true),
            option("", PLAIN, &[], true, false),
        ],
        (Accepts::Both, Served::Tcp) => vec![
            option("mtls", TLS, &MTLS_ALPN, false, true),
            // TLS the application itself speaks (no Istio ALPN): passed on as it is.
            option("tls", TLS, &[], false, false),
            option("", PLAIN, &[], false, false),
        ],
        (Accepts::Both, Served::Detected) => vec![
            option("mtlshttp", TLS, &MTLS_HTTP_ALPN, true, true),
            option("http", PLAIN, &DETECTED_HTTP, true, false),
            option("mtls", TLS, &MTLS_TCP_ALPN, false, true),
            option("", PLAIN, &[], false, false),
            option("tls", TLS, &[], false, false),
        ],
        (Accepts::Mutual, Served::Detected) => vec![
            option("mtlshttp", TLS, &MTLS_HTTP_ALPN, true, true),
            option("mtls", TLS, &[], false, true),
        ],
        (Accepts::Mutual, _) => vec![option("mtls", TLS, &[], http, true)],
    }
}

/// The mutual TLS a workload's sidecar terminates: its certificate, a client certificate the
/// mesh roots certify required, TLS 1.2 to 1.3 with istiod's ciphers; ALPN `h2` and
/// `http/1.1` for HTTP (never Istio's own, which would stop HTTP/2 being negotiated), with
/// `istio-peer-exchange` first for TCP.
///
/// A client's certificate must name a SPIFFE id in one of `peer_domains` (URI SAN prefix
/// `spiffe://<domain>/`), as istiod checks it; none: any certificate the roots certify.
pub fn server_socket(http: bool, peer_domains: &[String]) -> TransportSocket {
    let alpn: &[&str] = if http {
        &["h2", "http/1.1"]
    } else {
        &["istio-peer-exchange", "h2", "http/1.1"]
    };
    let context = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                cipher_suites: CIPHERS.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            alpn_protocols: alpn.iter().map(|p| p.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_CERTIFICATE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peer_domains
                            .iter()
                            .map(|d| uri_prefix(&format!("spiffe://{d}/")))
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(SDS_ROOTS)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(context))),
    }
}

/// A URI SAN starting with `prefix`.
fn uri_prefix(prefix: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(prefix.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The URI SAN prefixes a sidecar's mutual TLS requires of a client.
    fn required_prefixes(socket: &TransportSocket) -> Vec<String> {
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("no typed config");
        };
        let context = DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        let Some(ValidationContextType::CombinedValidationContext(combined)) = context
            .common_tls_context
            .and_then(|c| c.validation_context_type)
        else {
            panic!("no combined validation context");
        };
        let matchers = combined
            .default_validation_context
            .expect("a default context")
            .match_typed_subject_alt_names;
        matchers
            .into_iter()
            .map(|m| {
                assert_eq!(m.san_type, subject_alt_name_matcher::SanType::Uri as i32);
                match m.matcher.and_then(|m| m.match_pattern) {
                    Some(MatchPattern::Prefix(p)) => p,
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    /// istiod's `TrustDomainsForValidation`: a client's SPIFFE id must be in the mesh's trust
    /// domain or an alias; without trust domains, any certificate of the roots.
    #[test]
    fn clients_must_be_of_the_meshs_trust_domains() {
        let domains = ["example.org".to_string(), "old.example".to_string()];
        assert_eq!(
            required_prefixes(&server_socket(true, &domains)),
            ["spiffe://example.org/", "spiffe://old.example/"]
        );
        assert_eq!(
            required_prefixes(&server_socket(false, &[])),
            Vec::<String>::new()
        );
    }
}
