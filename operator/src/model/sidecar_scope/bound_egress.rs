//! Egress listeners a `Sidecar` binds to a socket of their own (`captureMode: NONE`): where an
//! application without an iptables capture (EKS Fargate, where no init container may change
//! the pod's iptables; a VM without istio-init) sends its requests itself, as istiod binds
//! them. By the port's declared protocol, as istiod: HTTP is routed by Host as on the port's
//! captured listener; TLS by SNI to the listener's services on the port; any other protocol
//! carries its connections to the one service of the listener on the port.

use std::collections::BTreeMap;

use capstan_crds::networking::sidecar::{CaptureMode, IstioEgressListener};
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use super::{Covers, EgressHost, PerScope, Scopes, SidecarScope};

/// Where istiod binds a `captureMode: NONE` egress listener without `bind`.
const LOOPBACK: &str = "127.0.0.1";

/// One egress listener on a socket of its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BoundEgress {
    /// The address it listens on: `bind`, or 127.0.0.1.
    pub address: String,
    pub port: u32,
    pub carries: Carries,
}

/// What a bound egress listener carries, by its port's declared protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Carries {
    /// HTTP (or no protocol): routed by Host through the port's route configuration.
    Http,
    /// Connections to the listener's services on the port: by SNI (`tls`: TLS, HTTPS), else
    /// all to the first of them by name, as istiod's listener keeps one service's chain.
    Streams(Streams),
}

/// The services a TLS or TCP bound listener carries, and for whom its chains are built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Streams {
    pub tls: bool,
    /// The listener's egress hosts.
    hosts: Vec<EgressHost>,
    /// The sidecars' namespace and the `Sidecar`'s workload labels (routes' `sourceNamespace`
    /// and `sourceLabels`, and `./` hosts, are read for them); `None`: the root namespace's
    /// default, for sidecars of any namespace (the translation reads it again for each
    /// namespace where `./` names a service on the port).
    pub caller: Option<(String, BTreeMap<String, String>)>,
    /// The `Sidecar`, and the listener's index among its egress listeners (for problems).
    pub origin: ObjectKey,
    pub index: usize,
}

impl Streams {
    /// Whether the listener's hosts name `host` of a service in `namespace`.
    pub fn names(&self, namespace: &str, host: &str) -> bool {
        let own = self.caller.as_ref().is_some_and(|(ns, _)| ns == namespace);
        self.hosts.iter().any(|h| h.names(own, namespace, host))
    }
}

impl BoundEgress {
    /// The listener `listener` binds, if capstan binds it: `captureMode: NONE` on a port
    /// (but `HTTP_PROXY`), bound to an IP address. Anything else is reported
    /// (`model::unsupported`). A TLS or TCP listener's sidecars are set by
    /// [`Scopes::bound_egress_variants`]. `listener` is `origin`'s egress listener `index`.
    pub fn of(listener: &IstioEgressListener, origin: &ObjectKey, index: usize) -> Option<Self> {
        let (address, port, protocol) = binding(listener)?;
        let carries = match protocol.map(Protocol::class) {
            None | Some(ProtocolClass::Http) => Carries::Http,
            Some(class) => Carries::Streams(Streams {
                tls: class == ProtocolClass::Tls,
                hosts: listener
                    .hosts
                    .iter()
                    .filter_map(|h| EgressHost::parse(h))
                    .collect(),
                caller: None,
                origin: origin.clone(),
                index,
            }),
        };
        Some(Self {
            address: address.to_string(),
            port,
            carries,
        })
    }

    /// Whether capstan binds `listener` (see [`Self::of`]).
    pub fn binds(listener: &IstioEgressListener) -> bool {
        binding(listener).is_some()
    }

    /// Whether its hosts name services by the sidecars' own namespace (`./`).
    pub fn names_own_namespace(&self) -> bool {
        match &self.carries {
            Carries::Http => false,
            Carries::Streams(streams) => {
                (streams.hosts.iter()).any(|h| h.namespace == super::NamespacePattern::Own)
            }
        }
    }

    /// The listener's name, `<address>_<port>` as istiod names it.
    pub fn name(&self) -> String {
        format!("{}_{}", self.address, self.port)
    }
}

