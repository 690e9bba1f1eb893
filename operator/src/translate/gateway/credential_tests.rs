//! `credentialName`: certificates from Secrets, served over SDS to the gateway's proxies.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_xds::{ProxyInfo, Role};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext,
};
use prost::Message;

use super::*;
use crate::index::{Index, IstioRecord, NsName, Record, SecretRecord};

/// A self-signed certificate and its key, PEM.
fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

fn secret(namespace: &str, name: &str, entries: &[(&str, &str)]) -> SecretRecord {
    SecretRecord {
        id: NsName::new(namespace, name),
        secret_type: String::new(),
        data: entries
            .iter()
            .map(|(k, v)| (k.to_string(), Arc::from(v.as_bytes())))
            .collect(),
    }
}

fn mesh_with(yaml: &str, secrets: &[SecretRecord]) -> Mesh {
    let mut index = Index::new();
    for document in capstan_crds::parse_documents("test.yaml", yaml).expect("valid YAML") {
        let object = document.expect("valid document").object;
        index.apply(Record::Istio(IstioRecord::valid(object)));
    }
    for s in secrets {
        index.apply(Record::Secret(s.clone()));
    }
    Mesh::build(&index, "cluster.local").0
}

fn gateway(namespace: &str, servers: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"#
    )
}

fn https(port: u32, host: &str, tls: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: https-{port}, protocol: HTTPS}}\n    hosts: [\"{host}\"]\n    tls: {tls}\n"
    )
}

fn tls_context(listener: &Listener) -> CommonTlsContext {
    let chain = &listener.filter_chains[0];
    let Some(SocketConfig::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no TLS transport socket on {}", listener.name);
    };
    let tls = DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
    if let Some(required) = tls.require_client_certificate {
        assert!(required.value);
    }
    tls.common_tls_context.expect("common context")
}

fn inline(source: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|d| d.specifier.clone()) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("not inline bytes: {other:?}"),
    }
}

#[test]
fn credential_servers_take_their_certificates_over_sds_from_secrets_of_the_gateway_namespace() {
    let (cert, key) = pem_pair("shop.example.com");
    let (ca_in_secret, _) = pem_pair("ca-in-secret");
    let (separate_ca, _) = pem_pair("separate-ca");
    let yaml = gateway(
        "edge",
        &[
            https(
                443,
                "shop.example.com",
                "{mode: SIMPLE, credentialName: shop-cert}",
            ),
            https(
                8443,
                "api.example.com",
                "{mode: MUTUAL, credentialName: api-cert}",
            ),
            https(
                9443,
                "own.example.com",
                "{mode: MUTUAL, credentialName: own-cert}",
            ),
        ]
        .concat(),
    );
    let secrets = [
        secret(
            "edge",
            "shop-cert",
            &[("tls.crt", &cert), ("tls.key", &key)],
        ),
        // Its own ca.crt loses to the separate -cacert Secret, as in istiod.
        secret(
            "edge",
            "api-cert",
            &[("cert", &cert), ("key", &key), ("cacert", &ca_in_secret)],
        ),
        secret("edge", "api-cert-cacert", &[("ca.crt", &separate_ca)]),
        secret(
            "edge",
            "own-cert",
            &[
                ("tls.crt", &cert),
                ("tls.key", &key),
                ("ca.crt", &ca_in_secret),
            ],
        ),
        // Same name, another namespace: not the Gateway's.
        secret(
            "other",
            "shop-cert",
            &[("tls.crt", &cert), ("tls.key", &key)],
        ),
    ];
    let config = build(&mesh_with(&yaml, &secrets));
    assert_eq!(config.problems, vec![]);

    let simple = tls_context(&config.listeners[0].1);
    assert!(simple.tls_certificates.is_empty(), "no files");
    let names: Vec<&str> = simple
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["kubernetes://shop-cert"]);
    let source = simple.tls_certificate_sds_secret_configs[0]
        .sds_config
        .as_ref()
        .and_then(|c| c.config_source_specifier.clone());
    assert!(
        matches!(source, Some(ConfigSourceSpecifier::Ads(_))),
        "{source:?}"
    );
    assert!(simple.validation_context_type.is_none());

    let mutual = tls_context(&config.listeners[1].1);
    match mutual.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let sds = combined.validation_context_sds_secret_config.expect("sds");
            assert_eq!(sds.name, "kubernetes://api-cert-cacert");
        }
        other => panic!("{other:?}"),
    }

    // The Secret resources, for the listeners' proxies only.
    let served: BTreeMap<&str, &Secret> = config
        .secrets
        .iter()
        .map(|(_, s)| (s.name.as_str(), s))
        .collect();
    assert_eq!(
        served.keys().copied().collect::<Vec<_>>(),
        [
            "kubernetes://api-cert",
            "kubernetes://api-cert-cacert",
            "kubernetes://own-cert",
            "kubernetes://own-cert-cacert",
            "kubernetes://shop-cert",
        ]
    );
    match &served["kubernetes://shop-cert"].r#type {
        Some(SecretType::TlsCertificate(c)) => {
            assert_eq!(inline(&c.certificate_chain), cert.as_bytes());
            assert_eq!(inline(&c.private_key), key.as_bytes());
        }
        other => panic!("{other:?}"),
    }
    let ca_of = |name: &str| match &served[name].r#type {
        Some(SecretType::ValidationContext(v)) => inline(&v.trusted_ca),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ca_of("kubernetes://api-cert-cacert"),
        separate_ca.as_bytes()
    );
    assert_eq!(
        ca_of("kubernetes://own-cert-cacert"),
        ca_in_secret.as_bytes()
    );
    let router = ProxyInfo {
        role: Role::Router,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    };
    let sidecar = ProxyInfo {
        role: Role::Sidecar,
        ..router.clone()
    };
    for (selector, _) in &config.secrets {
        assert!(selector.matches(&router) && !selector.matches(&sidecar));
    }
    assert!(
        config
            .consulted_secrets
            .contains(&NsName::new("edge", "api-cert-cacert"))
    );
}

