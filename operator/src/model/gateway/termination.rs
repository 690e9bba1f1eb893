//! The TLS an HTTPS server terminates: its certificate, and which client certificates it
//! asks for, per `tls.mode` as istiod builds them.

use capstan_crds::networking::gateway::{self as api, ServerTlsMode, TlsProtocol};

use super::{CertificateFiles, ClientCa, Credential, ServerCertificate, TlsParams, TlsTermination};

/// Istio's name of a mode, for problems.
fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

/// The termination of an HTTPS server, or `None` (reported) when it asks for what is not
/// served yet.
pub(crate) fn terminate(
    tls: Option<&api::ServerTlsSettings>,
    field: &str,
    report: &mut impl FnMut(String, String),
) -> Option<TlsTermination> {
    let Some(tls) = tls else {
        report(
            format!("{field}.tls"),
            "an HTTPS server needs tls settings; this server is not served".into(),
        );
        return None;
    };
    let mode = tls.mode.unwrap_or_default();
    match mode {
        ServerTlsMode::IstioMutual => return Some(istio_mutual(tls, field, report)),
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {}
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => {
            report(
                format!("{field}.tls.mode"),
                format!(
                    "{} does not terminate TLS; this server is not served",
                    mode_name(mode)
                ),
            );
            return None;
        }
    }
    let name = mode_name(mode);
    let mut unapplied = |setting: &str, set: bool| {
        if set {
            report(
                format!("{field}.tls.{setting}"),
                format!("{setting} is not applied yet; the rest of the TLS settings are"),
            );
        }
    };
    for (k, pair) in tls.tls_certificates.iter().enumerate() {
        unapplied(
            &format!("tlsCertificates[{k}].caCertificates"),
            !pair.ca_certificates.is_empty(),
        );
    }
    let verifies = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    if !verifies {
        // As istiod: without client certificates there is nothing to pin.
        for (setting, set) in [
            (
                "verifyCertificateSpki",
                !tls.verify_certificate_spki.is_empty(),
            ),
            (
                "verifyCertificateHash",
                !tls.verify_certificate_hash.is_empty(),
            ),
            ("subjectAltNames", !tls.subject_alt_names.is_empty()),
            ("caCertificates", !tls.ca_certificates.is_empty()),
            (
                "caCertCredentialName",
                !tls.ca_cert_credential_name.is_empty(),
            ),
        ] {
            if set {
                report(
                    format!("{field}.tls.{setting}"),
                    format!("{setting} is ignored with {name}: no client certificate is asked for"),
                );
            }
        }
    }
    let params = params(tls, field, report);
    let credentials: Vec<Credential> = if tls.credential_name.is_empty() {
        let field = |k| format!("{field}.tls.credentialNames[{k}]");
        (tls.credential_names.iter().enumerate())
            .map(|(k, name)| Credential {
                name: name.clone(),
                field: field(k),
            })
            .collect()
    } else {
        vec![Credential {
            name: tls.credential_name.clone(),
            field: format!("{field}.tls.credentialName"),
        }]
    };
    // `caCertCredentialName` names the client CA's Secret outright, whatever the
    // certificate's source.
    let named_ca = (verifies && !tls.ca_cert_credential_name.is_empty())
        .then(|| ClientCa::NamedSecret(tls.ca_cert_credential_name.clone()));
    // Validation allows one source of certificates: a credential, or files.
    let (certificate, client_ca) = match credentials.first() {
        Some(first) => {
            let ca = verifies.then(|| ClientCa::Secret(first.name.clone()));
            (ServerCertificate::Secrets(credentials), named_ca.or(ca))
        }
        None => {
            let pairs = certificate_files(tls);
            if pairs.is_empty() {
                report(
                    format!("{field}.tls.serverCertificate"),
                    format!(
                        "{name} needs credentialName, serverCertificate and privateKey, or \
                         tlsCertificates; this server is not served"
                    ),
                );
                return None;
            }
            if verifies && tls.ca_certificates.is_empty() && named_ca.is_none() {
                report(
                    format!("{field}.tls.caCertificates"),
                    format!(
                        "{name} needs caCertificates to verify clients; this server is not served"
                    ),
                );
                return None;
            }
            let files = ServerCertificate::Files(pairs);
            let ca = verifies.then(|| ClientCa::File(tls.ca_certificates.clone()));
            (files, named_ca.or(ca))
        }
    };
    // Validation allows a CRL file with client CA files only (a credential's CRL would be
    // in its Secret); otherwise it has nothing to apply to.
    let client_crl = match &client_ca {
        _ if tls.ca_crl.is_empty() => None,
        Some(ClientCa::File(_)) => Some(tls.ca_crl.clone()),
        _ => {
            report(
                format!("{field}.tls.caCrl"),
                "caCrl applies with caCertificates only; not applied (with a credential, the \
                 CRL is the ca.crl entry of its CA's Secret)"
                    .into(),
            );
            None
        }
    };
    // What is checked of client certificates; nothing when none is asked for.
    let of_clients = |checks: &Vec<String>| if verifies { checks.clone() } else { Vec::new() };
    Some(TlsTermination {
        certificate,
        client_ca,
        // Envoy asks every client for a certificate and checks one that is sent; only the
        // refusal of a client sending none is left out.
        client_certificate_optional: mode == ServerTlsMode::OptionalMutual,
        subject_alt_names: of_clients(&tls.subject_alt_names),
        client_spki: of_clients(&tls.verify_certificate_spki),
        client_hash: of_clients(&tls.verify_certificate_hash),
        client_crl,
        params,
    })
}

