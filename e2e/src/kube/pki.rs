//! Credentials for the loopback cluster, generated in-process with rcgen: a CA, the apiserver's
//! serving certificate, an admin client certificate, the service-account signing key, a static
//! token file, and kubeconfigs.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Username the capstan token authenticates as: exactly what the ServiceAccount
/// istio-system/capstan is in a cluster, so RBAC bound to that ServiceAccount applies.
pub const CAPSTAN_USER: &str = "system:serviceaccount:istio-system:capstan";
const CAPSTAN_GROUPS: &str =
    "system:serviceaccounts,system:serviceaccounts:istio-system,system:authenticated";

/// Paths of the files [`write`] produced (all inside one directory).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub token_file: PathBuf,
    pub admin_token: String,
    pub capstan_token: String,
}

/// Generates everything into `dir` (which must exist).
pub fn write(dir: &Path) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "capstan-e2e-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    // The names a client in or out of the "cluster" may use for the apiserver.
    let serving_names = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(
        serving_names
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // O=system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC policy.
    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin
        .distinguished_name
        .push(DnType::CommonName, "capstan-e2e-admin");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    // ECDSA P-256: the apiserver signs service-account tokens with ES256 from it.
    let sa_key = KeyPair::generate()?;

    let admin_token = random_token()?;
    let capstan_token = random_token()?;
    // token,user,uid,"groups" — the static token file format of --token-auth-file.
    let tokens = format!(
        "{admin_token},capstan-e2e-admin,uid-admin,\"system:masters\"\n\
         {capstan_token},{CAPSTAN_USER},uid-capstan,\"{CAPSTAN_GROUPS}\"\n"
    );

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        token_file: dir.join("tokens.csv"),
        admin_token,
        capstan_token,
    };
    for (path, contents) in [
        (&pki.ca_cert, ca_cert.pem()),
        (&pki.serving_cert, serving_cert.pem()),
        (&pki.serving_key, serving_key.serialize_pem()),
        (&pki.admin_cert, admin_cert.pem()),
        (&pki.admin_key, admin_key.serialize_pem()),
        (&pki.sa_key, sa_key.serialize_pem()),
        (&pki.sa_pub, sa_key.public_key_pem()),
        (&pki.token_file, tokens),
    ] {
        write_private(path, &contents)?;
    }
    Ok(pki)
}

/// A kubeconfig for `server` trusting `ca_cert`, with `user` (indented YAML under `user:`).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &str,
) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan-e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
{user}
contexts:
- name: capstan-e2e
  context:
    cluster: capstan-e2e
    user: user
    namespace: default
current-context: capstan-e2e
",
        ca = ca_cert.display(),
    );
    write_private(path, &text)
}

/// The `user:` body of a kubeconfig authenticating with a client certificate.
pub fn cert_user(cert: &Path, key: &Path) -> String {
    format!(
        "    client-certificate: {}\n    client-key: {}",
        cert.display(),
        key.display()
    )
}

/// The `user:` body of a kubeconfig authenticating with a bearer token.
pub fn token_user(token: &str) -> String {
    format!("    token: {token}")
}

/// Writes a file readable by the owner only: it holds keys or tokens, and /tmp is shared.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// 32 hex characters from /dev/urandom: a static token nobody else on the machine can guess.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_credentials_and_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write(dir.path()).unwrap();
        let tokens = std::fs::read_to_string(&pki.token_file).unwrap();
        let capstan_line = tokens.lines().nth(1).unwrap();
        assert_eq!(
            capstan_line,
            format!(
                "{},system:serviceaccount:istio-system:capstan,uid-capstan,\
                 \"system:serviceaccounts,system:serviceaccounts:istio-system,system:authenticated\"",
                pki.capstan_token
            )
        );
        assert_ne!(pki.admin_token, pki.capstan_token);
        // That the apiserver maps the admin certificate to system:masters is checked end to end
        // (tests/kube_harness.rs): the admin creates CRDs, which only cluster-admin may.
        assert!(
            std::fs::read_to_string(&pki.admin_cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let key_mode = std::fs::metadata(&pki.sa_key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
    }
}