#[test]
fn a_missing_or_malformed_secret_leaves_out_only_its_server() {
    let (cert, key) = pem_pair("shop.example.com");
    let yaml = gateway(
        "edge",
        &[
            https(
                443,
                "a.example.com",
                "{mode: SIMPLE, credentialName: missing}",
            ),
            https(
                8443,
                "b.example.com",
                "{mode: SIMPLE, credentialName: broken}",
            ),
            https(
                9443,
                "c.example.com",
                "{mode: MUTUAL, credentialName: no-ca}",
            ),
            https(
                10443,
                "d.example.com",
                "{mode: SIMPLE, credentialName: ca-only}",
            ),
            "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n".into(),
        ]
        .concat(),
    );
    let secrets = [
        secret(
            "edge",
            "broken",
            &[("tls.crt", &cert), ("tls.key", "no key")],
        ),
        secret("edge", "no-ca", &[("tls.crt", &cert), ("tls.key", &key)]),
        secret("edge", "ca-only", &[("ca.crt", &cert)]),
    ];
    let config = build(&mesh_with(&yaml, &secrets));
    let names: Vec<&str> = config
        .listeners
        .iter()
        .map(|(_, l)| l.name.as_str())
        .collect();
    assert_eq!(names, ["0.0.0.0_8080"], "only the HTTP server is served");
    assert!(config.secrets.is_empty());
    let problems: Vec<String> = config.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        [
            "Gateway edge/ingress: spec.servers[0].tls.credentialName: Secret edge/missing not \
             found (credentialName reads a TLS Secret in the Gateway's namespace); this server \
             is not served",
            "Gateway edge/ingress: spec.servers[1].tls.credentialName: Secret edge/broken cannot \
             be used: tls.key holds no unencrypted PEM private key; this server is not served",
            "Gateway edge/ingress: spec.servers[2].tls.credentialName: MUTUAL needs a CA for \
             client certificates: there is no Secret edge/no-ca-cacert and Secret edge/no-ca \
             has no ca.crt or cacert; this server is not served",
            "Gateway edge/ingress: spec.servers[3].tls.credentialName: Secret edge/ca-only holds \
             no certificate and key (tls.crt and tls.key, or cert and key); this server is not \
             served",
        ]
    );
    // Each Secret looked for is watched, so its arrival rebuilds the gateways.
    for name in ["missing", "broken", "no-ca", "no-ca-cacert", "ca-only"] {
        assert!(
            config
                .consulted_secrets
                .contains(&NsName::new("edge", name)),
            "{name}"
        );
    }
}

#[test]
fn two_gateways_serving_one_credential_name_to_the_same_proxies_keep_the_first() {
    let (cert, key) = pem_pair("shop.example.com");
    let yaml = [
        gateway(
            "alpha",
            &https(443, "a.example.com", "{mode: SIMPLE, credentialName: cert}"),
        ),
        gateway(
            "beta",
            &https(
                8443,
                "b.example.com",
                "{mode: SIMPLE, credentialName: cert}",
            ),
        ),
    ]
    .join("---\n");
    let pair = [("tls.crt", cert.as_str()), ("tls.key", key.as_str())];
    let config = build(&mesh_with(
        &yaml,
        &[
            secret("alpha", "cert", &pair),
            secret("beta", "cert", &pair),
        ],
    ));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.secrets.len(), 1);
    let problems: Vec<String> = config.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "Gateway beta/ingress: spec.servers[0].tls.credentialName: these proxies already get \
             kubernetes://cert from Secret alpha/cert"
        ),
        "{}",
        problems[0]
    );
}
