//! External authorizers for the CUSTOM AuthorizationPolicy tests: an HTTP one (Envoy's
//! `ext_authz` HTTP service protocol: the request's method, path and allowed headers come as
//! an HTTP request; 200 allows, anything else denies) and a gRPC one (`envoy.service.auth.v3
//! .Authorization/Check`). Both allow an HTTP request carrying `x-ext-authz: allow`; the gRPC
//! one allows a TCP connection unless it comes from [`DENIED_SOURCE`]. Each records what it
//! was asked, so a test can tell that it was asked only about what a rule matched.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The request header, and its value, that the authorizers allow.
pub const ALLOW_HEADER: (&str, &str) = ("x-ext-authz", "allow");

/// A TCP connection from this address is denied by the gRPC authorizer.
pub const DENIED_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 8));

/// What an authorizer was asked: `"GET /path"` for HTTP, `"tcp <source ip>"` for TCP.
pub type Asked = Arc<Mutex<Vec<String>>>;

/// An authorizer on 127.0.0.1; stops when dropped.
pub struct Authorizer {
    pub addr: SocketAddr,
    pub asked: Asked,
    task: JoinHandle<()>,
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Authorizer {
    /// What it was asked so far, and forgets it.
    pub fn take_asked(&self) -> Vec<String> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The HTTP authorizer.
    pub async fn http() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let asked = Asked::default();
        let record = asked.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        async move { Ok::<_, hyper::Error>(http_check(&request, &record)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, asked, task })
    }

    /// The gRPC authorizer.
    pub async fn grpc() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let asked = Asked::default();
        let server = tonic::transport::Server::builder().add_service(AuthorizationServer::new(
            GrpcAuthorizer {
                asked: asked.clone(),
            },
        ));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = server.serve_with_incoming(incoming).await {
                tracing::error!("test gRPC authorizer stopped: {e}");
            }
        });
        Ok(Self { addr, asked, task })
    }
}

fn http_check(request: &Request<Incoming>, asked: &Asked) -> Response<Full<Bytes>> {
    asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{} {}", request.method(), request.uri().path()));
    let allowed = request
        .headers()
        .get(ALLOW_HEADER.0)
        .is_some_and(|v| v.as_bytes() == ALLOW_HEADER.1.as_bytes());
    let (status, body) = if allowed {
        (StatusCode::OK, "")
    } else {
        (
            StatusCode::FORBIDDEN,
            "denied by the test's HTTP authorizer",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

struct GrpcAuthorizer {
    asked: Asked,
}

#[tonic::async_trait]
impl Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http);
        let (what, allowed) = match http {
            Some(http) => (
                format!("{} {}", http.method, http.path),
                http.headers.get(ALLOW_HEADER.0).map(String::as_str) == Some(ALLOW_HEADER.1),
            ),
            None => {
                let source = attributes
                    .source
                    .and_then(|s| s.address)
                    .and_then(|a| a.address)
                    .and_then(|a| match a {
                        Address::SocketAddress(s) => s.address.parse::<IpAddr>().ok(),
                        _ => None,
                    });
                let shown = source.map_or("?".to_string(), |ip| ip.to_string());
                (format!("tcp {shown}"), source != Some(DENIED_SOURCE))
            }
        };
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        // google.rpc.Code: OK, or PERMISSION_DENIED.
        let code = if allowed { 0 } else { 7 };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}
