//! Gateways in capstan's own types: which proxies they select, the ports they open and the
//! hosts each server accepts, read once from the API structs. What a server asks for that
//! translation cannot do yet is reported here, by field.

pub mod auto_passthrough;
mod termination;

pub(crate) use termination::terminate;

use std::collections::BTreeMap;

use capstan_crds::networking::gateway::{self as api, ServerTlsMode, TlsProtocol};
use capstan_crds::{ObjectKey, Protocol, ProtocolClass};

use super::Problem;

/// A Gateway: the router proxies whose labels match `selector` open its servers' ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub origin: ObjectKey,
    pub selector: BTreeMap<String, String>,
    /// The servers translation serves; those it cannot are reported and left out.
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Position in `spec.servers`, for problems and Envoy names.
    pub index: usize,
    /// The port proxies listen on.
    pub port: u32,
    /// Istio's `port.name`, part of the route configuration name of a TLS server.
    pub port_name: String,
    /// Istio's `name`: an HTTPS server's statistics prefix (its chain's `http.<name>.*`).
    pub name: String,
    pub kind: ServerKind,
    pub hosts: Vec<HostPattern>,
    /// Plain HTTP servers only: answer every request with a redirect to HTTPS.
    pub https_redirect: bool,
    /// `bind`: the one address (or Unix socket, `unix://…`) its listener is bound to;
    /// empty: every address.
    pub bind: String,
}

/// What a server does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    /// Plain HTTP, routed by the Host header.
    Http,
    /// TLS terminated at the gateway, then HTTP routed by the Host header.
    Https(Box<TlsTermination>),
    /// TLS passed through untouched, routed by SNI (`tls` routes).
    Passthrough,
    /// TLS passed through untouched to the mesh cluster its SNI names
    /// (`outbound_.<port>_.<subset>_.<host>`), no VirtualService needed: the east-west
    /// gateway of a multi-network mesh.
    AutoPassthrough,
    /// Opaque TCP (`tcp` routes).
    Tcp,
    /// TLS terminated at the gateway, then the bytes forwarded by a `tcp` route (a `TLS`
    /// server whose mode terminates: SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL).
    TerminatedTcp(Box<TlsTermination>),
}

impl ServerKind {
    /// Servers of one port must all be of one family: plain HTTP, TLS (terminated or passed
    /// through, told apart by SNI), or opaque TCP.
    pub fn family(&self) -> &'static str {
        match self {
            ServerKind::Http => "plain HTTP",
            ServerKind::Https(_)
            | ServerKind::TerminatedTcp(_)
            | ServerKind::Passthrough
            | ServerKind::AutoPassthrough => "TLS",
            ServerKind::Tcp => "TCP",
        }
    }

    /// The TLS the server terminates, if it does.
    pub fn termination(&self) -> Option<&TlsTermination> {
        match self {
            ServerKind::Https(tls) | ServerKind::TerminatedTcp(tls) => Some(tls),
            _ => None,
        }
    }
}

/// The certificate a terminating server presents, and the client certificates it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTermination {
    pub certificate: ServerCertificate,
    /// `MUTUAL`, `OPTIONAL_MUTUAL`, `ISTIO_MUTUAL`: what client certificates must chain to.
    pub client_ca: Option<ClientCa>,
    /// `OPTIONAL_MUTUAL`: a client without a certificate is admitted too (one presenting a
    /// certificate must still chain to `client_ca`).
    pub client_certificate_optional: bool,
    /// Accepted client certificate SANs (any, when empty); only with a `client_ca`.
    pub subject_alt_names: Vec<String>,
    /// Pins on client certificates (`verifyCertificateSpki`, `verifyCertificateHash`); only
    /// with a `client_ca`.
    pub client_spki: Vec<String>,
    pub client_hash: Vec<String>,
    /// `caCrl`: client certificates it revokes are refused; only with a client CA file.
    pub client_crl: Option<String>,
    /// TLS versions and cipher suites offered (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`).
    pub params: TlsParams,
}

