//! AWS Private CA as the issuer of capstan's intermediate (docs/ca-pca.md).
//!
//! capstan makes the intermediate's key and CSR; Private CA certifies it
//! (IssueCertificate with a subordinate-CA template, then GetCertificate); the key never
//! leaves the process. Workload certificates are then signed locally by that intermediate:
//! Private CA is called once per renewal, never per workload. [`spawn_renewal`] replaces the
//! intermediate before it expires and keeps the old one while Private CA fails.

mod chain;
mod issuer;
mod renew;
mod retry;

use std::time::Duration;

pub use aws_config::SdkConfig;
pub use issuer::{PcaIssuer, sdk_config};
pub use renew::{RenewalStatus, RenewalTask, renew_forever, renewal_time, spawn_renewal};
pub use retry::{Action, Failure, RetryPolicy, classify};

use crate::IssuedCertError;

/// The subordinate-CA template whose path length (0) suits an intermediate that signs only
/// workload certificates.
pub const DEFAULT_TEMPLATE_ARN: &str =
    "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1";

/// Where and how to have the intermediate issued.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaConfig {
    /// The issuing Private CA: `arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>`.
    pub ca_arn: String,
    pub region: String,
    /// Another endpoint than the region's (a VPC endpoint, or a test double on loopback).
    pub endpoint_url: Option<String>,
    /// A subordinate-CA template; an end-entity template yields a certificate that cannot
    /// sign, which is refused.
    pub template_arn: String,
    /// The intermediate's lifetime. Whole days are sent as DAYS, anything else as an
    /// ABSOLUTE end time.
    pub validity: Duration,
    /// Private CA's name for the algorithm its CA key signs with: `SHA256WITHRSA` for an RSA
    /// CA, `SHA256WITHECDSA` for an EC one (it must match the CA's key type).
    pub signing_algorithm: String,
    /// The fraction of the intermediate's life after which it is renewed, in (0, 1).
    pub renew_at: f64,
    pub retry: RetryPolicy,
}

impl PcaConfig {
    /// The defaults: the PathLen0 subordinate template, 30 days, SHA256WITHRSA (Private CA's
    /// usual RSA CA), renewal at two thirds of the life.
    pub fn new(ca_arn: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            ca_arn: ca_arn.into(),
            region: region.into(),
            endpoint_url: None,
            template_arn: DEFAULT_TEMPLATE_ARN.to_string(),
            validity: Duration::from_secs(30 * 86_400),
            signing_algorithm: "SHA256WITHRSA".to_string(),
            renew_at: 2.0 / 3.0,
            retry: RetryPolicy::default(),
        }
    }

    pub fn validate(&self) -> Result<(), PcaError> {
        let bad = |why: &str| Err(PcaError::Config(why.to_string()));
        if !self.ca_arn.starts_with("arn:") || !self.ca_arn.contains(":certificate-authority/") {
            return bad("ca_arn must be a Private CA ARN (…:certificate-authority/<id>)");
        }
        if !self.template_arn.starts_with("arn:") {
            return bad("template_arn must be an ARN");
        }
        if self.region.is_empty() {
            return bad("region must be set");
        }
        if self.validity < Duration::from_secs(1) {
            return bad("validity must be at least a second");
        }
        if !(self.renew_at > 0.0 && self.renew_at < 1.0) {
            return bad("renew_at must be a fraction between 0 and 1 (exclusive)");
        }
        if self.retry.total.is_zero() {
            return bad("retry.total must be positive");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PcaError {
    #[error("invalid Private CA configuration: {0}")]
    Config(String),
    #[error("generating the intermediate's key or CSR failed: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("{operation} failed ({}): {message}", code.as_deref().unwrap_or("no error code"))]
    Call {
        operation: &'static str,
        code: Option<String>,
        message: String,
    },
    #[error("{operation} still failing after {elapsed:?} and {attempts} attempts: {last}")]
    GaveUp {
        operation: &'static str,
        elapsed: Duration,
        attempts: u32,
        last: String,
    },
    #[error("{operation} answered without {field}")]
    Missing {
        operation: &'static str,
        field: &'static str,
    },
    #[error("the certificate chain Private CA returned is unusable: {0}")]
    Chain(String),
    #[error("Private CA issued a certificate capstan cannot sign with: {0}")]
    Issued(#[from] IssuedCertError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/abc";

    #[test]
    fn defaults_validate_and_nonsense_is_refused() {
        let config = PcaConfig::new(ARN, "eu-west-1");
        config.validate().expect("defaults are valid");
        assert_eq!(config.template_arn, DEFAULT_TEMPLATE_ARN);

        let mut c = config.clone();
        c.renew_at = 1.0;
        assert!(matches!(c.validate(), Err(PcaError::Config(_))));
        let mut c = config.clone();
        c.renew_at = f64::NAN;
        assert!(matches!(c.validate(), Err(PcaError::Config(_))));
        let mut c = config.clone();
        c.ca_arn = "my-ca".into();
        assert!(matches!(c.validate(), Err(PcaError::Config(_))));
        let mut c = config;
        c.validity = Duration::ZERO;
        assert!(matches!(c.validate(), Err(PcaError::Config(_))));
    }
}
