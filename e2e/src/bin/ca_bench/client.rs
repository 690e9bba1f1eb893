//! The benchmark's CA client: TLS without verifying the server (the bench measures signing,
//! and istiod's serving certificate chains to a root the bench does not know), HTTP/2, and
//! `CreateCertificate` with a bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, ensure};
use capstan_ca::api::{IstioCertificateClient, IstioCertificateRequest};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint};

/// A simulated agent's identity: its token and a CSR for its SPIFFE id.
pub struct Caller {
    pub token: String,
    pub csr: String,
}

/// A P-256 CSR naming `spiffe://cluster.local/ns/<ns>/sa/<sa>`, as an agent makes it.
pub fn csr_for(namespace: &str, service_account: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    let uri = format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// One TLS connection to `addr`, carrying HTTP/2.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("istiod.istio-system.svc")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .with_context(|| format!("connecting to {addr} over TLS"))?;
    Ok(channel)
}

/// One `CreateCertificate` call; fails unless a chain comes back.
pub async fn sign(channel: &mut Channel, caller: &Caller) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: caller.csr.clone(),
        validity_duration: 86_400,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", caller.token).parse()?);
    let response = IstioCertificateClient::new(channel.clone())
        .create_certificate(request)
        .await?
        .into_inner();
    ensure!(
        response.cert_chain.len() >= 2,
        "a chain of {} certificates",
        response.cert_chain.len()
    );
    Ok(())
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
