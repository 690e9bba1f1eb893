//! The ADS server: one task per stream, driven by the proxy's requests and by new cache
//! states. The protocols themselves are pure state machines in [`sotw`] and [`delta`]; the
//! wire format in [`wire`]; the gRPC plumbing in [`service`].

mod common;
pub mod delta;
pub mod framing;
pub mod limits;
mod peer;
pub mod request;
pub mod service;
pub mod sotw;
pub mod wire;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{InterceptorLayer, Routes};
use tracing::{debug, info};

use crate::cache::{SnapshotCache, State};
use crate::net::grpc::{GrpcLimits, mark_call, mark_request};
use crate::net::tls::ServerTls;

use self::delta::DeltaStream;
use self::limits::Logged;
use self::request::SotwRequest;
use self::service::AdsService;
use self::sotw::SotwStream;
use self::wire::{DeltaResponse, SotwResponse};

/// Responses queued per stream before its task waits for the proxy to read. With at most one
/// response per type in flight this is never reached by a well-behaved proxy; it bounds what a
/// stuck one can hold. While a task waits, newer states coalesce in the cache's watch channel.
const STREAM_BUFFER: usize = 8;

pub type ResponseStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send + 'static>>;

/// Opens streams on a cache.
#[derive(Debug)]
pub struct Streams {
    cache: SnapshotCache,
}

impl Streams {
    fn open_sotw(&self, inbound: impl Inbound<SotwRequest>) -> ResponseStream<SotwResponse> {
        let state = SotwStream::new(self.cache.clone());
        self.open(inbound, state)
    }

    fn open_delta(
        &self,
        inbound: impl Inbound<DeltaDiscoveryRequest>,
    ) -> ResponseStream<DeltaResponse> {
        let state = DeltaStream::new(self.cache.clone());
        self.open(inbound, state)
    }

    fn open<P: Protocol>(
        &self,
        inbound: impl Inbound<P::Request>,
        protocol: P,
    ) -> ResponseStream<P::Response> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(drive(self.cache.clone(), inbound, protocol, tx));
        Box::pin(ReceiverStream::new(rx))
    }
}

/// A stream's requests, as read from the proxy.
trait Inbound<T>: Stream<Item = Result<T, Status>> + Send + Unpin + 'static {}

impl<T, S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static> Inbound<T> for S {}

/// The protocol state of one stream.
trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const DELTA: bool;
    fn node_id(&self) -> &str;
    fn on_request(&mut self, request: Self::Request, state: &State) -> Vec<Self::Response>;
    fn on_state(&mut self, state: &State) -> Vec<Self::Response>;
    /// Why the stream must end, once a request broke a limit.
    fn take_failure(&mut self) -> Option<Status>;
}

impl Protocol for SotwStream {
    type Request = SotwRequest;
    type Response = SotwResponse;
    const DELTA: bool = false;
    fn node_id(&self) -> &str {
        SotwStream::node_id(self)
    }
    fn on_request(&mut self, request: SotwRequest, state: &State) -> Vec<SotwResponse> {
        SotwStream::on_request(self, request, state)
    }
    fn on_state(&mut self, state: &State) -> Vec<SotwResponse> {
        SotwStream::on_state(self, state)
    }
    fn take_failure(&mut self) -> Option<Status> {
        SotwStream::take_failure(self)
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const DELTA: bool = true;
    fn node_id(&self) -> &str {
        DeltaStream::node_id(self)
    }
    fn on_request(&mut self, request: DeltaDiscoveryRequest, state: &State) -> Vec<DeltaResponse> {
        DeltaStream::on_request(self, request, state)
    }
    fn on_state(&mut self, state: &State) -> Vec<DeltaResponse> {
        DeltaStream::on_state(self, state)
    }
    fn take_failure(&mut self) -> Option<Status> {
        DeltaStream::take_failure(self)
    }
}

/// Runs one stream until the proxy goes away, stops reading, or breaks a limit. A stream
/// capstan ends gets the status saying why as its last message.
async fn drive<P: Protocol>(
    cache: SnapshotCache,
    mut inbound: impl Inbound<P::Request>,
    mut protocol: P,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let connected = cache.metrics().connected(P::DELTA).clone();
    connected.inc();
    let mut states = cache.subscribe();
    'stream: loop {
        let responses = tokio::select! {
            request = inbound.next() => match request {
                Some(Ok(request)) => {
                    let state = states.borrow().clone();
                    protocol.on_request(request, &state)
                }
                Some(Err(status)) => {
                    debug!(node = %Logged::new(protocol.node_id()), %status, "stream ended with an error");
                    // A malformed request ends the stream with its reason, not with OK. (If
                    // the proxy is gone the send fails, which is fine.)
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                None => break,
            },
            changed = states.changed() => {
                if changed.is_err() {
                    break; // the cache is gone: shutting down
                }
                let state = states.borrow_and_update().clone();
                protocol.on_state(&state)
            }
        };
        for response in responses {
            if tx.send(Ok(response)).await.is_err() {
                break 'stream; // the proxy is gone
            }
        }
        if let Some(status) = protocol.take_failure() {
            info!(node = %Logged::new(protocol.node_id()), code = ?status.code(), reason = status.message(), "ending stream");
            let _ = tx.send(Err(status)).await;
            break;
        }
    }
    connected.dec();
    info!(node = %Logged::new(protocol.node_id()), delta = P::DELTA, "proxy disconnected");
}

/// The ADS gRPC service over `cache`, to add to a tonic server.
pub fn service(cache: SnapshotCache) -> AdsService {
    AdsService::new(Streams { cache })
}

/// Serves ADS on `listener` until `shutdown` completes, with the default limits.
pub async fn serve(
    listener: TcpListener,
    cache: SnapshotCache,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, cache, &GrpcLimits::default(), shutdown).await
}

/// Serves ADS on `listener` within `limits` until `shutdown` completes.
pub async fn serve_with(
    listener: TcpListener,
    cache: SnapshotCache,
    limits: &GrpcLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    limits
        .server()
        .add_service(InterceptedService::new(service(cache), mark_request))
        .serve_with_incoming_shutdown(limits.incoming(listener), shutdown)
        .await
}

/// Serves ADS over TLS on `listener` within `limits` until `shutdown` completes, beside the
/// services in `routes` (the CA's, which share istiod's port 15012). A stream's proxy must
/// present a client certificate whose identity its node agrees with; every service sees
/// what the handshake proved through [`peer_identity`](crate::net::tls::peer_identity).
/// Every request on every service counts towards its connection's first-request deadline
/// and stream rate, as on the plaintext port.
pub async fn serve_tls(
    listener: TcpListener,
    cache: SnapshotCache,
    tls: &ServerTls,
    limits: &GrpcLimits,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Every call counts as the connection's first request; ADS streams also spend the
    // stream budget, other services (the CA) their own call budget.
    let mark: MarkRequest = mark_call;
    limits
        .server()
        .layer(InterceptorLayer::new(mark))
        .add_routes(routes.add_service(InterceptedService::new(service(cache), mark_request)))
        .serve_with_incoming_shutdown(tls.incoming(listener, limits), shutdown)
        .await
}

type MarkRequest = fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status>;