/// `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites` of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `None`: Envoy's default (`TLS_AUTO`).
    pub min: Option<TlsProtocol>,
    pub max: Option<TlsProtocol>,
    /// Known to Envoy, each once, in the order given; empty: Envoy's default list.
    pub cipher_suites: Vec<String>,
}

/// Where a terminating server's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCertificate {
    /// PEM files on the gateway proxy (`serverCertificate` and `privateKey`, or each pair of
    /// `tlsCertificates`: say an RSA and an ECDSA one, Envoy picking what the client takes).
    Files(Vec<CertificateFiles>),
    /// Secrets of the Gateway's namespace (`credentialName`, or each of `credentialNames`),
    /// served to the proxy over SDS.
    Secrets(Vec<Credential>),
    /// `ISTIO_MUTUAL`: the gateway proxy's own workload certificate, which its agent serves
    /// over SDS.
    Workload,
}

/// A certificate chain file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub certificate: String,
    pub private_key: String,
}

/// A credential a server names, and where (for problems).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    /// `spec.servers[i].tls.credentialName` or `...credentialNames[k]`.
    pub field: String,
}

/// Where a server's client CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCa {
    /// A PEM file on the gateway proxy (`caCertificates`).
    File(String),
    /// The CA of credential `name`: Secret `<name>-cacert`, else the CA entry of Secret
    /// `<name>` (istiod's order).
    Secret(String),
    /// `caCertCredentialName`: the CA entry of Secret `<name>` itself.
    NamedSecret(String),
    /// `ISTIO_MUTUAL`: the mesh's roots, which the proxy's agent serves over SDS.
    MeshRoots,
}

/// A server host, `[namespace/]dnsName`: which VirtualServices may bind to it (those of
/// `namespace`, `None` for any) and the names it answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub namespace: Option<String>,
    pub host: String,
}

impl HostPattern {
    fn parse(text: &str, gateway_namespace: &str) -> Self {
        match text.split_once('/') {
            Some(("*", host)) => HostPattern {
                namespace: None,
                host: host.to_string(),
            },
            Some((".", host)) => HostPattern {
                namespace: Some(gateway_namespace.to_string()),
                host: host.to_string(),
            },
            Some((ns, host)) => HostPattern {
                namespace: Some(ns.to_string()),
                host: host.to_string(),
            },
            None => HostPattern {
                namespace: None,
                host: text.to_string(),
            },
        }
    }

    /// Whether a VirtualService of `namespace` may bind to this host.
    pub fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// Reads a Gateway; servers translation cannot serve yet are reported and left out.
pub fn gateway(key: &ObjectKey, spec: &api::GatewaySpec) -> (Gateway, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut servers = Vec::new();
    for (index, server) in spec.servers.iter().enumerate() {
        let field = format!("spec.servers[{index}]");
        let mut report = |field: String, message: String| {
            problems.push(Problem {
                object: key.clone(),
                field,
                message,
            })
        };
        let Some(port) = &server.port else {
            // Validation requires a port; only an unvalidated object gets here.
            report(format!("{field}.port"), "no port; server not served".into());
            continue;
        };
        let tls = server.tls.as_ref();
        if !server.default_endpoint.is_empty() {
            report(
                format!("{field}.defaultEndpoint"),
                "defaultEndpoint is not applied on gateways (istiod does not apply it either)"
                    .into(),
            );
        }
        let Some(kind) = kind(port, tls, &field, &mut report) else {
            continue;
        };
        if matches!(kind, ServerKind::Http)
            && let Some(tls) = tls
            && tls.mode.is_some()
        {
            report(
                format!("{field}.tls.mode"),
                "TLS settings of a plain HTTP server are ignored".into(),
            );
        }
        servers.push(Server {
            index,
            // Validation refuses `targetPort` on gateways, as Istio's ("no impact").
            port: port.number,
            port_name: port.name.clone(),
            name: server.name.clone(),
            kind,
            hosts: server
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h, &key.namespace))
                .collect(),
            https_redirect: tls.is_some_and(|t| t.https_redirect),
            bind: server.bind.clone(),
        });
    }
    let gateway = Gateway {
        origin: key.clone(),
        selector: spec.selector.clone(),
        servers,
    };
    (gateway, problems)
}

