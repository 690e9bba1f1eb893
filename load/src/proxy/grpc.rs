//! A bidirectional gRPC stream of raw protobuf messages on a tonic `Channel`, with its own
//! message framing.
//!
//! tonic's `Streaming` keeps a receive buffer as large as the largest message it ever decoded
//! (for a proxy that synced 1,000 load assignments, ~400 KiB) for as long as the stream lives;
//! with 10,000 proxies in one process that is 4 GiB. [`Deframer`] releases its buffer as soon
//! as it holds no partial message, so an idle stream costs next to nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;
use tonic::client::GrpcService;
use tonic::codegen::http::{self, HeaderValue, Uri, uri::PathAndQuery};
use tonic::transport::Channel;

/// gRPC's length prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// Splits a gRPC response body into messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
}

impl Deframer {
    /// Adds received bytes; returns the messages completed by them, in order.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) -> Result<(), Status> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= PREFIX {
            if self.buf[0] != 0 {
                return Err(Status::internal(
                    "compressed gRPC message (none was negotiated)",
                ));
            }
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            let len = usize::try_from(len).map_err(|_| Status::internal("message too large"))?;
            if self.buf.len() < PREFIX + len {
                // Room for the whole message at once, instead of growing step by step.
                self.buf.reserve(PREFIX + len - self.buf.len());
                break;
            }
            self.buf.advance(PREFIX);
            out.push(self.buf.split_to(len).freeze());
        }
        if self.buf.is_empty() {
            // Let the last message own the allocation; keep nothing while idle.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Whether a message has begun but not ended.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// `message` with its gRPC length prefix.
pub fn frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

/// The request messages, framed, as body frames.
pub struct RequestFrames(UnboundedReceiverStream<Bytes>);

impl Stream for RequestFrames {
    type Item = Result<Frame<Bytes>, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|m| m.map(|m| Ok(Frame::data(frame(&m)))))
    }
}

/// The receiving half of an open stream.
pub struct Inbound {
    body: tonic::body::Body,
    deframer: Deframer,
    ready: std::collections::VecDeque<Bytes>,
}

impl Inbound {
    /// The next message; `Ok(None)` when the server ended the stream with status OK.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        let mut completed = Vec::new();
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(Some(message));
            }
            let Some(frame) = self.body.frame().await else {
                if self.deframer.is_partial() {
                    return Err(Status::internal("stream ended inside a message"));
                }
                return Ok(None);
            };
            let frame = frame?;
            if let Some(trailers) = frame.trailers_ref() {
                check_status(trailers)?;
                continue;
            }
            if let Some(data) = frame.data_ref() {
                self.deframer.push(data, &mut completed)?;
                self.ready.extend(completed.drain(..));
            }
        }
    }
}

/// Fails on a `grpc-status` other than 0.
fn check_status(headers: &http::HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-status").map(HeaderValue::as_bytes) {
        None | Some(b"0") => Ok(()),
        Some(code) => {
            let code = std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.parse::<i32>().ok())
                .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
            let message = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("");
            Err(Status::new(code, message.to_string()))
        }
    }
}

/// Opens a bidirectional stream to method `path`, sending what arrives on `requests`.
pub async fn open(
    mut channel: Channel,
    path: &'static str,
    requests: mpsc::UnboundedReceiver<Bytes>,
) -> Result<Inbound, Status> {
    std::future::poll_fn(|cx| GrpcService::<tonic::body::Body>::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(PathAndQuery::from_static(path));
    let uri = Uri::from_parts(parts).map_err(|e| Status::internal(e.to_string()))?;
    let body = tonic::body::Body::new(StreamBody::new(RequestFrames(
        UnboundedReceiverStream::new(requests),
    )));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .map_err(|e| Status::internal(e.to_string()))?;
    let response = GrpcService::call(&mut channel, request)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unavailable(format!(
            "HTTP status {}",
            response.status()
        )));
    }
    // A trailers-only response carries the status in its headers.
    check_status(response.headers())?;
    Ok(Inbound {
        body: response.into_body(),
        deframer: Deframer::default(),
        ready: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_and_within_chunks() {
        let (a, b, c) = (frame(b"first"), frame(b""), frame(&[7u8; 40_000]));
        let mut wire = Vec::new();
        wire.extend_from_slice(&a);
        wire.extend_from_slice(&b);
        wire.extend_from_slice(&c);
        for chunk in [1, 3, 5, 16_384, wire.len()] {
            let mut deframer = Deframer::default();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                deframer.push(piece, &mut out).expect("well-formed");
            }
            assert_eq!(out.len(), 3, "chunk size {chunk}");
            assert_eq!(&out[0][..], b"first");
            assert!(out[1].is_empty());
            assert_eq!(out[2].len(), 40_000);
            assert!(!deframer.is_partial());
            assert_eq!(deframer.buf.capacity(), 0, "nothing kept while idle");
        }
    }

    #[test]
    fn partial_and_compressed_messages() {
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        let whole = frame(b"abc");
        deframer.push(&whole[..6], &mut out).expect("prefix only");
        assert!(out.is_empty() && deframer.is_partial());
        deframer.push(&whole[6..], &mut out).expect("rest");
        assert_eq!(out, [Bytes::from_static(b"abc")]);
        let mut compressed = frame(b"x").to_vec();
        compressed[0] = 1;
        assert!(Deframer::default().push(&compressed, &mut out).is_err());
    }

    #[test]
    fn grpc_status_in_trailers() {
        let mut headers = http::HeaderMap::new();
        assert!(check_status(&headers).is_ok());
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(check_status(&headers).is_ok());
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert("grpc-message", HeaderValue::from_static("going away"));
        let status = check_status(&headers).expect_err("not OK");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "going away");
    }
}
