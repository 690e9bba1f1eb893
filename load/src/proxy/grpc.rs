//! A bidirectional gRPC stream of raw protobuf messages straight on an `h2` connection, with
//! its own message framing.
//!
//! The stream's task writes its requests into the HTTP/2 stream itself and reads responses
//! from it: no request-body task, channel or client stack in between. A simulated proxy costs
//! the load generator CPU that would otherwise be charged to the server under test, since both
//! share the machine.
//!
//! Messages are split with capstan's own [`Deframer`], which releases its buffer as soon as it
//! holds no partial message, so an idle stream costs next to nothing (a buffer kept at the
//! largest message, ~400 KiB for a proxy that synced 1,000 load assignments, would be 4 GiB for
//! 10,000 proxies).

use std::net::SocketAddr;

use bytes::Bytes;
use capstan_xds::ads::framing::Deframer;
pub use capstan_xds::ads::framing::frame_all;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::codegen::http::{self, HeaderValue, Uri};

/// One HTTP/2 connection to an ADS server; streams are opened on clones of it.
pub type Connection = SendRequest<Bytes>;

fn h2_status(e: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {e}"))
}

/// Opens an HTTP/2 connection to `server` with `window` bytes of flow-control window per
/// stream and per connection, and drives it in a task of its own until it closes.
pub async fn connect(server: SocketAddr, window: u32) -> Result<Connection, Status> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| Status::unavailable(format!("connecting to {server}: {e}")))?;
    tcp.set_nodelay(true)
        .map_err(|e| Status::unavailable(format!("TCP_NODELAY: {e}")))?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake(tcp)
        .await
        .map_err(h2_status)?;
    tokio::spawn(async move {
        // Ends when the server or the last stream closes it; each stream sees the error.
        let _ = connection.await;
    });
    Ok(send)
}

/// An open bidirectional stream.
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    deframer: Deframer,
    ready: std::collections::VecDeque<Bytes>,
}

/// Opens a bidirectional stream to method `path` on `server` over `connection`, sending
/// `first` (framed messages, see [`frame_all`]) at once.
pub async fn open(
    connection: Connection,
    server: SocketAddr,
    path: &'static str,
    first: Bytes,
) -> Result<Stream, Status> {
    let mut connection = connection.ready().await.map_err(h2_status)?;
    let uri: Uri = format!("http://{server}{path}")
        .parse()
        .map_err(|e| Status::internal(format!("{e}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())
        .map_err(|e| Status::internal(e.to_string()))?;
    let (response, mut send) = connection.send_request(request, false).map_err(h2_status)?;
    send.send_data(first, false).map_err(h2_status)?;
    let response = response.await.map_err(h2_status)?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unavailable(format!(
            "HTTP status {}",
            response.status()
        )));
    }
    // A trailers-only response carries the status in its headers.
    check_status(response.headers())?;
    Ok(Stream {
        send,
        recv: response.into_body(),
        deframer: Deframer::default(),
        ready: Default::default(),
    })
}

impl Stream {
    /// Sends framed messages (see [`frame_all`]).
    pub fn send(&mut self, framed: Bytes) -> Result<(), Status> {
        self.send.send_data(framed, false).map_err(h2_status)
    }

    /// The next message; `Ok(None)` when the server ended the stream with status OK.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(Some(message));
            }
            let Some(data) = self.recv.data().await else {
                if let Some(trailers) = self.recv.trailers().await.map_err(h2_status)? {
                    check_status(&trailers)?;
                }
                if self.deframer.is_partial() {
                    return Err(Status::internal("stream ended inside a message"));
                }
                return Ok(None);
            };
            let data = data.map_err(h2_status)?;
            // Give the window back at once: the proxy has taken the bytes.
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.deframer.push(&data, &mut self.ready)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
