//! A private network for the Kubernetes tests: the test binary moves itself into a network
//! namespace of its own before any thread starts, so the API server, capstan, Envoys and the
//! "pods" it starts all live there, and nothing they send can leave the machine.
//!
//! Why: Kubernetes rejects loopback addresses in EndpointSlices, so pods need addresses of
//! their own. Inside the namespace `10.244.0.0/16` is routed to the loopback device
//! (`ip route add local`), so an upstream bound to `10.244.1.7` is a pod at that address, and
//! the range exists only in this namespace.
//!
//! A test file opts in with one line: `capstan_e2e::private_network!();`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, bail};

/// The pod network inside the namespace.
pub const POD_NETWORK: &str = "10.244.0.0/16";

/// 0: not tried; 1: entered; negative: `-errno` of the failed `unshare`.
static ENTERED: AtomicI32 = AtomicI32::new(0);

/// Called before `main` (see [`private_network!`]): a network namespace can be entered for the
/// whole process only while it has one thread.
pub extern "C" fn enter_before_main() {
    // SAFETY: unshare takes no pointers; it only changes this (still single) thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    let state = if rc == 0 {
        1
    } else {
        -std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
    };
    ENTERED.store(state, Ordering::SeqCst);
}

/// Brings up loopback and the pod network in the namespace, once. Fails (never skips) when
/// the binary did not opt in or the namespace could not be made.
pub fn pod_network() -> anyhow::Result<()> {
    match ENTERED.load(Ordering::SeqCst) {
        1 => network_up(),
        0 => bail!("this test binary has no `capstan_e2e::private_network!();`"),
        errno => bail!(
            "could not create a network namespace (unshare: {}); the Kubernetes e2e tests need root or CAP_SYS_ADMIN",
            std::io::Error::from_raw_os_error(-errno)
        ),
    }
}

/// In a private namespace, brings its loopback and pod network up (once); elsewhere the
/// host's network is used as it is. Whatever starts processes on loopback calls this first.
pub fn network_up() -> anyhow::Result<()> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if ENTERED.load(Ordering::SeqCst) != 1 {
        return Ok(());
    }
    READY
        .get_or_init(|| configure().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn configure() -> anyhow::Result<()> {
    ip(&["link", "set", "lo", "up"])?;
    ip(&["route", "add", "local", POD_NETWORK, "dev", "lo"])?;
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The address of pod number `n` (1-based) in the pod network.
pub fn pod_ip(n: u16) -> Ipv4Addr {
    let [hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(10, 244, hi, lo)
}

/// Moves the test binary into its own network namespace before `main` (and so before any
/// test thread). Use once per test file.
#[macro_export]
macro_rules! private_network {
    () => {
        #[used]
        #[unsafe(link_section = ".init_array")]
        static CAPSTAN_E2E_ENTER_NETNS: extern "C" fn() = $crate::netns::enter_before_main;
    };
}
