//! The client side of the bench-server control API (HTTP/1.1): `GET /ready`,
//! `POST /endpoint?service=I&port=P`, `POST /cluster?name=NAME`, and the go-control-plane
//! peer's `POST /replay/capture` and `POST /replay/serve`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Per-request deadline: a control call answers once the change is in the server's cache.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, hyper::Error),
    #[error("{0}: bad request: {1}")]
    Request(String, hyper::http::Error),
    #[error("{0}: answered {1}: {2}")]
    Status(String, StatusCode, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
}

/// Talks to one bench server's control port.
#[derive(Debug, Clone, Copy)]
pub struct ControlClient {
    addr: SocketAddr,
}

impl ControlClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// Whether the server answers `GET /ready` with 200.
    pub async fn ready(&self) -> bool {
        self.call(Method::GET, "/ready").await.is_ok()
    }

    /// Waits until the server is ready, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.call(Method::GET, "/ready").await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Moves endpoint 0 of service `service` to `port`; returns once the change is cached.
    pub async fn set_endpoint_port(&self, service: usize, port: u32) -> Result<(), ControlError> {
        self.call(
            Method::POST,
            &format!("/endpoint?service={service}&port={port}"),
        )
        .await
    }

    /// Adds cluster `name`; returns once the change is cached.
    pub async fn add_cluster(&self, name: &str) -> Result<(), ControlError> {
        self.call(Method::POST, &format!("/cluster?name={name}"))
            .await
    }

    /// The peer only: subscribes to the control plane at `xds` as Envoy node `node` (the
    /// `node` of an Envoy bootstrap, as JSON) and keeps what it serves as set `name`.
    pub async fn replay_capture(
        &self,
        xds: SocketAddr,
        name: &str,
        node: &serde_json::Value,
    ) -> Result<(), ControlError> {
        let path = format!("/replay/capture?xds={xds}&as={name}");
        self.call_with(Method::POST, &path, Bytes::from(node.to_string()))
            .await
    }

    /// The peer only: serves captured set `name` to every node; returns once it is cached.
    pub async fn replay_serve(&self, name: &str) -> Result<(), ControlError> {
        self.call(Method::POST, &format!("/replay/serve?set={name}"))
            .await
    }

    async fn call(&self, method: Method, path: &str) -> Result<(), ControlError> {
        self.call_with(method, path, Bytes::new()).await
    }

    async fn call_with(&self, method: Method, path: &str, body: Bytes) -> Result<(), ControlError> {
        let what = format!("{method} http://{}{path}", self.addr);
        let exchange = self.exchange(method, path, body, &what);
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ControlError::Timeout(what, REQUEST_TIMEOUT)),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        what: &str,
    ) -> Result<(), ControlError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ControlError::Io(what.to_string(), e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlError::Http(what.to_string(), e))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(body))
            .map_err(|e| ControlError::Request(what.to_string(), e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ControlError::Http(what.to_string(), e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ControlError::Http(what.to_string(), e))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            return Err(ControlError::Status(what.to_string(), status, text));
        }
        Ok(())
    }
}
