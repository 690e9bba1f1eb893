//! `capstan-upstream`: a tiny HTTP/1.1 server standing in for a mesh workload.
//!
//! Every request is answered with 200 and a JSON body naming the instance and echoing what
//! arrived: `{"service":"reviews","version":"v1","path":"/x","host":"reviews","method":"GET",
//! "headers":{...},"peer":"127.0.0.1:5123"}` plus a newline (header names lower-case, repeated
//! headers joined with `,`).
//!
//! What traffic tests need of a workload, asked for per request by headers:
//! - `x-upstream-status: 503` answers with that status (body as usual);
//! - `x-upstream-delay-ms: 300` waits that long first (at most 10 s).
//!
//! And per instance, by paths on the instance itself (never counted as requests):
//! - `GET /__upstream/count`: `{"requests":N}`, every other request this instance answered;
//! - `GET /__upstream/fail?status=503`: from now on answer everything with that status;
//! - `GET /__upstream/recover`: answer normally again.
//!
//! `--serve-tls NAME:VERSION:ADDR` serves an instance over TLS with `--tls-cert`/`--tls-key`
//! (PEM); with `--tls-client-ca` it requires a client certificate issued by that CA.
//!
//! One instance:      `capstan-upstream --name reviews --version v1 --listen 127.0.0.1:9081`
//! Many in one process: `capstan-upstream --serve reviews:v1:127.0.0.1:9081 --serve ratings:v1:127.0.0.1:0`
//!
//! Port 0 picks a free port. For every instance, once it is bound, one line
//! `serving NAME VERSION on ADDR` is printed on stdout (the e2e harness reads it).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
#[command(about = "Tiny HTTP/1.1 upstream that answers with its service name and version as JSON")]
struct Args {
    /// Service name reported in responses (with --version and --listen).
    #[arg(long, requires_all = ["version", "listen"])]
    name: Option<String>,
    /// Version reported in responses.
    #[arg(long)]
    version: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:9081 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Extra instance as NAME:VERSION:ADDR; may be repeated.
    #[arg(long = "serve", value_name = "NAME:VERSION:ADDR")]
    serve: Vec<String>,
    /// An instance served over TLS, as NAME:VERSION:ADDR; may be repeated.
    #[arg(long = "serve-tls", value_name = "NAME:VERSION:ADDR", requires_all = ["tls_cert", "tls_key"])]
    serve_tls: Vec<String>,
    /// Server certificate chain (PEM) of the TLS instances.
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// Server private key (PEM) of the TLS instances.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// CA (PEM) client certificates must chain to; unset: no client certificate asked for.
    #[arg(long)]
    tls_client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug)]
struct Instance {
    name: String,
    version: String,
    addr: SocketAddr,
    tls: bool,
    /// Requests answered, control paths excepted.
    requests: AtomicU64,
    /// When set, the status every request is answered with.
    failing: AtomicU16,
}

impl Instance {
    fn new(name: &str, version: &str, addr: SocketAddr, tls: bool) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            addr,
            tls,
            requests: AtomicU64::new(0),
            failing: AtomicU16::new(0),
        }
    }
}

fn parse_serve(spec: &str) -> anyhow::Result<Instance> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(version), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--serve {spec:?}: expected NAME:VERSION:ADDR");
    };
    if name.is_empty() || version.is_empty() {
        bail!("--serve {spec:?}: NAME and VERSION must not be empty");
    }
    let addr = addr
        .parse()
        .with_context(|| format!("--serve {spec:?}: bad address {addr:?}"))?;
    Ok(Instance::new(name, version, addr, false))
}

fn instances(args: Args) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    if let (Some(name), Some(version), Some(addr)) = (&args.name, &args.version, args.listen) {
        out.push(Instance::new(name, version, addr, false));
    }
    for spec in &args.serve {
        out.push(parse_serve(spec)?);
    }
    for spec in &args.serve_tls {
        out.push(Instance {
            tls: true,
            ..parse_serve(spec)?
        });
    }
    if out.is_empty() {
        bail!("nothing to serve: give --name/--version/--listen or at least one --serve");
    }
    Ok(out)
}

