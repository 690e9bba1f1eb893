//! A throwaway CA for traffic tests (gateway TLS termination, TLS origination) and an HTTPS
//! client that trusts only it (checking the server's name, or only its chain).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::http::{HttpResponse, REQUEST_TIMEOUT, UpstreamReply};
use crate::mesh::CONFIG_TIMEOUT;

/// A CA whose certificate is written to `<dir>/<name>-ca.pem`.
pub struct TestCa {
    pub cert_path: PathBuf,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and key issued by a [`TestCa`], as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Its serial number, unique among the certificates a [`TestCa`] of this process issues
    /// (what a CRL names); 0 for one the mesh's in-test CA issued (`agent::TestCa::issue`).
    pub serial: u64,
}

/// Serial numbers for [`Issued`] certificates: a CRL names certificates by theirs.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);

impl Issued {
    /// The certificate, DER, as a server presents it.
    pub fn cert_der(&self) -> anyhow::Result<Vec<u8>> {
        let first = CertificateDer::pem_file_iter(&self.cert)?
            .next()
            .with_context(|| format!("no certificate in {}", self.cert.display()))??;
        Ok(first.as_ref().to_vec())
    }
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let cert_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        Ok(Self {
            cert_path,
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
        })
    }

    /// A server certificate for `dns_names`, written to `<dir>/<file>.pem` and `-key.pem`.
    pub fn server(&self, file: &str, dns_names: &[&str]) -> anyhow::Result<Issued> {
        let names: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().copied().unwrap_or(file),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate naming `uri` (e.g. a SPIFFE id), written as [`TestCa::server`].
    pub fn client(&self, file: &str, uri: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    /// A certificate revocation list of this CA revoking `revoked`, written to
    /// `<dir>/<file>.pem`; valid until 2099.
    pub fn crl(&self, file: &str, revoked: &[&Issued]) -> anyhow::Result<PathBuf> {
        let revoked_certs = revoked
            .iter()
            .map(|issued| RevokedCertParams {
                serial_number: SerialNumber::from(issued.serial),
                revocation_time: date_time_ymd(2025, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        let path = self.dir.join(format!("{file}.pem"));
        std::fs::write(&path, crl.pem()?)?;
        Ok(path)
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> anyhow::Result<Issued> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
            serial,
        };
        std::fs::write(&issued.cert, cert.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }
}

/// A TLS client trusting only `ca_pem`, presenting `client` if given.
pub fn connector(
    ca_pem: &str,
    client: Option<&Issued>,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    connector_with_alpn(ca_pem, client, &["http/1.1"])
}

/// [`connector`] offering the ALPN protocols `alpn` (say Istio's `istio-http/1.1`, which an
/// AUTO_PASSTHROUGH gateway requires).
pub fn connector_with_alpn(
    ca_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let builder = client_builder()?.with_root_certificates(roots(ca_pem)?);
    finish(builder, client, alpn)
}

/// [`connector`] speaking only the TLS `versions` and, when `suites` is not empty, only
/// those cipher suites.
pub fn connector_limited(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::CipherSuite],
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots(ca_pem)?);
    finish(builder, None, &["http/1.1"])
}

/// A TLS client accepting a server certificate that chains to `ca_pem` whatever names it
/// carries (a mesh workload certificate names a SPIFFE id, no host), presenting `client` if
/// given.
pub fn connector_any_name(
    ca_pem: &str,
    client: Option<&Issued>,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    connector_any_name_with_alpn(ca_pem, client, &["http/1.1"])
}

/// [`connector_any_name`] offering the ALPN protocols `alpn` (say Istio's `istio-http/1.1`,
/// which a sidecar's inbound mutual TLS chains match on).
pub fn connector_any_name_with_alpn(
    ca_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider).build()?;
    let builder = client_builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(chain)));
    finish(builder, client, alpn)
}

fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

fn client_builder()
-> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?)
}

