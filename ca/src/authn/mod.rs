//! Who is asking for a certificate: a bearer token turned into a Kubernetes service account.
//!
//! [`Authenticator`] is the boundary: the Kubernetes TokenReview implementation lives in the
//! operator (it needs a kube client), tests use fakes. [`CachedAuthenticator`] sits in front
//! of any of them so that agents renewing certificates do not each cost an apiserver call.

mod cache;

use std::future::Future;
use std::time::SystemTime;

pub use cache::{CacheConfig, CachedAuthenticator, DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES};

/// An authenticated workload: the service account its token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// When the token stops being valid, if it says (a JWT's `exp`); bounds how long the
    /// result may be cached.
    pub expires: Option<SystemTime>,
}

/// Why a token was not accepted. Messages never contain the token: build them with
/// [`AuthnError::refused`] / [`AuthnError::unavailable`] when the reason comes from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The token is not valid (bad signature, expired, wrong audience, not a service
    /// account): the caller must not retry with it.
    #[error("token refused: {0}")]
    Refused(String),
    /// The token could not be checked (the apiserver is unreachable, slow or refuses us):
    /// the caller may retry.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

impl AuthnError {
    /// A refusal whose `reason` may come from a third party (an apiserver's message): any
    /// copy of `token` in it is redacted, and it is bounded to [`MAX_REASON`] bytes.
    pub fn refused(reason: impl Into<String>, token: &str) -> Self {
        Self::Refused(redact(reason.into(), token))
    }

    /// Unavailability whose `reason` may come from a third party; any copy of `token` in it is
    /// redacted, and it is bounded to [`MAX_REASON`] bytes.
    pub fn unavailable(reason: impl Into<String>, token: &str) -> Self {
        Self::Unavailable(redact(reason.into(), token))
    }
}

/// Longest third-party reason kept: enough for an apiserver's message, not for a flood.
pub const MAX_REASON: usize = 512;

/// `reason` without `token` (redacted before shortening, so no prefix of it can survive the
/// cut) and at most [`MAX_REASON`] bytes.
fn redact(reason: String, token: &str) -> String {
    let mut reason = if token.is_empty() || !reason.contains(token) {
        reason
    } else {
        reason.replace(token, "<redacted token>")
    };
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Turns a bearer token into the service account it belongs to.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Caller, AuthnError>> + Send;
}

impl<A: Authenticator> Authenticator for std::sync::Arc<A> {
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Caller, AuthnError>> + Send {
        A::authenticate(self, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_party_reasons_lose_the_token() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let echoed = format!("invalid bearer token {token} (twice: {token})");
        for err in [
            AuthnError::refused(echoed.clone(), token),
            AuthnError::unavailable(echoed.clone(), token),
        ] {
            let text = err.to_string();
            assert!(!text.contains(token), "{text}");
            assert!(
                text.contains("invalid bearer token <redacted token>"),
                "{text}"
            );
        }
        assert_eq!(
            AuthnError::refused("expired", token),
            AuthnError::Refused("expired".into())
        );

        // A token straddling the length limit is redacted whole, not cut to a prefix.
        let long = format!("{}{token}{}", "x".repeat(MAX_REASON - 10), "y".repeat(100));
        let text = AuthnError::refused(long, token).to_string();
        assert!(!text.contains("eyJhbGci"), "{text}");
        assert!(text.len() < MAX_REASON + 64, "{} bytes", text.len());
        let wide = "é".repeat(MAX_REASON);
        let AuthnError::Refused(cut) = AuthnError::refused(wide, token) else {
            unreachable!("refused() builds a refusal");
        };
        assert!(
            cut.len() <= MAX_REASON + '…'.len_utf8(),
            "{} bytes",
            cut.len()
        );
    }
}
