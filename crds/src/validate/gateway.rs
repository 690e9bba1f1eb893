//! Gateway validation, and the server TLS settings Gateway and Sidecar share.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Errors;
use super::rules::{self, ProtocolClass};
use crate::networking::GatewaySpec;
use crate::networking::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};

pub(crate) fn validate(errors: &mut Errors, meta: &ObjectMeta, spec: &GatewaySpec) {
    // Gateways are referred to as `namespace/name`, so a name must not contain dots.
    if let Some(name) = meta
        .name
        .as_deref()
        .filter(|n| !n.is_empty() && n.contains('.'))
    {
        errors.add(
            "metadata.name",
            format!("gateway name `{name}` must be a DNS-1123 label (no dots)"),
        );
    }
    if spec.servers.is_empty() {
        errors.add("spec.servers", "at least one server is required");
    }
    let mut port_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        self::server(errors, &field, server);
        if let Some(port) = server.port.as_ref().filter(|p| !p.name.is_empty())
            && let Some(first) = port_names.insert(&port.name, i)
        {
            errors.add(
                format!("{field}.port.name"),
                format!(
                    "duplicate port name `{}` (also spec.servers[{first}]); port names must be unique within a gateway",
                    port.name
                ),
            );
        }
    }
    errors.check_all("spec.selector", rules::labels(&spec.selector));
}

fn server(errors: &mut Errors, field: &str, server: &Server) {
    if server.hosts.is_empty() {
        errors.add(format!("{field}.hosts"), "at least one host is required");
    }
    for (j, host) in server.hosts.iter().enumerate() {
        errors.check(
            format!("{field}.hosts[{j}]"),
            rules::namespaced_host(host, true),
        );
    }
    let unix_bind = server.bind.strip_prefix("unix://");
    match unix_bind {
        Some(path) => errors.check(format!("{field}.bind"), rules::unix_address(path)),
        None if !server.bind.is_empty() => {
            errors.check(format!("{field}.bind"), rules::ip(&server.bind));
        }
        None => {}
    }
    let Some(port) = &server.port else {
        errors.add(format!("{field}.port"), "port is required");
        if let Some(tls) = &server.tls {
            server_tls(errors, &format!("{field}.tls"), tls);
        }
        return;
    };
    let pf = format!("{field}.port");
    if unix_bind.is_some() {
        if port.number != 0 {
            errors.add(
                format!("{pf}.number"),
                "port number must be 0 when binding to a unix socket",
            );
        }
    } else {
        errors.check(format!("{pf}.number"), rules::port(port.number));
    }
    if port.protocol.is_empty() {
        errors.add(format!("{pf}.protocol"), "protocol is required");
    } else {
        errors.check(format!("{pf}.protocol"), rules::protocol(&port.protocol));
    }
    if port.name.is_empty() {
        errors.add(format!("{pf}.name"), "port name is required");
    }
    if port.target_port != 0 {
        errors.add(
            format!("{pf}.targetPort"),
            "targetPort has no effect on gateways; remove it",
        );
    }

    let class = rules::protocol_class(&port.protocol);
    match (&server.tls, class) {
        (None, Some(ProtocolClass::Tls)) => errors.add(
            format!("{field}.tls"),
            format!(
                "a server with protocol {} needs TLS settings (`tls`)",
                port.protocol
            ),
        ),
        (Some(tls), Some(ProtocolClass::Http)) => {
            let passthrough = matches!(
                tls.mode.unwrap_or_default(),
                ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            );
            let has_certs = !tls.server_certificate.is_empty()
                || !tls.private_key.is_empty()
                || !tls.ca_certificates.is_empty();
            if !passthrough || has_certs {
                errors.add(
                    format!("{field}.tls"),
                    "a plain-text HTTP server can only have `tls.httpsRedirect`; use protocol HTTPS to terminate TLS",
                );
            }
        }
        (Some(_), Some(ProtocolClass::Opaque)) => errors.add(
            format!("{field}.tls"),
            format!(
                "TLS settings are not allowed on a {} port (only HTTPS and TLS, or httpsRedirect on HTTP)",
                port.protocol
            ),
        ),
        _ => {}
    }
    if let Some(tls) = &server.tls {
        server_tls(errors, &format!("{field}.tls"), tls);
    }
}

