//! `tls` as istiod's `buildUpstreamClusterTLSContext`: an `UpstreamTlsContext` transport
//! socket. ISTIO_MUTUAL takes the workload certificate (`default`) and the roots (`ROOTCA`)
//! over SDS from the agent's `sds-grpc` cluster, verifies the service accounts of the
//! destination's endpoints, and advertises Istio's ALPN. SIMPLE and MUTUAL read the files the
//! DestinationRule names (Envoy reads them itself: istiod has its agent serve them over SDS
//! instead, which capstan's agent does not do), or, with `credentialName`, the Secret's
//! certificate and CA, which capstan serves over SDS on the ADS stream
//! (`translate::upstream_credentials`). As istiod, only gateway proxies read a Secret: a
//! sidecar's cluster for such a rule originates no TLS at all (istiod keeps Secrets from
//! every sidecar a rule without a `workloadSelector` reaches).

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, TransportSocket,
    UpstreamHttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::util::pack_any;
use tracing::warn;

use crate::mesh_config::TrustDomains;
use crate::model::Service;
use crate::model::service::Origin;
use crate::model::traffic_policy::{ClientTls, TlsMode};
use crate::translate::sidecar::mtls::TLS_MODE_ISTIO;

/// The cluster through which the agent serves SDS, and its secrets' names (as Istio's).
pub const SDS_CLUSTER: &str = "sds-grpc";
pub const SDS_CERTIFICATE: &str = "default";
pub const SDS_ROOTS: &str = "ROOTCA";
/// Where istiod's agent finds the "system" roots when SIMPLE or MUTUAL names no CA.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// ALPN of in-mesh mTLS, with metadata exchange (istiod's `ALPNInMeshWithMxc`, `...H2WithMxc`).
const ALPN_IN_MESH: &[&str] = &["istio-peer-exchange", "istio"];
const ALPN_IN_MESH_H2: &[&str] = &["istio-peer-exchange", "istio", "h2"];

/// The cluster TLS is originated for.
pub struct Target<'a> {
    pub service: &'a Service,
    pub port: u32,
    pub subset: Option<&'a str>,
    /// The mesh's: the identities of the service's accounts are in them.
    pub trust_domains: &'a TrustDomains,
    /// The cluster speaks HTTP/2 upstream.
    pub http2: bool,
    /// The cluster is for proxies a `credentialName` applies to: gateways, and the workloads
    /// a rule's `workloadSelector` picks.
    pub reads_secrets: bool,
}

pub fn apply(
    cluster: &mut Cluster,
    options: &mut HttpProtocolOptions,
    tls: &ClientTls,
    target: &Target<'_>,
) {
    let context = match tls.mode {
        TlsMode::Disable => return,
        TlsMode::IstioMutual => istio_mutual(tls, target),
        TlsMode::Simple | TlsMode::Mutual if tls.credential().is_some() => {
            if !target.reads_secrets {
                return;
            }
            set_auto_sni_and_san_validation(options, tls);
            secret_tls(tls, target)
        }
        TlsMode::Simple | TlsMode::Mutual => {
            let mutual = tls.mode == TlsMode::Mutual;
            if mutual && (tls.client_certificate.is_empty() || tls.private_key.is_empty()) {
                // As istiod: no TLS context at all (validation rejects such a rule).
                warn!(cluster = %cluster.name, "MUTUAL TLS without a client certificate and key");
                return;
            }
            set_auto_sni_and_san_validation(options, tls);
            file_tls(tls, target, mutual)
        }
    };
    cluster.transport_socket = Some(TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(context))),
    });
}

/// Auto mTLS (istiod's, `enableAutoMtls`): where no DestinationRule sets TLS, the mesh's
/// mutual TLS to endpoints whose load-assignment metadata says they take it
/// (`envoy.transport_socket_match: {tlsMode: istio}`, see `endpoint`), plain text to the
/// rest, through Envoy's transport socket matches.
pub fn apply_auto(cluster: &mut Cluster, target: &Target<'_>) {
    let context = istio_mutual(&ClientTls::default(), target);
    let mut tls_mode = Struct::default();
    tls_mode.fields.insert(
        TLS_MODE_KEY.into(),
        Value {
            kind: Some(Kind::StringValue(TLS_MODE_ISTIO.into())),
        },
    );
    cluster.transport_socket_matches = vec![
        TransportSocketMatch {
            name: format!("tlsMode-{TLS_MODE_ISTIO}"),
            r#match: Some(tls_mode),
            transport_socket: Some(TransportSocket {
                name: TLS_SOCKET.into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(context))),
            }),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(RawBuffer::default()))),
            }),
        },
    ];
}

