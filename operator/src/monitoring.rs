//! The monitoring port (istiod's 15014): Prometheus metrics, liveness and readiness, and
//! debug views of what is being served and where each proxy stands.

pub mod syncz;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use capstan_xds::net::{ConnectionLimits, GuardedListener};
use capstan_xds::{SnapshotCache, TYPES, type_url};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::http_connection::{self, ConnectionTimeouts};

const ENDPOINTS: &str = "endpoints: /metrics /healthz /readyz /debug/syncz \
                         /debug/config_dump?proxy=NODE_ID /debug/nacks /debug/snapshot\n";

/// Whether capstan is ready to serve proxies, and if not, what it still waits for and what
/// has failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadyState {
    /// What is still awaited (say, "the first config"); empty when ready.
    pub waiting_for: Vec<String>,
    /// Parts that failed after start (a dead task, a folder that cannot be watched), by
    /// name, with why.
    pub failing: BTreeMap<String, String>,
}

impl ReadyState {
    pub fn ready() -> Self {
        Self::default()
    }

    pub fn waiting(waiting_for: Vec<String>) -> Self {
        Self {
            waiting_for,
            ..Self::default()
        }
    }

    pub fn is_ready(&self) -> bool {
        self.waiting_for.is_empty() && self.failing.is_empty()
    }

    /// Records that `part` fails because of `why`; returns whether that changed anything.
    pub fn fail(&mut self, part: &str, why: String) -> bool {
        self.failing.insert(part.to_string(), why.clone()) != Some(why)
    }

    /// Records that `part` works again; returns whether it was failing.
    pub fn recover(&mut self, part: &str) -> bool {
        self.failing.remove(part).is_some()
    }
}

/// What every request reads.
struct Monitor {
    cache: SnapshotCache,
    registry: Registry,
    ready: watch::Receiver<ReadyState>,
    /// This capstan's name in `/debug/syncz` (istioctl's ISTIOD column).
    instance: String,
}

/// Default cap on open monitoring connections. Its clients are Prometheus, the kubelet's
/// probes and an operator's curl: a few connections; the cap bounds the descriptors and tasks
/// that many slow or idle clients can take.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default cap on monitoring connections from one address, so that one client (the same
/// Prometheus, a misbehaving script) can never take every slot: the probes must still get in.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 16;
/// Time a client has to send a request's headers, also the longest an idle keep-alive
/// connection is kept (hyper starts the same timer while it waits for the next request).
/// Probes and scrapes send their whole request at once.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest a connection is served. Every answer here is computed at once, so this only
/// ends clients that stopped reading (a large config_dump to a stalled reader) or keep a
/// connection busy forever; Prometheus simply reconnects.
pub const MAX_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);
/// After [`MAX_CONNECTION_LIFETIME`], how long an answer in progress may still take.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until the process ends, within the default connection limits.
pub async fn serve(
    listener: TcpListener,
    cache: SnapshotCache,
    registry: Registry,
    ready: watch::Receiver<ReadyState>,
) {
    let limits = ConnectionLimits {
        max_connections: DEFAULT_MAX_CONNECTIONS,
        max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
    };
    serve_with(listener, limits, cache, registry, ready).await;
}

/// Serves until the process ends, with at most `limits` connections open.
pub async fn serve_with(
    listener: TcpListener,
    limits: ConnectionLimits,
    cache: SnapshotCache,
    registry: Registry,
    ready: watch::Receiver<ReadyState>,
) {
    let monitor = Arc::new(Monitor {
        cache,
        registry,
        ready,
        instance: instance_name(),
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "monitoring server listening on {addr}");
    }
    let mut listener = GuardedListener::new(listener, limits, "monitoring");
    loop {
        let socket = listener.accept().await;
        let peer = socket.peer();
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = monitor.handle(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let timeouts = ConnectionTimeouts {
                header_read: HEADER_READ_TIMEOUT,
                lifetime: MAX_CONNECTION_LIFETIME,
                grace: SHUTDOWN_GRACE,
            };
            http_connection::serve(TokioIo::new(socket), service, timeouts, "monitoring", peer)
                .await;
        });
    }
}

/// The pod name under Kubernetes, else the host name, like istiod names itself.
fn instance_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .chain(std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "capstan".to_string())
}

impl Monitor {
    fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => text(StatusCode::OK, body),
                    Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
                }
            }
            // Answering at all is the point: the process is alive and its runtime turns.
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" | "/ready" => self.readyz(),
            "/debug/syncz" => json_response(
                StatusCode::OK,
                &json!(syncz::syncz(&self.cache, &self.instance)),
            ),
            "/debug/config_dump" => {
                let Some(proxy) = query_param(request.uri().query(), "proxy") else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "usage: /debug/config_dump?proxy=NODE_ID (node ids: /debug/syncz)\n".into(),
                    );
                };
                match syncz::config_dump(&self.cache, &proxy) {
                    Some(dump) => json_response(StatusCode::OK, &dump),
                    None => text(
                        StatusCode::NOT_FOUND,
                        format!("no proxy {proxy:?} is connected (see /debug/syncz)\n"),
                    ),
                }
            }
            "/debug/nacks" => json_response(
                StatusCode::OK,
                &json!(
                    self.cache
                        .nacks()
                        .iter()
                        .map(|n| json!({
                            "node": n.node_id,
                            "type": type_url::short(&n.type_url),
                            "rejected": n.rejected,
                            "message": n.message,
                        }))
                        .collect::<Vec<_>>()
                ),
            ),
            "/debug/snapshot" => {
                let state = self.cache.current();
                let types: serde_json::Map<String, serde_json::Value> = (0..TYPES)
                    .map(|i| {
                        let names: Vec<&str> =
                            state.snapshot.entries(i).map(|(n, _)| n.as_ref()).collect();
                        (
                            type_url::short(type_url::PUSH_ORDER[i]).to_string(),
                            json!(names),
                        )
                    })
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({"version": state.snapshot.version(), "resources": types}),
                )
            }
            _ => text(StatusCode::NOT_FOUND, ENDPOINTS.into()),
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let state = self.ready.borrow();
        if state.is_ready() {
            return text(StatusCode::OK, "ready\n".into());
        }
        let mut reasons = Vec::new();
        if !state.waiting_for.is_empty() {
            reasons.push(format!("waiting for {}", state.waiting_for.join(", ")));
        }
        reasons.extend(
            state
                .failing
                .iter()
                .map(|(part, why)| format!("{part} failing: {why}")),
        );
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

/// The value of `name` in a query string, percent-decoded (node ids may arrive with `~`
/// encoded as `%7E`). `+` is left as is: node ids do not contain spaces.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
        .filter(|value| !value.is_empty())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(status, format!("{value:#}\n"));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;
