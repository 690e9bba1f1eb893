//! The CSR service (`IstioCertificateService/CreateCertificate`) against a real kube-apiserver:
//! tokens are judged by TokenReviews sent with capstan's own credentials (so its RBAC is
//! exercised), the certificate names the token's service account whatever the CSR asks, and
//! every way a token can be wrong ends in `Unauthenticated`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use capstan::identity::TokenReviewAuthenticator;
use capstan_ca::api::{IstioCertificateClient, IstioCertificateRequest, IstioCertificateServer};
use capstan_ca::authn::{Authenticator, AuthnError, CacheConfig, CachedAuthenticator, Caller};
use capstan_ca::{Authority, CaService, CaServiceConfig, CaState, RootCa};
use capstan_e2e::kube::{KubeCluster, pki};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::Value;
use tonic::transport::Channel;

const TRUST_DOMAIN: &str = "cluster.local";

/// Counts the TokenReviews the CA sends (the apiserver exposes no such count).
struct Counting<A> {
    inner: A,
    calls: AtomicUsize,
}

impl<A: Authenticator> Authenticator for Counting<A> {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.authenticate(token).await
    }
}

type Service = CaService<CachedAuthenticator<Counting<TokenReviewAuthenticator>>>;

/// A CA served by tonic on 127.0.0.1, authenticating with capstan's kubeconfig.
struct Ca {
    client: IstioCertificateClient<Channel>,
    root_pem: String,
    service: Arc<Service>,
}

impl Ca {
    /// A CA reviewing tokens as capstan (`kube.capstan_kubeconfig()`).
    async fn start(kube: &KubeCluster) -> anyhow::Result<Self> {
        Self::start_as(kube.capstan_kubeconfig()).await
    }

    /// A CA reviewing tokens as the user of `kubeconfig`.
    async fn start_as(kubeconfig: &Path) -> anyhow::Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let reviewer = TokenReviewAuthenticator::new(kube::Client::try_from(config)?);
        let counting = Counting {
            inner: reviewer,
            calls: AtomicUsize::new(0),
        };
        let authn = CachedAuthenticator::new(counting, CacheConfig::default());
        let root = RootCa::generate(TRUST_DOMAIN, Duration::from_secs(30 * 86_400))?;
        let root_pem = root.root_pem().to_string();
        let authority = Arc::new(Authority::new(CaState::new(root)));
        let service = Arc::new(CaService::new(
            authority,
            authn,
            CaServiceConfig::new(TRUST_DOMAIN),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IstioCertificateServer::from_arc(Arc::clone(&service)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            client: IstioCertificateClient::new(channel),
            root_pem,
            service,
        })
    }

    /// TokenReviews sent so far.
    fn reviews(&self) -> usize {
        self.service
            .authenticator()
            .inner()
            .calls
            .load(Ordering::SeqCst)
    }

    /// The chain issued for `csr` with `token` (if any) as the bearer token.
    async fn ask(&self, token: Option<&str>, csr: &str) -> Result<Vec<String>, tonic::Status> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.to_string(),
            validity_duration: 3600,
            metadata: None,
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("token is not ASCII"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = self.client.clone();
        Ok(client
            .create_certificate(request)
            .await?
            .into_inner()
            .cert_chain)
    }
}

/// A namespace with ServiceAccount `sa`.
async fn namespace_with_sa(kube: &KubeCluster, prefix: &str, sa: &str) -> anyhow::Result<String> {
    let ns = kube.create_namespace(prefix).await?;
    kube.kubectl(&["create", "serviceaccount", sa, "-n", &ns])
        .await?;
    Ok(ns)
}

/// `kubectl create token sa -n ns --audience audience` (a TokenRequest, as a kubelet makes).
async fn token(kube: &KubeCluster, ns: &str, sa: &str, audience: &str) -> anyhow::Result<String> {
    let out = kube
        .kubectl(&["create", "token", sa, "-n", ns, "--audience", audience])
        .await?;
    Ok(out.trim().to_string())
}

fn csr_asking_for(uri: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.to_string().try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// `openssl verify` of `leaf` against `root`, and the leaf's URI SANs as openssl prints them.
fn openssl_check(root: &str, leaf: &str) -> anyhow::Result<(bool, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let (root_path, leaf_path) = (dir.path().join("root.pem"), dir.path().join("leaf.pem"));
    std::fs::write(&root_path, root)?;
    std::fs::write(&leaf_path, leaf)?;
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_path)
        .arg(&leaf_path)
        .output()
        .context("running openssl verify")?
        .status
        .success();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf_path)
        .output()
        .context("running openssl x509")?;
    ensure!(text.status.success(), "openssl x509: {text:?}");
    let uris = String::from_utf8_lossy(&text.stdout)
        .split([',', '\n'])
        .filter_map(|part| part.trim().strip_prefix("URI:").map(str::to_string))
        .collect();
    Ok((verified, uris))
}

/// The header and claims of a JWT.
fn decode_jwt(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut part = || -> anyhow::Result<Value> {
        let encoded = parts.next().context("not a JWT")?;
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded)?)?)
    };
    Ok((part()?, part()?))
}

