//! The ADS gRPC service, wired by hand: requests and responses are framed here, on the
//! HTTP/2 bodies.
//!
//! Framing responses ourselves does two things tonic's generated server cannot: each response
//! is sent as the chunks [`WireMessage`] makes of it, its own fields and small resources in a
//! buffer of exactly their size that is freed once sent and large resources as the buffers
//! every proxy's response shares, never copied per proxy. (tonic encodes every message of a
//! stream into one growing buffer that it keeps for the stream's life, so a proxy that was once
//! sent a large response would pin that much memory for as long as it stays connected.)
//! Requests are read with a [`Deframer`] for the same reason: it holds no buffer between
//! messages, where tonic's keeps one as large as the largest request, an EDS subscription
//! of a thousand names.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures::Stream;
use http_body::Frame;
use prost::Message;
use tonic::Status;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;

use tracing::warn;

use super::framing::{Deframer, PREFIX, put_prefix};
use super::peer::{self, Admission, Authenticated};
use super::request::SotwRequest;
use super::wire::WireMessage;
use super::{ResponseStream, Streams};
use crate::net::GuardedInfo;
use crate::net::tls::peer_identity_of;

/// The gRPC paths of ADS's two methods.
pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request accepted from a proxy: 4 MiB, gRPC's and istiod's default receive limit.
/// Envoy's largest requests are its first EDS subscription (~60 bytes a cluster name: 10,000
/// clusters are ~600 KiB) and a Delta reconnect's initial_resource_versions (~100 bytes a
/// resource); a NACK's error_detail is a few KiB. The deframer reserves a message's declared
/// length up front, so this also bounds what one stream can make the server allocate.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods.
#[derive(Debug, Clone)]
pub struct AdsService {
    streams: Arc<Streams>,
}

