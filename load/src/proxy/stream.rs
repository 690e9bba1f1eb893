//! Runs a simulated proxy on a real ADS stream: gRPC over HTTP/2, requests and responses as raw
//! protobuf bytes so that nothing is decoded that the proxy does not read (framing and the
//! HTTP/2 stream in [`grpc`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;

use super::delta::DeltaProxy;
use super::grpc::{self, Connection};
use super::sotw::SotwProxy;
use super::{Env, Protocol, ProxyError, Step};
use crate::name_set::Interner;
use crate::request;
use crate::tracker::Tracker;
use capstan_xds::ads::service::{DELTA_PATH, SOTW_PATH};

/// Envoy's default HTTP/2 windows for its xDS connection (256 MiB): the server is never held
/// back by the client's flow control.
const WINDOW: u32 = 256 * 1024 * 1024;

/// Why a proxy's stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream: {0}")]
    Status(#[from] Status),
    #[error("the server closed the stream")]
    Closed,
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Opens one HTTP/2 connection to the ADS server, with Envoy-like settings.
pub async fn connect(ads: SocketAddr) -> Result<Connection, StreamError> {
    Ok(grpc::connect(ads, WINDOW).await?)
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

/// Simulated proxy `index` on `connection` to `ads`: opens its ADS stream, syncs (then gives
/// back `permit`, letting the next proxy connect), and keeps answering responses until the
/// stream ends or the task is aborted.
pub async fn run(
    index: usize,
    protocol: Protocol,
    ads: SocketAddr,
    connection: Connection,
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
    let first = grpc::frame_all(&machine.start());
    let mut stream = grpc::open(connection, ads, path, first).await?;
    let mut permit = Some(permit);
    loop {
        let Some(message) = stream.message().await? else {
            return Err(StreamError::Closed);
        };
        tracker.received(message.len());
        let target = tracker.target();
        let env = Env {
            interner: &interner,
            target,
        };
        let step = machine.on_response(&message, &env)?;
        if !step.requests.is_empty() {
            // The ACK and any new subscription leave together, as from Envoy.
            stream.send(grpc::frame_all(&step.requests))?;
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
