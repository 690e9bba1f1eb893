//! What one file's text serves: its Istio objects and TLS Secrets, each document that does
//! not parse or validate replaced by the object's last good version from the same file (or
//! left out), every problem reported with file, line, document, object and field.

use std::path::Path;

use capstan_crds::IstioObject;
use capstan_crds::object::ObjectKey;
use capstan_crds::parse::{DocumentError, DocumentErrorReason, parse_documents};

use super::Problems;
use crate::index::{NsName, SecretRecord};
use crate::source::secret::{SecretDocument, is_secret_document, secrets_in_yaml};

/// The objects and Secrets `text` serves, given what the file served before.
pub(super) fn load(
    path: &Path,
    text: &str,
    (previous, previous_secrets): (&[IstioObject], &[SecretRecord]),
    problems: &mut Problems,
) -> (Vec<IstioObject>, Vec<SecretRecord>) {
    let name = path.display().to_string();
    let documents = match parse_documents(&name, text) {
        Ok(documents) => documents,
        Err(err) => {
            problems.push(format!(
                "error: {err}; keeping the file's last good content"
            ));
            return (previous.to_vec(), previous_secrets.to_vec());
        }
    };
    let last_good = |key: &ObjectKey| previous.iter().find(|o| &o.key() == key).cloned();
    let mut objects = Vec::new();
    let mut secret_documents = Vec::new();
    for document in documents {
        match document {
            Ok(document) => {
                let errors = document.validate();
                if errors.is_empty() {
                    objects.push(document.object);
                    continue;
                }
                let key = document.object.key();
                let kept = last_good(&key);
                for error in &errors {
                    let line = document
                        .line_of(&error.field)
                        .map(|l| format!(":{l}"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "error: {name}{line}: document {} ({key}): {}: {}; {}",
                        document.index + 1,
                        error.field,
                        error.message,
                        keeping(kept.is_some()),
                    ));
                }
                objects.extend(kept);
            }
            // Not an Istio object, but what gateways read certificates from.
            Err(err)
                if err.reason == DocumentErrorReason::UnsupportedKind
                    && is_secret_document(err.api_version.as_deref(), err.kind.as_deref()) =>
            {
                secret_documents.push(err);
            }
            Err(err) => {
                let kept = document_key(&err).and_then(|key| last_good(&key));
                problems.push(format!("error: {err}; {}", keeping(kept.is_some())));
                objects.extend(kept);
            }
        }
    }
    let secrets = load_secrets(text, &secret_documents, previous_secrets, problems);
    (objects, secrets)
}

/// The TLS Secrets of the documents `found` (by the Istio parser, as documents of another
/// kind); one that cannot be read keeps its last good version.
fn load_secrets(
    text: &str,
    found: &[DocumentError],
    previous: &[SecretRecord],
    problems: &mut Problems,
) -> Vec<SecretRecord> {
    let indexes: Vec<usize> = found.iter().map(|d| d.index).collect();
    let mut secrets = Vec::new();
    for (document, (_, read)) in found.iter().zip(secrets_in_yaml(text, &indexes)) {
        let line = document.line.map(|l| format!(":{l}")).unwrap_or_default();
        let at = format!("{}{line}: document {}", document.file, document.index + 1);
        match read {
            Ok(SecretDocument::Tls(secret)) => secrets.push(secret),
            Ok(SecretDocument::Other(id)) => problems.push(format!(
                "{at} (Secret {id}): no TLS entries (tls.crt and tls.key, cert and key, or a CA \
                 in ca.crt or cacert); not a gateway credential, ignored"
            )),
            Err(message) => {
                let id = document.name.as_ref().map(|name| {
                    let namespace = document
                        .namespace
                        .as_deref()
                        .unwrap_or(capstan_crds::object::DEFAULT_NAMESPACE);
                    NsName::new(namespace, name.as_str())
                });
                let kept = id
                    .as_ref()
                    .and_then(|id| previous.iter().find(|s| &s.id == id).cloned());
                let what = id.map(|id| format!(" (Secret {id})")).unwrap_or_default();
                problems.push(format!(
                    "error: {at}{what}: {message}; {}",
                    keeping(kept.is_some())
                ));
                secrets.extend(kept);
            }
        }
    }
    secrets
}

fn keeping(kept: bool) -> &'static str {
    if kept {
        "keeping the object's last good version"
    } else {
        "the object is skipped"
    }
}

/// The identity of the object a broken document meant to define, when it can be read.
fn document_key(err: &DocumentError) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind: err.kind.as_deref()?.parse().ok()?,
        namespace: err
            .namespace
            .clone()
            .unwrap_or_else(|| capstan_crds::object::DEFAULT_NAMESPACE.to_string()),
        name: err.name.clone()?,
    })
}
