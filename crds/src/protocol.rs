//! Port protocols: the one classifier that validation, the model and translation share.
//!
//! Istio reads a port's protocol from the ServiceEntry/Gateway/Sidecar `protocol` field, or for
//! a Kubernetes Service from `appProtocol`, else from the port name's prefix (`http-web`,
//! `grpc`, ...). All three forms go through [`Protocol`], so they cannot disagree.

/// A port protocol Istio knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Mysql,
    Redis,
    Thrift,
}

/// What a protocol carries, as far as routing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolClass {
    /// HTTP/1.1, HTTP/2, gRPC: routed by authority.
    Http,
    /// TLS (including HTTPS): routed by SNI.
    Tls,
    /// Opaque TCP or UDP.
    Opaque,
}

const NAMES: &[(&str, Protocol)] = &[
    ("HTTP", Protocol::Http),
    ("HTTP2", Protocol::Http2),
    ("HTTP_PROXY", Protocol::HttpProxy),
    ("GRPC", Protocol::Grpc),
    ("GRPC-WEB", Protocol::GrpcWeb),
    ("HTTPS", Protocol::Https),
    ("TLS", Protocol::Tls),
    ("TCP", Protocol::Tcp),
    ("UDP", Protocol::Udp),
    ("MONGO", Protocol::Mongo),
    ("MYSQL", Protocol::Mysql),
    ("REDIS", Protocol::Redis),
    ("THRIFT", Protocol::Thrift),
];

impl Protocol {
    /// Every name Istio accepts, upper case.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _)| *n)
    }

    /// Its name as Istio spells it (`HTTP2`, `GRPC-WEB`).
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("TCP", |(n, _)| *n)
    }

    /// A protocol name, case-insensitive (`http2`, `GRPC-WEB`).
    pub fn parse(name: &str) -> Option<Protocol> {
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }

    /// A Kubernetes `appProtocol`: an Istio protocol name, or one of the IANA/Kubernetes
    /// forms Istio maps (`kubernetes.io/h2c`, `kubernetes.io/ws`, `kubernetes.io/wss`).
    pub fn from_app_protocol(app_protocol: &str) -> Option<Protocol> {
        match app_protocol.to_ascii_lowercase().as_str() {
            "kubernetes.io/h2c" => Some(Protocol::Http2),
            "kubernetes.io/ws" => Some(Protocol::Http),
            "kubernetes.io/wss" => Some(Protocol::Https),
            other => Protocol::parse(other),
        }
    }

    /// Istio's port-name convention: `<protocol>` or `<protocol>-<suffix>`.
    pub fn from_port_name(port_name: &str) -> Option<Protocol> {
        let prefix = port_name.split_once('-').map_or(port_name, |(p, _)| p);
        // `grpc-web` is a protocol of its own, not `grpc` with a suffix.
        if port_name.eq_ignore_ascii_case("grpc-web")
            || port_name.to_ascii_lowercase().starts_with("grpc-web-")
        {
            return Some(Protocol::GrpcWeb);
        }
        Protocol::parse(prefix)
    }

    /// The protocol of a Kubernetes Service port: `appProtocol` first, then the name.
    pub fn of_kubernetes_port(app_protocol: Option<&str>, port_name: &str) -> Option<Protocol> {
        app_protocol
            .and_then(Protocol::from_app_protocol)
            .or_else(|| Protocol::from_port_name(port_name))
    }

    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("", |(n, _)| *n)
    }

    pub fn class(self) -> ProtocolClass {
        match self {
            Protocol::Http
            | Protocol::Http2
            | Protocol::HttpProxy
            | Protocol::Grpc
            | Protocol::GrpcWeb => ProtocolClass::Http,
            Protocol::Https | Protocol::Tls => ProtocolClass::Tls,
            Protocol::Tcp
            | Protocol::Udp
            | Protocol::Mongo
            | Protocol::Mysql
            | Protocol::Redis
            | Protocol::Thrift => ProtocolClass::Opaque,
        }
    }

    /// Whether upstream connections speak HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!(Protocol::parse("grpc-web"), Some(Protocol::GrpcWeb));
        assert_eq!(Protocol::parse("Http2"), Some(Protocol::Http2));
        assert_eq!(Protocol::parse("SCTP"), None);
        for name in Protocol::names() {
            assert_eq!(Protocol::parse(name).map(Protocol::as_str), Some(name));
        }
    }

    #[test]
    fn kubernetes_ports_use_app_protocol_then_the_name_prefix() {
        assert_eq!(
            Protocol::of_kubernetes_port(Some("kubernetes.io/h2c"), "web"),
            Some(Protocol::Http2)
        );
        assert_eq!(
            Protocol::of_kubernetes_port(Some("grpc"), "http-web"),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            Protocol::of_kubernetes_port(None, "http-web"),
            Some(Protocol::Http)
        );
        assert_eq!(
            Protocol::of_kubernetes_port(None, "http"),
            Some(Protocol::Http)
        );
        assert_eq!(
            Protocol::of_kubernetes_port(None, "grpc-web-ui"),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(
            Protocol::of_kubernetes_port(None, "tcp-db"),
            Some(Protocol::Tcp)
        );
        // An unknown appProtocol falls back to the name, and an unknown name is unknown.
        assert_eq!(
            Protocol::of_kubernetes_port(Some("example.com/custom"), "redis"),
            Some(Protocol::Redis)
        );
        assert_eq!(Protocol::of_kubernetes_port(None, "web"), None);
        assert_eq!(Protocol::of_kubernetes_port(None, "httpx"), None);
    }
}