/// A compact ES256 JWT of `header` and `claims` signed with the PKCS#8 key `key_der`.
fn sign_jwt(header: &Value, claims: &Value, key_der: &[u8]) -> anyhow::Result<String> {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key_der, &rng)
        .map_err(|e| anyhow::anyhow!("not a P-256 PKCS#8 key: {e}"))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let signature = key
        .sign(&rng, input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing failed"))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Checks that `result` is the status `code` and returns its message (also printed, visible
/// with `--nocapture`).
fn expect_code(
    result: Result<Vec<String>, tonic::Status>,
    code: tonic::Code,
) -> anyhow::Result<String> {
    match result {
        Ok(_) => bail!("a certificate was issued; expected {code:?}"),
        Err(status) if status.code() == code => {
            eprintln!("{code:?}: {}", status.message());
            Ok(status.message().to_string())
        }
        Err(status) => bail!("expected {code:?}, got {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_gets_a_certificate_for_its_own_identity() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let ns = namespace_with_sa(kube, "ca-issue", "reviews").await?;
    let ca = Ca::start(kube).await?;
    let token = token(kube, &ns, "reviews", "istio-ca").await?;
    let csr = csr_asking_for("spiffe://cluster.local/ns/kube-system/sa/admin")?;

    let chain = ca.ask(Some(&token), &csr).await?;
    ensure!(
        chain.len() == 2,
        "leaf and root expected: {} PEMs",
        chain.len()
    );
    ensure!(chain[1] == ca.root_pem, "the chain ends with another root");
    let (verified, uris) = openssl_check(&ca.root_pem, &chain[0])?;
    ensure!(
        verified,
        "openssl does not verify the leaf against the root"
    );
    ensure!(
        uris == [format!("spiffe://cluster.local/ns/{ns}/sa/reviews")],
        "leaf SANs: {uris:?}"
    );
    ensure!(ca.reviews() == 1, "{} TokenReviews", ca.reviews());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_forged_expired_and_missing_tokens_are_unauthenticated() -> anyhow::Result<()>
{
    let kube = KubeCluster::shared().await?;
    let ns = namespace_with_sa(kube, "ca-refuse", "ratings").await?;
    let ca = Ca::start(kube).await?;
    let csr = csr_asking_for(&format!("spiffe://cluster.local/ns/{ns}/sa/ratings"))?;

    let other_audience = token(kube, &ns, "ratings", "other").await?;
    let why = expect_code(
        ca.ask(Some(&other_audience), &csr).await,
        tonic::Code::Unauthenticated,
    )
    .context("a token for audience `other`")?;
    // The apiserver's reasons (v1.36) show each token is refused for the intended cause.
    ensure!(why.contains("audiences"), "{why}");

    // Tokens minted here: the claims of a real one, re-signed.
    let real = token(kube, &ns, "ratings", "istio-ca").await?;
    let (header, claims) = decode_jwt(&real)?;
    let sa_pem = std::fs::read_to_string(kube.service_account_signing_key())?;
    let sa_key = rcgen::KeyPair::from_pem(&sa_pem)?.serialize_der();
    // The control: the apiserver's key and the claims unchanged are accepted, so the
    // refusals below are about the key and the expiry, not about how these are made.
    let resigned = sign_jwt(&header, &claims, &sa_key)?;
    ensure!(resigned != real, "ECDSA signatures are randomised");
    ca.ask(Some(&resigned), &csr)
        .await
        .context("the same claims re-signed with the apiserver's key")?;

    let forger =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
    let forged = sign_jwt(&header, &claims, forger.as_ref())?;
    let why = expect_code(
        ca.ask(Some(&forged), &csr).await,
        tonic::Code::Unauthenticated,
    )
    .context("a token signed with another key")?;
    ensure!(why.contains("cryptographic"), "{why}");

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut stale = claims.clone();
    stale["iat"] = (now - 7200).into();
    stale["nbf"] = (now - 7200).into();
    stale["exp"] = (now - 3600).into();
    let expired = sign_jwt(&header, &stale, &sa_key)?;
    let why = expect_code(
        ca.ask(Some(&expired), &csr).await,
        tonic::Code::Unauthenticated,
    )
    .context("a token that expired an hour ago")?;
    ensure!(why.contains("expired"), "{why}");

    expect_code(ca.ask(None, &csr).await, tonic::Code::Unauthenticated).context("no token")?;
    // Every token but the missing one went to the apiserver; refusals are not cached.
    ensure!(ca.reviews() == 4, "{} TokenReviews", ca.reviews());
    expect_code(
        ca.ask(Some(&forged), &csr).await,
        tonic::Code::Unauthenticated,
    )?;
    ensure!(ca.reviews() == 5, "{} TokenReviews", ca.reviews());
    let metrics = ca.service.metrics();
    ensure!(metrics.refused_count("token_refused") == 4);
    ensure!(metrics.refused_count("missing_token") == 1);
    ensure!(metrics.issued_count() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_csr_is_an_invalid_argument() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let ns = namespace_with_sa(kube, "ca-csr", "details").await?;
    let ca = Ca::start(kube).await?;
    let token = token(kube, &ns, "details", "istio-ca").await?;
    let csr = csr_asking_for(&format!("spiffe://cluster.local/ns/{ns}/sa/details"))?;
    let broken = csr.replace("MI", "mi");
    for bad in ["", "not a CSR", broken.as_str()] {
        expect_code(
            ca.ask(Some(&token), bad).await,
            tonic::Code::InvalidArgument,
        )
        .with_context(|| format!("CSR {bad:?}"))?;
    }
    ca.ask(Some(&token), &csr)
        .await
        .context("the intact CSR with the same token")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_token_cost_one_token_review() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let ns = namespace_with_sa(kube, "ca-burst", "productpage").await?;
    let ca = Arc::new(Ca::start(kube).await?);
    let token = token(kube, &ns, "productpage", "istio-ca").await?;
    let expected = format!("spiffe://cluster.local/ns/{ns}/sa/productpage");
    // The CSRs first, so that the 20 requests leave together.
    let csrs = (0..20)
        .map(|_| csr_asking_for(&expected))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut requests = tokio::task::JoinSet::new();
    for csr in csrs {
        let (ca, token) = (Arc::clone(&ca), token.clone());
        requests.spawn(async move { ca.ask(Some(&token), &csr).await });
    }
    let chains = requests.join_all().await;
    for chain in chains {
        let chain = chain?;
        let (verified, uris) = openssl_check(&ca.root_pem, &chain[0])?;
        ensure!(verified && uris == [expected.clone()], "{uris:?}");
    }
    ensure!(
        ca.reviews() == 1,
        "20 requests made {} TokenReviews",
        ca.reviews()
    );
    ensure!(ca.service.metrics().issued_count() == 20);
    Ok(())
}

/// When the apiserver cannot be reached the answer is `Unavailable`, so agents retry rather
/// than give up on their token; a token reviewed before the outage is still served from the
/// cache. A private cluster: stopping the shared apiserver would fail the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_apiserver_is_unavailable_and_cached_tokens_still_work() -> anyhow::Result<()>
{
    let kube = KubeCluster::start("ca_token_review-outage").await?;
    let ns = namespace_with_sa(&kube, "ca-outage", "reviews").await?;
    let ca = Ca::start(&kube).await?;
    let reviewed = token(&kube, &ns, "reviews", "istio-ca").await?;
    let unreviewed = token(&kube, &ns, "reviews", "istio-ca").await?;
    let csr = csr_asking_for(&format!("spiffe://cluster.local/ns/{ns}/sa/reviews"))?;
    ca.ask(Some(&reviewed), &csr).await?;

    kube.stop_apiserver().await?;
    expect_code(
        ca.ask(Some(&unreviewed), &csr).await,
        tonic::Code::Unavailable,
    )
    .context("a new token while the apiserver is down")?;
    ca.ask(Some(&reviewed), &csr)
        .await
        .context("a cached token while the apiserver is down")?;
    ensure!(
        ca.service.metrics().refused_count("authn_unavailable") == 1,
        "the outage is counted"
    );

    kube.start_apiserver().await?;
    ca.ask(Some(&unreviewed), &csr)
        .await
        .context("the new token once the apiserver is back")?;
    Ok(())
}

/// capstan's RBAC is what lets it review tokens: the same CA running as a ServiceAccount
/// without `create tokenreviews` gets 403s, which are `Unavailable` (capstan's problem, not
/// the caller's), never a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokenreview_rbac_requests_are_unavailable() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let ns = namespace_with_sa(kube, "ca-norbac", "reviews").await?;
    kube.kubectl(&["create", "serviceaccount", "not-capstan", "-n", &ns])
        .await?;
    // A token the apiserver itself accepts (its default audience), for a user with no RBAC.
    let apiserver_token = kube
        .kubectl(&["create", "token", "not-capstan", "-n", &ns])
        .await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("not-capstan.kubeconfig");
    pki::write_kubeconfig(
        &kubeconfig,
        kube.server(),
        kube.ca_cert(),
        &pki::token_user(apiserver_token.trim()),
    )?;
    let ca = Ca::start_as(&kubeconfig).await?;
    let token = token(kube, &ns, "reviews", "istio-ca").await?;
    let csr = csr_asking_for(&format!("spiffe://cluster.local/ns/{ns}/sa/reviews"))?;
    expect_code(ca.ask(Some(&token), &csr).await, tonic::Code::Unavailable)
        .context("reviewing as a ServiceAccount without RBAC")?;
    // Why, as the CA logs it: the apiserver forbade the TokenReview itself.
    let reviewer = &ca.service.authenticator().inner().inner;
    match reviewer.authenticate(&token).await {
        Err(AuthnError::Unavailable(why)) if why.contains("forbidden") => {}
        other => bail!("expected a 403 from the apiserver, got {other:?}"),
    }
    // The same token through a CA running as capstan.
    Ca::start(kube)
        .await?
        .ask(Some(&token), &csr)
        .await
        .context("the same token reviewed as capstan")?;
    Ok(())
}