/// Checks server-side TLS settings (Gateway servers, Sidecar ingress listeners).
pub(crate) fn server_tls(errors: &mut Errors, field: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    if mode == ServerTlsMode::IstioMutual {
        let forbidden = [
            ("serverCertificate", !tls.server_certificate.is_empty()),
            ("privateKey", !tls.private_key.is_empty()),
            ("caCertificates", !tls.ca_certificates.is_empty()),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", !tls.credential_name.is_empty()),
            ("credentialNames", !tls.credential_names.is_empty()),
        ];
        for (name, set) in forbidden {
            if set {
                errors.add(
                    format!("{field}.{name}"),
                    format!(
                        "`{name}` cannot be set with mode ISTIO_MUTUAL (mesh certificates are used)"
                    ),
                );
            }
        }
        return;
    }

    errors.check(
        field,
        rules::one_of(
            &[
                ("credentialName", !tls.credential_name.is_empty()),
                ("credentialNames", !tls.credential_names.is_empty()),
                (
                    "serverCertificate/privateKey",
                    !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
                ),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ],
            false,
        ),
    );
    for (k, name) in tls.credential_names.iter().enumerate() {
        if name.is_empty() {
            errors.add(format!("{field}.credentialNames[{k}]"), "must not be empty");
        }
    }

    let terminates = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let from_secret = !tls.credential_name.is_empty() || !tls.credential_names.is_empty();
    if terminates && !from_secret {
        let mode_name = if mode == ServerTlsMode::Simple {
            "SIMPLE"
        } else {
            "MUTUAL"
        };
        if mode != ServerTlsMode::Simple
            && tls.ca_certificates.is_empty()
            && tls.ca_cert_credential_name.is_empty()
        {
            errors.add(
                format!("{field}.caCertificates"),
                "mode MUTUAL/OPTIONAL_MUTUAL requires a client CA bundle (`caCertificates`, or a `credentialName` holding one)",
            );
        }
        let files: Vec<(String, &str, &str)> = if tls.tls_certificates.is_empty() {
            vec![(
                field.to_owned(),
                tls.server_certificate.as_str(),
                tls.private_key.as_str(),
            )]
        } else {
            tls.tls_certificates
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    (
                        format!("{field}.tlsCertificates[{k}]"),
                        c.server_certificate.as_str(),
                        c.private_key.as_str(),
                    )
                })
                .collect()
        };
        for (cf, certificate, key) in files {
            if certificate.is_empty() {
                errors.add(
                    format!("{cf}.serverCertificate"),
                    format!("{mode_name} TLS requires a server certificate (`serverCertificate` or `credentialName`)"),
                );
            }
            if key.is_empty() {
                errors.add(
                    format!("{cf}.privateKey"),
                    format!(
                        "{mode_name} TLS requires a private key (`privateKey` or `credentialName`)"
                    ),
                );
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            errors.add(
                format!("{field}.caCrl"),
                "`caCrl` cannot be combined with `credentialName`; put the CRL in the secret",
            );
        }
        if mode == ServerTlsMode::Simple {
            errors.add(
                format!("{field}.caCrl"),
                "`caCrl` is not supported with mode SIMPLE (no client certificates are checked)",
            );
        }
    }
    let version = |v: Option<TlsProtocol>| v.filter(|v| *v != TlsProtocol::TlsAuto);
    if let (Some(min), Some(max)) = (
        version(tls.min_protocol_version),
        version(tls.max_protocol_version),
    ) && min > max
    {
        errors.add(
            format!("{field}.minProtocolVersion"),
            "minProtocolVersion is greater than maxProtocolVersion",
        );
    }
}
