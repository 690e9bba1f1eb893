//! `proxyProtocol`: each connection to the destination starts with a PROXY protocol header
//! naming the original client, as istiod sets it: the cluster's transport socket (plain or
//! TLS) wrapped in Envoy's `upstream_proxy_protocol` socket.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{ProxyProtocolConfig, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::util::pack_any;

use crate::model::traffic_policy::ProxyProtocolVersion;

pub fn apply(cluster: &mut Cluster, version: ProxyProtocolVersion) {
    let inner = cluster
        .transport_socket
        .take()
        .unwrap_or_else(|| TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".to_string(),
            config_type: Some(ConfigType::TypedConfig(pack_any(RawBuffer::default()))),
        });
    let version = match version {
        ProxyProtocolVersion::V1 => Version::V1,
        ProxyProtocolVersion::V2 => Version::V2,
    };
    let wrapped = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: version as i32,
            ..Default::default()
        }),
        transport_socket: Some(inner),
        ..Default::default()
    };
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".to_string(),
        config_type: Some(ConfigType::TypedConfig(pack_any(wrapped))),
    });
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn unwrap(cluster: &Cluster) -> ProxyProtocolUpstreamTransport {
        let socket = cluster
            .transport_socket
            .as_ref()
            .expect("a transport socket");
        assert_eq!(
            socket.name,
            "envoy.transport_sockets.upstream_proxy_protocol"
        );
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("typed config");
        };
        ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).expect("decodes")
    }

    #[test]
    fn the_clusters_socket_is_wrapped_plain_or_tls() {
        let mut plain = Cluster::default();
        apply(&mut plain, ProxyProtocolVersion::V2);
        let wrapped = unwrap(&plain);
        assert_eq!(wrapped.config.map(|c| c.version), Some(Version::V2 as i32));
        assert_eq!(
            wrapped.transport_socket.map(|s| s.name).as_deref(),
            Some("envoy.transport_sockets.raw_buffer")
        );

        let tls = TransportSocket {
            name: "envoy.transport_sockets.tls".to_string(),
            config_type: None,
        };
        let mut secured = Cluster {
            transport_socket: Some(tls.clone()),
            ..Default::default()
        };
        apply(&mut secured, ProxyProtocolVersion::V1);
        let wrapped = unwrap(&secured);
        assert_eq!(wrapped.config.map(|c| c.version), Some(Version::V1 as i32));
        assert_eq!(wrapped.transport_socket, Some(tls));
    }
}
