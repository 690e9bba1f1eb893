//! Which CA `capstan run` signs with, and the tasks that keep it current:
//!
//! | flags | CA | kept current by |
//! |---|---|---|
//! | `--ca-pca-arn` | an intermediate AWS Private CA issues | renewal at 2/3 of its life |
//! | `--cacerts-dir` | a plug-in intermediate from that folder | re-read every `--ca-reload-interval-secs` |
//! | `--ca-dir` | the built-in root kept in that folder | rotation steps, re-read |
//! | none, in a cluster | `cacerts` if that Secret exists, else `istio-ca-secret` (created) | as above |
//! | none, no cluster | no CA: no TLS port | |
//!
//! In a cluster the CSR service (`CreateCertificate`, TokenReview-authenticated) is served on
//! the TLS port beside ADS, and the trust bundle is published to every namespace as the
//! ConfigMap `istio-ca-root-cert`; without a cluster there is nothing to check tokens against, so
//! only ADS is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capstan_ca::authn::{CacheConfig, CachedAuthenticator};
use capstan_ca::pca::{PcaConfig, PcaIssuer, RenewalTask, spawn_renewal};
use capstan_ca::{Authority, CaService, CaServiceConfig, CaState, KeyAlgorithm, RotationPolicy};
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use tracing::info;

use crate::ca_store::{
    BUILTIN_SECRET, FileStore, PLUGGED_SECRET, SecretStore, keep_builtin, keep_plugged,
    start_builtin, start_plugged,
};
use crate::identity::TokenReviewAuthenticator;

/// The CSR service as `capstan run` serves it.
pub type CsrService = CaService<CachedAuthenticator<TokenReviewAuthenticator>>;

/// Flags of capstan's CA beyond where it lives (`--ca-dir`, `--cacerts-dir`).
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Key algorithm of a new built-in root: ecdsa-p256, rsa-2048 or rsa-4096.
    #[arg(long, default_value = "ecdsa-p256")]
    pub ca_key_algorithm: KeyAlgorithm,
    /// Validity of a new built-in root, in days (Istio's: 10 years).
    #[arg(long, default_value_t = 3650)]
    pub ca_root_validity_days: u64,
    /// Rotate the built-in root when less than this fraction of its life is left (Istio: 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub ca_root_rotation_grace: f64,
    /// Seconds between re-reads of the CA's store (plug-in files, the built-in root and
    /// another replica's rotation steps).
    #[arg(long, default_value_t = 10)]
    pub ca_reload_interval_secs: u64,
    /// Workload certificate TTL when the request asks for none, in seconds.
    #[arg(long, default_value_t = capstan_ca::DEFAULT_TTL.as_secs())]
    pub workload_cert_ttl_secs: u64,
    /// Longest workload certificate TTL granted, in seconds (Istio's: 90 days).
    #[arg(long, default_value_t = capstan_ca::DEFAULT_MAX_TTL.as_secs())]
    pub max_workload_cert_ttl_secs: u64,
    /// Audiences a workload's token must be issued for (Istio's agent asks for `istio-ca`).
    #[arg(long, value_delimiter = ',', default_value = "istio-ca")]
    pub ca_token_audiences: Vec<String>,
    /// AWS Private CA that issues capstan's intermediate (`arn:aws:acm-pca:...`). Credentials
    /// come from the standard AWS chain (IRSA on EKS).
    #[arg(long, env = "CAPSTAN_CA_PCA_ARN")]
    pub ca_pca_arn: Option<String>,
    /// AWS region of the Private CA [default: the region in the ARN].
    #[arg(long, env = "AWS_REGION")]
    pub ca_pca_region: Option<String>,
    /// Endpoint of the ACM PCA API (for a test double such as moto; AWS's by default).
    #[arg(long, env = "CAPSTAN_CA_PCA_ENDPOINT_URL")]
    pub ca_pca_endpoint_url: Option<String>,
    /// Certificate template of the intermediate.
    #[arg(long, default_value = capstan_ca::pca::DEFAULT_TEMPLATE_ARN)]
    pub ca_pca_template_arn: String,
    /// Validity of the intermediate, in seconds (renewed at 2/3 of it).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub ca_pca_validity_secs: u64,
    /// Signing algorithm the Private CA uses (its key's: SHA256WITHRSA, SHA256WITHECDSA, ...).
    #[arg(long, default_value = "SHA256WITHRSA")]
    pub ca_pca_signing_algorithm: String,
}

/// Where the CA comes from.
#[derive(Debug)]
enum Source {
    Pca(PcaConfig),
    Plugged(FileStore),
    Builtin(FileStore),
}

