//! A minimal HTTP/1.1 client (hyper) that keeps one connection to one address and reconnects
//! when needed, plus the upstream's JSON reply.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Per-request deadline (connect + response), so a hung peer fails a poll instead of a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A response with its body read in full.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not the expected JSON: {}", self.text()))
    }

    /// The upstream's reply, failing unless the status is 200.
    pub fn upstream_reply(&self) -> anyhow::Result<UpstreamReply> {
        if self.status != StatusCode::OK {
            bail!(
                "expected 200 from an upstream, got {}: {}",
                self.status,
                self.text().trim()
            );
        }
        self.json()
    }
}

/// What `capstan-upstream` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpstreamReply {
    pub service: String,
    pub version: String,
    pub path: String,
    pub host: String,
    #[serde(default)]
    pub method: String,
    /// The request headers that arrived (lower-case names, repeats joined with `,`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The address the request came from.
    #[serde(default)]
    pub peer: String,
}

/// A connection opened to an address.
pub type Connecting = Pin<Box<dyn Future<Output = anyhow::Result<TcpStream>> + Send>>;

/// How an [`HttpClient`] opens its connections, when not with a plain `connect` (e.g. from a
/// socket the capture takes for another pod's, see
/// [`crate::capture::Capture::another_pod_client`]).
pub type Connector = Arc<dyn Fn(SocketAddr) -> Connecting + Send + Sync>;

/// An HTTP/1.1 client for one address (e.g. an Envoy listener or admin port).
pub struct HttpClient {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    resets: usize,
    connector: Option<Connector>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            resets: 0,
            connector: None,
        }
    }

    /// A client for `addr` that opens each connection (the first, and any after the peer
    /// closed one) with `connector`.
    pub fn with_connector(addr: SocketAddr, connector: Connector) -> Self {
        Self {
            connector: Some(connector),
            ..Self::new(addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests failed on a kept-alive connection and were sent again on a new one.
    /// A peer may close an idle connection as a request goes out, so these are retried; but
    /// a listener replaced when it should have been updated in place shows up here too, so a
    /// test that changes config asserts there were none.
    pub fn resets(&self) -> usize {
        self.resets
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let stream = match &self.connector {
            Some(connect) => connect(self.addr).await,
            None => TcpStream::connect(self.addr).await.map_err(Into::into),
        }
        .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {}", self.addr))?;
        tokio::spawn(async move {
            // Ends when the peer closes or the sender is dropped; errors show up on requests.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `GET path` with the given Host header and extra headers.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        let addr = self.addr;
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, host, path, headers))
            .await
            .with_context(|| {
                format!("GET {path} (Host: {host}) to {addr} took over {REQUEST_TIMEOUT:?}")
            })?
    }

    /// Sends `method path` (no body) with the given Host header and extra headers. Only
    /// for idempotent methods: a request that fails on a kept-alive connection is sent again
    /// on a new one (see [`HttpClient::resets`]).
    pub async fn request(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        let addr = self.addr;
        let shown = method.clone();
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, host, path, headers))
            .await
            .with_context(|| {
                format!("{shown} {path} (Host: {host}) to {addr} took over {REQUEST_TIMEOUT:?}")
            })?
    }

    async fn send(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        // The sender is put back only after a complete exchange, so any error or timeout
        // leaves `self.sender` empty and the next request reconnects.
        let (mut sender, reused) = match self.sender.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => (s, true),
                Err(_) => (self.connect().await?, false),
            },
            None => (self.connect().await?, false),
        };
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.body(Empty::<Bytes>::new())
                .with_context(|| format!("building {method} {path} with headers {headers:?}"))
        };
        let resp = match sender.send_request(build()?).await {
            Ok(resp) => resp,
            // A kept-alive connection the peer closed meanwhile: the method is idempotent, so
            // retry once on a fresh connection, counted (see `resets`).
            Err(e) if reused => {
                self.resets += 1;
                tracing::warn!(addr = %self.addr, "{method} {path} (Host: {host}): kept-alive connection failed ({e}); retrying on a new one");
                sender = self.connect().await?;
                sender.send_request(build()?).await.with_context(|| {
                    format!("{method} {path} (Host: {host}) to {} (retried)", self.addr)
                })?
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{method} {path} (Host: {host}) to {}", self.addr));
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("reading the body of {method} {path} from {}", self.addr))?
            .to_bytes();
        let keep = !parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if keep {
            self.sender = Some(sender);
        }
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `get` and parse the upstream's reply (requires 200).
    pub async fn upstream(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<UpstreamReply> {
        self.get(host, path, headers)
            .await?
            .upstream_reply()
            .with_context(|| format!("GET {path} (Host: {host}, headers {headers:?})"))
    }
}

impl HttpClient {
    /// One request for `/reviews/1` with `Host: host`; the reply must come from a `reviews`
    /// upstream.
    pub async fn reviews(
        &mut self,
        host: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<UpstreamReply> {
        let reply = self.upstream(host, "/reviews/1", headers).await?;
        anyhow::ensure!(
            reply.service == "reviews",
            "reply from the wrong service: {reply:?}"
        );
        Ok(reply)
    }

    /// Which versions of `reviews` answer `n` requests with `Host: reviews`.
    pub async fn reviews_versions(
        &mut self,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let reply = self.reviews("reviews", headers).await?;
            *counts.entry(reply.version).or_default() += 1;
        }
        Ok(counts)
    }

    /// Fails unless all `n` requests with `headers` are answered by reviews `version`.
    pub async fn expect_all_reviews(
        &mut self,
        headers: &[(&str, &str)],
        version: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        let counts = self.reviews_versions(headers, n).await?;
        anyhow::ensure!(
            counts.len() == 1 && counts.get(version) == Some(&n),
            "expected all {n} requests with {headers:?} to reach {version}, got {counts:?}"
        );
        Ok(())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
