//! The TLS modes beyond SIMPLE and MUTUAL: OPTIONAL_MUTUAL, ISTIO_MUTUAL, AUTO_PASSTHROUGH.

use capstan_crds::IstioObject;
use capstan_crds::networking::gateway::TlsProtocol;

use super::*;

fn read(servers: &str) -> (Gateway, Vec<Problem>) {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
    );
    let document = capstan_crds::parse_single("gw.yaml", &yaml).expect("valid");
    let invalid = document.validate();
    assert!(invalid.is_empty(), "invalid test Gateway: {invalid:?}");
    let IstioObject::Gateway(gw) = &document.object else {
        panic!("not a Gateway");
    };
    gateway(&document.object.key(), &gw.spec)
}

fn termination(server: &Server) -> &TlsTermination {
    match &server.kind {
        ServerKind::Https(t) => t,
        other => panic!("not terminated: {other:?}"),
    }
}

fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

#[test]
fn optional_mutual_verifies_like_mutual_but_admits_clients_without_a_certificate() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: OPTIONAL_MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [buyer]}
  - port: {number: 8443, name: https-secret, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: shop-cert}
  - port: {number: 9443, name: https-mutual, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
"#,
    );
    assert_eq!(problems, vec![]);
    let files = termination(&gw.servers[0]);
    assert_eq!(files.client_ca, Some(ClientCa::File("/ca.pem".into())));
    assert!(files.client_certificate_optional);
    assert_eq!(files.subject_alt_names, ["buyer"]);
    let secret = termination(&gw.servers[1]);
    assert_eq!(secret.client_ca, Some(ClientCa::Secret("shop-cert".into())));
    assert!(secret.client_certificate_optional);
    let mutual = termination(&gw.servers[2]);
    assert!(!mutual.client_certificate_optional, "MUTUAL requires one");
}

#[test]
fn optional_mutual_without_a_ca_or_with_a_ca_credential_is_not_served() {
    // Validation demands a CA with files; only an unvalidated object gets this far.
    let tls = capstan_crds::networking::gateway::ServerTlsSettings {
        mode: Some(ServerTlsMode::OptionalMutual),
        server_certificate: "/c.pem".into(),
        private_key: "/k.pem".into(),
        ..Default::default()
    };
    let mut problems = Vec::new();
    let mut report = |field: String, message: String| problems.push((field, message));
    assert_eq!(
        termination::terminate(Some(&tls), "spec.servers[0]", &mut report),
        None
    );
    assert_eq!(problems[0].0, "spec.servers[0].tls.caCertificates");
    assert!(
        problems[0]
            .1
            .starts_with("OPTIONAL_MUTUAL needs caCertificates"),
        "{}",
        problems[0].1
    );

    // The client CA from the Secret `caCertCredentialName` names, with a credential or files.
    for certificate in [
        "credentialName: shop-cert",
        "serverCertificate: /c.pem, privateKey: /k.pem",
    ] {
        let (gw, problems) = read(&format!(
            r#"  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: OPTIONAL_MUTUAL, {certificate}, caCertCredentialName: shop-ca}}
"#
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let ServerKind::Https(tls) = &gw.servers[0].kind else {
            panic!("{:?}", gw.servers);
        };
        assert_eq!(
            tls.client_ca,
            Some(ClientCa::NamedSecret("shop-ca".into())),
            "{certificate}"
        );
    }
}

#[test]
fn istio_mutual_takes_the_workload_certificate_and_the_mesh_roots() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/buyer"]}
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(
        termination(&gw.servers[0]),
        &TlsTermination {
            certificate: ServerCertificate::Workload,
            client_ca: Some(ClientCa::MeshRoots),
            client_certificate_optional: false,
            subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/buyer".into()],
            client_spki: Vec::new(),
            client_hash: Vec::new(),
            client_crl: None,
            params: TlsParams::default(),
        }
    );
}

#[test]
fn versions_cipher_suites_and_pins_are_applied_and_unknown_suites_left_out() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls:
      mode: MUTUAL
      credentialName: shop-cert
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384, TLS_BOGUS, ECDHE-RSA-AES256-GCM-SHA384, AES128-SHA]
      verifyCertificateSpki: [spki-pin]
      verifyCertificateHash: ["AB:CD"]
  - port: {number: 8443, name: https-simple, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLS_AUTO, verifyCertificateHash: ["AB:CD"], subjectAltNames: [client.example.com], caCertCredentialName: shop-ca}
