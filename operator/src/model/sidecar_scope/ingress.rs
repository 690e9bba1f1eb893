//! A `Sidecar`'s `ingress` listeners: the ports its workloads accept inbound connections on,
//! and where each goes (`defaultEndpoint`), instead of the ports their services declare.

use capstan_crds::networking::sidecar::IstioIngressListener;
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use super::{PerScope, Scopes};
use crate::model::traffic_policy::{ConnectionPool, connection_pool};

/// One ingress listener: connections to the workload on `port` go to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPort {
    pub port: u32,
    pub served: IngressProtocol,
    pub to: IngressEndpoint,
    /// The listener's `connectionPool`, or else its `Sidecar`'s `inboundConnectionPool`.
    pub pool: Option<IngressPool>,
}

/// The connection limits of one ingress listener, and the `Sidecar` that sets them: a
/// cluster with limits is that `Sidecar`'s own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPool {
    pub sidecar: ObjectKey,
    pub limits: ConnectionPool,
}

/// How the sidecar handles a port's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressProtocol {
    Http {
        http2: bool,
    },
    /// Bytes passed on unread: TCP, TLS and the like.
    Tcp,
    /// No protocol: HTTP when a connection's first bytes are, else TCP.
    Detected,
}

/// Where an ingress listener's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressEndpoint {
    /// No `defaultEndpoint`: where they were headed (the workload's address, this port).
    Passthrough,
    /// `127.0.0.1:PORT`, `[::1]:PORT`: the workload's loopback.
    Loopback { address: String, port: u32 },
    /// `0.0.0.0:PORT`, `[::]:PORT`, `:PORT`: the workload's own address, on `PORT`.
    Instance { port: u32 },
    /// `unix://PATH`.
    Unix(String),
}

impl IngressPort {
    /// A listener of `Sidecar` `sidecar`, whose `inboundConnectionPool` is `default_pool`;
    /// `None` for one validation rejects (no port, a malformed endpoint).
    pub fn new(
        listener: &IstioIngressListener,
        sidecar: &ObjectKey,
        default_pool: Option<&ConnectionPool>,
    ) -> Option<Self> {
        let port = listener.port.as_ref()?;
        let protocol = Protocol::parse(&port.protocol);
        let served = match protocol.map(Protocol::class) {
            None => IngressProtocol::Detected,
            Some(ProtocolClass::Http) => IngressProtocol::Http {
                http2: protocol.is_some_and(Protocol::is_http2),
            },
            Some(_) => IngressProtocol::Tcp,
        };
        Some(Self {
            port: port.number,
            served,
            to: IngressEndpoint::parse(&listener.default_endpoint)?,
            pool: listener
                .connection_pool
                .as_ref()
                .map(connection_pool)
                .or_else(|| default_pool.cloned())
                .map(|limits| IngressPool {
                    sidecar: sidecar.clone(),
                    limits,
                }),
        })
    }
}

impl IngressEndpoint {
    fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::Passthrough);
        }
        if let Some(path) = text.strip_prefix("unix://") {
            return Some(Self::Unix(path.to_string()));
        }
        let (host, port) = text.rsplit_once(':')?;
        let port = port.parse().ok()?;
        Some(match host {
            "127.0.0.1" => Self::Loopback {
                address: host.to_string(),
                port,
            },
            "[::1]" => Self::Loopback {
                address: "::1".to_string(),
                port,
            },
            "" | "0.0.0.0" | "[::]" => Self::Instance { port },
            _ => return None,
        })
    }
}

impl Scopes {
    /// Every sidecar's ingress listeners (empty: none, the ports of its services apply):
    /// everyone's, and those of the sets of sidecars (a scope's) that have others.
    pub fn ingress_variants(&self) -> IngressVariants {
        self.per_scope(|scope| scope.map(|s| s.ingress.clone()).unwrap_or_default())
    }

    /// The `Sidecar`s with ingress listeners.
    pub fn setting_ingress(&self) -> impl Iterator<Item = &capstan_crds::ObjectKey> {
        self.by_key
            .values()
            .filter(|s| !s.ingress.is_empty())
            .map(|s| &s.origin)
    }
}

/// See [`Scopes::ingress_variants`].
pub type IngressVariants = PerScope<Vec<IngressPort>>;

impl IngressVariants {
    pub fn is_empty(&self) -> bool {
        self.everyone.is_empty() && self.scoped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints_in_every_form_istio_accepts() {
        let parse = |text: &str| IngressEndpoint::parse(text);
        assert_eq!(parse(""), Some(IngressEndpoint::Passthrough));
        let loopback = |address: &str| IngressEndpoint::Loopback {
            address: address.into(),
            port: 8080,
        };
        assert_eq!(parse("127.0.0.1:8080"), Some(loopback("127.0.0.1")));
        assert_eq!(parse("[::1]:8080"), Some(loopback("::1")));
        for instance in ["0.0.0.0:8080", "[::]:8080", ":8080"] {
            assert_eq!(
                parse(instance),
                Some(IngressEndpoint::Instance { port: 8080 })
            );
        }
        assert_eq!(
            parse("unix:///var/run/app.sock"),
            Some(IngressEndpoint::Unix("/var/run/app.sock".into()))
        );
        assert_eq!(
            parse("10.0.0.1:8080"),
            None,
            "validation refuses other hosts"
        );
    }
}
