//! The service with a fake authenticator: identity from the token only, status codes per
//! case, the TTL policy, and a chain openssl accepts.

use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;
use crate::authn::Caller;
use crate::root::csr_tests::openssl_verify;
use crate::{CaState, MAX_CSR_PEM, RootCa};

const HOUR: Duration = Duration::from_secs(3600);
const TOKEN: &str = "valid-token-for-bookinfo-reviews";

/// `TOKEN` is bookinfo/reviews; `down` cannot be checked; anything else is refused.
#[derive(Default)]
struct FakeAuthn {
    calls: AtomicUsize,
}

impl Authenticator for FakeAuthn {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match token {
            TOKEN => Ok(Caller {
                namespace: "bookinfo".into(),
                service_account: "reviews".into(),
                expires: None,
            }),
            "down" => Err(AuthnError::Unavailable("apiserver unreachable".into())),
            _ => Err(AuthnError::Refused("signature invalid".into())),
        }
    }
}

fn service(config: CaServiceConfig) -> (CaService<FakeAuthn>, String) {
    let root = RootCa::generate("cluster.local", 365 * 24 * HOUR).expect("root");
    let root_pem = root.root_pem().to_string();
    let authority = Arc::new(Authority::new(CaState::new(root)));
    (
        CaService::new(authority, FakeAuthn::default(), config),
        root_pem,
    )
}

fn csr_for(uri: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().expect("uri"))];
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn request(
    authorization: Option<&str>,
    csr: String,
    validity: i64,
) -> tonic::Request<IstioCertificateRequest> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity,
        metadata: None,
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
    }
    request
}

fn bearer() -> Option<String> {
    Some(format!("Bearer {TOKEN}"))
}

/// URI SANs and validity in seconds of a PEM certificate.
fn inspect(pem: &str) -> (Vec<String>, i64) {
    let (uris, seconds, _) = crate::root::csr_tests::inspect(pem);
    (uris, seconds)
}

#[tokio::test]
async fn the_certificate_names_the_token_identity_not_the_csrs() {
    let (service, root_pem) = service(CaServiceConfig::new("cluster.local"));
    let csr = csr_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let chain = service
        .create_certificate(request(bearer().as_deref(), csr, 3600))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], root_pem);
    let (uris, _) = inspect(&chain[0]);
    assert_eq!(uris, ["spiffe://cluster.local/ns/bookinfo/sa/reviews"]);
    assert!(openssl_verify(&root_pem, &chain[0]), "openssl accepts it");
    let (_, other_root) = self::service(CaServiceConfig::new("cluster.local"));
    assert!(
        !openssl_verify(&other_root, &chain[0]),
        "another root does not"
    );
    assert_eq!(service.metrics().issued_count(), 1);
}

#[tokio::test]
async fn the_trust_domain_is_the_configured_one() {
    let (service, _) = service(CaServiceConfig::new("example.org"));
    let csr = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let chain = service
        .create_certificate(request(bearer().as_deref(), csr, 0))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(
        inspect(&chain[0]).0,
        ["spiffe://example.org/ns/bookinfo/sa/reviews"]
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated() {
    let (service, _) = service(CaServiceConfig::new("cluster.local"));
    let csr = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let cases = [
        (None, tonic::Code::Unauthenticated, "missing_token"),
        (
            Some(TOKEN.to_string()),
            tonic::Code::Unauthenticated,
            "malformed_token",
        ),
        (
            Some(format!("Basic {TOKEN}")),
            tonic::Code::Unauthenticated,
            "malformed_token",
        ),
        (
            Some("Bearer ".into()),
            tonic::Code::Unauthenticated,
            "malformed_token",
        ),
        (
            Some("Bearer forged.jwt.token".into()),
            tonic::Code::Unauthenticated,
            "token_refused",
        ),
        (
            Some("Bearer down".into()),
            tonic::Code::Unavailable,
            "authn_unavailable",
        ),
    ];
    for (authorization, code, reason) in cases {
        let before = service.metrics().refused_count(reason);
        let status = service
            .create_certificate(request(authorization.as_deref(), csr.clone(), 0))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{authorization:?}: {status:?}");
        assert!(!status.message().contains(TOKEN), "{status:?}");
        assert!(!status.message().contains("forged"), "{status:?}");
        assert_eq!(
            service.metrics().refused_count(reason),
            before + 1,
            "{reason}"
        );
    }
    // Only well-formed bearer tokens reach the authenticator.
    assert_eq!(service.authenticator().calls.load(Ordering::SeqCst), 2);
    assert_eq!(service.metrics().issued_count(), 0);
}

#[tokio::test]
async fn malformed_and_oversized_csrs_are_invalid_arguments() {
    let (service, _) = service(CaServiceConfig::new("cluster.local"));
    let valid = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    let truncated = valid[..valid.len() / 2].to_string();
    let oversized = format!("{valid}{}", "\n".repeat(MAX_CSR_PEM));
    for csr in [String::new(), "not a csr".into(), truncated, oversized] {
        let status = service
            .create_certificate(request(bearer().as_deref(), csr, 0))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(service.metrics().refused_count("invalid_csr"), 4);
}

#[tokio::test]
async fn the_ttl_defaults_and_is_capped() {
    let config = CaServiceConfig {
        default_ttl: 2 * HOUR,
        max_ttl: 48 * HOUR,
        ..CaServiceConfig::new("cluster.local")
    };
    let (service, _) = service(config);
    let csr = csr_for("spiffe://cluster.local/ns/bookinfo/sa/reviews");
    // Certificates start five minutes back, for clocks behind ours.
    let skew = 300;
    for (asked, granted) in [
        (0, 2 * 3600),
        (-60, 2 * 3600),
        (3600, 3600),
        (10 * 365 * 24 * 3600, 48 * 3600),
        (i64::MAX, 48 * 3600),
    ] {
        let chain = service
            .create_certificate(request(bearer().as_deref(), csr.clone(), asked))
            .await
            .expect("issued")
            .into_inner()
            .cert_chain;
        assert_eq!(inspect(&chain[0]).1, granted + skew, "asked {asked}");
    }
}

#[test]
fn a_default_ttl_above_the_cap_is_capped() {
    let config = CaServiceConfig {
        default_ttl: 10 * HOUR,
        max_ttl: HOUR,
        ..CaServiceConfig::new("cluster.local")
    };
    assert_eq!(config.ttl_for(0), HOUR);
    assert_eq!(CaServiceConfig::new("x").ttl_for(0), DEFAULT_TTL);
}
