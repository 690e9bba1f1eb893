//! Envoy reaching capstan's xDS port over TLS, with a client certificate.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Envoy's side of TLS to the xDS server: its client certificate and the root it trusts
/// (PEM files), and the name it asks for and expects in the server's certificate.
#[derive(Debug, Clone)]
pub struct XdsTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub root_file: PathBuf,
    pub sni: String,
}

impl XdsTls {
    /// The xDS cluster's `transport_socket`: TLS presenting the client certificate, trusting
    /// only the mesh root, and requiring the server certificate to name `sni`.
    pub fn transport_socket(&self) -> Value {
        let file = |p: &Path| json!({ "filename": p.display().to_string() });
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": self.sni,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [ {
                        "certificate_chain": file(&self.cert_file),
                        "private_key": file(&self.key_file),
                    } ],
                    "validation_context": {
                        "trusted_ca": file(&self.root_file),
                        "match_typed_subject_alt_names": [
                            { "san_type": "DNS", "matcher": { "exact": self.sni } }
                        ],
                    },
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::{AdsMode, Bootstrap};

    #[test]
    fn a_tls_bootstrap_carries_the_client_certificate_and_root() {
        let mut b = Bootstrap::new(AdsMode::Sotw, 15012);
        b.service_account = Some("reviews".into());
        b.tls = Some(XdsTls {
            cert_file: "/c/cert.pem".into(),
            key_file: "/c/key.pem".into(),
            root_file: "/c/root.pem".into(),
            sni: "localhost".into(),
        });
        let json = b.to_json();
        assert_eq!(json["node"]["metadata"]["SERVICE_ACCOUNT"], "reviews");
        let socket = &json["static_resources"]["clusters"][0]["transport_socket"];
        let context = &socket["typed_config"]["common_tls_context"];
        assert_eq!(socket["typed_config"]["sni"], "localhost");
        assert_eq!(
            context["tls_certificates"][0]["private_key"]["filename"],
            "/c/key.pem"
        );
        assert_eq!(
            context["validation_context"]["trusted_ca"]["filename"],
            "/c/root.pem"
        );
        assert!(
            Bootstrap::new(AdsMode::Sotw, 1).to_json()["static_resources"]["clusters"][0]
                .get("transport_socket")
                .is_none()
        );
    }
}
