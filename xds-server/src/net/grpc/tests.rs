use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::SnapshotCache;
use crate::ads::service::DELTA_PATH;

async fn start(limits: GrpcLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        crate::ads::serve_with(
            listener,
            SnapshotCache::new(),
            &limits,
            std::future::pending(),
        )
        .await
    });
    addr
}

fn delta_request(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{DELTA_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

#[tokio::test]
async fn advertises_the_stream_cap() {
    let limits = GrpcLimits {
        max_streams_per_connection: 3,
        ..GrpcLimits::default()
    };
    let addr = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(delta_request(addr), false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // The server's SETTINGS have arrived with its answer.
    assert_eq!(send.current_max_send_streams(), 3);
    connection.abort();
}

#[tokio::test]
async fn the_default_stream_cap_is_set() {
    let addr = start(GrpcLimits::default()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(delta_request(addr), false).unwrap();
    response.await.unwrap();
    assert_eq!(
        send.current_max_send_streams(),
        DEFAULT_MAX_STREAMS_PER_CONNECTION as usize
    );
    connection.abort();
}

#[tokio::test]
async fn closes_a_connection_that_sends_no_request() {
    let limits = GrpcLimits {
        first_request_timeout: Duration::from_millis(100),
        ..GrpcLimits::default()
    };
    let addr = start(limits).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // Whatever the server sends (its SETTINGS), the connection must end.
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf))
        .await
        .expect("the server kept an idle connection open")
        .ok();
}

#[tokio::test]
async fn keeps_a_connection_with_a_stream() {
    let limits = GrpcLimits {
        first_request_timeout: Duration::from_millis(100),
        ..GrpcLimits::default()
    };
    let addr = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(delta_request(addr), false).unwrap();
    response.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connection.is_finished(), "the connection was closed");
    let mut send = send.ready().await.unwrap();
    let (response, _second) = send.send_request(delta_request(addr), false).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    connection.abort();
}

#[tokio::test]
async fn an_aged_connection_is_closed_even_with_a_stream_open() {
    let limits = GrpcLimits {
        max_connection_age: Some(Duration::from_millis(200)),
        ..GrpcLimits::default()
    };
    let addr = start(limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(delta_request(addr), false).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // GOAWAY at the age, then closed after the grace period: the bound only stops a hang.
    tokio::time::timeout(
        MAX_CONNECTION_AGE_GRACE + Duration::from_secs(20),
        connection,
    )
    .await
    .expect("the connection outlived its age")
    .unwrap()
    .ok();
}
