//! Accepting connections from clients that may be hostile: capstan's ADS, webhook and
//! monitoring servers all accept through a [`GuardedListener`].
//!
//! - At most `max_connections` are open at once. At the cap the listener stops accepting, so
//!   further clients wait in the kernel's backlog instead of costing a file descriptor and a
//!   task each; a slot frees as soon as one of the open connections closes.
//! - Optionally at most `max_per_ip` from one address: one client cannot take every slot.
//! - An accept error (out of file descriptors, above all) pauses the loop, longer each time up
//!   to [`ACCEPT_ERROR_PAUSE_MAX`], instead of retrying in a hot loop that starves the runtime.
//! - A [`Guarded`] connection can be given a deadline for its first request
//!   ([`Guarded::require_request_within`]): a client that connects and then sends nothing, or
//!   only part of a handshake, is dropped at the deadline instead of holding its slot forever.

pub mod grpc;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// First pause after a failed accept. Accept fails mostly when the process is out of file
/// descriptors; retrying at once only spins until a connection closes.
pub const ACCEPT_ERROR_PAUSE_MIN: Duration = Duration::from_millis(10);
/// Longest pause after repeated accept errors: short enough that a freed descriptor is used
/// within a second, long enough that a persistent error costs no CPU (Go's net/http uses the
/// same 5 ms…1 s doubling).
pub const ACCEPT_ERROR_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Descriptors kept free for everything that is not a client connection (the listeners, the
/// Kubernetes client, watched files, log files), when a cap is derived from the process's
/// open-file limit.
pub const RESERVED_FDS: usize = 64;

/// How many connections a listener keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; beyond it the listener waits until one closes.
    pub max_connections: usize,
    /// Connections open at once from one IP address (0: no such cap); a new connection
    /// beyond it is closed at once.
    pub max_per_ip: usize,
}

impl ConnectionLimits {
    /// `self`, with `max_connections` lowered to what the process's open-file limit allows
    /// beside `other_fds` descriptors used elsewhere (and [`RESERVED_FDS`]). Returns the
    /// limits and whether they were lowered.
    pub fn within_fd_limit(self, other_fds: usize) -> (Self, bool) {
        match open_file_limit() {
            Some(limit) => {
                let room = limit.saturating_sub(RESERVED_FDS + other_fds).max(1);
                if room < self.max_connections {
                    let lowered = Self {
                        max_connections: room,
                        ..self
                    };
                    return (lowered, true);
                }
                (self, false)
            }
            None => (self, false),
        }
    }
}

/// The soft limit on open files (`ulimit -n`) of this process, if it can be read.
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// Something connections are accepted from (a TCP listener; a fake one in tests).
pub trait Accept: Send {
    type Io: Send;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// A listener that keeps to [`ConnectionLimits`] and pauses after accept errors.
#[derive(Debug)]
pub struct GuardedListener<L = TcpListener> {
    listener: L,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    pause: Duration,
    what: &'static str,
}

impl<L: Accept> GuardedListener<L> {
    /// Guards `listener`; `what` names the server in logs ("ADS", "webhook").
    pub fn new(listener: L, limits: ConnectionLimits, what: &'static str) -> Self {
        Self {
            listener,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: Arc::default(),
            pause: ACCEPT_ERROR_PAUSE_MIN,
            what,
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections.max(1) - self.slots.available_permits()
    }

    /// The next connection within the limits; never fails (errors are logged and paused on).
    pub async fn accept(&mut self) -> Guarded<L::Io> {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                // The semaphore is never closed; wait forever rather than spin.
                std::future::pending::<()>().await;
                continue;
            };
            let (io, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.pause = ACCEPT_ERROR_PAUSE_MIN;
                    accepted
                }
                Err(err) => {
                    tracing::warn!(server = self.what, %err, pause_ms = self.pause.as_millis() as u64,
                        "accept failed; pausing before the next");
                    drop(slot);
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(ACCEPT_ERROR_PAUSE_MAX);
                    continue;
                }
            };
            let ip_slot = match PerIp::take(&self.per_ip, peer.ip(), self.limits.max_per_ip) {
                Ok(ip_slot) => ip_slot,
                Err(open) => {
                    tracing::debug!(server = self.what, %peer, open,
                        "closing a connection beyond the per-address cap");
                    continue;
                }
            };
            return Guarded {
                io,
                peer,
                state: Arc::default(),
                deadline: None,
                _slot: slot,
                _ip_slot: ip_slot,
            };
        }
    }
}

impl GuardedListener<TcpListener> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Connections open per IP address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// A slot for `ip`, or the number already open if `max` (when not 0) is reached.
    fn take(this: &Arc<Self>, ip: IpAddr, max: usize) -> Result<Option<IpSlot>, usize> {
        if max == 0 {
            return Ok(None);
        }
        let mut open = this.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return Err(*count);
        }
        *count += 1;
        Ok(Some(IpSlot {
            table: this.clone(),
            ip,
        }))
    }
}

