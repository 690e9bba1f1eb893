//! What `capstan validate` says about certificates from Secrets (`credentialName`) of
//! Gateways and DestinationRules: a Secret that is not among the files checked, or is there
//! but cannot be used. Secrets may come from any file given, so they are checked once every
//! file has been read.

use std::collections::BTreeMap;

use capstan_crds::{Document, DocumentError, IstioObject};

use super::Problem;
use crate::index::NsName;
use crate::model::gateway::{self, Gateway, ServerCertificate};
use crate::model::secret::{self, SecretError, TlsSecret};
use crate::model::traffic_policy::Policies;
use crate::source::secret::{SecretDocument, secrets_in_yaml};
use crate::translate::gateway::credentials;
use crate::translate::upstream_credentials::{self, CredentialUse};

/// The Secrets seen so far, and the Gateways naming credentials.
#[derive(Debug, Default)]
pub struct Credentials {
    secrets: BTreeMap<NsName, Result<TlsSecret, SecretError>>,
    gateways: Vec<Pending>,
    rules: Vec<PendingRule>,
}

/// A DestinationRule naming credentials, to check once every file is read.
#[derive(Debug)]
struct PendingRule {
    uses: Vec<CredentialUse>,
    warning: Problem,
    lines: BTreeMap<String, Option<u64>>,
}

/// A Gateway to check once every file is read: its servers, how to report on it, and the
/// line of each credential field.
#[derive(Debug)]
struct Pending {
    gateway: Gateway,
    warning: Problem,
    lines: BTreeMap<String, Option<u64>>,
}

impl Credentials {
    /// Reads the Secret documents of a file (`found` among its documents of other kinds);
    /// returns warnings for those that cannot be read.
    pub fn read_secrets(
        &mut self,
        file: &str,
        text: &str,
        found: &[DocumentError],
    ) -> Vec<Problem> {
        let indexes: Vec<usize> = found.iter().map(|d| d.index).collect();
        let mut warnings = Vec::new();
        for (document, (_, read)) in found.iter().zip(secrets_in_yaml(text, &indexes)) {
            match read {
                Ok(SecretDocument::Tls(record)) => {
                    self.secrets
                        .insert(record.id.clone(), secret::read(&record));
                }
                // Not a credential; nothing to say about it.
                Ok(SecretDocument::Other(_)) => {}
                Err(message) => warnings.push(Problem {
                    file: file.to_owned(),
                    document: Some(document.index + 1),
                    line: document.line,
                    kind: document.kind.clone(),
                    namespace: document.namespace.clone(),
                    name: document.name.clone(),
                    field: None,
                    message,
                }),
            }
        }
        warnings
    }

    /// Notes a valid Gateway's credentials, to check in [`Self::warnings`]; `warning` is how
    /// problems with it are reported (its field, line and message are filled in then).
    pub fn note_gateway(&mut self, document: &Document, warning: Problem) {
        let IstioObject::Gateway(gw) = &document.object else {
            return;
        };
        let (gateway, _) = gateway::gateway(&document.object.key(), &gw.spec);
        let fields: Vec<&str> = gateway
            .servers
            .iter()
            .filter_map(|s| match s.kind.termination().map(|tls| &tls.certificate) {
                Some(ServerCertificate::Secrets(credentials)) => Some(credentials),
                _ => None,
            })
            .flatten()
            .map(|c| c.field.as_str())
            .collect();
        if !fields.is_empty() {
            let lines = fields
                .into_iter()
                .map(|field| (field.to_string(), document.line_of(field)))
                .collect();
            self.gateways.push(Pending {
                gateway,
                warning,
                lines,
            });
        }
    }

    /// Notes a valid DestinationRule's credentials, as [`Self::note_gateway`].
    pub fn note_rule(&mut self, document: &Document, warning: Problem) {
        let IstioObject::DestinationRule(dr) = &document.object else {
            return;
        };
        let Some(policies) = Policies::from_api(&dr.spec) else {
            return;
        };
        let selector = dr.spec.workload_selector.as_ref().map(|s| &s.match_labels);
        let uses = upstream_credentials::uses_in(
            &document.object.key(),
            &dr.spec.host,
            &policies,
            selector,
        );
        if uses.is_empty() {
            return;
        }
        let lines = uses
            .iter()
            .map(|u| {
                let field = format!("{}.credentialName", u.field);
                let line = document.line_of(&field);
                (field, line)
            })
            .collect();
        self.rules.push(PendingRule {
            uses,
            warning,
            lines,
        });
    }

    /// Warnings for the credentials of the Gateways and DestinationRules noted, against every
    /// Secret read.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for pending in &self.rules {
            let built = upstream_credentials::build(&self.secrets, &pending.uses);
            for problem in built.problems {
                out.push(Problem {
                    line: pending.lines.get(&problem.field).copied().flatten(),
                    field: Some(problem.field),
                    message: problem.message,
                    ..pending.warning.clone()
                });
            }
        }
        for pending in &self.gateways {
            for server in &pending.gateway.servers {
                let mut consulted = Default::default();
                let Err((field, err)) =
                    credentials::resolve(&self.secrets, &pending.gateway, server, &mut consulted)
                else {
                    continue;
                };
                let message = if err.is_missing() {
                    format!(
                        "{err}; it is not in the files checked: the server is served once it \
                         exists"
                    )
                } else {
                    format!("{err}; this server is not served")
                };
                out.push(Problem {
                    line: pending.lines.get(&field).copied().flatten(),
                    field: Some(field),
                    message,
                    ..pending.warning.clone()
                });
            }
        }
        out
    }
}
