//! An HTTP CONNECT proxy in the test process, for tunnelling tests: it answers `CONNECT
//! <authority> HTTP/1.1` with 200 and relays the connection to the address the test maps
//! that authority to (an authority it does not know gets 502), and records every request
//! line it read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read before the connection is dropped.
const MAX_HEAD: usize = 16 * 1024;

pub struct ConnectProxy {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    /// Listens on 127.0.0.1 (a port the kernel picks); `routes` maps authorities to addresses.
    pub async fn start(routes: HashMap<String, SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (routes, recorded) = (routes.clone(), recorded.clone());
                tokio::spawn(async move {
                    let _ = relay(stream, &routes, &recorded).await;
                });
            }
        });
        Ok(Self { port, seen, task })
    }

    /// The request lines read so far (`CONNECT db.example.com:5432 HTTP/1.1`, …).
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    stream: TcpStream,
    routes: &HashMap<String, SocketAddr>,
    seen: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let mut client = BufReader::new(stream);
    let mut line = String::new();
    client.read_line(&mut line).await?;
    let request = line.trim_end().to_string();
    if let Ok(mut seen) = seen.lock() {
        seen.push(request.clone());
    }
    // The rest of the head, up to the blank line.
    let mut read = line.len();
    loop {
        let mut header = String::new();
        let n = client.read_line(&mut header).await?;
        read += n;
        anyhow::ensure!(
            n > 0 && read <= MAX_HEAD,
            "request head cut short or too long"
        );
        if header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let target = match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(authority)) => routes.get(authority).copied(),
        _ => None,
    };
    let Some(target) = target else {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let mut upstream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    // Bytes the client sent after the head are still in the reader's buffer.
    let buffered = client.buffer().to_vec();
    upstream.write_all(&buffered).await?;
    let mut client = client.into_inner();
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