/// The endpoint metadata key auto mTLS matches on (under
/// `envoy.transport_socket_match`), and the value saying the endpoint takes mutual TLS.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_MODE_KEY: &str = "tlsMode";

fn common_defaults() -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// istiod's SDS config for the workload's secrets: gRPC to `sds-grpc`, no initial wait.
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    set_node_on_first_message_only: true,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: SDS_CLUSTER.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(Duration::default()),
            ..Default::default()
        }),
    }
}

/// Exact matchers for subject alt names: `spiffe://…` (any `scheme://`) as URI SANs, IP
/// addresses as IP SANs, anything else as DNS SANs. (istiod uses Envoy's deprecated untyped
/// matcher, which accepts a value in any SAN type.)
pub fn san_matchers(names: &[String]) -> Vec<SubjectAltNameMatcher> {
    names
        .iter()
        .map(|name| {
            let san_type = if name.contains("://") {
                SanType::Uri
            } else if name.parse::<IpAddr>().is_ok() {
                SanType::IpAddress
            } else {
                SanType::Dns
            };
            SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(name.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// `spiffe://<trust domain>/ns/<ns>/sa/<sa>` of every service account the service's
/// endpoints run as, and its ServiceEntry's `subjectAltNames`, in the mesh's trust domain
/// and each alias (istiod's service accounts of a service), sorted.
pub fn service_accounts(service: &Service, trust_domains: &TrustDomains) -> Vec<String> {
    let namespace = service.namespace();
    let of_endpoints = service
        .endpoints
        .iter()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| {
            let sa = &e.service_account;
            if sa.starts_with("spiffe://") {
                sa.to_string()
            } else {
                trust_domains.identity(namespace, sa)
            }
        });
    let accounts: BTreeSet<String> = of_endpoints
        .chain(service.subject_alt_names.iter().cloned())
        .collect();
    if trust_domains.all().len() == 1 {
        return accounts.into_iter().collect();
    }
    let expanded: BTreeSet<String> = (accounts.iter())
        .flat_map(|id| trust_domains.expand_identity(id))
        .collect();
    expanded.into_iter().collect()
}

/// istiod's SNI for in-mesh mTLS: `outbound_.<port>_.<subset>_.<host>`.
pub fn istio_sni(port: u32, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

fn istio_mutual(tls: &ClientTls, target: &Target<'_>) -> UpstreamTlsContext {
    let sans = if tls.subject_alt_names.is_empty() {
        service_accounts(target.service, target.trust_domains)
    } else {
        tls.subject_alt_names.clone()
    };
    let sni = if tls.sni.is_empty() {
        istio_sni(target.port, target.subset, &target.service.host)
    } else {
        tls.sni.clone()
    };
    let alpn = if target.http2 {
        ALPN_IN_MESH_H2
    } else {
        ALPN_IN_MESH
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_CERTIFICATE)],
            validation_context_type: Some(combined_validation(&sans, sds_secret(SDS_ROOTS))),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..common_defaults()
        }),
        sni,
        ..Default::default()
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// SIMPLE or MUTUAL with `credentialName`: the client certificate (MUTUAL) and the CA from
/// SDS secrets `kubernetes://<name>` and `kubernetes://<name>-cacert`, as istiod's
/// `ApplyCustomSDSToClientCommonTLSContext`.
fn secret_tls(tls: &ClientTls, target: &Target<'_>) -> UpstreamTlsContext {
    use crate::translate::gateway::credentials::{ca_sds_name, certificate_sds_name, sds_config};
    let name = tls.credential_name.as_str();
    let mut common = common_defaults();
    if tls.mode == TlsMode::Mutual {
        common.tls_certificate_sds_secret_configs = vec![sds_config(certificate_sds_name(name))];
    }
    if !tls.insecure_skip_verify {
        let sans = expected_sans(tls, target);
        common.validation_context_type =
            Some(combined_validation(&sans, sds_config(ca_sds_name(name))));
    }
    with_h2_alpn(common, tls, target)
}

/// SIMPLE and MUTUAL contexts: `h2` advertised for HTTP/2 clusters, the rule's SNI.
fn with_h2_alpn(
    mut common: CommonTlsContext,
    tls: &ClientTls,
    target: &Target<'_>,
) -> UpstreamTlsContext {
    if target.http2 {
        common.alpn_protocols = vec!["h2".into()];
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone(),
        ..Default::default()
    }
}

/// Validation by `sans` against the CA of SDS secret `ca`.
fn combined_validation(sans: &[String], ca: SdsSecretConfig) -> ValidationContextType {
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: san_matchers(sans),
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(ca),
        ..Default::default()
    })
}

