//! Gateway certificates from Secrets (`tls.credentialName`), as istiod serves them: the
//! listener's TLS context names SDS secrets fetched over ADS, `kubernetes://<name>` for the
//! certificate and key and `kubernetes://<name>-cacert` for a MUTUAL server's client CA, and
//! capstan serves those Secret resources to the same router proxies as the listener. A
//! Secret change then changes only the Secret resource; Envoy swaps the certificate without
//! touching the listener.
//!
//! Secrets are looked up in the Gateway's namespace. istiod looks in the gateway proxy's own
//! namespace, but translation builds per selector, not per proxy, so the proxy's namespace is
//! not known here; the Gateway's is, and with it a missing or malformed Secret is found (and
//! reported, and the server left out) before anything is served. Istio's own advice is to
//! keep a Gateway in its gateway workload's namespace, where both are the same.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate,
};

use crate::index::NsName;
use crate::model::Mesh;
use crate::model::gateway::{ClientCa, Gateway, Server, ServerCertificate};
use crate::model::secret::{CertificateAndKey, SecretBytes, SecretError, TlsSecret};
use crate::translate::ads_config_source;

/// istiod's SDS name of a credential's certificate and key.
pub fn certificate_sds_name(credential: &str) -> String {
    format!("kubernetes://{credential}")
}

/// istiod's SDS name of a credential's CA (and the Secret it is looked for first).
pub fn ca_sds_name(credential: &str) -> String {
    format!("kubernetes://{credential}{CA_SUFFIX}")
}

const CA_SUFFIX: &str = "-cacert";

/// An SDS reference to `name`, fetched over the ADS stream.
pub fn sds_config(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_config_source()),
    }
}

/// A Secret resource for one server, and the Secret it was read from.
pub struct Served {
    pub from: NsName,
    pub secret: Secret,
}

/// Where Secrets are looked up: the mesh, or (`capstan validate`) the files checked.
pub trait SecretLookup {
    fn secret(&self, id: &NsName) -> Option<&Result<TlsSecret, SecretError>>;
    /// The namespaces holding a Secret named `name`.
    fn namespaces_with(&self, name: &str) -> Vec<String>;
}

impl SecretLookup for Mesh {
    fn secret(&self, id: &NsName) -> Option<&Result<TlsSecret, SecretError>> {
        Mesh::secret(self, id)
    }

    fn namespaces_with(&self, name: &str) -> Vec<String> {
        self.namespaces_with_secret(name).map(Into::into).collect()
    }
}

impl SecretLookup for BTreeMap<NsName, Result<TlsSecret, SecretError>> {
    fn secret(&self, id: &NsName) -> Option<&Result<TlsSecret, SecretError>> {
        self.get(id)
    }

    fn namespaces_with(&self, name: &str) -> Vec<String> {
        self.keys()
            .filter(|id| id.name == name)
            .map(|id| id.namespace.clone())
            .collect()
    }
}

/// Why a server's credential cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("Secret {0} not found (credentialName reads a TLS Secret in the Gateway's namespace)")]
    Missing(NsName),
    #[error("Secret {0} cannot be used: {1}")]
    Unusable(NsName, SecretError),
    #[error("Secret {0} holds no certificate and key (tls.crt and tls.key, or cert and key)")]
    NoCertificate(NsName),
    #[error("Secret {0} holds no CA (ca.crt or cacert)")]
    NoCa(NsName),
    #[error(
        "MUTUAL needs a CA for client certificates: there is no Secret {separate} and Secret \
         {same} has no ca.crt or cacert"
    )]
    NoClientCa { separate: NsName, same: NsName },
}

impl CredentialError {
    /// Whether a Secret is missing (rather than unusable): where Secrets may live elsewhere
    /// (`capstan validate` sees only its files), that is a question, not a fault.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            CredentialError::Missing(_) | CredentialError::NoClientCa { .. }
        )
    }
}

/// The Secret resources the server needs, or where and why it cannot be served. Every Secret
/// looked for, found or not, is added to `consulted`: its arrival or change rebuilds the
/// gateways.
pub fn resolve(
    secrets: &impl SecretLookup,
    gateway: &Gateway,
    server: &Server,
    consulted: &mut BTreeSet<NsName>,
) -> Result<Vec<Served>, (String, CredentialError)> {
    let Some(tls) = server.kind.termination() else {
        return Ok(Vec::new());
    };
    // Files need no Secret, but a client CA from `caCertCredentialName` still does.
    let credentials: &[crate::model::gateway::Credential] = match &tls.certificate {
        ServerCertificate::Secrets(credentials) => credentials,
        ServerCertificate::Files(_) | ServerCertificate::Workload => &[],
    };
    let namespace = &gateway.origin.namespace;
    let mut served = Vec::new();
    for credential in credentials {
        let id = NsName::new(namespace.as_str(), credential.name.as_str());
        consulted.insert(id.clone());
        let pair = certificate_in(secrets, &id).map_err(|err| (credential.field.clone(), err))?;
        served.push(Served {
            from: id,
            secret: certificate_secret(&credential.name, pair),
        });
    }
    let ca_of = |consulted: &mut BTreeSet<NsName>| match &tls.client_ca {
        Some(ClientCa::Secret(name)) => {
            Some((name, client_ca(secrets, namespace, name, consulted)))
        }
        Some(ClientCa::NamedSecret(name)) => {
            Some((name, named_client_ca(secrets, namespace, name, consulted)))
        }
        _ => None,
    };
    if let Some((name, found)) = ca_of(consulted) {
        let (from, ca, crl) = found.map_err(|err| (first_field(server), err))?;
        served.push(Served {
            from,
            secret: ca_secret(name, ca, crl),
        });
    }
    Ok(served)
}

