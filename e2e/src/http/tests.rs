use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Reads one request head (these requests have no body).
async fn read_request(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "peer closed mid-request");
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

async fn answer(stream: &mut TcpStream, body: &str) -> anyhow::Result<()> {
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(())
}

#[tokio::test]
async fn a_reset_kept_alive_connection_is_retried_and_counted() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        // The first connection answers once, then drops the next request unanswered.
        let (mut first, _) = listener.accept().await?;
        read_request(&mut first).await?;
        answer(&mut first, "one").await?;
        read_request(&mut first).await?;
        drop(first);
        let (mut second, _) = listener.accept().await?;
        read_request(&mut second).await?;
        answer(&mut second, "two").await?;
        anyhow::Ok(second)
    });
    let mut client = HttpClient::new(addr);
    assert_eq!(client.get("h", "/", &[]).await?.text(), "one");
    assert_eq!(client.resets(), 0);
    assert_eq!(client.get("h", "/", &[]).await?.text(), "two");
    assert_eq!(client.resets(), 1);
    let _kept_open = server.await??;
    Ok(())
}