/// The SANs the server's certificate must carry: the rule's, or, for a ServiceEntry's
/// destination when it names none, its endpoints' service accounts (istiod: for its
/// "External" registry).
fn expected_sans(tls: &ClientTls, target: &Target<'_>) -> Vec<String> {
    if tls.subject_alt_names.is_empty() && matches!(target.service.origin, Origin::Istio(_)) {
        service_accounts(target.service, target.trust_domains)
    } else {
        tls.subject_alt_names.clone()
    }
}

fn file_tls(tls: &ClientTls, target: &Target<'_>, mutual: bool) -> UpstreamTlsContext {
    let mut common = common_defaults();
    if mutual {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: file(&tls.client_certificate),
            private_key: file(&tls.private_key),
            ..Default::default()
        }];
    }
    let sans = expected_sans(tls, target);
    common.validation_context_type = Some(ValidationContextType::ValidationContext(
        if tls.insecure_skip_verify {
            CertificateValidationContext::default()
        } else {
            let ca = if tls.ca_certificates.is_empty() {
                SYSTEM_ROOTS
            } else {
                tls.ca_certificates.as_str()
            };
            CertificateValidationContext {
                trusted_ca: file(ca),
                match_typed_subject_alt_names: san_matchers(&sans),
                crl: (!tls.ca_crl.is_empty())
                    .then(|| file(&tls.ca_crl))
                    .flatten(),
                ..Default::default()
            }
        },
    ));
    with_h2_alpn(common, tls, target)
}

