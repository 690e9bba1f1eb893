//! Egress listeners a `Sidecar` binds to a socket of their own (`captureMode: NONE`): where an
//! application without an iptables capture (EKS Fargate, where no init container may change
//! the pod's iptables; a VM without istio-init) sends its requests itself, as istiod binds
//! them. Only HTTP ports are bound: their requests are routed by Host as on the port's
//! captured listener.

use capstan_crds::networking::sidecar::{CaptureMode, IstioEgressListener};
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use super::{PerScope, Scopes};

/// Where istiod binds a `captureMode: NONE` egress listener without `bind`.
const LOOPBACK: &str = "127.0.0.1";

/// One egress listener on a socket of its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BoundEgress {
    /// The address it listens on: `bind`, or 127.0.0.1.
    pub address: String,
    pub port: u32,
}

impl BoundEgress {
    /// The listener `listener` binds, if capstan binds it: `captureMode: NONE` on an HTTP
    /// port (or one without a protocol), bound to an IP address. Anything else is reported
    /// (`model::unsupported`).
    pub fn of(listener: &IstioEgressListener) -> Option<Self> {
        if listener.capture_mode != Some(CaptureMode::None) {
            return None;
        }
        let port = listener.port.as_ref().filter(|p| p.number != 0)?;
        let http = port.protocol.is_empty()
            || Protocol::parse(&port.protocol)
                .is_some_and(|p| p.class() == ProtocolClass::Http && p != Protocol::HttpProxy);
        let address = match listener.bind.as_str() {
            "" => LOOPBACK,
            bind => bind,
        };
        (http && address.parse::<std::net::IpAddr>().is_ok()).then(|| Self {
            address: address.to_string(),
            port: port.number,
        })
    }

    /// The listener's name, `<address>_<port>` as istiod names it.
    pub fn name(&self) -> String {
        format!("{}_{}", self.address, self.port)
    }
}

/// See [`Scopes::bound_egress_variants`].
pub type BoundEgressVariants = PerScope<Vec<BoundEgress>>;

impl Scopes {
    /// Every sidecar's bound egress listeners, from the scopes in force.
    pub fn bound_egress_variants(&self) -> BoundEgressVariants {
        self.per_scope(|scope| scope.map(|s| s.bound.clone()).unwrap_or_default())
    }

    /// The `Sidecar`s with bound egress listeners.
    pub fn binding_egress(&self) -> impl Iterator<Item = &ObjectKey> {
        self.by_key
            .values()
            .filter(|s| !s.bound.is_empty())
            .map(|s| &s.origin)
    }
}

#[cfg(test)]
mod tests {
    use capstan_crds::networking::sidecar::SidecarPort;

    use super::*;

    fn listener(
        protocol: &str,
        number: u32,
        bind: &str,
        mode: Option<CaptureMode>,
    ) -> IstioEgressListener {
        IstioEgressListener {
            port: Some(SidecarPort {
                number,
                protocol: protocol.into(),
                name: "http".into(),
                target_port: 0,
            }),
            bind: bind.into(),
            capture_mode: mode,
            hosts: vec!["./*".into()],
        }
    }

    #[test]
    fn only_capture_mode_none_on_an_http_port_bound_to_an_ip_is_bound() {
        let none = Some(CaptureMode::None);
        let bound = |address: &str, port| {
            Some(BoundEgress {
                address: address.into(),
                port,
            })
        };
        assert_eq!(
            BoundEgress::of(&listener("HTTP", 9080, "", none)),
            bound("127.0.0.1", 9080)
        );
        assert_eq!(
            BoundEgress::of(&listener("GRPC", 9090, "127.0.0.2", none)),
            bound("127.0.0.2", 9090)
        );
        assert_eq!(
            BoundEgress::of(&listener("", 8080, "", none)),
            bound("127.0.0.1", 8080)
        );
        assert_eq!(
            bound("127.0.0.1", 9080).map(|b| b.name()).as_deref(),
            Some("127.0.0.1_9080")
        );
        for not_bound in [
            listener("HTTP", 9080, "", None),
            listener("HTTP", 9080, "", Some(CaptureMode::Iptables)),
            listener("HTTP", 9080, "127.0.0.1", Some(CaptureMode::Default)),
            listener("TCP", 5432, "", none),
            listener("HTTPS", 443, "", none),
            listener("HTTP", 0, "unix:///var/run/app.sock", none),
            listener("HTTP", 9080, "localhost", none),
        ] {
            assert_eq!(BoundEgress::of(&not_bound), None, "{not_bound:?}");
        }
        let mut catch_all = listener("HTTP", 9080, "", none);
        catch_all.port = None;
        assert_eq!(BoundEgress::of(&catch_all), None);
    }
}
