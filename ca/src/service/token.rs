//! The bearer token of a request: `authorization: Bearer <token>` in the gRPC metadata, as
//! Istio's agent sends it.

use tonic::metadata::MetadataMap;

use super::metrics::Refusal;

/// Longest token accepted. A Kubernetes service-account JWT is ~1 KiB; the limit keeps an
/// absurd header from reaching the authenticator (and the apiserver) at all.
pub(super) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request carries no usable token. The text never quotes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TokenError {
    #[error("no authorization metadata: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization metadata is not `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
}

impl TokenError {
    pub(super) fn refusal(self) -> Refusal {
        match self {
            Self::Missing => Refusal::MissingToken,
            Self::Malformed | Self::TooLong => Refusal::MalformedToken,
        }
    }
}

/// The token of `authorization: Bearer <token>` (the scheme in any case, as RFC 7235 allows).
pub(super) fn bearer(metadata: &MetadataMap) -> Result<&str, TokenError> {
    let value = metadata.get("authorization").ok_or(TokenError::Missing)?;
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(TokenError::Malformed);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().expect("ascii"));
        map
    }

    #[test]
    fn takes_the_token_of_a_bearer_header() {
        assert_eq!(bearer(&with("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer(&with("bearer  abc ")), Ok("abc"));
    }

    #[test]
    fn refuses_anything_else() {
        assert_eq!(bearer(&MetadataMap::new()), Err(TokenError::Missing));
        for value in [
            "abc",
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearerabc",
        ] {
            assert_eq!(
                bearer(&with(value)),
                Err(TokenError::Malformed),
                "{value:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer(&with(&long)), Err(TokenError::TooLong));
        assert!(!TokenError::Malformed.to_string().contains("Basic"));
    }
}
