//! Workload authentication for the CA: a service-account token is checked by the apiserver
//! with a TokenReview (`authentication.k8s.io/v1`), as istiod does. capstan's ServiceAccount
//! needs `create` on `tokenreviews` (the `system:auth-delegator` ClusterRole has it;
//! `charts/manifests/rbac.yaml` grants it).
//!
//! Only service accounts are accepted: the username must be
//! `system:serviceaccount:<namespace>:<name>`, and the token must be meant for one of our
//! audiences (default `istio-ca`, what Istio's agent asks its projected token for), so a
//! token minted for some other service cannot be replayed to get a certificate.

mod jwt;

use std::time::Duration;

use capstan_ca::authn::{Authenticator, AuthnError, Caller};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use tracing::debug;

/// The audience Istio's agent requests for the token it sends the CA.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// How long one TokenReview may take before the request is answered `Unavailable`.
pub const TOKEN_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Authenticates bearer tokens with TokenReviews against the apiserver of `client`.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audiences", &self.audiences)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Accepting tokens for [`DEFAULT_AUDIENCE`].
    pub fn new(client: kube::Client) -> Self {
        Self::with_audiences(client, vec![DEFAULT_AUDIENCE.to_string()])
    }

    /// Accepting tokens for any of `audiences` (an empty list means [`DEFAULT_AUDIENCE`]:
    /// without one, the apiserver would accept tokens meant for itself).
    pub fn with_audiences(client: kube::Client, mut audiences: Vec<String>) -> Self {
        if audiences.is_empty() {
            audiences.push(DEFAULT_AUDIENCE.to_string());
        }
        Self {
            client,
            audiences,
            timeout: TOKEN_REVIEW_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
}

impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            match tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
            {
                Err(_) => {
                    return Err(AuthnError::Unavailable(format!(
                        "the apiserver did not answer a TokenReview within {:?}",
                        self.timeout
                    )));
                }
                // Unreachable, overloaded, or refusing capstan itself (its RBAC): not the
                // caller's fault, so it may retry.
                Ok(Err(e)) => {
                    return Err(AuthnError::unavailable(
                        format!("TokenReview failed: {e}"),
                        token,
                    ));
                }
                Ok(Ok(reviewed)) => reviewed,
            };
        let (namespace, service_account) = judge(reviewed.status, &self.audiences, token)?;
        debug!(%namespace, %service_account, "token reviewed");
        Ok(Caller {
            namespace,
            service_account,
            expires: jwt::expiry(token),
        })
    }
}

/// The namespace and service account a TokenReview's status vouches for, or why not.
fn judge(
    status: Option<TokenReviewStatus>,
    audiences: &[String],
    token: &str,
) -> Result<(String, String), AuthnError> {
    let status = status.ok_or_else(|| {
        AuthnError::Unavailable("the apiserver returned a TokenReview without status".into())
    })?;
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(AuthnError::refused(why, token));
    }
    let granted = status.audiences.unwrap_or_default();
    if !granted.iter().any(|a| audiences.contains(a)) {
        return Err(AuthnError::Refused(format!(
            "the token is not meant for {audiences:?}"
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    service_account(&username).ok_or_else(|| {
        AuthnError::Refused("the token does not belong to a Kubernetes service account".into())
    })
}

/// `(namespace, name)` of `system:serviceaccount:<namespace>:<name>`, both valid Kubernetes
/// names (so neither can smuggle a `/` into the SPIFFE id).
fn service_account(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (dns_name(namespace, 63, false) && dns_name(name, 253, true))
        .then(|| (namespace.to_string(), name.to_string()))
}

/// A DNS-1123 label (or, with `dots`, subdomain) of at most `max` characters.
fn dns_name(name: &str, max: usize, dots: bool) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= max
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

#[cfg(test)]
mod tests;