/// What a server on `port` does, or `None` (reported) when translation cannot serve it.
fn kind(
    port: &api::Port,
    tls: Option<&api::ServerTlsSettings>,
    field: &str,
    report: &mut impl FnMut(String, String),
) -> Option<ServerKind> {
    let protocol = Protocol::parse(&port.protocol);
    // Istio's default mode is PASSTHROUGH: settings without a mode pass TLS through.
    let mode = tls.map(|t| t.mode.unwrap_or_default());
    match (protocol.map(Protocol::class), protocol, mode) {
        (Some(ProtocolClass::Http), _, _) => return Some(ServerKind::Http),
        (Some(ProtocolClass::Tls), _, Some(ServerTlsMode::Passthrough)) => {
            return Some(ServerKind::Passthrough);
        }
        (Some(ProtocolClass::Tls), _, Some(ServerTlsMode::AutoPassthrough)) => {
            return Some(ServerKind::AutoPassthrough);
        }
        (Some(ProtocolClass::Tls), Some(Protocol::Https), _) => {
            return termination::terminate(tls, field, report)
                .map(|t| ServerKind::Https(Box::new(t)));
        }
        // As istiod: a TLS server that terminates forwards what it decrypted by `tcp` routes.
        (Some(ProtocolClass::Tls), Some(Protocol::Tls), Some(_)) => {
            return termination::terminate(tls, field, report)
                .map(|t| ServerKind::TerminatedTcp(Box::new(t)));
        }
        // A TLS server without settings passes TLS through, as in Istio.
        (Some(ProtocolClass::Tls), _, None) => return Some(ServerKind::Passthrough),
        (Some(ProtocolClass::Opaque), Some(p), _) if p != Protocol::Udp => {
            return Some(ServerKind::Tcp);
        }
        _ => {}
    }
    report(
        format!("{field}.port.protocol"),
        format!(
            "{} servers are not served (HTTP, HTTP2, GRPC, HTTPS, TLS and TCP are); this server \
             is not served",
            port.protocol
        ),
    );
    None
}

/// Whether `gateways`, as written in a VirtualService of `namespace`, name the Gateway
/// (namespace, name).
pub fn names(gateways: &[String], namespace: &str, gateway: (&str, &str)) -> bool {
    gateways.iter().any(|g| {
        referenced(g, namespace).is_some_and(|(ns, name)| ns == gateway.0 && name == gateway.1)
    })
}

