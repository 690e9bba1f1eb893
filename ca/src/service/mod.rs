//! `IstioCertificateService/CreateCertificate`: a workload sends a CSR and its service-account
//! token, and gets back a certificate for the identity the token proves.
//!
//! The identity comes from the authenticated token only, never from the CSR (which could ask
//! for anyone's); from the CSR only the public key is used. Status codes tell an agent what to
//! do: `Unauthenticated` (fix the token), `Unavailable` (the token could not be checked now:
//! retry), `InvalidArgument` (fix the CSR), `Internal` (a bug or a broken CA).

mod metrics;
mod token;

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::api::{CreateCertificate, IstioCertificateRequest, IstioCertificateResponse};
use crate::authn::{Authenticator, AuthnError};
use crate::{Authority, CaError, SpiffeId};

pub use metrics::CaMetrics;
use metrics::Refusal;

/// The validity given when a request asks for none (Istio's default workload TTL).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest validity granted (Istio's default `MAX_WORKLOAD_CERT_TTL`, 90 days).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the service is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaServiceConfig {
    /// The trust domain of the identities issued (`spiffe://<trust_domain>/ns/..`).
    pub trust_domain: String,
    /// Granted when a request's `validity_duration` is 0 or negative.
    pub default_ttl: Duration,
    /// No certificate is valid for longer, whatever the request asks.
    pub max_ttl: Duration,
}

impl CaServiceConfig {
    /// `trust_domain` with the default TTLs.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }

    /// The validity to grant for a request's `validity_duration` (seconds).
    fn ttl_for(&self, requested_secs: i64) -> Duration {
        let asked = u64::try_from(requested_secs)
            .ok()
            .filter(|secs| *secs > 0)
            .map_or(self.default_ttl, Duration::from_secs);
        asked.min(self.max_ttl)
    }
}

/// The CSR service: authenticates the caller with `A`, signs with the [`Authority`]'s
/// current signer.
#[derive(Debug)]
pub struct CaService<A> {
    authority: Arc<Authority>,
    authenticator: A,
    config: CaServiceConfig,
    metrics: CaMetrics,
}

impl<A: Authenticator> CaService<A> {
    pub fn new(authority: Arc<Authority>, authenticator: A, config: CaServiceConfig) -> Self {
        Self {
            authority,
            authenticator,
            config,
            metrics: CaMetrics::default(),
        }
    }

    /// The counters of issued and refused requests (register them once with
    /// [`CaMetrics::register`]).
    pub fn metrics(&self) -> &CaMetrics {
        &self.metrics
    }

    pub fn authenticator(&self) -> &A {
        &self.authenticator
    }

    fn refuse(&self, refusal: Refusal, status: tonic::Status) -> tonic::Status {
        self.metrics.refused(refusal);
        status
    }

    async fn serve(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        let token = token::bearer(&metadata).map_err(|why| {
            debug!(%why, "certificate request without a usable token");
            self.refuse(
                why.refusal(),
                tonic::Status::unauthenticated(why.to_string()),
            )
        })?;
        let caller = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthnError::Refused(why) => {
                    debug!(%why, "certificate request with a refused token");
                    self.refuse(
                        Refusal::TokenRefused,
                        tonic::Status::unauthenticated(format!("token refused: {why}")),
                    )
                }
                AuthnError::Unavailable(why) => {
                    warn!(%why, "cannot authenticate certificate requests");
                    self.refuse(
                        Refusal::AuthnUnavailable,
                        tonic::Status::unavailable("the token cannot be checked now; retry"),
                    )
                }
            })?;
        let identity = SpiffeId::new(
            &self.config.trust_domain,
            &caller.namespace,
            &caller.service_account,
        );
        let ttl = self.config.ttl_for(request.validity_duration);
        let state = self.authority.current();
        match state
            .signer
            .sign_csr(&request.csr, &identity, ttl, self.config.max_ttl)
        {
            Ok(signed) => {
                self.metrics.issued();
                info!(%identity, ttl_secs = signed.ttl.as_secs(), "issued a workload certificate");
                Ok(IstioCertificateResponse {
                    cert_chain: signed.chain_pem,
                })
            }
            Err(e @ (CaError::InvalidCsr | CaError::CsrTooLarge(_))) => {
                debug!(%identity, error = %e, "refused a certificate request");
                Err(self.refuse(
                    Refusal::InvalidCsr,
                    tonic::Status::invalid_argument(e.to_string()),
                ))
            }
            Err(e) => {
                // CaError never carries key material; the caller still learns nothing of it.
                warn!(%identity, error = %e, "signing a workload certificate failed");
                Err(self.refuse(
                    Refusal::Internal,
                    tonic::Status::internal("signing the certificate failed"),
                ))
            }
        }
    }
}

impl<A: Authenticator> CreateCertificate for CaService<A> {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.serve(request).await.map(tonic::Response::new)
    }
}

#[cfg(test)]
mod tests;
