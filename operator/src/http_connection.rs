//! One HTTP/1 connection of capstan's own servers (monitoring, webhook), with the timeouts a
//! slow or idle client must not escape: headers must arrive in time (which also ends idle
//! keep-alive connections), and no connection outlives its lifetime plus a grace period.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;
use hyper_util::rt::TokioTimer;
use tracing::debug;

/// How long each step of a connection may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    pub header_read: Duration,
    pub lifetime: Duration,
    /// After `lifetime`, how long a request in progress may still take.
    pub grace: Duration,
}

/// Serves `io` with `service` until the client is done or the timeouts end it. `server`
/// names the server in debug logs.
pub async fn serve<I, S, B>(
    io: I,
    service: S,
    timeouts: ConnectionTimeouts,
    server: &'static str,
    peer: SocketAddr,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = tokio::time::sleep(timeouts.lifetime) => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(timeouts.grace, connection).await {
                Ok(ended) => ended,
                Err(_) => return debug!(%peer, server, "closed a connection at its age"),
            }
        }
    };
    if let Err(err) = ended {
        debug!(%peer, server, %err, "connection ended with an error");
    }
}
