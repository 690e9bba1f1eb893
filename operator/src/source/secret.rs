//! Secrets, from the Kubernetes API or from `kind: Secret` documents in the config folder,
//! reduced to what a gateway credential is read from (`tls.credentialName`). Only
//! TLS-shaped Secrets are kept, and of them only the certificate, key and CA entries: a
//! cluster's other Secrets never reach the index. Nothing here logs or formats a value.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::index::{NsName, Record, RecordKey, SecretRecord};

/// Kubernetes' TLS Secret type: `tls.crt` and `tls.key`, optionally `ca.crt`.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// The entries kept: Kubernetes' TLS keys and Istio's generic ones (`cert`, `key`, `cacert`),
/// and the CA's revocation list (`ca.crl`).
pub const TLS_ENTRIES: [&str; 7] = [
    "tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert", "ca.crl",
];

/// Secret types that never hold a gateway credential and can be large or numerous (Helm
/// keeps every release in one; every service account may have a token): the watch leaves
/// them on the API server.
pub const WATCH_FIELD_SELECTOR: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// Whether a Secret of `secret_type` with these entries could be a gateway credential: the
/// TLS type, or a certificate and key under either convention, or a CA alone (the
/// `<name>-cacert` Secrets of MUTUAL servers).
pub fn tls_shaped<'a>(secret_type: &str, mut keys: impl Iterator<Item = &'a str> + Clone) -> bool {
    let has = |name: &str| keys.clone().any(|k| k == name);
    secret_type == TLS_TYPE
        || (has("tls.crt") && has("tls.key"))
        || (has("cert") && has("key"))
        || has("ca.crt")
        || keys.any(|k| k == "cacert")
}

pub fn key(secret: &Secret) -> RecordKey {
    RecordKey::Secret(id(secret))
}

fn id(secret: &Secret) -> NsName {
    let namespace = secret
        .namespace()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| capstan_crds::object::DEFAULT_NAMESPACE.to_string());
    NsName::new(namespace, secret.name_any())
}

/// The record of a TLS-shaped Secret from the API server; `None` for any other (not kept).
pub fn record(secret: &Secret) -> Option<Record> {
    tls_record(secret).map(Record::Secret)
}

pub fn tls_record(secret: &Secret) -> Option<SecretRecord> {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(name, value)| (name.as_str(), value.0.as_slice()));
    // The API server merges stringData into data on write and never returns it; should an
    // object carry it anyway, it wins, as it would on the server.
    let string_data = secret
        .string_data
        .iter()
        .flatten()
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    reduce(
        id(secret),
        secret.type_.clone().unwrap_or_default(),
        data.chain(string_data),
    )
}

/// The TLS entries of a Secret, if it is TLS-shaped (later entries win).
fn reduce<'a>(
    id: NsName,
    secret_type: String,
    entries: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<SecretRecord> {
    let mut data: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
    for (name, value) in entries {
        if TLS_ENTRIES.contains(&name) {
            data.insert(name.to_string(), Arc::from(value));
        }
    }
    tls_shaped(&secret_type, data.keys().map(String::as_str)).then_some(SecretRecord {
        id,
        secret_type,
        data,
    })
}

/// One `kind: Secret` document of a YAML file, read.
#[derive(Debug)]
pub enum SecretDocument {
    /// A TLS-shaped Secret.
    Tls(SecretRecord),
    /// A Secret without TLS entries: not a gateway credential, not kept.
    Other(NsName),
}

/// Whether a document that is not an Istio object is a Kubernetes Secret (`v1`, kind
/// `Secret`), going by what the Istio parser could read of it.
pub fn is_secret_document(api_version: Option<&str>, kind: Option<&str>) -> bool {
    api_version == Some("v1") && kind == Some("Secret")
}

/// Reads the documents at `indexes` (0-based, counted as `capstan_crds::parse_documents`
/// counts them: empty documents skipped) of a YAML text as Secrets. Each gets its result or
/// why it cannot be read (a message without any value of the Secret).
pub fn secrets_in_yaml(
    text: &str,
    indexes: &[usize],
) -> Vec<(usize, Result<SecretDocument, String>)> {
    if indexes.is_empty() {
        return Vec::new();
    }
    // The same parser, and so the same documents, as the Istio objects were read from.
    let options = serde_saphyr::options! { with_snippet: false };
    let documents =
        match serde_saphyr::from_multiple_with_options::<serde_json::Value>(text, options) {
            Ok(documents) => documents,
            Err(_) => {
                // Not quoted: a YAML error can quote the text it stopped at, a Secret's value.
                let message = "cannot read the Secret's document as data".to_string();
                return indexes.iter().map(|i| (*i, Err(message.clone()))).collect();
            }
        };
    indexes
        .iter()
        .map(|&index| {
            let read = match documents.get(index) {
                Some(value) if value["kind"] == "Secret" => secret_document(value),
                _ => Err("cannot read the Secret: its document could not be found again".into()),
            };
            (index, read)
        })
        .collect()
}

