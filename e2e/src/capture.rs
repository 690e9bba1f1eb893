//! Traffic capture as in an Istio pod: istio-init's iptables rules send the app's outbound TCP
//! into Envoy's port 15001 and, when the sidecar itself dials a pod address, back into its
//! inbound port 15006; Envoy runs as uid/gid 1337 ([`PROXY`]) so that its own connections
//! are told apart and not captured again.
//!
//! Only for test binaries with `capstan_e2e::private_network!();`: [`install`] refuses to run
//! anywhere else, so the rules live and die with the test binary's own network namespace.
//!
//! The namespace stands for one pod:
//! - service VIPs ([`SERVICE_NETWORK`], e.g. [`service_ip`]) are routed through [`DEVICE`], a
//!   veth standing in for the pod's `eth0`, so a connection to a VIP leaves by a
//!   non-loopback interface, as in a pod, and is redirected to 15001;
//! - pod addresses ([`crate::netns::POD_NETWORK`]) are local (on `lo`), so the app reaching
//!   one is not captured, while Envoy reaching one goes to 15006, which is how this one
//!   sidecar's inbound side gets traffic "from another pod";
//! - 127.0.0.1 is never captured, and neither is anything from [`INBOUND_PASSTHROUGH_SOURCE`]
//!   (Envoy's inbound passthrough connections to the app);
//! - [`EXTERNAL_HOST`] is a host outside the mesh: routed like a VIP, so the app's
//!   connections to it are captured, and delivered to [`EXTERNAL_SERVER`] when the sidecar
//!   passes one on, as a network would deliver it to a host no service describes.
//!
//! The `PREROUTING` rules are installed too, so the table reads like a pod's, but connections
//! made inside the namespace never pass the nat table's `PREROUTING`: all capture here
//! happens in `OUTPUT`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::net::{TcpSocket, TcpStream};

use crate::envoy::RunAs;
use crate::http::HttpClient;
use crate::netns;

/// The sidecar's user and group (Istio's `istio-proxy`, 1337): Envoy must run as this for
/// its own traffic to pass uncaptured.
pub const PROXY: RunAs = RunAs {
    uid: 1337,
    gid: 1337,
};

/// Where the app's outbound connections are redirected (Envoy's `virtualOutbound`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;

/// Where the sidecar's own connections to a local pod address are redirected (Envoy's
/// `virtualInbound`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;

/// The service (ClusterIP) range, routed through [`DEVICE`].
pub const SERVICE_NETWORK: &str = "10.96.0.0/16";

/// The stand-in for the pod's `eth0`.
pub const DEVICE: &str = "capture0";

/// The other end of [`DEVICE`]'s veth pair. A dummy device would do, but not every kernel
/// has one (this CI's has not); the peer only exists to give [`DEVICE`] a carrier.
pub const DEVICE_PEER: &str = "capture0-peer";

/// [`DEVICE`]'s address: the source of connections to service VIPs, as a pod's own IP would
/// be. Outside both the pod and the service network, so it is nobody's pod.
pub const DEVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);

/// A host outside the mesh (and outside the service network): what no ServiceEntry has.
pub const EXTERNAL_HOST: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

/// Where the sidecar's connections to [`EXTERNAL_HOST`] arrive (a DNAT rule for [`PROXY`]'s
/// connections only, so the app cannot reach it but through its sidecar): a local pod-network
/// address no test uses for a workload. A test's "external" server listens here.
pub const EXTERNAL_SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 250, 1);

/// The address Istio's inbound passthrough cluster binds to; connections from it are
/// never captured, so the sidecar can reach the app on the pod's own address.
pub const INBOUND_PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Ports that reach the pod without passing the inbound capture: HBONE (15008), Envoy's
/// Prometheus (15090), health (15021) and the agent's merged metrics (15020).
const INBOUND_EXCLUDED_PORTS: [u16; 4] = [15008, 15090, 15021, 15020];

/// HBONE: the sidecar dialling it is not sent into its own inbound listener.
const HBONE_PORT: u16 = 15008;

/// Service VIP number `n` (1-based) in [`SERVICE_NETWORK`]: `service_ip(10)` is `10.96.0.10`.
pub fn service_ip(n: u16) -> Ipv4Addr {
    let [hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(10, 96, hi, lo)
}

/// Proof that capture is installed in this process's private namespace.
#[derive(Debug, Clone, Copy)]
pub struct Capture {
    _installed: (),
}

/// Connections redirected so far (the nat table counts a connection's first packet only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redirected {
    /// Into [`OUTBOUND_CAPTURE_PORT`].
    pub outbound: u64,
    /// Into [`INBOUND_CAPTURE_PORT`].
    pub inbound: u64,
}

impl Redirected {
    /// The connections redirected between `before` and `self`.
    pub fn since(self, before: Redirected) -> Redirected {
        Redirected {
            outbound: self.outbound - before.outbound,
            inbound: self.inbound - before.inbound,
        }
    }
}

/// Brings the private network up and installs the capture device, its routes and the nat
/// rules ([`nat_rules`]), once per process; later calls return the first call's outcome.
pub fn install() -> anyhow::Result<Capture> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| configure().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(Capture { _installed: () })
}

