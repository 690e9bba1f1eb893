//! Counters of the CSR service: certificates issued, requests refused by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a request got no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MissingToken,
    MalformedToken,
    TokenRefused,
    AuthnUnavailable,
    InvalidCsr,
    Internal,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedToken => "malformed_token",
            Self::TokenRefused => "token_refused",
            Self::AuthnUnavailable => "authn_unavailable",
            Self::InvalidCsr => "invalid_csr",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// `capstan_ca_certificates_issued_total` and `capstan_ca_requests_refused_total{reason}`.
/// Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct CaMetrics {
    issued: Counter,
    refused: Family<RefusedLabels, Counter>,
}

impl CaMetrics {
    /// Registers `ca_certificates_issued` and `ca_requests_refused{reason}` (under capstan's
    /// `capstan` prefix: `capstan_ca_...`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ca_certificates_issued",
            "Workload certificates issued by CreateCertificate",
            self.issued.clone(),
        );
        registry.register(
            "ca_requests_refused",
            "CreateCertificate requests refused, by reason: missing_token, malformed_token, \
             token_refused, authn_unavailable, invalid_csr, internal",
            self.refused.clone(),
        );
    }

    /// Certificates issued so far.
    pub fn issued_count(&self) -> u64 {
        self.issued.get()
    }

    /// Requests refused so far for `reason` (a label value, e.g. `token_refused`).
    pub fn refused_count(&self, reason: &str) -> u64 {
        [
            Refusal::MissingToken,
            Refusal::MalformedToken,
            Refusal::TokenRefused,
            Refusal::AuthnUnavailable,
            Refusal::InvalidCsr,
            Refusal::Internal,
        ]
        .into_iter()
        .find(|r| r.label() == reason)
        .and_then(|r| {
            self.refused
                .get(&RefusedLabels { reason: r.label() })
                .map(|counter| counter.get())
        })
        .unwrap_or(0)
    }

    pub(crate) fn issued(&self) {
        self.issued.inc();
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        self.refused
            .get_or_create(&RefusedLabels {
                reason: refusal.label(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_under_their_names() {
        let metrics = CaMetrics::default();
        // As `capstan run` registers them: in its registry prefixed `capstan`.
        let mut registry = Registry::with_prefix("capstan");
        metrics.register(&mut registry);
        metrics.issued();
        metrics.refused(Refusal::TokenRefused);
        metrics.refused(Refusal::TokenRefused);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("capstan_ca_certificates_issued_total 1"),
            "{text}"
        );
        assert!(
            text.contains("capstan_ca_requests_refused_total{reason=\"token_refused\"} 2"),
            "{text}"
        );
        assert_eq!(metrics.refused_count("token_refused"), 2);
        assert_eq!(metrics.refused_count("invalid_csr"), 0);
        assert_eq!(metrics.issued_count(), 1);
    }
}