/// A Secret document, read by hand rather than through serde: serde's messages quote the
/// offending value, and a value of a Secret must not reach a log.
fn secret_document(value: &serde_json::Value) -> Result<SecretDocument, String> {
    use base64::Engine;
    use serde_json::Value;
    let metadata = &value["metadata"];
    let name = metadata["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name: a Secret needs a name")?;
    let namespace = match &metadata["namespace"] {
        Value::Null => capstan_crds::object::DEFAULT_NAMESPACE,
        Value::String(ns) if ns.is_empty() => capstan_crds::object::DEFAULT_NAMESPACE,
        Value::String(ns) => ns.as_str(),
        _ => return Err("metadata.namespace: must be a string".into()),
    };
    let secret_type = match &value["type"] {
        Value::Null => String::new(),
        Value::String(t) => t.clone(),
        _ => return Err("type: must be a string".into()),
    };
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for (field, base64) in [("data", true), ("stringData", false)] {
        let map = match &value[field] {
            Value::Null => continue,
            Value::Object(map) => map,
            _ => return Err(format!("{field}: must map entry names to strings")),
        };
        // Only the entries a credential is read from are decoded (and can be wrong).
        for (entry, text) in map
            .iter()
            .filter(|(k, _)| TLS_ENTRIES.contains(&k.as_str()))
        {
            let bytes = match text {
                Value::Null => Vec::new(),
                Value::String(text) if base64 => base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| format!("{field}.{entry}: not valid base64"))?,
                Value::String(text) => text.as_bytes().to_vec(),
                _ => return Err(format!("{field}.{entry}: must be a string")),
            };
            entries.push((entry.clone(), bytes));
        }
    }
    let id = NsName::new(namespace, name);
    let entries = entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
    Ok(match reduce(id.clone(), secret_type, entries) {
        Some(record) => SecretDocument::Tls(record),
        None => SecretDocument::Other(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: serde_json::Value) -> Secret {
        serde_json::from_value(value).expect("a Secret")
    }

    #[test]
    fn tls_secrets_keep_only_their_tls_entries() {
        let s = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "shop-cert", "namespace": "istio-system"},
            "type": "kubernetes.io/tls",
            // "Y2VydA==" is "cert", "a2V5" is "key".
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "password": "aHVudGVyMg=="}
        }));
        let Some(Record::Secret(r)) = record(&s) else {
            panic!("a TLS Secret is kept")
        };
        assert_eq!(r.id, NsName::new("istio-system", "shop-cert"));
        assert_eq!(r.secret_type, TLS_TYPE);
        let entries: Vec<(&str, &[u8])> = r.data.iter().map(|(k, v)| (k.as_str(), &**v)).collect();
        assert_eq!(
            entries,
            vec![("tls.crt", &b"cert"[..]), ("tls.key", b"key")]
        );
        assert_eq!(key(&s), RecordKey::Secret(r.id.clone()));
        // What logs could show of it: entry names and sizes only.
        assert_eq!(
            format!("{r:?}"),
            "SecretRecord { id: NsName { namespace: \"istio-system\", name: \"shop-cert\" }, \
             secret_type: \"kubernetes.io/tls\", entry_sizes: {\"tls.crt\": 4, \"tls.key\": 3} }"
        );
    }

    #[test]
    fn generic_and_ca_only_secrets_are_kept_and_others_are_not() {
        let generic = secret(serde_json::json!({
            "metadata": {"name": "g", "namespace": "edge"},
            "stringData": {"cert": "C", "key": "K", "cacert": "A"}
        }));
        let r = tls_record(&generic).expect("generic TLS secret");
        assert_eq!(r.data.keys().collect::<Vec<_>>(), ["cacert", "cert", "key"]);
        let ca_only = secret(serde_json::json!({
            "metadata": {"name": "g-cacert", "namespace": "edge"},
            "data": {"ca.crt": "QQ=="}
        }));
        assert!(tls_record(&ca_only).is_some());
        let opaque = secret(serde_json::json!({
            "metadata": {"name": "db", "namespace": "edge"},
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg==", "cert": "Yw=="}
        }));
        assert!(
            record(&opaque).is_none(),
            "a cert without a key is not a credential"
        );
        let empty_tls = secret(serde_json::json!({
            "metadata": {"name": "broken"}, "type": "kubernetes.io/tls"
        }));
        let r = tls_record(&empty_tls).expect("the TLS type is kept, to be reported");
        assert_eq!(r.id, NsName::new("default", "broken"));
        assert!(r.data.is_empty());
    }

    #[test]
    fn secret_documents_are_read_from_yaml_by_index() {
        let text = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: edge}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==, tls.key: a2V5}
---
---
apiVersion: v1
kind: Secret
metadata: {name: app, namespace: edge}
stringData: {password: x}
---
apiVersion: v1
kind: Secret
metadata: {name: bad, namespace: edge}
data: {tls.crt: '***'}
";
        let read = secrets_in_yaml(text, &[1, 2, 3]);
        assert_eq!(read.len(), 3);
        match &read[0] {
            (1, Ok(SecretDocument::Tls(r))) => {
                assert_eq!(r.id, NsName::new("edge", "shop-cert"));
                assert_eq!(&*r.data["tls.key"], b"key");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&read[1], (2, Ok(SecretDocument::Other(id))) if id.name == "app"),
            "{:?}",
            read[1]
        );
        match &read[2] {
            (3, Err(message)) => {
                assert_eq!(message, "data.tls.crt: not valid base64");
                assert!(!message.contains("***"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(is_secret_document(Some("v1"), Some("Secret")));
        assert!(!is_secret_document(Some("apps/v1"), Some("Secret")));
    }
}