fn configure() -> anyhow::Result<()> {
    // Fails unless the binary opted into a private namespace; `network_up` alone would let
    // the rules fall on the host's network.
    netns::pod_network()?;
    ensure!(
        in_private_namespace()?,
        "refusing to install capture rules: this process shares its parent's network namespace"
    );
    let address = format!("{DEVICE_ADDRESS}/32");
    let source = DEVICE_ADDRESS.to_string();
    for args in [
        &[
            "link",
            "add",
            DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            DEVICE_PEER,
        ][..],
        &["link", "set", DEVICE_PEER, "up"],
        &["link", "set", DEVICE, "up"],
        &["addr", "add", &address, "dev", DEVICE],
        &[
            "route",
            "add",
            SERVICE_NETWORK,
            "dev",
            DEVICE,
            "src",
            &source,
        ],
        &[
            "route",
            "add",
            &format!("{EXTERNAL_HOST}/32"),
            "dev",
            DEVICE,
            "src",
            &source,
        ],
    ] {
        run("ip", args, None).context("setting up the capture device (Debian package iproute2)")?;
    }
    let rules = nat_rules();
    run("iptables-restore", &["--noflush"], Some(&rules)).with_context(|| {
        format!(
            "installing the capture rules (Debian package iptables; `make tools` installs it):\n{rules}"
        )
    })?;
    Ok(())
}

/// Whether this process's network namespace differs from its parent's: the namespace the
/// test binary was started in, which `private_network!` leaves before `main`. (PID 1's would
/// be the natural reference, but some sandboxes deny reading it from another namespace.)
pub fn in_private_namespace() -> anyhow::Result<bool> {
    let parent = std::os::unix::process::parent_id();
    Ok(net_namespace("self")? != net_namespace(&parent.to_string())?)
}

/// The network namespace of process `pid` (or `self`), as `net:[inode]`.
pub fn net_namespace(pid: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/ns/net");
    let link = std::fs::read_link(&path).with_context(|| format!("reading {path}"))?;
    Ok(link.to_string_lossy().into_owned())
}

/// The nat table [`install`] adds, in `iptables-restore` form: istio-init's REDIRECT mode
/// with its defaults (all outbound TCP captured; 15008/15090/15021/15020 not captured
/// inbound), for [`PROXY`].
pub fn nat_rules() -> String {
    let (uid, gid) = (PROXY.uid, PROXY.gid);
    let mut lines = vec![
        "*nat".to_string(),
        ":ISTIO_INBOUND - [0:0]".to_string(),
        ":ISTIO_REDIRECT - [0:0]".to_string(),
        ":ISTIO_IN_REDIRECT - [0:0]".to_string(),
        ":ISTIO_OUTPUT - [0:0]".to_string(),
    ];
    for port in INBOUND_EXCLUDED_PORTS {
        lines.push(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
    }
    lines.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_string());
    lines.push(format!(
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}"
    ));
    lines.push(format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}"
    ));
    lines.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".to_string());
    lines.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".to_string());
    // Order matters: first match wins. The passthrough source must beat the sidecar's
    // redirect to 15006, which must beat the sidecar's blanket exemption.
    lines.push(format!(
        "-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN"
    ));
    for owner in [format!("--uid-owner {uid}"), format!("--gid-owner {gid}")] {
        lines.push(format!(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport {HBONE_PORT} -m owner {owner} -j ISTIO_IN_REDIRECT"
        ));
        lines.push(format!(
            "-A ISTIO_OUTPUT -o lo -m owner ! {owner} -j RETURN"
        ));
        lines.push(format!("-A ISTIO_OUTPUT -m owner {owner} -j RETURN"));
    }
    lines.push("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".to_string());
    lines.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string());
    // After the capture: only the sidecar's own connections get here with this destination.
    lines.push(format!(
        "-A OUTPUT -d {EXTERNAL_HOST}/32 -p tcp -m owner --uid-owner {uid} -j DNAT --to-destination {EXTERNAL_SERVER}"
    ));
    lines.push("COMMIT".to_string());
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

impl Capture {
    /// The nat table as the kernel has it (`iptables -t nat -S`), for logs.
    pub fn live_rules(&self) -> anyhow::Result<String> {
        run("iptables", &["-t", "nat", "-S"], None)
    }

    /// How many connections have been redirected to 15001 and 15006 since [`install`].
    pub fn redirected(&self) -> anyhow::Result<Redirected> {
        Ok(Redirected {
            outbound: redirect_packets("ISTIO_REDIRECT")?,
            inbound: redirect_packets("ISTIO_IN_REDIRECT")?,
        })
    }
}

