//! The Cloud Map source's configuration: `capstan run --cloud-map-config FILE`, YAML.
//!
//! ```yaml
//! namespaces:                  # Cloud Map namespaces to serve, by name or id
//!   - name: example.local
//!   - id: ns-abc123
//! mode: in-memory              # or `materialize`: ServiceEntries written to the cluster
//! meshNamespace: cloud-map     # the Kubernetes namespace the services belong to
//! interval: 30s                # between polls; each is moved by up to ±jitter of it
//! jitter: 0.1
//! hostTemplate: "{service}.{namespace}"
//! includeUnknownHealth: true   # UNKNOWN instances of services without a health check serve
//! protocolAttribute: protocol  # the instance attribute naming the port's protocol
//! region: us-east-1            # else the standard chain (AWS_REGION, profile, IMDS)
//! endpoint: https://…          # another endpoint than the region's (VPC endpoint, tests)
//! services:                    # per-service ports, when AWS_INSTANCE_PORT is not enough
//!   - namespace: example.local
//!     name: orders
//!     ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
//! ```

use std::path::Path;
use std::time::Duration;

use capstan_crds::Protocol;
use serde::Deserialize;

use crate::config_file::ReadError;

/// The largest configuration file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Polls more often than this would spend the account's Cloud Map request quota.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the Cloud Map config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the Cloud Map config {path} is {size} bytes; at most {MAX_FILE_BYTES} are read")]
    TooLarge { path: String, size: u64 },
    #[error("the Cloud Map config {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("the Cloud Map config {path}: {field}: {message}")]
    Field {
        path: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Cloud Map services feed the model directly, as Istio's registries do.
    #[default]
    InMemory,
    /// capstan writes one ServiceEntry per Cloud Map service into `meshNamespace`.
    Materialize,
}

/// A Cloud Map namespace to serve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRef {
    pub name: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub name: String,
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    /// The instances' port (0: `AWS_INSTANCE_PORT`, else `number`).
    #[serde(default)]
    pub target_port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverride {
    /// The Cloud Map namespace's name.
    pub namespace: String,
    pub name: String,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    namespaces: Vec<NamespaceRef>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    mesh_namespace: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    jitter: Option<f64>,
    #[serde(default)]
    host_template: Option<String>,
    #[serde(default)]
    include_unknown_health: Option<bool>,
    #[serde(default)]
    protocol_attribute: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    services: Vec<ServiceOverride>,
}

/// The Cloud Map source's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudMapConfig {
    pub namespaces: Vec<NamespaceRef>,
    pub mode: Mode,
    pub mesh_namespace: String,
    pub interval: Duration,
    pub jitter: f64,
    pub host_template: String,
    pub include_unknown_health: bool,
    pub protocol_attribute: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub services: Vec<ServiceOverride>,
}

impl Default for CloudMapConfig {
    fn default() -> Self {
        CloudMapConfig {
            namespaces: Vec::new(),
            mode: Mode::InMemory,
            mesh_namespace: "cloud-map".into(),
            interval: Duration::from_secs(30),
            jitter: 0.1,
            host_template: "{service}.{namespace}".into(),
            include_unknown_health: true,
            protocol_attribute: "protocol".into(),
            region: None,
            endpoint: None,
            services: Vec::new(),
        }
    }
}