"#,
    );
    assert_eq!(
        fields(&problems),
        [
            "spec.servers[0].tls.cipherSuites[1]",
            "spec.servers[1].tls.verifyCertificateHash",
            "spec.servers[1].tls.subjectAltNames",
            "spec.servers[1].tls.caCertCredentialName"
        ]
    );
    assert!(
        problems[0]
            .message
            .contains("TLS_BOGUS is not a cipher suite Envoy knows")
    );
    assert!(problems[1].message.contains("ignored with SIMPLE"));
    let mutual = termination(&gw.servers[0]);
    assert_eq!(
        mutual.params,
        TlsParams {
            min: Some(TlsProtocol::TlsV1_2),
            max: Some(TlsProtocol::TlsV1_3),
            // Repeats dropped, order kept.
            cipher_suites: vec!["ECDHE-RSA-AES256-GCM-SHA384".into(), "AES128-SHA".into()],
        }
    );
    assert_eq!(mutual.client_spki, ["spki-pin"]);
    assert_eq!(mutual.client_hash, ["AB:CD"]);
    let simple = termination(&gw.servers[1]);
    assert_eq!(
        simple.params,
        TlsParams::default(),
        "TLS_AUTO is Envoy's default"
    );
    assert!(simple.client_hash.is_empty());
}

#[test]
fn istio_mutual_names_what_istiod_ignores_and_what_is_not_applied() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256], caCrl: /crl.pem}
"#,
    );
    assert_eq!(gw.servers.len(), 1, "served all the same");
    assert_eq!(
        fields(&problems),
        [
            "spec.servers[0].tls.minProtocolVersion",
            "spec.servers[0].tls.cipherSuites",
            "spec.servers[0].tls.caCrl"
        ]
    );
    assert!(problems[0].message.contains("ignored with ISTIO_MUTUAL"));
    assert!(problems[2].message.contains("not applied yet"));
}

#[test]
fn auto_passthrough_is_served_on_tls_and_https_ports() {
    let (gw, problems) = read(
        r#"  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 16443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: AUTO_PASSTHROUGH}
"#,
    );
    assert_eq!(problems, vec![]);
    let kinds: Vec<&ServerKind> = gw.servers.iter().map(|s| &s.kind).collect();
    assert_eq!(
        kinds,
        [&ServerKind::AutoPassthrough, &ServerKind::AutoPassthrough]
    );
    assert_eq!(gw.servers[0].hosts[0].host, "*.local");
}

#[test]
fn tls_servers_terminating_tls_forward_by_tcp_routes() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 444, name: tls-mutual, protocol: TLS}
    hosts: ["db.example.com"]
    tls: {mode: MUTUAL, credentialName: db-cert}
"#,
    );
    assert_eq!(problems, vec![]);
    let terminations: Vec<&TlsTermination> = gw
        .servers
        .iter()
        .map(|s| match &s.kind {
            ServerKind::TerminatedTcp(t) => &**t,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(terminations[0].certificate, ServerCertificate::Workload);
    assert_eq!(terminations[0].client_ca, Some(ClientCa::MeshRoots));
    assert_eq!(
        terminations[1].client_ca,
        Some(ClientCa::Secret("db-cert".into()))
    );
    assert_eq!(gw.servers[1].kind.family(), "TLS");
}

#[test]
fn a_crl_file_goes_with_client_ca_files() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, caCrl: /crl.pem}
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(
        termination(&gw.servers[0]).client_crl.as_deref(),
        Some("/crl.pem")
    );
}

#[test]
fn tls_certificates_are_each_served() {
    let (gw, problems) = read(
        r#"  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls:
      mode: SIMPLE
      tlsCertificates:
      - {serverCertificate: /rsa.pem, privateKey: /rsa-key.pem}
      - {serverCertificate: /ec.pem, privateKey: /ec-key.pem, caCertificates: /ca.pem}
"#,
    );
    assert_eq!(
        fields(&problems),
        ["spec.servers[0].tls.tlsCertificates[1].caCertificates"]
    );
    let pair = |certificate: &str, private_key: &str| CertificateFiles {
        certificate: certificate.into(),
        private_key: private_key.into(),
    };
    assert_eq!(
        termination(&gw.servers[0]).certificate,
        ServerCertificate::Files(vec![
            pair("/rsa.pem", "/rsa-key.pem"),
            pair("/ec.pem", "/ec-key.pem")
        ])
    );
}