/// Where `listener` is bound, if capstan binds it (see [`BoundEgress::of`]): its address,
/// port number and declared protocol.
fn binding(listener: &IstioEgressListener) -> Option<(&str, u32, Option<Protocol>)> {
    if listener.capture_mode != Some(CaptureMode::None) {
        return None;
    }
    let port = listener.port.as_ref().filter(|p| p.number != 0)?;
    let protocol = Protocol::parse(&port.protocol);
    if protocol == Some(Protocol::HttpProxy) {
        return None;
    }
    let address = match listener.bind.as_str() {
        "" => LOOPBACK,
        bind => bind,
    };
    address.parse::<std::net::IpAddr>().ok()?;
    Some((address, port.number, protocol))
}

/// See [`Scopes::bound_egress_variants`].
pub type BoundEgressVariants = PerScope<Vec<BoundEgress>>;

impl Scopes {
    /// Every sidecar's bound egress listeners, from the scopes in force: a TLS or TCP one's
    /// chains are built for the sidecars of its `Sidecar`'s namespace and workload labels
    /// (any namespace's for the root namespace's default).
    pub fn bound_egress_variants(&self) -> BoundEgressVariants {
        self.per_scope(|scope| scope.map(|s| self.bound_of(s)).unwrap_or_default())
    }

    fn bound_of(&self, scope: &SidecarScope) -> Vec<BoundEgress> {
        let default = self.covers(scope) == Covers::Default;
        let mut bound = scope.bound.clone();
        for listener in &mut bound {
            if let Carries::Streams(streams) = &mut listener.carries {
                streams.caller =
                    (!default).then(|| (scope.origin.namespace.clone(), scope.labels.clone()));
            }
        }
        bound
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
            hosts: vec!["*/*".into()],
        }
    }

    fn key() -> ObjectKey {
        ObjectKey {
            kind: capstan_crds::Kind::Sidecar,
            namespace: "bookinfo".into(),
            name: "default".into(),
        }
    }

    #[test]
    fn only_capture_mode_none_on_a_port_bound_to_an_ip_is_bound() {
        let none = Some(CaptureMode::None);
        let http = |address: &str, port| {
            Some(BoundEgress {
                address: address.into(),
                port,
                carries: Carries::Http,
            })
        };
        assert_eq!(
            BoundEgress::of(&listener("HTTP", 9080, "", none), &key(), 0),
            http("127.0.0.1", 9080)
        );
        assert_eq!(
            BoundEgress::of(&listener("GRPC", 9090, "127.0.0.2", none), &key(), 0),
            http("127.0.0.2", 9090)
        );
        assert_eq!(
            BoundEgress::of(&listener("", 8080, "", none), &key(), 0),
            http("127.0.0.1", 8080)
        );
        assert_eq!(
            http("127.0.0.1", 9080).map(|b| b.name()).as_deref(),
            Some("127.0.0.1_9080")
        );
        let streams = |protocol, port| {
            let bound = BoundEgress::of(&listener(protocol, port, "", none), &key(), 0);
            match bound.map(|b| (b.address, b.port, b.carries)) {
                Some((address, p, Carries::Streams(s))) if address == "127.0.0.1" && p == port => {
                    assert!(s.caller.is_none(), "{s:?}");
                    assert!(s.names("bookinfo", "db.bookinfo.svc.cluster.local"));
                    s.tls
                }
                other => panic!("{protocol} {port}: {other:?}"),
            }
        };
        assert!(!streams("TCP", 5432));
        assert!(!streams("MONGO", 27017));
        assert!(streams("TLS", 443));
        assert!(streams("HTTPS", 8443));
        for not_bound in [
            listener("HTTP", 9080, "", None),
            listener("HTTP", 9080, "", Some(CaptureMode::Iptables)),
            listener("HTTP", 9080, "127.0.0.1", Some(CaptureMode::Default)),
            listener("HTTP_PROXY", 8888, "", none),
            listener("HTTP", 0, "unix:///var/run/app.sock", none),
            listener("HTTP", 9080, "localhost", none),
        ] {
            assert_eq!(
                BoundEgress::of(&not_bound, &key(), 0),
                None,
                "{not_bound:?}"
            );
        }
        let mut catch_all = listener("HTTP", 9080, "", none);
        catch_all.port = None;
        assert_eq!(BoundEgress::of(&catch_all, &key(), 0), None);
    }
}