impl CloudMapConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text =
            crate::config_file::read_to_string(path, MAX_FILE_BYTES).map_err(|e| match e {
                ReadError::Io(source) => ConfigError::Read {
                    path: name.clone(),
                    source,
                },
                ReadError::TooLarge(size) => ConfigError::TooLarge {
                    path: name.clone(),
                    size,
                },
            })?;
        Self::parse(&name, &text)
    }

    /// Parses and checks the YAML of file `path` (named in errors).
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let field = |field: &str, message: String| ConfigError::Field {
            path: path.to_string(),
            field: field.to_string(),
            message,
        };
        let defaults = CloudMapConfig::default();
        if file.namespaces.is_empty() {
            return Err(field(
                "namespaces",
                "name at least one Cloud Map namespace".into(),
            ));
        }
        for (i, ns) in file.namespaces.iter().enumerate() {
            if ns.name.is_some() == ns.id.is_some() {
                return Err(field(
                    &format!("namespaces[{i}]"),
                    "give exactly one of name and id".into(),
                ));
            }
        }
        let interval = match &file.interval {
            None => defaults.interval,
            Some(text) => capstan_crds::networking::common::parse_duration(text)
                .filter(|d| *d >= MIN_INTERVAL)
                .ok_or_else(|| {
                    field(
                        "interval",
                        format!("{text:?} is not a duration of at least {MIN_INTERVAL:?}"),
                    )
                })?,
        };
        let jitter = file.jitter.unwrap_or(defaults.jitter);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(field("jitter", format!("{jitter} is not within 0 to 0.5")));
        }
        let host_template = file.host_template.unwrap_or(defaults.host_template);
        if !host_template.contains("{service}") {
            return Err(field(
                "hostTemplate",
                format!("{host_template:?} does not contain {{service}}"),
            ));
        }
        let mesh_namespace = file.mesh_namespace.unwrap_or(defaults.mesh_namespace);
        if capstan_crds::validate::names::dns1123_label(&mesh_namespace).is_err() {
            return Err(field(
                "meshNamespace",
                format!("{mesh_namespace:?} is not a Kubernetes namespace name"),
            ));
        }
        for (i, service) in file.services.iter().enumerate() {
            for (j, port) in service.ports.iter().enumerate() {
                let at = format!("services[{i}].ports[{j}]");
                if port.number == 0 || port.number > 65535 {
                    return Err(field(
                        &format!("{at}.number"),
                        format!("{} is not a port", port.number),
                    ));
                }
                if let Some(p) = &port.protocol
                    && Protocol::parse(p).is_none()
                {
                    return Err(field(
                        &format!("{at}.protocol"),
                        format!("{p:?} is not an Istio protocol"),
                    ));
                }
            }
        }
        Ok(CloudMapConfig {
            namespaces: file.namespaces,
            mode: file.mode,
            mesh_namespace,
            interval,
            jitter,
            host_template,
            include_unknown_health: file
                .include_unknown_health
                .unwrap_or(defaults.include_unknown_health),
            protocol_attribute: file
                .protocol_attribute
                .unwrap_or(defaults.protocol_attribute),
            region: file.region,
            endpoint: file.endpoint,
            services: file.services,
        })
    }

    /// The host of Cloud Map service `service` of namespace `namespace`.
    pub fn host(&self, namespace: &str, service: &str) -> String {
        self.host_template
            .replace("{service}", service)
            .replace("{namespace}", namespace)
            .to_ascii_lowercase()
    }

    /// Whether namespace `id` / `name` is one to serve.
    pub fn selects(&self, id: &str, name: &str) -> bool {
        self.namespaces
            .iter()
            .any(|ns| ns.id.as_deref() == Some(id) || ns.name.as_deref() == Some(name))
    }

    pub fn ports_of(&self, namespace: &str, service: &str) -> Option<&[PortSpec]> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == service)
            .map(|s| s.ports.as_slice())
    }

    /// The wait before the next poll: the interval moved by up to ±jitter of it.
    pub fn next_wait(&self) -> Duration {
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.jitter;
        self.interval.mul_f64(1.0 + spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_is_read() {
        let config = CloudMapConfig::parse(
            "cm.yaml",
            r#"
namespaces: [{name: example.local}, {id: ns-1}]
mode: materialize
meshNamespace: aws
interval: 10s
jitter: 0.2
hostTemplate: "{service}.{namespace}.aws"
includeUnknownHealth: false
services:
  - namespace: example.local
    name: orders
    ports: [{name: http, number: 80, protocol: HTTP, targetPort: 8080}]
"#,
        )
        .expect("valid");
        assert_eq!(config.mode, Mode::Materialize);
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(
            config.host("example.local", "Orders"),
            "orders.example.local.aws"
        );
        assert!(config.selects("ns-9", "example.local"));
        assert!(config.selects("ns-1", "other"));
        assert!(!config.selects("ns-2", "other"));
        assert_eq!(
            config.ports_of("example.local", "orders").map(|p| p.len()),
            Some(1)
        );
        assert!(!config.include_unknown_health);
        for _ in 0..100 {
            let wait = config.next_wait();
            assert!(wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12));
        }
    }

    #[test]
    fn bad_fields_are_named() {
        for (yaml, field) in [
            ("namespaces: []", "namespaces"),
            ("namespaces: [{name: a, id: b}]", "namespaces[0]"),
            ("namespaces: [{name: a}]\ninterval: 10ms", "interval"),
            ("namespaces: [{name: a}]\njitter: 2", "jitter"),
            ("namespaces: [{name: a}]\nhostTemplate: x", "hostTemplate"),
            (
                "namespaces: [{name: a}]\nmeshNamespace: Not_A_Namespace",
                "meshNamespace",
            ),
            (
                "namespaces: [{name: a}]\nservices: [{namespace: a, name: b, ports: [{name: p, number: 0}]}]",
                "services[0].ports[0].number",
            ),
            (
                "namespaces: [{name: a}]\nservices: [{namespace: a, name: b, ports: [{name: p, number: 1, protocol: SMTP}]}]",
                "services[0].ports[0].protocol",
            ),
        ] {
            match CloudMapConfig::parse("cm.yaml", yaml) {
                Err(ConfigError::Field { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
        let unknown = CloudMapConfig::parse("cm.yaml", "namespaces: [{name: a}]\nintervall: 1s");
        assert!(
            matches!(&unknown, Err(ConfigError::Parse { message, .. }) if message.contains("intervall")),
            "{unknown:?}"
        );
    }
}
