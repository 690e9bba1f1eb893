//! TLS on the xDS port, as istiod serves xDS and its CA on 15012: the server presents a
//! certificate from capstan's own CA, and a client may present one too (optional at the TLS
//! layer, because the CA's `CreateCertificate` authenticates callers by bearer token), which
//! must then chain to a root of the current trust bundle.
//!
//! Both the server certificate and the trusted roots are swapped at runtime (a renewal, a
//! root rotation); a connection keeps what its handshake used, the next one gets the new.
//!
//! Handshakes run concurrently, each in its own task and within the connection's first-request
//! deadline, so a client that connects and sends nothing (or half a ClientHello) costs one
//! connection slot until the deadline and never delays anyone else's handshake.

mod peer;
mod swap;
#[cfg(test)]
mod tests;

pub use peer::{PeerIdentity, peer_identity, peer_identity_of};

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::grpc::{CALL_BURST, CALLS_PER_SECOND, GrpcLimits, STREAM_BURST, STREAMS_PER_SECOND};
use super::{Guarded, GuardedInfo, GuardedListener};

/// Connections whose handshake finished, waiting for the server to take them. The server
/// takes each at once; this only decouples the handshake tasks from its accept loop.
const HANDSHAKEN_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate chain holds no PEM certificate")]
    NoCertificate,
    #[error("not a PEM certificate: {0}")]
    Certificate(rustls::pki_types::pem::Error),
    #[error("not a PEM private key: {0}")]
    Key(rustls::pki_types::pem::Error),
    #[error("the private key does not fit the certificate, or is of an unsupported kind: {0}")]
    KeyMismatch(rustls::Error),
    #[error("the trust bundle holds no usable root certificate: {0}")]
    Roots(String),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The TLS side of the xDS server: its configuration, with the certificate and the trusted
/// client roots swappable while it serves.
#[derive(Debug, Clone)]
pub struct ServerTls {
    certificate: Arc<swap::CertificateSlot>,
    roots: Arc<swap::RootsSlot>,
    config: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
    handshake_failures: Counter,
}

impl ServerTls {
    /// A server presenting `chain_pem` (leaf first) with `key_pem`, accepting client
    /// certificates that chain to one of `roots_pem` (each PEM text may hold several roots).
    pub fn new(chain_pem: &str, key_pem: &str, roots_pem: &[String]) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(swap::CertificateSlot::new(certified_key(
            chain_pem, key_pem, &provider,
        )?));
        let roots = Arc::new(swap::RootsSlot::new(client_verifier(roots_pem, &provider)?));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(roots.clone())
            .with_cert_resolver(certificate.clone());
        // No resumption: a resumed session skips the client certificate check, so a session
        // from before a root was dropped would outlive the root. Proxies hold one connection
        // for many minutes; a full handshake per connection costs nothing that matters.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            certificate,
            roots,
            config: Arc::new(config),
            provider,
            handshake_failures: Counter::default(),
        })
    }

    /// Presents `chain_pem` and `key_pem` to every later handshake; a bad pair is refused and
    /// the current one kept.
    pub fn set_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(chain_pem, key_pem, &self.provider)?;
        self.certificate.set(key);
        Ok(())
    }

    /// Trusts client certificates chaining to `roots_pem` from the next handshake on (during
    /// a root rotation the bundle holds the old and the new root).
    pub fn set_roots(&self, roots_pem: &[String]) -> Result<(), TlsError> {
        let verifier = client_verifier(roots_pem, &self.provider)?;
        self.roots.set(verifier);
        Ok(())
    }

    /// Handshakes that failed or timed out so far.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.get()
    }

    /// Registers `xds_tls_handshake_failures` (failed or timed-out handshakes).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_tls_handshake_failures",
            "TLS handshakes on the xDS port that failed or did not finish in time",
            self.handshake_failures.clone(),
        );
    }

    /// Connections accepted from `listener` within `limits`, each after a successful
    /// handshake. A handshake must finish within `limits.first_request_timeout`, and the
    /// connection's first request must arrive within the same deadline (counted from
    /// accepting it), as on the plaintext port.
    pub fn incoming(
        &self,
        listener: TcpListener,
        limits: &GrpcLimits,
    ) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(HANDSHAKEN_QUEUE);
        let acceptor = TlsAcceptor::from(self.config.clone());
        let listener = GuardedListener::new(listener, limits.connections, "ADS (TLS)");
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            limits.first_request_timeout,
            self.handshake_failures.clone(),
            tx,
        ));
        ReceiverStream::new(rx).map(Ok)
    }
}

/// Accepts until the server stops taking connections, handing each to its own handshake task.
async fn accept_loop(
    mut listener: GuardedListener,
    acceptor: TlsAcceptor,
    deadline: Duration,
    failures: Counter,
    tx: mpsc::Sender<TlsConnection>,
) {
    loop {
        let mut connection = tokio::select! {
            connection = listener.accept() => connection,
            // The server is gone: free the port.
            () = tx.closed() => return,
        };
        if let Err(err) = connection.get_ref().set_nodelay(true) {
            debug!(%err, "cannot set TCP_NODELAY");
        }
        connection.require_request_within(deadline);
        connection.limit_request_rate(STREAM_BURST, STREAMS_PER_SECOND);
        connection.limit_call_rate(CALL_BURST, CALLS_PER_SECOND);
        tokio::spawn(handshake(
            acceptor.clone(),
            connection,
            deadline,
            failures.clone(),
            tx.clone(),
        ));
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    connection: Guarded<TcpStream>,
    deadline: Duration,
    failures: Counter,
    tx: mpsc::Sender<TlsConnection>,
) {
    let peer = connection.peer();
    match tokio::time::timeout(deadline, acceptor.accept(connection)).await {
        Ok(Ok(stream)) => {
            let identity = peer::identity_of(stream.get_ref().1);
            // Fails only when the server stopped meanwhile; the connection just closes.
            let _ = tx.send(TlsConnection { stream, identity }).await;
        }
        Ok(Err(err)) => {
            failures.inc();
            // Debug only: whoever can reach the port can make handshakes fail at will.
            debug!(%peer, %err, "TLS handshake failed");
        }
        Err(_) => {
            failures.inc();
            debug!(%peer, timeout_ms = deadline.as_millis() as u64, "TLS handshake timed out");
        }
    }
}

fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Certificate)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsError::Key)?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(TlsError::KeyMismatch)?;
    Ok(Arc::new(key))
}

fn client_verifier(
    roots_pem: &[String],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for root in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let root = root.map_err(|e| TlsError::Roots(e.to_string()))?;
            store
                .add(root)
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        }
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        // Optional: the CA's CreateCertificate on the same port authenticates by token.
        // Services that need a certified client (ADS) refuse anonymous ones themselves.
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))
}

/// An accepted TLS connection, with what its handshake proved about the client.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<Guarded<TcpStream>>,
    identity: PeerIdentity,
}

impl TlsConnection {
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = GuardedInfo;

    fn connect_info(&self) -> GuardedInfo {
        let mut info = self.stream.get_ref().0.info();
        info.identity = self.identity.clone();
        info
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