/// istiod's `setAutoSniAndAutoSanValidation`: without an SNI, the request's host is sent as
/// SNI; and then, without SANs to check (and unless told to skip verification), the server
/// certificate must be valid for that host.
fn set_auto_sni_and_san_validation(options: &mut HttpProtocolOptions, tls: &ClientTls) {
    let auto_sni = tls.sni.is_empty();
    let auto_san = auto_sni && tls.subject_alt_names.is_empty() && !tls.insecure_skip_verify;
    if auto_sni || auto_san {
        let upstream = options
            .upstream_http_protocol_options
            .get_or_insert_with(UpstreamHttpProtocolOptions::default);
        upstream.auto_sni = auto_sni;
        upstream.auto_san_validation = auto_san;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::{REVIEWS, mesh};
    use prost::Message;

    fn context(c: &Cluster) -> UpstreamTlsContext {
        let socket = c.transport_socket.as_ref().expect("transport socket");
        assert_eq!(socket.name, TLS_SOCKET);
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("no typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes")
    }

    fn reviews_with_service_accounts() -> Service {
        let m = mesh(REVIEWS);
        let mut service = m
            .services
            .get("reviews.bookinfo.svc.cluster.local")
            .expect("reviews")
            .clone();
        for (e, sa) in service
            .endpoints
            .iter_mut()
            .zip(["reviews", "reviews", "legacy"])
        {
            e.service_account = sa.into();
        }
        service
    }

    fn apply_to(tls: &ClientTls, service: &Service, http2: bool) -> (Cluster, HttpProtocolOptions) {
        let mut c = Cluster {
            name: "outbound|9080|v1|reviews.bookinfo.svc.cluster.local".into(),
            ..Default::default()
        };
        let mut options = HttpProtocolOptions::default();
        let target = Target {
            service,
            port: 9080,
            subset: Some("v1"),
            trust_domains: &TrustDomains::default(),
            http2,
            reads_secrets: false,
        };
        apply(&mut c, &mut options, tls, &target);
        (c, options)
    }

    /// istiod's `ExpandWithTrustDomains`: each account in the mesh's trust domain and in
    /// each alias; a SPIFFE id written out keeps its own trust domain, with the aliases'.
    #[test]
    fn service_accounts_are_named_in_the_meshs_trust_domains() {
        let service = reviews_with_service_accounts();
        let trust = TrustDomains::new("example.org", &["old.example".into()]);
        assert_eq!(
            service_accounts(&service, &trust),
            [
                "spiffe://example.org/ns/bookinfo/sa/legacy",
                "spiffe://example.org/ns/bookinfo/sa/reviews",
                "spiffe://old.example/ns/bookinfo/sa/legacy",
                "spiffe://old.example/ns/bookinfo/sa/reviews",
            ]
        );
    }

    /// istiod's `ServiceAccounts` of a ServiceEntry: its `subjectAltNames` beside its
    /// endpoints' accounts.
    #[test]
    fn a_service_entrys_subject_alt_names_are_among_its_identities() {
        let mut service = reviews_with_service_accounts();
        service.subject_alt_names = vec![
            "spiffe://cluster.local/ns/vm/sa/reviews-vm".into(),
            "reviews.example.com".into(),
        ];
        let trust = TrustDomains::new("cluster.local", &["old.example".into()]);
        assert_eq!(
            service_accounts(&service, &trust),
            [
                "reviews.example.com",
                "spiffe://cluster.local/ns/bookinfo/sa/legacy",
                "spiffe://cluster.local/ns/bookinfo/sa/reviews",
                "spiffe://cluster.local/ns/vm/sa/reviews-vm",
                "spiffe://old.example/ns/bookinfo/sa/legacy",
                "spiffe://old.example/ns/bookinfo/sa/reviews",
                "spiffe://old.example/ns/vm/sa/reviews-vm",
            ]
        );
    }

    #[test]
    fn istio_mutual_uses_the_agents_secrets_and_the_service_accounts() {
        let service = reviews_with_service_accounts();
        let tls = ClientTls {
            mode: TlsMode::IstioMutual,
            ..Default::default()
        };
        let (c, options) = apply_to(&tls, &service, false);
        assert_eq!(
            options,
            HttpProtocolOptions::default(),
            "no auto SNI for mTLS"
        );
        let ctx = context(&c);
        assert_eq!(
            ctx.sni,
            "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"
        );
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(common.alpn_protocols, vec!["istio-peer-exchange", "istio"]);
        assert_eq!(
            common.tls_certificate_sds_secret_configs,
            vec![sds_secret("default")]
        );
        let sds = &common.tls_certificate_sds_secret_configs[0];
        let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = sds
            .sds_config
            .as_ref()
            .and_then(|s| s.config_source_specifier.as_ref())
        else {
            panic!("no API config source");
        };
        assert_eq!(api.api_type, ApiType::Grpc as i32);
        assert!(matches!(
            &api.grpc_services[0].target_specifier,
            Some(TargetSpecifier::EnvoyGrpc(g)) if g.cluster_name == "sds-grpc"
        ));
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("no combined validation context");
        };
        assert_eq!(
            combined
                .validation_context_sds_secret_config
                .map(|s| s.name),
            Some("ROOTCA".to_string())
        );
        let sans: Vec<(i32, Option<MatchPattern>)> = combined
            .default_validation_context
            .expect("default validation")
            .match_typed_subject_alt_names
            .into_iter()
            .map(|m| (m.san_type, m.matcher.and_then(|m| m.match_pattern)))
            .collect();
        assert_eq!(
            sans,
            vec![
                (
                    SanType::Uri as i32,
                    Some(MatchPattern::Exact(
                        "spiffe://cluster.local/ns/bookinfo/sa/legacy".into()
                    ))
                ),
                (
                    SanType::Uri as i32,
                    Some(MatchPattern::Exact(
                        "spiffe://cluster.local/ns/bookinfo/sa/reviews".into()
                    ))
                ),
            ]
        );
    }

    #[test]
    fn istio_mutual_keeps_the_rules_sni_and_sans_and_says_h2() {
        let service = reviews_with_service_accounts();
        let tls = ClientTls {
            mode: TlsMode::IstioMutual,
            sni: "reviews.example".into(),
            subject_alt_names: vec!["spiffe://example.org/ns/x/sa/y".into()],
            ..Default::default()
        };
        let ctx = context(&apply_to(&tls, &service, true).0);
        assert_eq!(ctx.sni, "reviews.example");
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(
            common.alpn_protocols,
            vec!["istio-peer-exchange", "istio", "h2"]
        );
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("no combined validation context");
        };
        let sans = combined
            .default_validation_context
            .expect("default validation")
            .match_typed_subject_alt_names;
        assert_eq!(sans.len(), 1);
    }

    #[test]
    fn mutual_reads_the_files_and_simple_sends_the_host_as_sni() {
        let service = mesh(REVIEWS)
            .services
            .remove("reviews.bookinfo.svc.cluster.local")
            .expect("reviews");
        let mutual = ClientTls {
            mode: TlsMode::Mutual,
            client_certificate: "/certs/client.pem".into(),
            private_key: "/certs/client.key".into(),
            ca_certificates: "/certs/ca.pem".into(),
            subject_alt_names: vec!["reviews.internal".into(), "10.0.0.1".into()],
            sni: "reviews.internal".into(),
            ..Default::default()
        };
        let (c, options) = apply_to(&mutual, &service, false);
        assert_eq!(options, HttpProtocolOptions::default());
        let ctx = context(&c);
        assert_eq!(ctx.sni, "reviews.internal");
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(common.tls_certificates.len(), 1);
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            file("/certs/client.pem")
        );
        let Some(ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("no validation context");
        };
        assert_eq!(v.trusted_ca, file("/certs/ca.pem"));
        let types: Vec<i32> = v
            .match_typed_subject_alt_names
            .iter()
            .map(|m| m.san_type)
            .collect();
        assert_eq!(types, vec![SanType::Dns as i32, SanType::IpAddress as i32]);

        let simple = ClientTls {
            mode: TlsMode::Simple,
            ca_certificates: "/certs/ca.pem".into(),
            ..Default::default()
        };
        let (c, options) = apply_to(&simple, &service, true);
        let upstream = options.upstream_http_protocol_options.expect("auto SNI");
        assert!(upstream.auto_sni && upstream.auto_san_validation);
        let common = context(&c).common_tls_context.expect("common");
        assert!(common.tls_certificates.is_empty());
        assert_eq!(common.alpn_protocols, vec!["h2"]);

        let system = ClientTls {
            mode: TlsMode::Simple,
            ..Default::default()
        };
        let Some(ValidationContextType::ValidationContext(v)) =
            context(&apply_to(&system, &service, false).0)
                .common_tls_context
                .and_then(|c| c.validation_context_type)
        else {
            panic!("no validation context");
        };
        assert_eq!(
            v.trusted_ca,
            file(SYSTEM_ROOTS),
            "no CA given: the system's"
        );

        let insecure = ClientTls {
            mode: TlsMode::Simple,
            insecure_skip_verify: true,
            ..Default::default()
        };
        let (c, options) = apply_to(&insecure, &service, false);
        let upstream = options.upstream_http_protocol_options.expect("auto SNI");
        assert!(upstream.auto_sni && !upstream.auto_san_validation);
        assert_eq!(
            context(&c)
                .common_tls_context
                .and_then(|c| c.validation_context_type),
            Some(ValidationContextType::ValidationContext(
                CertificateValidationContext::default()
            ))
        );
    }

    #[test]
    fn disable_and_incomplete_mutual_originate_nothing() {
        let service = mesh(REVIEWS)
            .services
            .remove("reviews.bookinfo.svc.cluster.local")
            .expect("reviews");
        for tls in [
            ClientTls::default(),
            ClientTls {
                mode: TlsMode::Mutual,
                ..Default::default()
            },
        ] {
            let (c, _) = apply_to(&tls, &service, false);
            assert!(c.transport_socket.is_none(), "{tls:?}");
        }
    }
}
