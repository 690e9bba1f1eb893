//! Sidecar listeners as Istio models them behind its iptables capture (`--sidecar-listeners
//! capture`): every outbound connection arrives at `virtualOutbound` (15001), which hands it
//! to the listener of its original destination port — `0.0.0.0_<port>` for HTTP (routed by
//! Host through RDS), `<vip>_<port>` or `0.0.0.0_<port>` for TCP (straight to the service's
//! cluster) — or, for a destination no service has, through `PassthroughCluster`. Inbound
//! connections arrive at `virtualInbound` (15006), one per workload address, whose filter
//! chains send each of the workload's ports to its `inbound|<port>||` cluster. Under
//! `REGISTRY_ONLY` ([`crate::model::sidecar_scope::OutboundMode`]), what no service has goes to
//! `BlackHoleCluster` instead, and an HTTP request for a Host no service has gets a 502.
//!
//! The listeners a port or workload gets depend only on the services using that port or
//! having endpoints at that address; [`CaptureState`] keeps who uses what, so a change
//! rebuilds only those listeners.

mod bound_streams;
mod inbound;
mod ingress;
pub mod mtls;
mod outbound;
mod state;
mod stream;
mod subnet_chains;

pub use outbound::fallback_virtual_host;
pub use state::CaptureState;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::util::pack_any;

/// Where iptables sends outbound and inbound connections (Istio's ports).
pub const OUTBOUND_CAPTURE_PORT: u32 = 15001;
pub const INBOUND_CAPTURE_PORT: u32 = 15006;
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Where connections to destinations no service has go, outbound and inbound.
pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
/// Where outbound connections no service has go under `REGISTRY_ONLY`.
pub const BLACKHOLE: &str = "BlackHoleCluster";

/// What Envoy's `http_inspector` calls the HTTP it detects (without TLS).
const DETECTED_HTTP: [&str; 3] = ["http/1.1", "http/1.0", "h2c"];

/// Reads a connection's first bytes to tell HTTP from anything else, for ports without a
/// declared protocol.
fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".to_string(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
            HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// Reads a TLS connection's ClientHello (SNI, ALPN) for filter chains to match on, and tells
/// TLS from plain text (`tls` or `raw_buffer`).
fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The source address inbound connections to the workload come from, which istio-init's
/// rules let through instead of capturing them again.
const INBOUND_SOURCE: &str = "127.0.0.6";

/// Which listeners sidecars get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerMode {
    /// One outbound HTTP listener on `--outbound-bind:--outbound-port` that applications
    /// dial directly (no iptables): the no-cluster default.
    #[default]
    Direct,
    /// Istio's listeners behind an iptables capture: virtualOutbound on 15001 with a
    /// listener per service port, virtualInbound on 15006 to the workload.
    Capture,
}

impl std::str::FromStr for ListenerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Self::Direct),
            "capture" => Ok(Self::Capture),
            other => Err(format!("`{other}`: expected `direct` or `capture`")),
        }
    }
}

/// `outbound|<port>||<host>`'s inbound counterpart.
pub fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(FilterConfig::TypedConfig(pack_any(proxy))),
    }
}

#[cfg(test)]
mod tests;