/// The packet count of `chain`'s REDIRECT rules.
fn redirect_packets(chain: &str) -> anyhow::Result<u64> {
    let listing = run(
        "iptables",
        &["-t", "nat", "-L", chain, "-n", "-v", "-x"],
        None,
    )?;
    let mut total = 0;
    // Two header lines (chain name, column titles), then `pkts bytes target ...` per rule.
    for line in listing.lines().skip(2) {
        let mut cols = line.split_whitespace();
        let (Some(pkts), Some(_bytes), Some(target)) = (cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if target == "REDIRECT" {
            total += pkts
                .parse::<u64>()
                .with_context(|| format!("packet count in {line:?}"))?;
        }
    }
    Ok(total)
}

/// The destination a redirected connection was meant for (`SO_ORIGINAL_DST`), read on the
/// accepted socket; for a connection that was not redirected, its own local address.
pub fn original_dst(socket: &impl AsFd) -> std::io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the pointers are to `addr` and `len`, which outlive the call, and `len` is
    // `addr`'s size, so the kernel writes no further.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Where [`Capture::connect_from_another_pod`] connections come from: pod 264's address, a
/// pod-network address no test gives a workload, standing for a pod without a sidecar.
pub const ANOTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 8);

/// How long a connection from another pod may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Capture {
    /// A plain TCP connection to `to` (a workload's pod address, e.g. `10.244.1.7:9080`) as
    /// from another pod without a sidecar, which the capture delivers into the workload
    /// sidecar's inbound port ([`INBOUND_CAPTURE_PORT`]) as Istio's `PREROUTING` rule would.
    ///
    /// Connections made inside the namespace never pass `PREROUTING`, so this one takes the
    /// other way in: the sidecar's own (`OUTPUT`, owner [`PROXY`], to a pod address). Its
    /// socket is made as [`PROXY`]'s ([`socket_owned_by`]) and bound to [`ANOTHER_POD`], so
    /// the sidecar sees it come from there. `to` must be on a local pod address: anything
    /// else is not redirected, 127.0.0.1 and port 15008 included.
    pub async fn connect_from_another_pod(&self, to: SocketAddr) -> anyhow::Result<TcpStream> {
        let socket = socket_owned_by(PROXY)?;
        let from = SocketAddr::from((ANOTHER_POD, 0));
        socket
            .bind(from)
            .with_context(|| format!("binding a socket to {from}"))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
            .await
            .with_context(|| {
                format!("connecting to {to} from {ANOTHER_POD}: over {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("connecting to {to} from {ANOTHER_POD}"))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// An HTTP/1.1 client for `to` whose every connection is made by
    /// [`Capture::connect_from_another_pod`]: plain-text requests from a pod without a sidecar.
    pub fn another_pod_client(&self, to: SocketAddr) -> HttpClient {
        let capture = *self;
        HttpClient::with_connector(
            to,
            Arc::new(move |to| Box::pin(async move { capture.connect_from_another_pod(to).await })),
        )
    }
}

/// A TCP socket the kernel's owner match takes for `user`'s. `-m owner --uid-owner` and
/// `--gid-owner` read the filesystem ids of the credentials the socket's file was created
/// with, so the socket is made on a thread of its own with `setfsuid`/`setfsgid` switched to
/// `user`: those change the calling thread only (unlike `setuid`), and the thread switches
/// back and ends. Needs root; the rest of the process keeps its ids. Blocks for as long as
/// starting a thread takes.
pub fn socket_owned_by(user: RunAs) -> anyhow::Result<TcpSocket> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _ids = FsIds::switch_to(user)?;
                TcpSocket::new_v4().context("creating a TCP socket")
            })
            .join()
            .map_err(|_| {
                anyhow::anyhow!("the thread making a socket for uid {} panicked", user.uid)
            })?
    })
}

/// The calling thread's filesystem ids, switched to a user's until dropped.
struct FsIds {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl FsIds {
    /// Switches this thread's filesystem ids to `user`'s; fails unless both took.
    fn switch_to(user: RunAs) -> anyhow::Result<Self> {
        // SAFETY: plain syscalls on this thread's credentials; they take no pointers.
        let (gid, uid) = unsafe { (libc::setfsgid(user.gid), libc::setfsuid(user.uid)) };
        // Built first, so the old ids come back even when the check below fails.
        let previous = Self {
            uid: uid as libc::uid_t,
            gid: gid as libc::gid_t,
        };
        let (now_uid, now_gid) = current_fs_ids();
        ensure!(
            (now_uid, now_gid) == (user.uid, user.gid),
            "could not switch this thread's filesystem ids to {}:{} (have {now_uid}:{now_gid}; needs root)",
            user.uid,
            user.gid
        );
        Ok(previous)
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: as in `switch_to`.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// This thread's filesystem uid and gid. The calls report no failure, so they are asked with
/// an invalid id (-1), which changes nothing and returns the current one.
fn current_fs_ids() -> (u32, u32) {
    // SAFETY: as in `FsIds::switch_to`; -1 is refused, so nothing changes.
    let (uid, gid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
    (uid as u32, gid as u32)
}

/// Runs `program args` (with `stdin` piped in), returning stdout; fails with stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("no stdin pipe")?;
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {shown}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ips_count_from_the_start_of_the_range() {
        assert_eq!(service_ip(10), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(service_ip(258), Ipv4Addr::new(10, 96, 1, 2));
    }
}