fn finish(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    client: Option<&Issued>,
    alpn: &[&str],
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain = CertificateDer::pem_file_iter(&issued.cert)?.collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&issued.key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Checks the chain as usual and lets a certificate that is valid for some other name pass.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked after the chain: this error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The certificates of the gateway TLS tests: `ca` issued the server's for
/// `shop.example.com`, `clients` the client certificate of `spiffe://example.com/ns/shop/sa/
/// buyer`, and `stranger` is a CA nothing trusts. The files live as long as this does.
pub struct ShopPki {
    pub ca: TestCa,
    pub server: Issued,
    pub clients: TestCa,
    pub client_cert: Issued,
    pub stranger: TestCa,
    /// Holds the files.
    _dir: tempfile::TempDir,
}

impl ShopPki {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new(dir.path(), "ingress")?;
        let server = ca.server("shop", &["shop.example.com"])?;
        let clients = TestCa::new(dir.path(), "clients")?;
        let client_cert = clients.client("buyer", "spiffe://example.com/ns/shop/sa/buyer")?;
        let stranger = TestCa::new(dir.path(), "stranger")?;
        Ok(Self {
            ca,
            server,
            clients,
            client_cert,
            stranger,
            _dir: dir,
        })
    }
}

/// Polls `GET https://<host><path>` through `connector` at `addr` until an upstream
/// answers; its reply. `what` names the wait in the timeout error.
pub async fn wait_https_reply(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
    path: &str,
    what: &str,
) -> anyhow::Result<UpstreamReply> {
    crate::wait_until(what, CONFIG_TIMEOUT, async || {
        https_get(connector, addr, host, path)
            .await?
            .upstream_reply()
    })
    .await
}

impl ShopPki {
    /// Waits until a client trusting `ca` and presenting `client` (if any) gets shop's
    /// `/reviews/1` from the gateway at `addr`; `what` names the client in the error.
    pub async fn shop_reply(
        &self,
        addr: SocketAddr,
        client: Option<&Issued>,
        what: &str,
    ) -> anyhow::Result<UpstreamReply> {
        let connector = connector(&self.ca.cert_pem, client)?;
        wait_https_reply(&connector, addr, "shop.example.com", "/reviews/1", what).await
    }

    /// Fails unless a client trusting `ca` and presenting `client` (if any) is refused
    /// shop's `/reviews/1` at `addr`.
    pub async fn ensure_shop_refused(
        &self,
        addr: SocketAddr,
        client: Option<&Issued>,
        who: &str,
    ) -> anyhow::Result<()> {
        let connector = connector(&self.ca.cert_pem, client)?;
        ensure_https_refused(&connector, addr, "shop.example.com", "/reviews/1", who).await
    }
}

/// Fails unless `GET https://<host><path>` through `connector` at `addr` fails (in the
/// handshake or the request); `who` names the client in the error.
pub async fn ensure_https_refused(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
    path: &str,
    who: &str,
) -> anyhow::Result<()> {
    let result = https_get(connector, addr, host, path).await;
    anyhow::ensure!(result.is_err(), "{who} got {:?}", result.map(|r| r.status));
    Ok(())
}

/// `GET path` over a new TLS connection to `addr` with SNI and Host `host`.
pub async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<HttpResponse> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::try_from(host.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} for {host}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get(path)
            .header(header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .with_context(|| format!("https://{host}{path} via {addr}: no response in time"))?
}

/// The certificate (DER) `addr` presents for SNI `host` on a new TLS connection, as a client
/// made by `connector` accepts it.
pub async fn served_certificate(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
) -> anyhow::Result<Vec<u8>> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let tls = connector
            .connect(ServerName::try_from(host.to_string())?, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} for {host}"))?;
        let (_, session) = tls.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the server presented no certificate")?;
        Ok(leaf.as_ref().to_vec())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .with_context(|| format!("TLS handshake with {addr} for {host}: no answer in time"))?
}