/// The response body, fields in this order.
#[derive(serde::Serialize)]
struct Reply<'a> {
    service: &'a str,
    version: &'a str,
    path: &'a str,
    host: &'a str,
    method: &'a str,
    headers: BTreeMap<String, String>,
    peer: String,
}

fn reply_body(inst: &Instance, req: &Request<Incoming>, peer: SocketAddr) -> Bytes {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let reply = Reply {
        service: &inst.name,
        version: &inst.version,
        path,
        host,
        method: req.method().as_str(),
        headers,
        peer: peer.to_string(),
    };
    // Serializing strings cannot fail; fall back to an empty object just in case.
    let mut body = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_string());
    body.push('\n');
    Bytes::from(body)
}

fn header_number(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The instance's own control paths; `None` for every other request.
fn control(inst: &Instance, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path().strip_prefix("/__upstream/")?;
    let query = req.uri().query().unwrap_or("");
    let body = match path {
        "count" => format!(
            "{{\"requests\":{}}}\n",
            inst.requests.load(Ordering::SeqCst)
        ),
        "fail" => {
            let status = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("status="))
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|s| StatusCode::from_u16(*s).is_ok())
                .unwrap_or(503);
            inst.failing.store(status, Ordering::SeqCst);
            format!("{{\"failing\":{status}}}\n")
        }
        "recover" => {
            inst.failing.store(0, Ordering::SeqCst);
            "{\"failing\":null}\n".to_string()
        }
        _ => return Some(json_response(StatusCode::NOT_FOUND, "{}\n".into())),
    };
    Some(json_response(StatusCode::OK, body))
}

async fn handle(
    inst: Arc<Instance>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(resp) = control(&inst, &req) {
        return Ok(resp);
    }
    inst.requests.fetch_add(1, Ordering::SeqCst);
    let body = reply_body(&inst, &req, peer);
    let delay = header_number(&req, "x-upstream-delay-ms").unwrap_or(0);
    let asked = header_number(&req, "x-upstream-status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok());
    let failing = StatusCode::from_u16(inst.failing.load(Ordering::SeqCst)).ok();
    // Drain the request body so the connection can be reused; its content is irrelevant.
    let _ = req.into_body().collect().await;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.min(MAX_DELAY_MS))).await;
    }
    let status = failing.or(asked).unwrap_or(StatusCode::OK);
    Ok(json_response(
        status,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// The longest `x-upstream-delay-ms` honoured.
const MAX_DELAY_MS: u64 = 10_000;

async fn serve(listener: TcpListener, inst: Arc<Instance>, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("{} {}: accept failed: {e}", inst.name, inst.version);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let inst = inst.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(inst.clone(), peer, req));
            // Errors here are client-side disconnects or refused handshakes (the client sees
            // those); nothing to do about them.
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                    Err(e) => eprintln!("TLS handshake from {peer} refused: {e}"),
                },
            }
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, args.tls_client_ca.as_deref())?),
        _ => None,
    };
    let instances = instances(args)?;
    let mut tasks = Vec::new();
    for inst in instances {
        let tls = if inst.tls { acceptor.clone() } else { None };
        let listener = TcpListener::bind(inst.addr)
            .await
            .with_context(|| format!("binding {} for {} {}", inst.addr, inst.name, inst.version))?;
        let bound = listener.local_addr()?;
        println!("serving {} {} on {bound}", inst.name, inst.version);
        tasks.push(tokio::spawn(serve(listener, Arc::new(inst), tls)));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures_all(tasks) => {}
    }
    Ok(())
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots.add(c.with_context(|| format!("parsing {}", ca.display()))?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serve_specs() {
        let i = parse_serve("reviews:v1:127.0.0.1:9081").unwrap();
        assert_eq!((i.name.as_str(), i.version.as_str()), ("reviews", "v1"));
        assert_eq!(i.addr, "127.0.0.1:9081".parse().unwrap());
        assert!(parse_serve("reviews:v1").is_err());
        assert!(parse_serve(":v1:127.0.0.1:1").is_err());
        assert!(parse_serve("reviews:v1:nonsense").is_err());
    }
}
