//! `capstan iptables`: the traffic capture of a sidecar pod, as Istio's `istio-iptables`
//! (the `istio-init` container) installs it in REDIRECT mode.
//!
//! [`nat_rules`] is a pure function from [`CaptureConfig`] to `iptables-restore` input, so the
//! exact rules are unit-tested; the command prints them (`--dry-run`) or feeds them to
//! `iptables-restore --noflush`. IPv4 only: IPv6 ranges in the include/exclude lists are
//! skipped with a warning (no `ip6tables` rules are written).

#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::Args;

/// Envoy's `virtualOutbound` port: where the app's outbound TCP is redirected.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Envoy's `virtualInbound` port: where inbound TCP is redirected.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The sidecar's uid and gid (Istio's `istio-proxy` user): its own traffic is not captured.
pub const PROXY_ID: u32 = 1337;
/// HBONE: never captured inbound, and the sidecar dialling it is not looped back inbound.
pub const HBONE_PORT: u16 = 15008;
/// Istio's inbound passthrough source: connections from it to the app are never captured.
pub const INBOUND_PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Ports Istio's injector always excludes from inbound capture: Envoy's Prometheus (15090),
/// health (15021) and the agent's merged metrics (15020).
pub const DEFAULT_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

/// What `capstan iptables` captures, in istio-iptables' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Outbound destinations captured: `None` is `*` (all).
    pub include_outbound_ranges: Option<Vec<String>>,
    pub exclude_outbound_ranges: Vec<String>,
    /// Inbound ports captured: `None` is `*` (all); an empty list captures no inbound traffic.
    pub include_inbound_ports: Option<Vec<u16>>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    /// istio-init's defaults: everything captured but Istio's own inbound ports.
    fn default() -> Self {
        Self {
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
            proxy_uid: PROXY_ID,
            proxy_gid: PROXY_ID,
            include_outbound_ranges: None,
            exclude_outbound_ranges: Vec::new(),
            include_inbound_ports: None,
            exclude_inbound_ports: DEFAULT_EXCLUDED_INBOUND_PORTS.to_vec(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

/// A list flag or annotation that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("{0:?} is not a port (1-65535)")]
    Port(String),
    #[error("{0:?} is not an IP range (a.b.c.d/n or an address)")]
    Range(String),
}

/// `*` → `None` (everything); otherwise the comma-separated ports (empty → none).
pub fn parse_ports_or_all(text: &str) -> Result<Option<Vec<u16>>, ListError> {
    if text.trim() == "*" {
        return Ok(None);
    }
    parse_ports(text).map(Some)
}

/// Comma-separated ports; blanks are ignored.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, ListError> {
    items(text)
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(ListError::Port(p.to_string())),
        })
        .collect()
}

/// `*` → `None` (everything); otherwise the comma-separated ranges (empty → none).
pub fn parse_ranges_or_all(text: &str) -> Result<Option<Vec<String>>, ListError> {
    if text.trim() == "*" {
        return Ok(None);
    }
    parse_ranges(text).map(Some)
}

/// Comma-separated CIDRs or addresses, IPv4 or IPv6 (IPv6 ones are later skipped, not
/// refused: an annotation written for a dual-stack Istio still applies its IPv4 part).
pub fn parse_ranges(text: &str) -> Result<Vec<String>, ListError> {
    items(text)
        .map(|r| {
            let (addr, len) = r.split_once('/').unwrap_or((r, ""));
            let max = match addr.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return Err(ListError::Range(r.to_string())),
            };
            if len.is_empty() || len.parse::<u8>().is_ok_and(|n| n <= max) {
                Ok(r.to_string())
            } else {
                Err(ListError::Range(r.to_string()))
            }
        })
        .collect()
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// An IPv4 range as iptables writes it back (`10.0.0.0/8`, an address as `/32`); `None` for
/// an IPv6 one.
fn ipv4_range(range: &str) -> Option<String> {
    let (addr, len) = range.split_once('/').unwrap_or((range, "32"));
    addr.parse::<Ipv4Addr>().ok()?;
    Some(format!("{addr}/{len}"))
}

fn ipv4_ranges(ranges: &[String]) -> Vec<String> {
    ranges
        .iter()
        .filter_map(|r| {
            let v4 = ipv4_range(r);
            if v4.is_none() {
                tracing::warn!(range = %r, "IPv6 range skipped: capstan iptables writes IPv4 rules only");
            }
            v4
        })
        .collect()
}

