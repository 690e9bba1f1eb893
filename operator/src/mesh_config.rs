//! Istio's MeshConfig: the YAML istiod reads from the `mesh` key of the `istio` ConfigMap
//! (mounted at `/etc/istio/config/mesh`), given to capstan as `--mesh-config FILE`.
//!
//! capstan reads `rootNamespace`, `trustDomain`, `outboundTrafficPolicy.mode`,
//! `enableAutoMtls` and the `extensionProviders` an AuthorizationPolicy's `CUSTOM` action names
//! (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`). Every other field is kept as a path in [`MeshConfig::not_applied`], so
//! `run`, `validate` and `explain` say it is not applied instead of ignoring it.
//!
//! A provider with a bad field is kept as [`Provider::Invalid`] with the reason: as istiod
//! does, the policies naming it then deny what they match (see `translate::authorization`).

mod providers;
pub mod trust_domains;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config_file::ReadError;
pub use trust_domains::TrustDomains;

pub use providers::{ExtAuthzGrpc, ExtAuthzHttp, Provider, RequestBody, status_on_error};

/// The largest mesh config file read: Istio's are a few KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Most extension providers kept; a longer list is refused as a whole.
const MAX_PROVIDERS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("cannot read the mesh config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the mesh config {path} is {size} bytes; at most {MAX_FILE_BYTES} are read")]
    TooLarge { path: String, size: u64 },
    #[error("the mesh config {path} is not valid MeshConfig YAML: {message}")]
    Parse { path: String, message: String },
    #[error("the mesh config {path}: {field}: {message}")]
    Field {
        path: String,
        field: String,
        message: String,
    },
}

/// What capstan reads of the mesh config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshConfig {
    pub root_namespace: Option<String>,
    pub trust_domain: Option<String>,
    pub trust_domain_aliases: Vec<String>,
    /// `outboundTrafficPolicy.mode`: `ALLOW_ANY` or `REGISTRY_ONLY`.
    pub outbound_traffic_policy: Option<String>,
    pub enable_auto_mtls: Option<bool>,
    pub extension_providers: ExtensionProviders,
    /// Fields given that capstan does not apply (`defaultConfig`, `accessLogFile`, …).
    pub not_applied: Vec<String>,
}

/// What translation reads of the mesh config.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSettings {
    pub extension_providers: ExtensionProviders,
    /// `enableAutoMtls` (Istio's default: on): clients send the mesh's mutual TLS to
    /// endpoints with sidecars where no DestinationRule sets TLS.
    pub enable_auto_mtls: bool,
    /// `trustDomain` (or `capstan run --trust-domain`) and `trustDomainAliases`.
    pub trust_domains: TrustDomains,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            extension_providers: ExtensionProviders::default(),
            enable_auto_mtls: true,
            trust_domains: TrustDomains::default(),
        }
    }
}

/// The `extensionProviders`, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionProviders {
    by_name: BTreeMap<String, Provider>,
}

