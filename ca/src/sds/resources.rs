//! The two secrets as Envoy `Secret` resources.

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::{DEFAULT_SECRET, ROOT_SECRET, WorkloadSecrets};

/// The type of every SDS resource.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.into())),
        ..Default::default()
    })
}

/// The secret called `name`, packed for a discovery response; `None` for a name this server
/// does not know.
pub fn secret_resource(name: &str, secrets: &WorkloadSecrets) -> Option<Any> {
    let kind = match name {
        DEFAULT_SECRET => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(secrets.cert_chain_pem.as_bytes()),
            private_key: inline(secrets.private_key_pem.as_bytes()),
            ..Default::default()
        }),
        ROOT_SECRET => {
            let mut bundle = String::new();
            for root in &secrets.trust_bundle_pem {
                bundle.push_str(root.trim_end());
                bundle.push('\n');
            }
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(bundle),
                ..Default::default()
            })
        }
        _ => return None,
    };
    let secret = Secret {
        name: name.to_string(),
        r#type: Some(kind),
    };
    Some(Any {
        type_url: SECRET_TYPE_URL.to_string(),
        value: secret.encode_to_vec(),
    })
}
