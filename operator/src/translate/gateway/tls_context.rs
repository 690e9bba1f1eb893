//! The `DownstreamTlsContext` of a terminating gateway server, as istiod builds it: the
//! certificate from files, from Secrets over ADS (`credentialName`) or, for ISTIO_MUTUAL,
//! the proxy's workload certificate and the mesh roots from its agent's SDS socket (the same
//! `default` and `ROOTCA` secrets, through cluster `sds-grpc`, that upstream ISTIO_MUTUAL
//! clusters use).

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::credentials::{ca_sds_name, certificate_sds_name, sds_config};
use capstan_crds::networking::gateway::TlsProtocol;

use crate::model::gateway::{ClientCa, ServerCertificate, TlsParams, TlsTermination};
use crate::translate::cluster::tls::{SDS_CERTIFICATE, SDS_ROOTS, sds_secret};

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Envoy's name of a TLS version.
fn protocol(version: TlsProtocol) -> tls_parameters::TlsProtocol {
    match version {
        TlsProtocol::TlsAuto => tls_parameters::TlsProtocol::TlsAuto,
        TlsProtocol::TlsV1_0 => tls_parameters::TlsProtocol::TlSv10,
        TlsProtocol::TlsV1_1 => tls_parameters::TlsProtocol::TlSv11,
        TlsProtocol::TlsV1_2 => tls_parameters::TlsProtocol::TlSv12,
        TlsProtocol::TlsV1_3 => tls_parameters::TlsProtocol::TlSv13,
    }
}

/// `None` when nothing is set: Envoy's defaults.
fn tls_params(params: &TlsParams) -> Option<TlsParameters> {
    if *params == TlsParams::default() {
        return None;
    }
    let version = |v: Option<TlsProtocol>| protocol(v.unwrap_or(TlsProtocol::TlsAuto)) as i32;
    Some(TlsParameters {
        tls_minimum_protocol_version: version(params.min),
        tls_maximum_protocol_version: version(params.max),
        cipher_suites: params.cipher_suites.clone(),
        ..Default::default()
    })
}

/// The TLS transport socket of a filter chain terminating `tls`.
pub fn downstream_tls(tls: &TlsTermination) -> TransportSocket {
    // A SAN may be a host name or a SPIFFE id: either kind is accepted.
    let subject_alt_names: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .flat_map(|san| {
            [SanType::Dns, SanType::Uri].map(|san_type| SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(san.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    // As istiod: the SANs here, the CA from SDS (Envoy merges the two).
    // What is checked of a client certificate besides its chain: SANs and pins.
    let checks = |sans: Vec<SubjectAltNameMatcher>| CertificateValidationContext {
        match_typed_subject_alt_names: sans,
        verify_certificate_spki: tls.client_spki.clone(),
        verify_certificate_hash: tls.client_hash.clone(),
        ..Default::default()
    };
    let combined = |sds: SdsSecretConfig, sans: Vec<SubjectAltNameMatcher>| {
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(checks(sans)),
            validation_context_sds_secret_config: Some(sds),
            ..Default::default()
        })
    };
    let validation = tls.client_ca.as_ref().map(move |ca| match ca {
        ClientCa::File(path) => {
            ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(file(path)),
                crl: tls.client_crl.as_deref().map(file),
                ..checks(subject_alt_names)
            })
        }
        ClientCa::Secret(name) | ClientCa::NamedSecret(name) => {
            combined(sds_config(ca_sds_name(name)), subject_alt_names)
        }
        ClientCa::MeshRoots => combined(sds_secret(SDS_ROOTS), subject_alt_names),
    });
    let (tls_certificates, tls_certificate_sds_secret_configs) = match &tls.certificate {
        ServerCertificate::Files(pairs) => (
            pairs
                .iter()
                .map(|pair| TlsCertificate {
                    certificate_chain: Some(file(&pair.certificate)),
                    private_key: Some(file(&pair.private_key)),
                    ..Default::default()
                })
                .collect(),
            Vec::new(),
        ),
        ServerCertificate::Secrets(credentials) => (
            Vec::new(),
            credentials
                .iter()
                .map(|c| sds_config(certificate_sds_name(&c.name)))
                .collect(),
        ),
        ServerCertificate::Workload => (Vec::new(), vec![sds_secret(SDS_CERTIFICATE)]),
    };
    // With a CA, Envoy asks clients for a certificate and checks the one sent; whether a
    // client sending none is refused is what tells MUTUAL from OPTIONAL_MUTUAL.
    let require_client_certificate = tls.client_ca.as_ref().map(|_| BoolValue {
        value: !tls.client_certificate_optional,
    });
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            tls_certificate_sds_secret_configs,
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            tls_params: tls_params(&tls.params),
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate,
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(context))),
    }
}
