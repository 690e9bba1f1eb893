//! The `exp` claim of a JWT, read without verifying the signature: only ever called on a
//! token the apiserver has just verified, to know how long its verdict may be reused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Longest encoded payload decoded. A service-account token's payload is ~600 bytes; a
/// bigger one is not parsed at all (the result is then cached for the maximum age only).
pub(super) const MAX_PAYLOAD: usize = 8 * 1024;

#[derive(serde::Deserialize)]
struct Claims {
    exp: Option<serde_json::Number>,
}

/// When `token` expires, if it is a JWT with a numeric `exp` claim.
pub(super) fn expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    let exp = claims.exp?;
    // NumericDate may carry a fraction; the whole seconds are what matters here.
    let secs = exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn reads_the_exp_claim() {
        let at = |secs| Some(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(
            expiry(&jwt(r#"{"exp":1893456000,"sub":"x"}"#)),
            at(1_893_456_000)
        );
        assert_eq!(expiry(&jwt(r#"{"exp":1893456000.75}"#)), at(1_893_456_000));
    }

    #[test]
    fn anything_else_has_no_expiry() {
        for token in [
            jwt(r#"{"sub":"x"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt("not json"),
            "a.b".to_string(),
            "a.%%%.c".to_string(),
            "a.b.c.d".to_string(),
            "0123456789abcdef".to_string(),
        ] {
            assert_eq!(expiry(&token), None, "{token}");
        }
        let padding = " ".repeat(MAX_PAYLOAD);
        let big = jwt(&format!(r#"{{"exp":1893456000,"pad":"{padding}"}}"#));
        assert_eq!(expiry(&big), None, "oversized payloads are not decoded");
    }
}
