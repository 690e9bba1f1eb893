//! CA files in a Kubernetes Secret: one data key per file.

use std::collections::BTreeMap;

use capstan_ca::CaFiles;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::{StoreError, Stored};

/// The Secret type Istio gives `istio-ca-secret`.
const SECRET_TYPE: &str = "istio.io/ca-root";

/// One named Secret in one namespace.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SecretStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    fn kube_error(&self, verb: &str, source: kube::Error) -> StoreError {
        StoreError::Kube {
            what: format!("{verb} {}", self.describe()),
            source,
        }
    }

    pub(super) async fn read(&self, names: &[&str]) -> Result<Option<Stored>, StoreError> {
        let secret = match self.api.get_opt(&self.name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.kube_error("reading", e)),
        };
        let mut files = BTreeMap::new();
        for (key, value) in secret.data.unwrap_or_default() {
            if !names.contains(&key.as_str()) {
                continue;
            }
            if value.0.len() > capstan_ca::MAX_CA_FILE {
                return Err(StoreError::NotText(format!(
                    "{} key {key} (larger than {} bytes)",
                    self.describe(),
                    capstan_ca::MAX_CA_FILE
                )));
            }
            let text = String::from_utf8(value.0)
                .map_err(|_| StoreError::NotText(format!("{} key {key}", self.describe())))?;
            files.insert(key, text);
        }
        Ok(Some(Stored {
            files: CaFiles::named(self.describe(), files),
            version: secret.metadata.resource_version,
        }))
    }

    pub(super) async fn create(&self, files: &CaFiles) -> Result<bool, StoreError> {
        match self
            .api
            .create(&PostParams::default(), &self.secret(files, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.kube_error("creating", e)),
        }
    }

    pub(super) async fn replace(
        &self,
        files: &CaFiles,
        version: Option<&str>,
    ) -> Result<bool, StoreError> {
        let secret = self.secret(files, version);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.kube_error("updating", e)),
        }
    }

    fn secret(&self, files: &CaFiles, version: Option<&str>) -> Secret {
        let data = files
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: version.map(str::to_string),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "capstan".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }
}
