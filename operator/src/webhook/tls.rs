//! A serving certificate that can be replaced while the server runs (capstan's CA renews
//! the in-process webhook's certificate): each handshake takes the current one.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate and key that are not usable for TLS.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid PEM certificate: {0}")]
    Certificate(rustls::pki_types::pem::Error),
    #[error("no certificate in the PEM chain")]
    Empty,
    #[error("invalid PEM private key: {0}")]
    Key(rustls::pki_types::pem::Error),
    #[error("unusable private key: {0}")]
    Unusable(rustls::Error),
    #[error("TLS settings: {0}")]
    Config(rustls::Error),
}

/// The certificate every handshake is answered with, replaceable at any time.
#[derive(Debug, Clone)]
pub struct SwappableCert {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
}

impl SwappableCert {
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(&provider, chain_pem, key_pem)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(key))),
            provider,
        })
    }

    /// Replaces the certificate for the handshakes to come (open connections keep theirs).
    pub fn set(&self, chain_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let key = certified_key(&self.provider, chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// TLS settings serving this certificate (TLS 1.2 and 1.3, ALPN `http/1.1`), as
    /// [`super::server_config`] does for a fixed one.
    pub fn server_config(&self) -> Result<ServerConfig, CertError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(CertError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(
    provider: &CryptoProvider,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(CertError::Certificate)?;
    if chain.is_empty() {
        return Err(CertError::Empty);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CertError::Key)?;
    CertifiedKey::from_der(chain, key, provider).map_err(CertError::Unusable)
}
