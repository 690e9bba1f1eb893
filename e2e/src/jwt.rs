//! JSON Web Tokens for tests: an issuer with its own P-256 key (ES256), its JWKS, and tokens
//! it signs, for RequestAuthentication tests against real Envoys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// An issuer and its signing key.
pub struct Issuer {
    pub issuer: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Issuer {
    /// `issuer` (the `iss` it signs) with a new key.
    pub fn new(issuer: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("reading the P-256 key: {e}"))?;
        Ok(Self {
            issuer: issuer.to_string(),
            key,
            rng,
        })
    }

    /// The JWKS with this issuer's public key (key id `k1`), as a JSON string.
    pub fn jwks(&self) -> String {
        // An uncompressed point: 0x04, then x and y (32 bytes each).
        let point = self.key.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    }

    /// A token for `subject` expiring at `expires` (Unix seconds).
    pub fn token(&self, subject: &str, expires: i64) -> anyhow::Result<String> {
        self.token_as(&self.issuer, subject, expires)
    }

    /// A token claiming issuer `iss` (perhaps not this one's), signed with this key.
    pub fn token_as(&self, iss: &str, subject: &str, expires: i64) -> anyhow::Result<String> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let claims = serde_json::json!({
            "iss": iss, "sub": subject, "iat": now() - 60, "exp": expires,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signed.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a token"))?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
