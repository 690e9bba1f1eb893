use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Accepts from a script: an error, or a connection from an address.
struct Scripted {
    script: VecDeque<Result<SocketAddr, io::ErrorKind>>,
    attempts: Arc<AtomicUsize>,
}

impl Accept for Scripted {
    type Io = ();
    async fn accept(&mut self) -> io::Result<((), SocketAddr)> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        match self.script.pop_front() {
            Some(Ok(peer)) => Ok(((), peer)),
            Some(Err(kind)) => Err(io::Error::new(kind, "scripted")),
            None => std::future::pending().await,
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn limits(max_connections: usize, max_per_ip: usize) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        max_per_ip,
    }
}

#[tokio::test(start_paused = true)]
async fn pauses_after_accept_errors_instead_of_spinning() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let script = (0..1000).map(|_| Err(io::ErrorKind::Other)).collect();
    let mut listener = GuardedListener::new(
        Scripted {
            script,
            attempts: attempts.clone(),
        },
        limits(10, 0),
        "test",
    );
    let accepting = tokio::spawn(async move {
        listener.accept().await;
    });
    // 10 ms doubling to 1 s: 10+20+40+80+160+320+640 ms pass before the 8th attempt, then one
    // a second. A loop without pauses would use up the whole script at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = attempts.load(Ordering::SeqCst);
    assert!((8..=14).contains(&seen), "{seen} accept attempts in 5 s");
    accepting.abort();
}

#[tokio::test(start_paused = true)]
async fn an_accepted_connection_resets_the_pause() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut script: VecDeque<_> = (0..6).map(|_| Err(io::ErrorKind::Other)).collect();
    script.push_back(Ok(addr("10.0.0.1:1")));
    script.push_back(Err(io::ErrorKind::Other));
    script.push_back(Ok(addr("10.0.0.1:2")));
    let mut listener = GuardedListener::new(
        Scripted {
            script,
            attempts: attempts.clone(),
        },
        limits(10, 0),
        "test",
    );
    let before = tokio::time::Instant::now();
    let _first = listener.accept().await;
    assert!(
        before.elapsed() > ACCEPT_ERROR_PAUSE_MIN * 6,
        "the pause did not grow"
    );
    let before = tokio::time::Instant::now();
    let _second = listener.accept().await;
    assert_eq!(before.elapsed(), ACCEPT_ERROR_PAUSE_MIN);
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_free_slot_at_the_cap() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let script = (1..=3)
        .map(|i| Ok(addr(&format!("10.0.0.{i}:1"))))
        .collect();
    let mut listener = GuardedListener::new(
        Scripted {
            script,
            attempts: attempts.clone(),
        },
        limits(2, 0),
        "test",
    );
    let first = listener.accept().await;
    let _second = listener.accept().await;
    assert_eq!(listener.open(), 2);
    // At the cap the listener does not even try to accept.
    let third = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await;
    assert!(third.is_err(), "accepted beyond the cap");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    drop(first);
    let third = listener.accept().await;
    assert_eq!(third.peer(), addr("10.0.0.3:1"));
}

#[tokio::test(start_paused = true)]
async fn closes_connections_beyond_the_per_address_cap() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let script = [
        "10.0.0.1:1",
        "10.0.0.1:2",
        "10.0.0.1:3",
        "10.0.0.2:1",
        "10.0.0.1:4",
    ]
    .into_iter()
    .map(|a| Ok(addr(a)))
    .collect();
    let mut listener = GuardedListener::new(
        Scripted {
            script,
            attempts: attempts.clone(),
        },
        limits(100, 2),
        "test",
    );
    let a1 = listener.accept().await;
    let _a2 = listener.accept().await;
    // 10.0.0.1:3 is over its address's cap: skipped (closed), and its slot is free again.
    let b = listener.accept().await;
    assert_eq!(b.peer(), addr("10.0.0.2:1"));
    assert_eq!(listener.open(), 3);
    drop(a1);
    let a4 = listener.accept().await;
    assert_eq!(a4.peer(), addr("10.0.0.1:4"));
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn drops_a_connection_that_sends_no_request_in_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = GuardedListener::new(listener, limits(10, 0), "test");
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut server = listener.accept().await;
    server.require_request_within(Duration::from_millis(50));
    // A partial handshake is not a request.
    client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..read], b"PRI * HTTP/2.0\r\n");
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(listener.open(), 1);
    drop(server);
    assert_eq!(listener.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn keeps_a_connection_whose_request_arrived() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = GuardedListener::new(listener, limits(10, 0), "test");
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut server = listener.accept().await;
    server.require_request_within(Duration::from_secs(1));
    assert!(server.info().state.request_arrived());
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late");
}

#[tokio::test(start_paused = true)]
async fn closes_a_connection_whose_requests_come_too_fast() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = GuardedListener::new(listener, limits(10, 0), "test");
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut server = listener.accept().await;
    server.limit_request_rate(4, 2.0);
    let state = server.info().state;
    // The burst, then two a second.
    assert!((0..4).all(|_| state.request_arrived()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(state.request_arrived() && state.request_arrived());
    client.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf).await.unwrap();
    // One more within the same second is one too many: the connection closes.
    assert!(!state.request_arrived());
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn calls_have_their_own_budget_beside_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = GuardedListener::new(listener, limits(10, 0), "test");
    let _client = TcpStream::connect(addr).await.unwrap();
    let mut server = listener.accept().await;
    server.limit_request_rate(2, 1.0);
    server.limit_call_rate(8, 4.0);
    let state = server.info().state;
    // Eight certificate requests at once fit the call budget, far beyond the stream budget,
    // and leave it untouched.
    assert!((0..8).all(|_| state.call_arrived()));
    assert!(state.request_arrived() && state.request_arrived());
    assert!(!state.is_closing());
    // The ninth call within the same instant is beyond the call budget.
    assert!(!state.call_arrived());
    assert!(state.is_closing());
}

#[test]
fn reads_the_soft_open_file_limit() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max cpu time              unlimited            unlimited            seconds   \n\
                  Max open files            1024                 524288               files     \n";
    assert_eq!(parse_open_file_limit(limits), Some(1024));
    assert_eq!(parse_open_file_limit("Max processes 5 5"), None);
}

#[test]
fn lowers_the_cap_to_the_open_file_limit() {
    let Some(fds) = open_file_limit() else {
        return; // not Linux: nothing to derive from
    };
    let huge = limits(usize::MAX, 0);
    let (lowered, changed) = huge.within_fd_limit(10);
    assert!(changed);
    assert_eq!(
        lowered.max_connections,
        fds.saturating_sub(RESERVED_FDS + 10).max(1)
    );
    let small = limits(1, 0);
    assert_eq!(small.within_fd_limit(10), (small, false));
}