/// The certificate files of a server: `tlsCertificates`, or `serverCertificate` and
/// `privateKey`; none when a pair is incomplete (validation refuses that).
fn certificate_files(tls: &api::ServerTlsSettings) -> Vec<CertificateFiles> {
    let pairs: Vec<(&String, &String)> = if tls.tls_certificates.is_empty() {
        vec![(&tls.server_certificate, &tls.private_key)]
    } else {
        (tls.tls_certificates.iter())
            .map(|c| (&c.server_certificate, &c.private_key))
            .collect()
    };
    if pairs.iter().any(|(c, k)| c.is_empty() || k.is_empty()) {
        return Vec::new();
    }
    pairs
        .into_iter()
        .map(|(certificate, private_key)| CertificateFiles {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
        })
        .collect()
}

/// The cipher suites Envoy's TLS library knows by these names (each checked with `envoy
/// --mode validate`): Envoy rejects a listener naming any other, so an unknown name is left
/// out and reported rather than passed on (istiod filters them likewise).
const KNOWN_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "PSK-AES128-CBC-SHA",
    "AES256-SHA",
    "PSK-AES256-CBC-SHA",
    "DES-CBC3-SHA",
];

/// The TLS versions and cipher suites of a server, as istiod sets them: `TLS_AUTO` (or
/// nothing) leaves Envoy's default; cipher suites it does not know, and repeats, are left
/// out and reported.
fn params(
    tls: &api::ServerTlsSettings,
    field: &str,
    report: &mut impl FnMut(String, String),
) -> TlsParams {
    let version = |v: Option<TlsProtocol>| v.filter(|v| *v != TlsProtocol::TlsAuto);
    let mut cipher_suites: Vec<String> = Vec::new();
    for (i, suite) in tls.cipher_suites.iter().enumerate() {
        let suite = suite.trim();
        if !KNOWN_CIPHER_SUITES.contains(&suite) {
            report(
                format!("{field}.tls.cipherSuites[{i}]"),
                format!("{suite} is not a cipher suite Envoy knows; it is left out"),
            );
        } else if !cipher_suites.iter().any(|s| s == suite) {
            cipher_suites.push(suite.to_string());
        }
    }
    TlsParams {
        min: version(tls.min_protocol_version),
        max: version(tls.max_protocol_version),
        cipher_suites,
    }
}

/// `ISTIO_MUTUAL`: the gateway's own workload certificate, and clients must present one the
/// mesh's roots certify (both from the proxy's agent, as istiod has it). Validation forbids
/// certificates and credentials with this mode.
fn istio_mutual(
    tls: &api::ServerTlsSettings,
    field: &str,
    report: &mut impl FnMut(String, String),
) -> TlsTermination {
    // istiod applies these to SIMPLE, MUTUAL and OPTIONAL_MUTUAL servers only.
    let ignored = [
        ("minProtocolVersion", tls.min_protocol_version.is_some()),
        ("maxProtocolVersion", tls.max_protocol_version.is_some()),
        ("cipherSuites", !tls.cipher_suites.is_empty()),
        (
            "verifyCertificateSpki",
            !tls.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !tls.verify_certificate_hash.is_empty(),
        ),
        (
            "caCertCredentialName",
            !tls.ca_cert_credential_name.is_empty(),
        ),
    ];
    for (setting, set) in ignored {
        if set {
            report(
                format!("{field}.tls.{setting}"),
                format!("{setting} is ignored with ISTIO_MUTUAL, as istiod ignores it"),
            );
        }
    }
    if !tls.ca_crl.is_empty() {
        report(
            format!("{field}.tls.caCrl"),
            "caCrl is not applied yet; the rest of the TLS settings are".into(),
        );
    }
    TlsTermination {
        certificate: ServerCertificate::Workload,
        client_ca: Some(ClientCa::MeshRoots),
        client_certificate_optional: false,
        subject_alt_names: tls.subject_alt_names.clone(),
        client_spki: Vec::new(),
        client_hash: Vec::new(),
        client_crl: None,
        params: TlsParams::default(),
    }
}