#[derive(Debug)]
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection; its slots free when it is dropped.
#[derive(Debug)]
pub struct Guarded<Io> {
    io: Io,
    peer: SocketAddr,
    state: Arc<ConnectionState>,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _ip_slot: Option<IpSlot>,
}

/// What a connection's requests tell its reads and writes (and the other way round).
#[derive(Debug, Default)]
pub struct ConnectionState {
    request_seen: AtomicBool,
    closing: AtomicBool,
    rate: Mutex<Option<RequestRate>>,
    /// Unary calls (the CA's `CreateCertificate`) have their own budget: a node agent may ask
    /// for many workloads' certificates at once, far beyond what one proxy's streams need.
    call_rate: Mutex<Option<RequestRate>>,
}

/// A token bucket of requests.
#[derive(Debug)]
struct RequestRate {
    burst: f64,
    per_second: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl RequestRate {
    fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            tokens: f64::from(burst),
            at: tokio::time::Instant::now(),
        }
    }
}

impl ConnectionState {
    /// Records a request on the connection. False if it exceeds the connection's request
    /// rate: the connection is then closed at its next read or write.
    pub fn request_arrived(&self) -> bool {
        self.take(&self.rate)
    }

    /// Records a unary call on the connection, against the call budget
    /// ([`Guarded::limit_call_rate`]); false (and the connection closing) beyond it.
    pub fn call_arrived(&self) -> bool {
        self.take(&self.call_rate)
    }

    fn take(&self, bucket: &Mutex<Option<RequestRate>>) -> bool {
        self.request_seen.store(true, Ordering::Relaxed);
        let mut rate = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rate) = rate.as_mut() else {
            return true;
        };
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(rate.at).as_secs_f64() * rate.per_second;
        rate.tokens = (rate.tokens + refill).min(rate.burst);
        rate.at = now;
        if rate.tokens >= 1.0 {
            rate.tokens -= 1.0;
            true
        } else {
            self.closing.store(true, Ordering::Relaxed);
            false
        }
    }

    pub fn request_seen(&self) -> bool {
        self.request_seen.load(Ordering::Relaxed)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

/// What a request on a guarded connection can see of it (as a request extension under tonic).
#[derive(Debug, Clone)]
pub struct GuardedInfo {
    pub peer: SocketAddr,
    pub state: Arc<ConnectionState>,
    /// What TLS proved about the client ([`tls::PeerIdentity::Plaintext`] without TLS).
    pub identity: tls::PeerIdentity,
}

impl<Io> Guarded<Io> {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn get_ref(&self) -> &Io {
        &self.io
    }

    /// Fails the connection's reads and writes after `deadline` unless a request arrived by
    /// then ([`ConnectionState::request_arrived`], through [`GuardedInfo`]). A well-behaved
    /// client sends its first request right after connecting; one that sends nothing, or only
    /// a handshake, is dropped.
    pub fn require_request_within(&mut self, deadline: Duration) {
        self.deadline = Some(Box::pin(tokio::time::sleep(deadline)));
    }

    /// Closes the connection when its requests arrive faster than `per_second` after a burst
    /// of `burst` (see [`ConnectionState::request_arrived`]).
    pub fn limit_request_rate(&mut self, burst: u32, per_second: f64) {
        *self.state.rate.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(RequestRate::new(burst, per_second));
    }

    /// The same for unary calls ([`ConnectionState::call_arrived`]).
    pub fn limit_call_rate(&mut self, burst: u32, per_second: f64) {
        *self
            .state
            .call_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(RequestRate::new(burst, per_second));
    }

    pub fn info(&self) -> GuardedInfo {
        GuardedInfo {
            peer: self.peer,
            state: self.state.clone(),
            identity: tls::PeerIdentity::Plaintext,
        }
    }

    /// Whether the connection must close: it exceeded its request rate, or its first-request
    /// deadline passed without a request (this registers the waker for the deadline).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.is_closing() {
            return true;
        }
        let Some(deadline) = &mut self.deadline else {
            return false;
        };
        if self.state.request_seen() {
            self.deadline = None;
            return false;
        }
        deadline.as_mut().poll(cx).is_ready()
    }
}

fn no_request() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no request within the deadline after connecting, or requests beyond the rate",
    )
}

impl<Io: AsyncRead + Unpin> AsyncRead for Guarded<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            tracing::debug!(peer = %this.peer,
                "dropping a connection that sent no request in time, or requests too fast");
            return Poll::Ready(Err(no_request()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Guarded<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(no_request()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(no_request()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<Io: Send + Sync + 'static> tonic::transport::server::Connected for Guarded<Io> {
    type ConnectInfo = GuardedInfo;

    fn connect_info(&self) -> GuardedInfo {
        self.info()
    }
}
