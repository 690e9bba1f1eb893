//! The limits of the ADS gRPC server (HTTP/2, plaintext) and the tonic server they configure.
//!
//! tonic's builder passes `None` for every HTTP/2 setting it is not given, and `None` does not
//! mean "hyper's default" everywhere: it lifts hyper's cap of 200 concurrent streams per
//! connection and switches off h2's limit on the resets a client can make the server send.
//! Every setting that bounds what one client can cost is therefore set here explicitly.

#[cfg(test)]
mod tests;

use std::io;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

use super::{ConnectionLimits, Guarded, GuardedInfo, GuardedListener};

/// Default cap on ADS connections. Each Envoy holds one; istiod is sized for a few thousand
/// proxies per replica and the load benchmark runs 10,000 against one server. Each
/// connection costs a file descriptor, so `capstan run` lowers the cap to what its open-file
/// limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default cap on connections from one address: none. Many proxies legitimately share an
/// address: a remote cluster's proxies reach the control plane through its east-west gateway,
/// and nodes SNAT hostNetwork pods and VMs.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
/// Default cap on concurrent streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
/// Envoy opens one ADS stream per connection; each stream costs a task and its protocol
/// state, so a client that opens thousands on one connection would cost as much as thousands
/// of proxies. 16 leaves room for tools that multiplex a few streams.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Default time a new connection has to send its first request. Envoy opens its ADS stream
/// as soon as it connects; a client that connects and sends nothing (or only the HTTP/2
/// preface) holds a slot and a descriptor for nothing.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default age after which a connection is asked to go away (GOAWAY) like istiod's
/// `keepaliveMaxServerConnectionAge` (30 minutes): it spreads reconnected proxies over
/// replicas and bounds what a connection that is never idle long enough for keepalive to
/// notice can hold.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// How long an aged connection's streams may continue after its GOAWAY. ADS streams never end
/// on their own, so without this an aged connection would stay forever; Envoy reconnects
/// (keeping its config meanwhile) when it is closed.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);
/// Streams a client may open and reset before the server accepted them (h2's default, the
/// guard against the "rapid reset" attack, CVE-2023-44487); beyond it the connection is
/// closed with ENHANCE_YOUR_CALM.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Resets the server may be made to send for a client's protocol errors before it closes the
/// connection (hyper's default, which tonic's `None` would switch off).
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Streams a connection may open at once before [`STREAMS_PER_SECOND`] applies, and that
/// rate. Envoy opens one ADS stream per connection and reopens it after an error with a
/// back-off of at least half a second; a tool filling the 16-stream cap fits the burst four
/// times. A client that opens and resets streams as fast as it can (the "rapid reset"
/// attack: each stream costs the server a task and a subscription, and h2's
/// pending-accept guard does not see streams the server already accepted) opens thousands a
/// second and has its connection closed.
pub const STREAM_BURST: u32 = 64;
pub const STREAMS_PER_SECOND: f64 = 8.0;
/// Unary calls (certificate requests) one connection may make at once, and per second after
/// that: a node agent asks for every pod on its node when it starts (Kubernetes runs at most
/// 110 pods per node by default), then rarely.
pub const CALL_BURST: u32 = 256;
pub const CALLS_PER_SECOND: f64 = 64.0;
/// HTTP/2 keepalive: a PING after this long without frames; a dead peer's connection closes
/// `KEEPALIVE_TIMEOUT` later.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the ADS server allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    pub connections: ConnectionLimits,
    pub max_streams_per_connection: u32,
    pub first_request_timeout: Duration,
    /// `None`: connections never age out.
    pub max_connection_age: Option<Duration>,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            },
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            max_connection_age: Some(DEFAULT_MAX_CONNECTION_AGE),
        }
    }
}

impl GrpcLimits {
    /// A tonic server builder with these limits' HTTP/2 settings.
    pub fn server(&self) -> tonic::transport::Server {
        let mut server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(self.max_streams_per_connection)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        if let Some(age) = self.max_connection_age {
            server = server
                .max_connection_age(age)
                .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE);
        }
        server
    }

    /// Connections accepted from `listener` within these limits, each with a deadline for its
    /// first request (a service must call [`mark_request`] on every request).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<Guarded<TcpStream>, io::Error>> + Send + 'static {
        let first_request = self.first_request_timeout;
        let listener = GuardedListener::new(listener, self.connections, "ADS");
        futures::stream::unfold(listener, move |mut listener| async move {
            let mut connection = listener.accept().await;
            // The builder's tcp_nodelay only applies to listeners tonic binds itself.
            if let Err(err) = connection.get_ref().set_nodelay(true) {
                tracing::debug!(%err, "cannot set TCP_NODELAY");
            }
            connection.require_request_within(first_request);
            connection.limit_request_rate(STREAM_BURST, STREAMS_PER_SECOND);
            connection.limit_call_rate(CALL_BURST, CALLS_PER_SECOND);
            Some((Ok(connection), listener))
        })
    }
}

/// A tonic interceptor for unary services beside ADS (the CA): records each call on its
/// connection against the call budget; a call beyond it is refused and the connection closed.
pub fn mark_call(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(info) = request.extensions().get::<GuardedInfo>()
        && !info.state.call_arrived()
    {
        tracing::warn!(peer = %info.peer, "closing a connection that makes calls too fast");
        return Err(tonic::Status::resource_exhausted(format!(
            "more than {CALLS_PER_SECOND} calls a second on one connection"
        )));
    }
    Ok(request)
}

/// A tonic interceptor that records each request on its connection (see
/// [`Guarded::require_request_within`] and [`Guarded::limit_request_rate`]): a request beyond
/// the connection's rate is refused and the connection closed.
pub fn mark_request(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(info) = request.extensions().get::<GuardedInfo>()
        && !info.state.request_arrived()
    {
        tracing::warn!(peer = %info.peer, "closing a connection that opens streams too fast");
        return Err(tonic::Status::resource_exhausted(format!(
            "more than {STREAMS_PER_SECOND} streams a second on one connection"
        )));
    }
    Ok(request)
}
