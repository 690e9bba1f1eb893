//! The monitoring port (istiod's 15014): Prometheus metrics, readiness, and debug views of what
//! is being served.

use std::convert::Infallible;
use std::sync::Arc;

use capstan_xds::{SnapshotCache, TYPES, type_url};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, cache: SnapshotCache, registry: Registry) {
    let registry = Arc::new(registry);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "monitoring server listening on {addr}");
    }
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!(%err, "accept failed");
                continue;
            }
        };
        let cache = cache.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(&request, &cache, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            if let Err(err) = connection.await {
                debug!(%peer, %err, "monitoring connection ended");
            }
        });
    }
}

fn handle(
    request: &Request<Incoming>,
    cache: &SnapshotCache,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(StatusCode::OK, body),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
            }
        }
        "/ready" => text(StatusCode::OK, "ready\n".into()),
        "/debug/nacks" => json_response(&json!(
            cache
                .nacks()
                .iter()
                .map(|n| json!({
                    "node": n.node_id,
                    "type": type_url::short(&n.type_url),
                    "rejected": n.rejected,
                    "message": n.message,
                }))
                .collect::<Vec<_>>()
        )),
        "/debug/snapshot" => {
            let state = cache.current();
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
            json_response(&json!({"version": state.snapshot.version(), "resources": types}))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /metrics /ready /debug/nacks /debug/snapshot\n".into(),
        ),
    }
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

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, format!("{value:#}\n"));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
