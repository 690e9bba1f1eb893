//! A `Sidecar`'s `ingress` listeners: the ports its workloads accept inbound connections on,
//! and where each goes (`defaultEndpoint`), instead of the ports their services declare.

use capstan_crds::networking::gateway::{ServerTlsMode, ServerTlsSettings};
use capstan_crds::networking::sidecar::{CaptureMode, IstioIngressListener};
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use super::{PerScope, Scopes};
use crate::model::gateway::{ClientCa, TlsTermination, terminate};
use crate::model::traffic_policy::{ConnectionPool, connection_pool};

/// One ingress listener: connections to the workload on `port` go to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPort {
    pub port: u32,
    pub served: IngressProtocol,
    pub to: IngressEndpoint,
    /// The listener's `connectionPool`, or else its `Sidecar`'s `inboundConnectionPool`.
    pub pool: Option<IngressPool>,
    /// `tls`: the TLS the sidecar terminates on the port (files on the sidecar's disk).
    pub tls: Option<TlsTermination>,
    /// `captureMode: NONE`: the address of the socket of its own it listens on; `None`: it
    /// takes what the capture hands `virtualInbound`.
    pub bound: Option<String>,
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
    /// A listener of `Sidecar` `sidecar`, whose `inboundConnectionPool` is `default_pool`, at
    /// `field`; `None` for one validation rejects (no port, a malformed endpoint). What is
    /// not applied of its `tls` goes to `report` (field, message).
    pub fn new(
        listener: &IstioIngressListener,
        sidecar: &ObjectKey,
        default_pool: Option<&ConnectionPool>,
        field: &str,
        report: &mut impl FnMut(String, String),
    ) -> Option<Self> {
        let port = listener.port.as_ref()?;
        let protocol = Protocol::parse(&port.protocol);
        let tls = listener
            .tls
            .as_ref()
            .and_then(|tls| terminated(tls, field, report));
        let served = match protocol.map(Protocol::class) {
            None => IngressProtocol::Detected,
            Some(ProtocolClass::Http) => IngressProtocol::Http {
                http2: protocol.is_some_and(Protocol::is_http2),
            },
            // As istiod: HTTPS decrypted by the sidecar is HTTP.
            Some(ProtocolClass::Tls) if tls.is_some() && protocol == Some(Protocol::Https) => {
                IngressProtocol::Http { http2: false }
            }
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
            tls,
            bound: bound_address(listener),
        })
    }
}

/// Where an ingress listener with `captureMode: NONE` listens on a socket of its own: `bind`
/// (an IP address), or every address as istiod; `None` when it is not bound — another
/// capture mode, a Unix socket, or a `defaultEndpoint` that needs the connection's original
/// destination (none, or the instance's address), which a connection made to the sidecar's
/// own socket does not have (reported, `model::unsupported`).
pub fn bound_address(listener: &IstioIngressListener) -> Option<String> {
    if listener.capture_mode != Some(CaptureMode::None) {
        return None;
    }
    let to_loopback = matches!(
        IngressEndpoint::parse(&listener.default_endpoint),
        Some(IngressEndpoint::Loopback { .. } | IngressEndpoint::Unix(_))
    );
    let address = match listener.bind.as_str() {
        "" => "0.0.0.0",
        bind => bind,
    };
    (to_loopback && address.parse::<std::net::IpAddr>().is_ok()).then(|| address.to_string())
}