impl AdsService {
    pub(crate) fn new(streams: Streams) -> Self {
        Self {
            streams: Arc::new(streams),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let admission = match path {
            SOTW_PATH | DELTA_PATH => peer::admit(&peer_identity_of(request.extensions())),
            _ => Ok(Admission::Open),
        };
        let admission = match admission {
            Ok(admission) => admission,
            Err(status) => {
                let peer = request.extensions().get::<GuardedInfo>().map(|i| i.peer);
                warn!(?peer, reason = status.message(), "ADS stream refused");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let response = match path {
            SOTW_PATH => {
                let inbound = Requests::new(request.into_body(), |raw| {
                    SotwRequest::parse(raw).map_err(|e| {
                        Status::invalid_argument(format!("malformed DiscoveryRequest: {e}"))
                    })
                });
                grpc_response(
                    self.streams
                        .open_sotw(Authenticated::new(inbound, admission)),
                )
            }
            DELTA_PATH => {
                let inbound = Requests::new(request.into_body(), |raw| {
                    DeltaDiscoveryRequest::decode(raw).map_err(|e| {
                        Status::invalid_argument(format!("malformed DeltaDiscoveryRequest: {e}"))
                    })
                });
                grpc_response(
                    self.streams
                        .open_delta(Authenticated::new(inbound, admission)),
                )
            }
            _ => Status::unimplemented("capstan serves only ADS on this port").into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

/// The requests of a stream: messages read from the request body and decoded by `decode`.
pub struct Requests<B, T> {
    body: Pin<Box<B>>,
    deframer: Deframer,
    ready: VecDeque<Bytes>,
    decode: fn(Bytes) -> Result<T, Status>,
    ended: bool,
}

impl<B, T> Requests<B, T> {
    fn new(body: B, decode: fn(Bytes) -> Result<T, Status>) -> Self {
        Self {
            body: Box::pin(body),
            deframer: Deframer::with_limit(MAX_REQUEST),
            ready: VecDeque::new(),
            decode,
            ended: false,
        }
    }
}

impl<B, T> Stream for Requests<B, T>
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some((this.decode)(message)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers end a request stream without meaning anything to ADS.
                    if let Ok(data) = frame.into_data()
                        && let Err(status) = this.deframer.push(&data, &mut this.ready)
                    {
                        this.ended = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                None => {
                    this.ended = true;
                    if this.deframer.is_partial() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "request stream ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

fn grpc_response<R: WireMessage>(
    responses: ResponseStream<R>,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(FramedBody {
        responses,
        chunks: VecDeque::new(),
        finished: false,
    }));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    response
}

/// The response body of a stream: each message as a length-prefixed gRPC frame (its prefix
/// and first chunk, then its other chunks as they are), then the trailers carrying the final
/// status.
struct FramedBody<R> {
    responses: ResponseStream<R>,
    /// The rest of the message whose start was just sent.
    chunks: VecDeque<Bytes>,
    finished: bool,
}

impl<R: WireMessage> http_body::Body for FramedBody<R> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.responses).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let (start, rest) = frames(&message);
                self.chunks = rest;
                Poll::Ready(Some(Ok(Frame::data(start))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.finished = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.chunks.is_empty()
    }
}

/// A first chunk up to this size is copied in with the frame's prefix rather than sent on
/// its own.
const MERGED_FIRST_CHUNK: usize = 4096;

/// A message as a gRPC frame: its start (uncompressed flag, big-endian length, and the
/// message's first chunk if small, usually its own fields) and the chunks that follow, empty
/// ones left out.
fn frames(message: &impl WireMessage) -> (Bytes, VecDeque<Bytes>) {
    let mut chunks: VecDeque<Bytes> = message.chunks().into();
    chunks.retain(|c| !c.is_empty());
    let first = chunks
        .pop_front_if(|c| c.len() <= MERGED_FIRST_CHUNK)
        .unwrap_or_default();
    let mut start = BytesMut::with_capacity(PREFIX + first.len());
    put_prefix(&mut start, message.encoded_len());
    start.extend_from_slice(&first);
    (start.freeze(), chunks)
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("13"));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::wire::{DeltaResponse, SotwResources, SotwResponse};
    use crate::resource::type_url;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use prost::Message;

    #[test]
    fn frames_are_length_prefixed_messages() {
        let cluster = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "c".into(),
            ..Default::default()
        };
        let message = SotwResponse {
            version_info: "1".into(),
            resources: Arc::new(SotwResources::new(vec![
                crate::Resource::encode("c", &cluster).expect("served"),
            ])),
            type_url: type_url::CLUSTER,
            nonce: "n".into(),
        };
        let (start, rest) = frames(&message);
        let mut bytes = start.to_vec();
        rest.iter().for_each(|c| bytes.extend_from_slice(c));
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        let decoded = DiscoveryResponse::decode(&bytes[5..]).expect("a DiscoveryResponse");
        assert_eq!(decoded.nonce, "n");
        assert_eq!(decoded.resources.len(), 1);
    }

    #[test]
    fn a_large_first_chunk_follows_the_prefix_uncopied() {
        // Many small clusters: one Delta chunk of its own fields and every resource, > 4 KiB.
        let resources: Vec<crate::Resource> = (0..200)
            .map(|i| {
                let cluster = envoy_types::pb::envoy::config::cluster::v3::Cluster {
                    name: format!("cluster-{i}"),
                    ..Default::default()
                };
                crate::Resource::encode(cluster.name.clone(), &cluster).expect("served")
            })
            .collect();
        let message = DeltaResponse {
            system_version_info: "1".into(),
            resources,
            type_url: type_url::CLUSTER,
            removed_resources: Vec::new(),
            nonce: "n".into(),
        };
        let (start, rest) = frames(&message);
        assert_eq!(start.len(), PREFIX, "the prefix alone");
        assert_eq!(rest.len(), 1);
        let bytes = [start.to_vec(), rest[0].to_vec()].concat();
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - PREFIX);
        let decoded = DeltaDiscoveryResponse::decode(&bytes[PREFIX..]).expect("decodes");
        assert_eq!(decoded.resources.len(), 200);
        assert_eq!(decoded.nonce, "n");
    }

    #[test]
    fn trailers_carry_the_status() {
        let ok = trailers(&Status::ok(""));
        assert_eq!(ok.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        let failed = trailers(&Status::internal("boom"));
        assert_eq!(
            failed.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"13"[..])
        );
        assert_eq!(
            failed.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"boom"[..])
        );
    }
}
