//! An Envoy address from Istio's text for one: an IP (or name) and a port, or a Unix socket.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Pipe, SocketAddress};

/// `address`:`port`, or the Unix socket a `unix:///path` (`unix://@name`: abstract) address
/// names, as istiod's `BuildAddress` makes it (the port is then not read).
pub fn socket_or_pipe(address: &str, port: u32) -> Address {
    let kind = match address.strip_prefix("unix://") {
        Some(path) => AddressKind::Pipe(Pipe {
            path: path.to_string(),
            mode: 0,
        }),
        None => AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        }),
    };
    Address {
        address: Some(kind),
    }
}