impl ExtensionProviders {
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    /// The host of the service an external authorizer `name` is reached at.
    pub fn service_host(&self, name: &str) -> Option<&str> {
        let service = match self.by_name.get(name)? {
            Provider::ExtAuthzHttp(http) => &http.service,
            Provider::ExtAuthzGrpc(grpc) => &grpc.service,
            Provider::Invalid(_) | Provider::Unsupported(_) => return None,
        };
        Some(
            service
                .split_once('/')
                .map_or(service.as_str(), |(_, host)| host),
        )
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    #[cfg(test)]
    pub fn insert(&mut self, name: &str, provider: Provider) {
        self.by_name.insert(name.to_string(), provider);
    }
}

/// The file's top level: the fields capstan reads, and the rest by name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeshConfig {
    #[serde(default)]
    root_namespace: Option<String>,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    trust_domain_aliases: Vec<String>,
    #[serde(default)]
    outbound_traffic_policy: Option<RawOutboundTrafficPolicy>,
    #[serde(default)]
    enable_auto_mtls: Option<bool>,
    #[serde(default)]
    extension_providers: Vec<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOutboundTrafficPolicy {
    #[serde(default)]
    mode: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl MeshConfig {
    /// Reads `path` (at most [`MAX_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self, MeshConfigError> {
        let shown = path.display().to_string();
        let text =
            crate::config_file::read_to_string(path, MAX_FILE_BYTES).map_err(|e| match e {
                ReadError::Io(source) => MeshConfigError::Read {
                    path: shown.clone(),
                    source,
                },
                ReadError::TooLarge(size) => MeshConfigError::TooLarge {
                    path: shown.clone(),
                    size,
                },
            })?;
        Self::parse(&shown, &text)
    }

    /// Parses the YAML `text` of the file named `path` (for messages).
    pub fn parse(path: &str, text: &str) -> Result<Self, MeshConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: RawMeshConfig =
            serde_saphyr::from_str(text).map_err(|e| MeshConfigError::Parse {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        let field_error = |field: &str, message: String| MeshConfigError::Field {
            path: path.to_string(),
            field: field.to_string(),
            message,
        };
        let mut out = Self {
            root_namespace: raw.root_namespace.filter(|s| !s.is_empty()),
            trust_domain: raw.trust_domain.filter(|s| !s.is_empty()),
            trust_domain_aliases: raw.trust_domain_aliases,
            enable_auto_mtls: raw.enable_auto_mtls,
            not_applied: raw.other.into_keys().collect(),
            ..Self::default()
        };
        if let Some(policy) = raw.outbound_traffic_policy {
            out.outbound_traffic_policy = match policy.mode.as_deref() {
                None => None,
                Some(mode @ ("ALLOW_ANY" | "REGISTRY_ONLY")) => Some(mode.to_string()),
                Some(other) => {
                    return Err(field_error(
                        "outboundTrafficPolicy.mode",
                        format!("{other:?} is not ALLOW_ANY or REGISTRY_ONLY"),
                    ));
                }
            };
            out.not_applied.extend(
                policy
                    .other
                    .into_keys()
                    .map(|k| format!("outboundTrafficPolicy.{k}")),
            );
        }
        if raw.extension_providers.len() > MAX_PROVIDERS {
            return Err(field_error(
                "extensionProviders",
                format!("more than {MAX_PROVIDERS} providers"),
            ));
        }
        for (i, value) in raw.extension_providers.into_iter().enumerate() {
            let field = format!("extensionProviders[{i}]");
            let (name, provider) =
                providers::provider(value).map_err(|m| field_error(&field, m))?;
            if out.extension_providers.by_name.contains_key(&name) {
                return Err(field_error(
                    &format!("{field}.name"),
                    format!("{name:?} is the name of an earlier provider"),
                ));
            }
            if let Provider::Unsupported(kind) = &provider {
                out.not_applied.push(format!("{field}.{kind}"));
            }
            out.extension_providers.by_name.insert(name, provider);
        }
        Ok(out)
    }

    /// What translation reads of it.
    pub fn settings(&self) -> MeshSettings {
        MeshSettings {
            extension_providers: self.extension_providers.clone(),
            enable_auto_mtls: self.enable_auto_mtls.unwrap_or(true),
            trust_domains: TrustDomains::new(
                self.trust_domain
                    .as_deref()
                    .unwrap_or(trust_domains::DEFAULT),
                &self.trust_domain_aliases,
            ),
        }
    }

    /// One warning per field given that capstan does not apply, and per unusable provider.
    pub fn warn(&self, path: &Path) {
        for field in &self.not_applied {
            tracing::warn!(
                mesh_config = %path.display(),
                field = %field,
                "mesh config field not applied by capstan"
            );
        }
        for (name, provider) in &self.extension_providers.by_name {
            if let Provider::Invalid(reason) = provider {
                tracing::warn!(
                    mesh_config = %path.display(),
                    provider = %name,
                    %reason,
                    "extension provider unusable: CUSTOM policies naming it deny what they match"
                );
            }
        }
    }
}