/// The Gateway a VirtualService of `namespace` names with `reference` (`name`,
/// `namespace/name`, or Istio's older `name.namespace[.svc.cluster.local]`); `None` for the
/// reserved `mesh`.
pub fn referenced(reference: &str, namespace: &str) -> Option<(String, String)> {
    if reference == "mesh" {
        return None;
    }
    Some(match reference.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => match reference.split_once('.') {
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(namespace);
                (ns.to_string(), name.to_string())
            }
            None => (namespace.to_string(), reference.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_crds::IstioObject;

    fn read(yaml: &str) -> (Gateway, Vec<Problem>) {
        let document = capstan_crds::parse_single("gw.yaml", yaml).expect("valid");
        let IstioObject::Gateway(gw) = &document.object else {
            panic!("not a Gateway");
        };
        gateway(&document.object.key(), &gw.spec)
    }

    #[test]
    fn http_and_https_servers_are_read_with_their_host_namespaces() {
        let (gw, problems) = read(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["./shop.example.com", "team/api.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
"#,
        );
        assert_eq!(problems, vec![]);
        assert_eq!(gw.selector["istio"], "ingressgateway");
        assert_eq!(gw.servers.len(), 2);
        assert!(gw.servers[0].https_redirect);
        assert_eq!(gw.servers[0].kind, ServerKind::Http);
        assert_eq!(
            gw.servers[1].hosts,
            vec![
                HostPattern {
                    namespace: Some("edge".into()),
                    host: "shop.example.com".into()
                },
                HostPattern {
                    namespace: Some("team".into()),
                    host: "api.example.com".into()
                },
            ]
        );
        match &gw.servers[1].kind {
            ServerKind::Https(t) => {
                assert_eq!(
                    t.certificate,
                    ServerCertificate::Files(vec![CertificateFiles {
                        certificate: "/etc/certs/cert.pem".into(),
                        private_key: "/etc/certs/key.pem".into()
                    }])
                );
                assert_eq!(t.client_ca, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn servers_not_served_are_named_and_left_out() {
        let (gw, problems) = read(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 53, name: udp-dns, protocol: UDP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialName: shop-cert, caCertCredentialName: shop-ca}
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9443, name: tls-passthrough, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    hosts: ["*"]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
"#,
        );
        let kinds: Vec<(u32, &ServerKind)> = gw.servers.iter().map(|s| (s.port, &s.kind)).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert_eq!(kinds[0].0, 8443, "caCertCredentialName is served");
        assert_eq!(
            kinds[1..4],
            [
                (8080, &ServerKind::Http),
                (9443, &ServerKind::Passthrough),
                (5432, &ServerKind::Tcp)
            ]
        );
        let ServerKind::TerminatedTcp(tls) = kinds[4].1 else {
            panic!("a TLS server with SIMPLE terminates: {:?}", kinds[4]);
        };
        assert_eq!(
            tls.certificate,
            ServerCertificate::Files(vec![CertificateFiles {
                certificate: "/c.pem".into(),
                private_key: "/k.pem".into()
            }])
        );
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.servers[0].port.protocol"]);
        assert!(
            problems[0].message.contains("UDP servers are not served"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn credential_names_are_served_from_secrets_with_the_ca_of_the_first() {
        let (gw, problems) = read(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: ["api.example.com"]
    tls: {mode: MUTUAL, credentialName: api-cert, subjectAltNames: [client.example.com]}
  - port: {number: 9443, name: https-dual, protocol: HTTPS}
    hosts: ["dual.example.com"]
    tls: {mode: MUTUAL, credentialNames: [dual-rsa, dual-ecdsa]}
"#,
        );
        assert_eq!(problems, vec![]);
        let terminations: Vec<&TlsTermination> = gw
            .servers
            .iter()
            .map(|s| match &s.kind {
                ServerKind::Https(t) => &**t,
                other => panic!("{other:?}"),
            })
            .collect();
        let credential = |name: &str, field: &str| Credential {
            name: name.into(),
            field: field.into(),
        };
        assert_eq!(
            terminations[0].certificate,
            ServerCertificate::Secrets(vec![credential(
                "shop-cert",
                "spec.servers[0].tls.credentialName"
            )])
        );
        assert_eq!(terminations[0].client_ca, None);
        assert_eq!(
            terminations[1].client_ca,
            Some(ClientCa::Secret("api-cert".into()))
        );
        assert_eq!(terminations[1].subject_alt_names, ["client.example.com"]);
        assert_eq!(
            terminations[2].certificate,
            ServerCertificate::Secrets(vec![
                credential("dual-rsa", "spec.servers[2].tls.credentialNames[0]"),
                credential("dual-ecdsa", "spec.servers[2].tls.credentialNames[1]"),
            ])
        );
        assert_eq!(
            terminations[2].client_ca,
            Some(ClientCa::Secret("dual-rsa".into()))
        );
    }

    #[test]
    fn gateway_references_resolve_in_the_virtual_service_namespace() {
        assert_eq!(referenced("mesh", "shop"), None);
        assert_eq!(
            referenced("ingress", "shop"),
            Some(("shop".into(), "ingress".into()))
        );
        assert_eq!(
            referenced("istio-system/ingress", "shop"),
            Some(("istio-system".into(), "ingress".into()))
        );
        assert_eq!(
            referenced("ingress.istio-system.svc.cluster.local", "shop"),
            Some(("istio-system".into(), "ingress".into()))
        );
    }
}

#[cfg(test)]
mod tls_tests;
