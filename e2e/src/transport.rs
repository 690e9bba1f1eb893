//! Hostile clients at the connection level and a capstan under a small open-file limit, for
//! the transport fault tests (`e2e/tests/faults_transport.rs`): raw TCP, HTTP/2 and slow
//! HTTP/1 clients from another loopback address, and capstan's RSS.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::capstan::Capstan;
use crate::ports::free_port;
use crate::process::ChildProcess;

/// The open-file limit the capstan under test runs with: small enough that a test process
/// can open more connections than capstan has descriptors.
pub const CAPSTAN_FD_LIMIT: usize = 1024;

/// The address hostile clients connect from (all of 127/8 is loopback on Linux), so that
/// capstan can tell them from the well-behaved Envoy on 127.0.0.1.
pub const HOSTILE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A `capstan run` on a config dir, started with `ulimit -n CAPSTAN_FD_LIMIT` and `args`.
pub struct LimitedCapstan {
    pub process: ChildProcess,
    pub xds_port: u16,
    pub monitoring_port: u16,
}

impl LimitedCapstan {
    pub async fn start(config_dir: &Path, log_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let bin = crate::locate::capstan_bin()?;
        let (xds_port, monitoring_port) = (free_port()?, free_port()?);
        let mut cmd = limited(&bin);
        cmd.arg("run")
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{monitoring_port}")])
            .args(["--outbound-port", "0"])
            .args(args);
        let mut process = Capstan::spawn(cmd, log_dir, "capstan")?;
        Capstan::wait_listening(&mut process).await?;
        Ok(Self {
            process,
            xds_port,
            monitoring_port,
        })
    }

    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.process.pid())
    }
}

/// `bin` run through `sh` with the open-file limit lowered to [`CAPSTAN_FD_LIMIT`] (`exec`:
/// the child's pid is `bin`'s).
pub fn limited(bin: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n {CAPSTAN_FD_LIMIT} && exec \"$0\" \"$@\""
        ))
        .arg(bin);
    cmd
}

/// Resident memory of `pid`, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    capstan_load::rss::rss_kib(pid).with_context(|| format!("reading VmRSS of pid {pid}"))
}

/// Raises this process's soft open-file limit to its hard limit and fails unless `needed`
/// descriptors fit.
pub fn ensure_fds(needed: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error()).context("setrlimit");
            }
        }
    }
    anyhow::ensure!(
        limit.rlim_cur as usize >= needed,
        "the test needs {needed} file descriptors; ulimit -n allows {}",
        limit.rlim_cur
    );
    Ok(())
}

/// A TCP connection to `target` from [`HOSTILE_IP`]; `None` if it was not established within
/// `timeout` (the server's backlog is full: the server's choice, not an error).
pub async fn connect_hostile(target: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((HOSTILE_IP, 0))).ok()?;
    tokio::time::timeout(timeout, socket.connect(target))
        .await
        .ok()?
        .ok()
}

/// Holds `n` connections to `target` from [`HOSTILE_IP`], each sending `first` (maybe
/// nothing) and then nothing. Each task ends with whether the server closed its connection.
pub fn hold_connections(target: SocketAddr, n: usize, first: &'static [u8]) -> JoinSet<bool> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(async move {
            let Some(mut stream) = connect_hostile(target, Duration::from_secs(30)).await else {
                return false;
            };
            if !first.is_empty() && stream.write_all(first).await.is_err() {
                return true;
            }
            read_until_closed(&mut stream).await
        });
    }
    set
}

/// Reads (and discards) until the peer closes; true once it has.
pub async fn read_until_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// `n` connections to `target` from [`HOSTILE_IP`] that each dribble `request` (slowloris);
/// each task ends with whether the server closed its connection.
pub fn slowloris(
    target: SocketAddr,
    n: usize,
    request: &'static [u8],
    interval: Duration,
) -> JoinSet<bool> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(async move {
            let Some(mut stream) = connect_hostile(target, Duration::from_secs(30)).await else {
                return false;
            };
            dribble(&mut stream, request, interval).await
        });
    }
    set
}

/// Writes `request` and then header bytes one at a time, `interval` apart, never ending the
/// headers. True once the peer closes; false if it has not after 60 bytes.
pub async fn dribble<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    interval: Duration,
) -> bool {
    let mut buf = [0u8; 1024];
    let endless_header = std::iter::repeat(&b'x');
    for byte in request.iter().chain(endless_header).take(60) {
        if stream.write_all(&[*byte]).await.is_err() {
            return true;
        }
        match tokio::time::timeout(interval, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

/// Counts into `closed` the finished tasks of `set` whose connection the server closed; the
/// others keep running.
pub fn closed_so_far(set: &mut JoinSet<bool>, closed: &mut usize) {
    while let Some(done) = set.try_join_next() {
        if matches!(done, Ok(true)) {
            *closed += 1;
        }
    }
}

/// Opens ADS streams on one HTTP/2 connection from [`HOSTILE_IP`] and resets each, up to
/// `max` of them or until the server closes the connection; returns how many were opened and
/// whether the server closed it. `wait_accepted`: reset each stream only once the server
/// has answered its headers (so it has accepted the stream and started serving it), else
/// reset it at once (the "rapid reset" attack).
pub async fn reset_flood(
    xds: SocketAddr,
    max: usize,
    wait_accepted: bool,
) -> anyhow::Result<(usize, bool)> {
    let tcp = connect_hostile(xds, Duration::from_secs(30))
        .await
        .context("connecting the flood")?;
    let (mut send, connection) = h2::client::handshake(tcp).await?;
    let connection = tokio::spawn(connection);
    let mut opened = 0;
    while opened < max && !connection.is_finished() {
        let Ok(ready) = send.ready().await else { break };
        send = ready;
        let request = hyper::Request::post(format!(
            "http://{xds}{}",
            capstan_xds::ads::service::DELTA_PATH
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
        let Ok((response, mut stream)) = send.send_request(request, false) else {
            break;
        };
        opened += 1;
        if wait_accepted && response.await.is_err() {
            break;
        }
        stream.send_reset(h2::Reason::CANCEL);
        if opened % 16 == 0 {
            // Let the connection task read what the server sent (a GOAWAY).
            tokio::task::yield_now().await;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .is_ok();
    Ok((opened, closed))
}
