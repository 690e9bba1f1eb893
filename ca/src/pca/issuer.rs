//! One issuance: key and CSR here, IssueCertificate and GetCertificate there, the chain up to
//! Private CA's root, and a signer built from them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_acmpca::Client;
use aws_sdk_acmpca::config::SharedCredentialsProvider;
use aws_sdk_acmpca::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::retry::{Action, Failure, classify};
use super::{PcaConfig, PcaError, chain};
use crate::RootCa;

/// Has Private CA issue capstan's intermediate.
#[derive(Debug, Clone)]
pub struct PcaIssuer {
    client: Client,
    config: PcaConfig,
}

/// The SDK configuration for `config`: its region and endpoint, credentials from
/// `credentials` or else the standard chain, and no SDK retries (the issuer's own policy
/// bounds the whole issuance).
pub async fn sdk_config(
    config: &PcaConfig,
    credentials: Option<SharedCredentialsProvider>,
) -> SdkConfig {
    crate::aws::sdk_config(
        Some(&config.region),
        config.endpoint_url.as_deref(),
        credentials,
    )
    .await
}

impl PcaIssuer {
    /// An issuer using the standard AWS credential chain (IRSA on EKS).
    pub async fn new(config: PcaConfig) -> Result<Self, PcaError> {
        config.validate()?;
        let sdk = sdk_config(&config, None).await;
        Self::with_sdk_config(config, &sdk)
    }

    /// An issuer using an SDK configuration made elsewhere (tests: static credentials).
    pub fn with_sdk_config(config: PcaConfig, sdk: &SdkConfig) -> Result<Self, PcaError> {
        config.validate()?;
        Ok(Self {
            client: Client::new(sdk),
            config,
        })
    }

    pub fn config(&self) -> &PcaConfig {
        &self.config
    }

    /// A new intermediate for `trust_domain`, certified by Private CA, as a signer whose chain
    /// reaches Private CA's root. Retries within `config.retry.total`.
    pub async fn issue(&self, trust_domain: &str) -> Result<RootCa, PcaError> {
        let started = Instant::now();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = intermediate_params(trust_domain)
            .serialize_request(&key)?
            .pem()?;
        let (period, value) = validity_for(self.config.validity, SystemTime::now());
        let validity = Validity::builder()
            .r#type(period)
            .value(value)
            .build()
            .map_err(|e| PcaError::Config(e.to_string()))?;
        // One token for every retry of this issuance: a throttled request that did get
        // through is not issued twice.
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let issue = self
            .client
            .issue_certificate()
            .certificate_authority_arn(&self.config.ca_arn)
            .csr(Blob::new(csr.into_bytes()))
            .signing_algorithm(SigningAlgorithm::from(
                self.config.signing_algorithm.as_str(),
            ))
            .template_arn(&self.config.template_arn)
            .validity(validity)
            .idempotency_token(token);
        let issued = self
            .call("IssueCertificate", started, || issue.clone().send())
            .await?;
        let cert_arn = issued
            .certificate_arn()
            .ok_or(PcaError::Missing {
                operation: "IssueCertificate",
                field: "CertificateArn",
            })?
            .to_string();
        debug!(%cert_arn, "Private CA accepted the intermediate's CSR");

        let get = self
            .client
            .get_certificate()
            .certificate_authority_arn(&self.config.ca_arn)
            .certificate_arn(&cert_arn);
        let got = self
            .call("GetCertificate", started, || get.clone().send())
            .await?;
        let cert = got.certificate().ok_or(PcaError::Missing {
            operation: "GetCertificate",
            field: "Certificate",
        })?;
        let mut pool = match got.certificate_chain() {
            Some(bundle) => chain::split_pem(bundle).map_err(PcaError::Chain)?,
            None => Vec::new(),
        };
        let (mut above, mut complete) = chain::above(cert, &pool).map_err(PcaError::Chain)?;
        if !complete {
            // The chain stops short of the root: the CA's own certificate and chain reach it.
            pool.extend(self.ca_certificates(started).await?);
            (above, complete) = chain::above(cert, &pool).map_err(PcaError::Chain)?;
        }
        if !complete {
            return Err(PcaError::Chain(
                "neither GetCertificate nor GetCertificateAuthorityCertificate leads to a \
                 self-signed root"
                    .into(),
            ));
        }
        let signer = RootCa::from_issued(trust_domain, key, cert, &above)?;
        info!(
            %cert_arn,
            levels_above = above.len(),
            not_after = ?signer.not_after(),
            "Private CA issued a new intermediate"
        );
        Ok(signer)
    }