/// The termination an ingress listener's `tls` asks for: `SIMPLE` or `MUTUAL` (and
/// `OPTIONAL_MUTUAL`) with files, as a gateway server's. Anything else is reported, and the
/// port's connections pass through undecrypted.
fn terminated(
    tls: &ServerTlsSettings,
    field: &str,
    report: &mut impl FnMut(String, String),
) -> Option<TlsTermination> {
    let mode = tls.mode.unwrap_or_default();
    if !matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) {
        report(
            format!("{field}.tls.mode"),
            "only SIMPLE and MUTUAL terminate TLS on a sidecar; the port's connections pass \
             through undecrypted"
                .into(),
        );
        return None;
    }
    // The gateway's wording is about servers; a sidecar's port still passes connections on.
    let mut reworded = |field: String, message: String| {
        report(
            field,
            message.replace(
                "this server is not served",
                "the port's connections pass through undecrypted",
            ),
        );
    };
    let mut termination = terminate(Some(tls), field, &mut reworded)?;
    // istiod reads a sidecar's client CA from its file alone; a Secret's would never be
    // served to it (SDS credentials go to gateways).
    if let Some(ClientCa::NamedSecret(_)) = &termination.client_ca {
        let ignored = "caCertCredentialName is not read on a sidecar (as istiod): its client CA \
                       is caCertificates";
        report(format!("{field}.tls.caCertCredentialName"), ignored.into());
        if tls.ca_certificates.is_empty() {
            report(
                format!("{field}.tls.caCertificates"),
                "a sidecar needs caCertificates to ask for client certificates; the port's \
                 connections pass through undecrypted"
                    .into(),
            );
            return None;
        }
        termination.client_ca = Some(ClientCa::File(tls.ca_certificates.clone()));
    }
    Some(termination)
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

    /// An ingress listener on 9443 (`protocol`) with `tls` (flow YAML).
    fn tls_port(protocol: &str, tls: &str) -> (Option<IngressPort>, Vec<String>) {
        let yaml = format!(
            "port: {{number: 9443, protocol: {protocol}, name: in}}\ndefaultEndpoint: 0.0.0.0:9080\ntls: {tls}\n"
        );
        let listener: IstioIngressListener = serde_saphyr::from_str(&yaml).expect("a listener");
        let sidecar = ObjectKey {
            kind: capstan_crds::Kind::Sidecar,
            namespace: "shop".into(),
            name: "default".into(),
        };
        let mut problems = Vec::new();
        let mut report =
            |field: String, message: String| problems.push(format!("{field}: {message}"));
        let port = IngressPort::new(&listener, &sidecar, None, "spec.ingress[0]", &mut report);
        (port, problems)
    }

    #[test]
    fn tls_on_an_ingress_port_is_terminated_and_https_served_as_http() {
        let simple = "{mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}";
        let (port, problems) = tls_port("HTTPS", simple);
        let port = port.expect("a port");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(port.served, IngressProtocol::Http { http2: false });
        let tls = port.tls.expect("terminated");
        assert_eq!(tls.client_ca, None);

        let (port, _) = tls_port("TLS", simple);
        assert_eq!(
            port.expect("a port").served,
            IngressProtocol::Tcp,
            "TLS stays bytes"
        );

        let mutual = "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}";
        let (port, _) = tls_port("HTTPS", mutual);
        let tls = port.and_then(|p| p.tls).expect("terminated");
        assert_eq!(
            tls.client_ca,
            Some(crate::model::gateway::ClientCa::File("/ca.pem".into()))
        );

        // caCertCredentialName is not read on a sidecar (istiod's client CA is the file):
        // said, and the file is the CA; without a file the port is not terminated.
        let named = "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, caCertCredentialName: web-ca}";
        let (port, problems) = tls_port("HTTPS", named);
        let tls = port.and_then(|p| p.tls).expect("terminated");
        assert_eq!(
            tls.client_ca,
            Some(crate::model::gateway::ClientCa::File("/ca.pem".into()))
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("spec.ingress[0].tls.caCertCredentialName: "));
        let secret_only = "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertCredentialName: web-ca}";
        let (port, problems) = tls_port("HTTPS", secret_only);
        assert_eq!(port.and_then(|p| p.tls), None);
        assert_eq!(problems.len(), 2, "{problems:?}");

        // PASSTHROUGH terminates nothing: said, and the port's bytes pass on.
        let (port, problems) = tls_port("HTTPS", "{mode: PASSTHROUGH}");
        let port = port.expect("a port");
        assert_eq!((port.tls, port.served), (None, IngressProtocol::Tcp));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("spec.ingress[0].tls.mode: "),
            "{problems:?}"
        );
    }
}
