//! Runs a simulated proxy on a real ADS stream: gRPC over HTTP/2 (a tonic `Channel`), requests
//! and responses as raw protobuf bytes so that nothing is decoded that the proxy does not read
//! (framing in [`grpc`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::delta::DeltaProxy;
use super::grpc;
use super::sotw::SotwProxy;
use super::{Env, Protocol, ProxyError, Step};
use crate::name_set::Interner;
use crate::request;
use crate::tracker::Tracker;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Envoy's default HTTP/2 windows for its xDS connection (256 MiB): the server is never held
/// back by the client's flow control.
const WINDOW: u32 = 256 * 1024 * 1024;

/// Why a proxy's stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] Status),
    #[error("the server closed the stream")]
    Closed,
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Opens one HTTP/2 connection to the ADS server, with Envoy-like settings.
pub async fn connect(ads: SocketAddr) -> Result<Channel, StreamError> {
    let endpoint = Endpoint::from_shared(format!("http://{ads}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW);
    Ok(endpoint.connect().await?)
}

/// Either protocol's state machine.
enum Machine {
    Sotw(SotwProxy),
    Delta(DeltaProxy),
}

impl Machine {
    fn start(&mut self) -> Vec<Bytes> {
        match self {
            Machine::Sotw(p) => p.start(),
            Machine::Delta(p) => p.start(),
        }
    }

    fn on_response(&mut self, message: &[u8], env: &Env<'_>) -> Result<Step, ProxyError> {
        match self {
            Machine::Sotw(p) => p.on_response(message, env),
            Machine::Delta(p) => p.on_response(message, env),
        }
    }
}

/// Simulated proxy `index` on `channel`: opens its ADS stream, syncs (then gives back
/// `permit`, letting the next proxy connect), and keeps answering responses until the stream
/// ends or the task is aborted.
pub async fn run(
    index: usize,
    protocol: Protocol,
    channel: Channel,
    tracker: Arc<Tracker>,
    interner: Arc<Interner>,
    permit: OwnedSemaphorePermit,
) -> Result<(), StreamError> {
    let node = request::encode_node(index);
    let mut machine = match protocol {
        Protocol::Sotw => Machine::Sotw(SotwProxy::new(node, interner.empty())),
        Protocol::Delta => Machine::Delta(DeltaProxy::new(node, interner.empty())),
    };
    let path = match protocol {
        Protocol::Sotw => SOTW_PATH,
        Protocol::Delta => DELTA_PATH,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    for request in machine.start() {
        // The receiver is alive: it is handed to the stream below.
        let _ = tx.send(request);
    }
    let mut inbound = grpc::open(channel, path, rx).await?;
    let mut permit = Some(permit);
    loop {
        let Some(message) = inbound.message().await? else {
            return Err(StreamError::Closed);
        };
        tracker.received(message.len());
        let target = tracker.target();
        let env = Env {
            interner: &interner,
            target,
        };
        let step = machine.on_response(&message, &env)?;
        for request in step.requests {
            if tx.send(request).is_err() {
                return Err(StreamError::Closed);
            }
        }
        if step.synced {
            tracker.synced(index);
            drop(permit.take());
        }
        if step.converged {
            tracker.converged(index, target.generation);
        }
    }
}