    async fn ca_certificates(&self, started: Instant) -> Result<Vec<String>, PcaError> {
        let request = self
            .client
            .get_certificate_authority_certificate()
            .certificate_authority_arn(&self.config.ca_arn);
        let out = self
            .call("GetCertificateAuthorityCertificate", started, || {
                request.clone().send()
            })
            .await?;
        let mut pems = Vec::new();
        for bundle in [out.certificate(), out.certificate_chain()]
            .into_iter()
            .flatten()
        {
            pems.extend(chain::split_pem(bundle).map_err(PcaError::Chain)?);
        }
        Ok(pems)
    }

    /// Sends a request until it succeeds, fails for good, or the issuance's time is up.
    async fn call<T, E, F>(
        &self,
        operation: &'static str,
        started: Instant,
        mut send: impl FnMut() -> F,
    ) -> Result<T, PcaError>
    where
        F: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let policy = &self.config.retry;
        let (mut attempts, mut failures) = (0u32, 0u32);
        loop {
            attempts += 1;
            let error = match send().await {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            let action = classify(failure_of(&error));
            if action == Action::Retry {
                failures += 1;
            }
            let elapsed = started.elapsed();
            let Some(wait) = policy.next_wait(action, failures, elapsed, fastrand::f64()) else {
                return Err(match action {
                    Action::Fail => PcaError::Call {
                        operation,
                        code: error.code().map(str::to_string),
                        message: DisplayErrorContext(&error).to_string(),
                    },
                    Action::Poll | Action::Retry => PcaError::GaveUp {
                        operation,
                        elapsed,
                        attempts,
                        last: DisplayErrorContext(&error).to_string(),
                    },
                });
            };
            if action == Action::Retry {
                warn!(operation, attempts, ?wait, error = %DisplayErrorContext(&error), "Private CA call failed; retrying");
            } else {
                debug!(
                    operation,
                    attempts, "certificate not issued yet; polling again"
                );
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn failure_of<E: ProvideErrorMetadata>(error: &SdkError<E>) -> Failure<'_> {
    match error {
        SdkError::ServiceError(service) => Failure::Service {
            code: service.err().code(),
            status: Some(service.raw().status().as_u16()),
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transport
        }
        _ => Failure::Local,
    }
}

/// Private CA's Validity for a lifetime: DAYS when it is whole days (what operators read in
/// the console), else an ABSOLUTE end (unix seconds) computed from `now`.
pub(super) fn validity_for(validity: Duration, now: SystemTime) -> (ValidityPeriodType, i64) {
    const DAY: u64 = 86_400;
    let secs = validity.as_secs().max(1);
    if secs.is_multiple_of(DAY) {
        return (
            ValidityPeriodType::Days,
            i64::try_from(secs / DAY).unwrap_or(i64::MAX),
        );
    }
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    (
        ValidityPeriodType::Absolute,
        i64::try_from(now.saturating_add(secs)).unwrap_or(i64::MAX),
    )
}

/// The CSR's content. Private CA takes the subject and key from it; the extensions come from
/// the template (CA:TRUE with the template's path length, keyCertSign).
fn intermediate_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(
        DnType::CommonName,
        format!("capstan intermediate CA ({trust_domain})"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509CertificationRequest};

    use super::*;

    #[test]
    fn whole_days_go_as_days_and_anything_else_as_an_absolute_end() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            validity_for(Duration::from_secs(30 * 86_400), now),
            (ValidityPeriodType::Days, 30)
        );
        assert_eq!(
            validity_for(Duration::from_secs(90), now),
            (ValidityPeriodType::Absolute, 1_800_000_090)
        );
        assert_eq!(
            validity_for(Duration::from_secs(36 * 3600), now),
            (ValidityPeriodType::Absolute, 1_800_000_000 + 36 * 3600)
        );
    }

    #[test]
    fn the_csr_names_the_trust_domain_and_asks_for_a_ca() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = intermediate_params("cluster.local")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let der = pem::parse(&csr).expect("pem block");
        let (_, request) = X509CertificationRequest::from_der(der.contents()).expect("a CSR");
        request.verify_signature().expect("signed by our key");
        let subject = request.certification_request_info.subject.to_string();
        assert!(subject.contains("O=cluster.local"), "{subject}");
        let asks_for_ca = request
            .requested_extensions()
            .into_iter()
            .flatten()
            .any(|e| matches!(e, ParsedExtension::BasicConstraints(bc) if bc.ca));
        assert!(asks_for_ca, "the CSR asks for CA:TRUE");
    }
}