/// The running CA: its authority, and what keeps it current (aborted on drop).
pub(crate) struct RunningCa {
    pub authority: Arc<Authority>,
    _pca: Option<RenewalTask>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl RunningCa {
    /// A CA nothing renews or reloads (tests).
    #[cfg(test)]
    pub fn fixed(authority: Arc<Authority>) -> Self {
        Self {
            authority,
            _pca: None,
            keeper: None,
            publisher: None,
        }
    }

    /// Publishes the trust bundle to every namespace of the cluster (`istio-ca-root-cert`),
    /// for as long as this CA runs.
    pub fn publish_roots(&mut self, client: kube::Client) {
        let task = crate::ca_store::publish_roots(client, self.authority.clone());
        self.publisher = Some(tokio::spawn(task));
    }
}

impl Drop for RunningCa {
    fn drop(&mut self) {
        for task in [&self.keeper, &self.publisher].into_iter().flatten() {
            task.abort();
        }
    }
}

/// Starts the CA the flags and the cluster select; `None` when there is none.
pub(crate) async fn start(
    ca: &CaArgs,
    trust_domain: &str,
    ca_dir: Option<&PathBuf>,
    cacerts_dir: Option<&PathBuf>,
    cluster: Option<(&kube::Client, &str)>,
) -> anyhow::Result<Option<RunningCa>> {
    let Some(source) = source(ca, ca_dir, cacerts_dir, cluster).await? else {
        return Ok(None);
    };
    let interval = Duration::from_secs(ca.ca_reload_interval_secs.max(1));
    let td = trust_domain.to_string();
    let running = match source {
        Source::Pca(config) => {
            let arn = config.ca_arn.clone();
            let issuer = Arc::new(PcaIssuer::new(config).await?);
            let signer = issuer
                .issue(trust_domain)
                .await
                .with_context(|| format!("AWS Private CA {arn}: issuing capstan's intermediate"))?;
            info!(ca = %arn, "CA: intermediate issued by AWS Private CA");
            let authority = Arc::new(Authority::new(CaState::new(signer)));
            let renewal = spawn_renewal(issuer, authority.clone(), td);
            RunningCa {
                authority,
                _pca: Some(renewal),
                keeper: None,
                publisher: None,
            }
        }
        Source::Plugged(store) => {
            let authority = Arc::new(
                start_plugged(&store, trust_domain)
                    .await
                    .with_context(|| format!("plug-in CA in {}", store.describe()))?,
            );
            let keeper = tokio::spawn(keep_plugged(store, authority.clone(), td, interval));
            RunningCa {
                authority,
                _pca: None,
                keeper: Some(keeper),
                publisher: None,
            }
        }
        Source::Builtin(store) => {
            let policy = rotation_policy(ca);
            let authority = Arc::new(
                start_builtin(&store, trust_domain, &policy)
                    .await
                    .with_context(|| format!("built-in root CA in {}", store.describe()))?,
            );
            let keeper = tokio::spawn(keep_builtin(store, authority.clone(), td, policy, interval));
            RunningCa {
                authority,
                _pca: None,
                keeper: Some(keeper),
                publisher: None,
            }
        }
    };
    Ok(Some(running))
}

/// The CSR service over `authority`, checking tokens with TokenReviews through `client`.
pub(crate) fn csr_service(
    ca: &CaArgs,
    trust_domain: &str,
    authority: Arc<Authority>,
    client: kube::Client,
) -> CsrService {
    let reviews = TokenReviewAuthenticator::with_audiences(client, ca.ca_token_audiences.clone());
    let mut config = CaServiceConfig::new(trust_domain);
    config.default_ttl = Duration::from_secs(ca.workload_cert_ttl_secs);
    config.max_ttl = Duration::from_secs(ca.max_workload_cert_ttl_secs);
    CaService::new(
        authority,
        CachedAuthenticator::new(reviews, CacheConfig::default()),
        config,
    )
}

fn rotation_policy(ca: &CaArgs) -> RotationPolicy {
    RotationPolicy {
        validity: Duration::from_secs(ca.ca_root_validity_days.saturating_mul(86_400)),
        grace: ca.ca_root_rotation_grace.clamp(0.0, 1.0),
        // Every proxy renews (and refetches the bundle) within its certificate's life.
        announce: Duration::from_secs(ca.max_workload_cert_ttl_secs),
        algorithm: ca.ca_key_algorithm,
    }
}

async fn source(
    ca: &CaArgs,
    ca_dir: Option<&PathBuf>,
    cacerts_dir: Option<&PathBuf>,
    cluster: Option<(&kube::Client, &str)>,
) -> anyhow::Result<Option<Source>> {
    if let Some(arn) = &ca.ca_pca_arn {
        let region = match &ca.ca_pca_region {
            Some(region) => region.clone(),
            // arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>
            None => arn
                .split(':')
                .nth(3)
                .filter(|r| !r.is_empty())
                .with_context(|| {
                    format!("--ca-pca-arn {arn}: no region in it; set --ca-pca-region")
                })?
                .to_string(),
        };
        let mut config = PcaConfig::new(arn.clone(), region);
        config.endpoint_url = ca.ca_pca_endpoint_url.clone();
        config.template_arn = ca.ca_pca_template_arn.clone();
        config.validity = Duration::from_secs(ca.ca_pca_validity_secs);
        config.signing_algorithm = ca.ca_pca_signing_algorithm.clone();
        config.validate().context("AWS Private CA flags")?;
        return Ok(Some(Source::Pca(config)));
    }
    if let Some(dir) = cacerts_dir {
        return Ok(Some(Source::Plugged(FileStore::Folder(dir.clone()))));
    }
    if let Some(dir) = ca_dir {
        return Ok(Some(Source::Builtin(FileStore::Folder(dir.clone()))));
    }
    let Some((client, namespace)) = cluster else {
        return Ok(None);
    };
    // As istiod: an operator's `cacerts` wins over the self-signed root.
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let plugged = secrets
        .get_opt(PLUGGED_SECRET)
        .await
        .with_context(|| format!("reading Secret {namespace}/{PLUGGED_SECRET}"))?
        .is_some();
    let (name, store): (&str, fn(Box<SecretStore>) -> Source) = if plugged {
        (PLUGGED_SECRET, |s| Source::Plugged(FileStore::Secret(s)))
    } else {
        (BUILTIN_SECRET, |s| Source::Builtin(FileStore::Secret(s)))
    };
    Ok(Some(store(Box::new(SecretStore::new(
        client.clone(),
        namespace,
        name,
    )))))
}
