//! Raw ADS clients that misbehave on purpose, for the fault tests: they speak gRPC straight on
//! HTTP/2 (capstan-load's stream) and send exactly what a test tells them to, however wrong.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use capstan_load::proxy::grpc::{self, frame_all};
use capstan_xds::ads::service::DELTA_PATH;
use capstan_xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::Status;

/// HTTP/2 flow-control window of a client that reads what it is sent.
pub const READING_WINDOW: u32 = 16 * 1024 * 1024;

/// One ADS stream on a connection of its own.
pub struct AdsClient {
    stream: grpc::Stream,
}

/// `messages` encoded and framed as one write.
pub fn framed(messages: &[&impl Message]) -> Bytes {
    let encoded: Vec<Bytes> = messages
        .iter()
        .map(|m| Bytes::from(m.encode_to_vec()))
        .collect();
    frame_all(&encoded)
}

/// A node with `id`.
pub fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        ..Default::default()
    })
}

/// A Delta request for `type_url` subscribing to `names`, answering `nonce`.
pub fn delta_request(type_url: &str, names: &[String], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: names.to_vec(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// Wildcard Delta subscriptions to every type, as one write, from a node named `id`.
pub fn subscribe_all(id: &str) -> Bytes {
    let mut requests: Vec<DeltaDiscoveryRequest> = [CLUSTER, ENDPOINT, LISTENER, ROUTE]
        .iter()
        .map(|t| delta_request(t, &["*".to_string()], ""))
        .collect();
    requests[0].node = node(id);
    framed(&requests.iter().collect::<Vec<_>>())
}

/// A Delta proxy named `id` that rejects every response it is sent with `reason`, calling
/// `on_nack` after each NACK, until capstan ends the stream.
pub async fn nack_everything(
    server: SocketAddr,
    id: &str,
    reason: &str,
    on_nack: impl Fn(),
) -> anyhow::Result<()> {
    let mut client = AdsClient::delta(server, READING_WINDOW, subscribe_all(id)).await?;
    while let Ok(Some(response)) = client.delta_response().await {
        let mut nack = delta_request(&response.type_url, &[], &response.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: reason.to_string(),
            ..Default::default()
        });
        client.send(framed(&[&nack]))?;
        on_nack();
    }
    Ok(())
}

impl AdsClient {
    /// Opens a Delta stream sending `first` (already framed), with `window` bytes of HTTP/2
    /// window: a small one and a client that never reads makes capstan's sends wait.
    pub async fn delta(server: SocketAddr, window: u32, first: Bytes) -> anyhow::Result<Self> {
        Self::open(server, window, DELTA_PATH, first).await
    }

    async fn open(
        server: SocketAddr,
        window: u32,
        path: &'static str,
        first: Bytes,
    ) -> anyhow::Result<Self> {
        let connection = grpc::connect(server, window)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        let stream = grpc::open(connection, server, path, first)
            .await
            .with_context(|| format!("opening {path}"))?;
        Ok(Self { stream })
    }

    /// Sends framed messages.
    pub fn send(&mut self, framed: Bytes) -> anyhow::Result<()> {
        self.stream.send(framed).context("sending")
    }

    /// The next Delta response; `Err` carries the status capstan ended the stream with.
    pub async fn delta_response(&mut self) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        match self.stream.message().await? {
            Some(bytes) => DeltaDiscoveryResponse::decode(bytes)
                .map(Some)
                .map_err(|e| Status::internal(format!("undecodable response: {e}"))),
            None => Ok(None),
        }
    }

    /// Reads (and drops) responses until capstan ends the stream; its final status.
    pub async fn final_status(&mut self) -> Status {
        loop {
            match self.stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    }
}

/// A status's message as capstan wrote it: `grpc-message` travels percent-encoded, and the
/// raw stream hands it over as it came.
pub fn grpc_message(status: &Status) -> String {
    let raw = status.message().as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
