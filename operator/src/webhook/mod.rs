//! `capstan webhook`: the admission webhooks, standalone (`capstan run --webhook-addr` serves
//! the same in-process, with a certificate from capstan's CA).
//!
//! Serves HTTPS (rustls, HTTP/1.1): `POST /validate` answers `admission.k8s.io/v1`
//! AdmissionReviews of Istio objects (see [`review`]); `POST /inject` adds the sidecar to
//! pods (see [`inject`]); `GET /ready` answers 200. The API server reaches it through the
//! `capstan` Service (see `charts/manifests/validating-webhook.yaml`).

pub mod inject;
pub mod review;
pub mod tls;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::http_connection::{self, ConnectionTimeouts};
use capstan_xds::net::{ConnectionLimits, GuardedListener};
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Path the API server posts AdmissionReviews to.
pub const VALIDATE_PATH: &str = "/validate";

/// Largest request body accepted (objects are limited to about 1.5 MiB by etcd).
const MAX_BODY: usize = 4 << 20;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has to send a request's headers once the TLS handshake is done; also the
/// longest an idle keep-alive connection is kept (hyper runs the same timer while it waits
/// for the next request). The API server sends each review at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has to send a request's body. The API server's own call timeout is
/// `timeoutSeconds` (10 s by default, 30 s at most): a body slower than that has no reader.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a connection is served; it then finishes the request in progress and closes.
/// The API server reconnects as it needs, and no client keeps a slot forever.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// After [`MAX_CONNECTION_LIFETIME`], how long a request in progress may still take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Default cap on open connections: the webhook is fail-closed, so descriptors and tasks must
/// never run out however many clients connect. The API server sends one review per
/// connection at a time, and validating takes microseconds: a few connections carry
/// thousands of writes a second.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default cap on connections from one address: a quarter of the total, so that one client
/// cannot take every slot while a single API server still has room for 256 reviews in flight.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// PEM file with the serving certificate (and chain) the API server verifies
    /// against the caBundle of the ValidatingWebhookConfiguration.
    #[arg(long, env = "CAPSTAN_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM file with the private key of the serving certificate.
    #[arg(long, env = "CAPSTAN_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Address to listen on (like istiod's 15017).
    #[arg(long, default_value = "0.0.0.0:15017")]
    pub addr: SocketAddr,
    /// Connections open at once; beyond it new clients wait in the listen backlog until one
    /// closes. Lowered at start to what the open-file limit (`ulimit -n`) allows.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections open at once from one IP address (0: no cap); a connection beyond it is
    /// closed at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// The namespace capstan runs in (the default xDS address of injected proxies).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// SPIFFE trust domain of the mesh, for injected proxies.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[command(flatten)]
    pub inject: inject::InjectArgs,
}

impl WebhookArgs {
    /// The connection limits, within the process's open-file limit.
    pub fn limits(&self) -> ConnectionLimits {
        let wanted = ConnectionLimits {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
        };
        let (limits, lowered) = wanted.within_fd_limit(0);
        if lowered {
            tracing::warn!(
                wanted = wanted.max_connections,
                cap = limits.max_connections,
                "--max-connections lowered to what the open-file limit (ulimit -n) allows"
            );
        }
        limits
    }
}

/// Runs the webhook until Ctrl-C or SIGTERM.
pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let config = server_config(&args.tls_cert, &args.tls_key)?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let inject = inject::InjectConfig::new(&args.inject, &args.namespace, &args.trust_domain);
    tracing::info!(addr = %args.addr, "admission webhook listening (/validate, /inject)");
    let routes = Arc::new(Routes {
        inject: Some(inject),
    });
    serve_routes(
        listener,
        args.limits(),
        Arc::new(config),
        routes,
        shutdown_signal(),
    )
    .await;
    tracing::info!("admission webhook stopped");
    Ok(())
}

/// TLS settings from a PEM certificate chain and private key (ring provider, TLS 1.2
/// and 1.3, ALPN `http/1.1`).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM certificate in {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and private key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts connections on `listener` until `shutdown` completes, within the default limits.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ConnectionLimits {
        max_connections: DEFAULT_MAX_CONNECTIONS,
        max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
    };
    serve_with(listener, limits, config, shutdown).await;
}

/// Accepts connections on `listener`, at most `limits` open at once, until `shutdown`
/// completes; validation only.
pub async fn serve_with(
    listener: TcpListener,
    limits: ConnectionLimits,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let routes = Arc::new(Routes::default());
    serve_routes(listener, limits, config, routes, shutdown).await;
}

/// What the server answers beside `/validate` and `/ready`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// `/inject`, when set (404 otherwise).
    pub inject: Option<inject::InjectConfig>,
}

/// [`serve_with`] answering `routes` too. `config` may resolve its certificate per
/// handshake (see [`tls`]), so a renewed one is served without a restart.
pub async fn serve_routes(
    listener: TcpListener,
    limits: ConnectionLimits,
    config: Arc<ServerConfig>,
    routes: Arc<Routes>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(config);
    let mut listener = GuardedListener::new(listener, limits, "webhook");
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let peer = tcp.peer();
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let timeouts = ConnectionTimeouts {
                header_read: HEADER_READ_TIMEOUT,
                lifetime: MAX_CONNECTION_LIFETIME,
                grace: SHUTDOWN_GRACE,
            };
            let io = TokioIo::new(tls);
            let service = service_fn(move |request| handle(request, routes.clone()));
            http_connection::serve(io, service, timeouts, "webhook", peer).await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    routes: Arc<Routes>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let response = match (request.method(), request.uri().path(), &routes.inject) {
        (&Method::POST, VALIDATE_PATH, _) => {
            answer(request.into_body(), BODY_READ_TIMEOUT, review::respond).await
        }
        (&Method::POST, inject::INJECT_PATH, Some(config)) => {
            answer(request.into_body(), BODY_READ_TIMEOUT, |body| {
                inject::respond(body, config)
            })
            .await
        }
        (_, VALIDATE_PATH, _) | (_, inject::INJECT_PATH, Some(_)) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (&Method::GET, "/ready", _) => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// Validates a review of at most `MAX_BODY` bytes arriving within `read_timeout`.
#[cfg(test)]
async fn validate<B>(body: B, read_timeout: Duration) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    answer(body, read_timeout, review::respond).await
}

/// Reads a review of at most `MAX_BODY` bytes arriving within `read_timeout`, and answers it
/// with `respond`.
async fn answer<B>(
    body: B,
    read_timeout: Duration,
    respond: impl FnOnce(&[u8]) -> Result<Vec<u8>, review::ReviewError>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = Limited::new(body, MAX_BODY).collect();
    let body = match tokio::time::timeout(read_timeout, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {err}\n"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} ms\n",
                    read_timeout.as_millis()
                ),
            );
        }
    };
    match respond(&body) {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => {
            tracing::warn!(%err, "rejected a malformed admission request");
            text(StatusCode::BAD_REQUEST, &format!("{err}\n"))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