/// The certificate and key of Secret `id`, or why it has none to give.
pub fn certificate_in<'s>(
    secrets: &'s impl SecretLookup,
    id: &NsName,
) -> Result<&'s CertificateAndKey, CredentialError> {
    match secrets.secret(id) {
        None => Err(CredentialError::Missing(id.clone())),
        Some(Err(err)) => Err(CredentialError::Unusable(id.clone(), err.clone())),
        Some(Ok(secret)) => {
            (secret.certificate.as_ref()).ok_or_else(|| CredentialError::NoCertificate(id.clone()))
        }
    }
}

/// The SDS resource of credential `name`'s certificate and key.
pub fn certificate_secret(name: &str, pair: &CertificateAndKey) -> Secret {
    Secret {
        name: certificate_sds_name(name),
        r#type: Some(SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&pair.chain)),
            private_key: Some(inline(&pair.key)),
            ..Default::default()
        })),
    }
}

/// The SDS resource of credential `name`'s CA, with its revocation list.
pub fn ca_secret(name: &str, ca: &SecretBytes, crl: Option<&SecretBytes>) -> Secret {
    Secret {
        name: ca_sds_name(name),
        r#type: Some(SecretType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(ca)),
                crl: crl.map(inline),
                ..Default::default()
            },
        )),
    }
}

/// A client CA, and the revocation list that goes with it, if any.
pub type CaAndCrl<'s> = (NsName, &'s SecretBytes, Option<&'s SecretBytes>);

/// The client CA of credential `name`: Secret `<name>-cacert` when there is one, else the CA
/// entry of Secret `<name>`; with the `ca.crl` of the same Secret.
pub fn client_ca<'s>(
    secrets: &'s impl SecretLookup,
    namespace: &str,
    name: &str,
    consulted: &mut BTreeSet<NsName>,
) -> Result<CaAndCrl<'s>, CredentialError> {
    let separate = NsName::new(namespace, format!("{name}{CA_SUFFIX}"));
    let same = NsName::new(namespace, name);
    consulted.insert(separate.clone());
    consulted.insert(same.clone());
    match ca_in(secrets, separate.clone()) {
        Some(found) => found,
        None => {
            let secret = secrets.secret(&same).and_then(|s| s.as_ref().ok());
            match secret.and_then(|s| Some((s.ca.as_ref()?, s.crl.as_ref()))) {
                Some((ca, crl)) => Ok((same, ca, crl)),
                None => Err(CredentialError::NoClientCa { separate, same }),
            }
        }
    }
}

/// The client CA of `caCertCredentialName` `name`: the CA entry of Secret `<name>`, with
/// its `ca.crl`.
fn named_client_ca<'s>(
    secrets: &'s impl SecretLookup,
    namespace: &str,
    name: &str,
    consulted: &mut BTreeSet<NsName>,
) -> Result<CaAndCrl<'s>, CredentialError> {
    let id = NsName::new(namespace, name);
    consulted.insert(id.clone());
    ca_in(secrets, id.clone()).unwrap_or(Err(CredentialError::Missing(id)))
}

/// The CA entry (and `ca.crl`) of Secret `id`; `None` when there is no such Secret.
fn ca_in(secrets: &impl SecretLookup, id: NsName) -> Option<Result<CaAndCrl<'_>, CredentialError>> {
    Some(match secrets.secret(&id)? {
        Err(err) => Err(CredentialError::Unusable(id, err.clone())),
        Ok(secret) => match &secret.ca {
            Some(ca) => Ok((id, ca, secret.crl.as_ref())),
            None => Err(CredentialError::NoCa(id)),
        },
    })
}

fn inline(bytes: &SecretBytes) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.bytes().to_vec())),
        ..Default::default()
    }
}

/// The Secret resources of the servers of one selector, each name once: two Gateways in
/// different namespaces naming the same credential for the same proxies would serve two
/// Secrets under one name, so the second (by Gateway namespace and name) is reported.
#[derive(Default)]
pub struct SelectorSecrets {
    by_name: BTreeMap<String, Served>,
}

impl SelectorSecrets {
    /// Adds a server's Secrets, all or none: `Err` with the Secret another server already
    /// serves under one of the names.
    pub fn add(&mut self, secrets: Vec<Served>) -> Result<(), (String, NsName)> {
        for s in &secrets {
            if let Some(taken) = self.by_name.get(&s.secret.name)
                && taken.from != s.from
            {
                return Err((s.secret.name.clone(), taken.from.clone()));
            }
        }
        for s in secrets {
            self.by_name.insert(s.secret.name.clone(), s);
        }
        Ok(())
    }

    pub fn into_secrets(self) -> impl Iterator<Item = Secret> {
        self.by_name.into_values().map(|s| s.secret)
    }
}

/// Where a server names its (first) credential, for problems about its Secrets.
pub fn first_field(server: &Server) -> String {
    match server.kind.termination().map(|tls| &tls.certificate) {
        Some(ServerCertificate::Secrets(credentials)) => {
            credentials.first().map(|c| c.field.clone())
        }
        _ => None,
    }
    .unwrap_or_else(|| format!("spec.servers[{}].tls", server.index))
}