/// The nat table in `iptables-restore` form (for `--noflush`): istio-iptables' REDIRECT mode.
pub fn nat_rules(config: &CaptureConfig) -> String {
    let out = config.outbound_port;
    let inb = config.inbound_port;
    let mut lines: Vec<String> = [
        "*nat",
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let capture_inbound = config
        .include_inbound_ports
        .as_ref()
        .is_none_or(|p| !p.is_empty());
    if capture_inbound {
        let mut excluded = vec![HBONE_PORT];
        for port in &config.exclude_inbound_ports {
            if !excluded.contains(port) {
                excluded.push(*port);
            }
        }
        for port in excluded {
            lines.push(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
        }
        match &config.include_inbound_ports {
            None => lines.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_string()),
            Some(ports) => lines.extend(ports.iter().map(|port| {
                format!("-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT")
            })),
        }
    }
    lines.push(format!(
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {out}"
    ));
    lines.push(format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inb}"
    ));
    if capture_inbound {
        lines.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".to_string());
    }
    lines.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".to_string());

    // First match wins: the exclusions come before anything that redirects.
    for port in &config.exclude_outbound_ports {
        lines.push(format!("-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    lines.push(format!(
        "-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN"
    ));
    for owner in [
        format!("--uid-owner {}", config.proxy_uid),
        format!("--gid-owner {}", config.proxy_gid),
    ] {
        // The sidecar dialling its own pod's address goes to its inbound side, as a
        // connection from another pod would.
        if capture_inbound {
            lines.push(format!(
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport {HBONE_PORT} -m owner {owner} -j ISTIO_IN_REDIRECT"
            ));
        }
        lines.push(format!(
            "-A ISTIO_OUTPUT -o lo -m owner ! {owner} -j RETURN"
        ));
        lines.push(format!("-A ISTIO_OUTPUT -m owner {owner} -j RETURN"));
    }
    lines.push("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".to_string());
    for range in ipv4_ranges(&config.exclude_outbound_ranges) {
        lines.push(format!("-A ISTIO_OUTPUT -d {range} -j RETURN"));
    }
    match &config.include_outbound_ranges {
        None => lines.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string()),
        Some(ranges) => lines.extend(
            ipv4_ranges(ranges)
                .into_iter()
                .map(|range| format!("-A ISTIO_OUTPUT -d {range} -j ISTIO_REDIRECT")),
        ),
    }
    lines.push("COMMIT".to_string());
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `capstan iptables`'s flags, named after the pod annotations they carry.
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Port outbound TCP is redirected to (Envoy's virtualOutbound).
    #[arg(long, default_value_t = OUTBOUND_CAPTURE_PORT)]
    pub outbound_port: u16,
    /// Port inbound TCP is redirected to (Envoy's virtualInbound).
    #[arg(long, default_value_t = INBOUND_CAPTURE_PORT)]
    pub inbound_port: u16,
    /// The sidecar's uid: its connections are not captured.
    #[arg(long, default_value_t = PROXY_ID)]
    pub proxy_uid: u32,
    /// The sidecar's gid: its connections are not captured.
    #[arg(long, default_value_t = PROXY_ID)]
    pub proxy_gid: u32,
    /// Outbound IP ranges captured (comma-separated CIDRs; `*`: all; empty: none).
    #[arg(long, default_value = "*")]
    pub include_outbound_ip_ranges: String,
    /// Outbound IP ranges never captured (comma-separated CIDRs).
    #[arg(long, default_value = "")]
    pub exclude_outbound_ip_ranges: String,
    /// Inbound ports captured (comma-separated; `*`: all; empty: no inbound capture).
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: String,
    /// Inbound ports never captured (comma-separated); 15008 is always excluded.
    #[arg(long, default_value = "15090,15021,15020")]
    pub exclude_inbound_ports: String,
    /// Outbound ports never captured (comma-separated).
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Print the `iptables-restore` input and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl IptablesArgs {
    pub fn config(&self) -> Result<CaptureConfig, ListError> {
        Ok(CaptureConfig {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            include_outbound_ranges: parse_ranges_or_all(&self.include_outbound_ip_ranges)?,
            exclude_outbound_ranges: parse_ranges(&self.exclude_outbound_ip_ranges)?,
            include_inbound_ports: parse_ports_or_all(&self.include_inbound_ports)?,
            exclude_inbound_ports: parse_ports(&self.exclude_inbound_ports)?,
            exclude_outbound_ports: parse_ports(&self.exclude_outbound_ports)?,
        })
    }
}

/// Prints or applies the rules; an error exits non-zero, so a pod whose capture failed never
/// starts its app uncaptured.
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let config = args.config().context("invalid capture flags")?;
    let rules = nat_rules(&config);
    if args.dry_run {
        print!("{rules}");
        return Ok(());
    }
    tracing::info!("installing the capture rules:\n{rules}");
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting iptables-restore (is iptables in the proxy image?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore's stdin")?
        .write_all(rules.as_bytes())
        .context("writing to iptables-restore")?;
    let status = child.wait().context("waiting for iptables-restore")?;
    anyhow::ensure!(status.success(), "iptables-restore exited with {status}");
    Ok(())
}
