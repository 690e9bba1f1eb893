//! AWS Private CA as the issuer of capstan's intermediate, against moto on loopback (patched
//! by e2e/moto/capstan_moto.py; one server per test): the intermediate is a CA chaining to
//! the Private CA root and signs workload certificates locally that `openssl verify` accepts;
//! GetCertificate's "in progress" and IssueCertificate's throttling are retried; renewal swaps
//! the signer before expiry; a Private CA that keeps failing leaves the old signer in place.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use capstan_ca::pca::{PcaConfig, PcaError, PcaIssuer, RetryPolicy, spawn_renewal};
use capstan_ca::{Authority, CaState, IssuedCertError, RootCa, SpiffeId};
use capstan_e2e::locate::fresh_log_dir;
use capstan_e2e::moto::{Moto, MotoFaults, PcaRoot};
use capstan_e2e::wait_until;
use serde_json::json;

const TRUST_DOMAIN: &str = "cluster.local";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("capstan_ca=debug,info")
        .with_test_writer()
        .try_init();
}

/// moto with an active root Private CA, and a configuration that issues from it.
async fn pca(test: &str) -> anyhow::Result<(Moto, PcaRoot, PcaConfig, std::path::PathBuf)> {
    init_tracing();
    let dir = fresh_log_dir(test)?;
    let moto = Moto::start(&dir, &MotoFaults::default()).await?;
    let root = moto.create_root_ca(&format!("{test} root"), 365).await?;
    let mut config = moto.pca_config(&root.arn);
    config.validity = Duration::from_secs(86_400);
    config.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        poll_interval: Duration::from_millis(100),
        total: Duration::from_secs(20),
    };
    Ok((moto, root, config, dir))
}

async fn issuer(moto: &Moto, config: PcaConfig) -> anyhow::Result<PcaIssuer> {
    Ok(PcaIssuer::with_sdk_config(config, &moto.sdk().await)?)
}

fn workload_csr() -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?)
}

/// Signs a workload certificate with `signer` and runs
/// `openssl verify -CAfile <pca root> -untrusted <intermediate> <leaf>`; Ok(output) when it
/// passes.
fn openssl_verify(
    dir: &Path,
    name: &str,
    signer: &RootCa,
    pca_root: &str,
) -> anyhow::Result<String> {
    let id = SpiffeId::new(TRUST_DOMAIN, "default", name);
    let signed = signer.sign_csr(
        &workload_csr()?,
        &id,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )?;
    ensure!(
        signed.chain_pem.len() == 3,
        "leaf, intermediate, root: {:?}",
        signed.chain_pem.len()
    );
    let (root, untrusted, leaf) = (
        dir.join(format!("{name}-pca-root.pem")),
        dir.join(format!("{name}-intermediate.pem")),
        dir.join(format!("{name}-leaf.pem")),
    );
    std::fs::write(&root, pca_root)?;
    std::fs::write(&untrusted, &signed.chain_pem[1])?;
    std::fs::write(&leaf, &signed.chain_pem[0])?;
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .context("running openssl verify")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "openssl verify failed: {text}");
    Ok(text)
}

fn openssl_text(dir: &Path, name: &str, pem: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem)?;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()?;
    ensure!(out.status.success(), "openssl x509 failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pca_issues_a_ca_intermediate_whose_workload_certs_verify() -> anyhow::Result<()> {
    let (moto, root, config, dir) = pca("ca_pca_issue").await?;
    let signer = issuer(&moto, config.clone())
        .await?
        .issue(TRUST_DOMAIN)
        .await?;

    assert_eq!(signer.root_pem().trim(), root.certificate_pem.trim());
    let text = openssl_text(&dir, "intermediate", signer.certificate_pem())?;
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains(&format!("O = {TRUST_DOMAIN}")), "{text}");
    let life = signer
        .not_after()
        .duration_since(SystemTime::now())
        .context("not yet expired")?;
    assert!(
        life > Duration::from_secs(86_000) && life <= Duration::from_secs(86_400),
        "{life:?}"
    );

    // GetCertificate's chain reached the root: no need for the CA's certificate.
    let faults = moto.faults().await?;
    assert_eq!(faults["counts"]["ca_certificate"], 0, "{faults}");

    let verified = openssl_verify(&dir, "workload", &signer, &root.certificate_pem)?;
    assert!(verified.contains(": OK"), "{verified}");

    // Without the intermediate the leaf does not verify: the chain really goes through it.
    let leaf = dir.join("workload-leaf.pem");
    let alone = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("workload-pca-root.pem"))
        .arg(&leaf)
        .output()?;
    assert!(!alone.status.success());

    // An end-entity template yields a certificate that cannot sign: refused, not used.
    let mut end_entity = config;
    end_entity.template_arn = "arn:aws:acm-pca:::template/EndEntityCertificate/V1".into();
    let err = issuer(&moto, end_entity)
        .await?
        .issue(TRUST_DOMAIN)
        .await
        .expect_err("an end-entity certificate is not a CA");
    assert!(
        matches!(err, PcaError::Issued(IssuedCertError::NotCa)),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_polls_are_retried_until_the_certificate_is_ready() -> anyhow::Result<()> {
    let (moto, root, config, dir) = pca("ca_pca_in_progress").await?;
    moto.set_faults(&json!({"pending_polls": 3})).await?;
    let signer = issuer(&moto, config).await?.issue(TRUST_DOMAIN).await?;
    let faults = moto.faults().await?;
    assert_eq!(faults["counts"]["in_progress"], 3, "{faults}");
    // The root's own GetCertificate, three "in progress", then the certificate.
    assert_eq!(faults["counts"]["get"], 5, "{faults}");
    openssl_verify(&dir, "workload", &signer, &root.certificate_pem)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_issue_certificate_is_retried_with_backoff() -> anyhow::Result<()> {
    let (moto, root, config, dir) = pca("ca_pca_throttled").await?;
    moto.set_faults(&json!({"throttle_issues": 3})).await?;
    let signer = issuer(&moto, config.clone())
        .await?
        .issue(TRUST_DOMAIN)
        .await?;
    let faults = moto.faults().await?;
    assert_eq!(faults["counts"]["throttled"], 3, "{faults}");
    // The root's IssueCertificate, three throttled, one issued.
    assert_eq!(faults["counts"]["issue"], 5, "{faults}");
    openssl_verify(&dir, "workload", &signer, &root.certificate_pem)?;

    // Throttled beyond the total deadline: the issuance gives up and says why.
    moto.set_faults(&json!({"throttle_issues": -1})).await?;
    let mut impatient = config;
    impatient.retry.total = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = issuer(&moto, impatient)
        .await?
        .issue(TRUST_DOMAIN)
        .await
        .expect_err("throttled throughout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, PcaError::GaveUp { .. }), "{err}");
    assert!(err.to_string().contains("ThrottlingException"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_short_of_the_root_is_completed_from_the_ca_certificate() -> anyhow::Result<()> {
    let (moto, root, config, dir) = pca("ca_pca_short_chain").await?;
    moto.set_faults(&json!({"chain_without_root": true}))
        .await?;
    let signer = issuer(&moto, config).await?.issue(TRUST_DOMAIN).await?;
    assert_eq!(signer.root_pem().trim(), root.certificate_pem.trim());
    let faults = moto.faults().await?;
    assert_eq!(faults["counts"]["ca_certificate"], 1, "{faults}");
    openssl_verify(&dir, "workload", &signer, &root.certificate_pem)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_signer_before_the_old_one_expires() -> anyhow::Result<()> {
    let (moto, root, mut config, dir) = pca("ca_pca_renewal").await?;
    config.validity = Duration::from_secs(60);
    config.renew_at = 0.5;
    let issuer = Arc::new(issuer(&moto, config).await?);
    let first = issuer.issue(TRUST_DOMAIN).await?;
    let first_not_after = first.not_after();
    let first_pem = first.certificate_pem().to_string();
    assert!(
        first_not_after <= SystemTime::now() + Duration::from_secs(61),
        "moto honours the 60 s validity"
    );
    let authority = Arc::new(Authority::new(CaState::new(first)));
    let renewal = spawn_renewal(
        Arc::clone(&issuer),
        Arc::clone(&authority),
        TRUST_DOMAIN.into(),
    );

    let renewed = wait_until(
        "the authority's signer is replaced",
        Duration::from_secs(60),
        async || {
            let current = authority.current();
            ensure!(
                current.signer.certificate_pem() != first_pem,
                "still the first signer"
            );
            Ok(current)
        },
    )
    .await?;
    let swapped_at = SystemTime::now();
    assert!(
        swapped_at < first_not_after,
        "renewed before the old intermediate expired"
    );
    assert!(renewed.signer.not_after() > first_not_after);
    assert_eq!(
        renewed.trust_bundle,
        [renewed.signer.root_pem().to_string()]
    );
    assert_eq!(
        renewed.signer.root_pem().trim(),
        root.certificate_pem.trim()
    );
    openssl_verify(
        &dir,
        "after-renewal",
        &renewed.signer,
        &root.certificate_pem,
    )?;
    // The status is published just after the swap.
    let mut status = renewal.status();
    let status = wait_until(
        "the renewal is counted",
        Duration::from_secs(5),
        async || {
            let s = status.borrow_and_update().clone();
            ensure!(s.renewals == 1, "{s:?}");
            Ok(s)
        },
    )
    .await?;
    assert_eq!(status.last_error, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pca_keeps_the_old_signer_and_reports_the_error() -> anyhow::Result<()> {
    let (moto, root, mut config, dir) = pca("ca_pca_failing").await?;
    config.validity = Duration::from_secs(30);
    config.renew_at = 0.2;
    config.retry.total = Duration::from_secs(1);
    let issuer = Arc::new(issuer(&moto, config).await?);
    let first = issuer.issue(TRUST_DOMAIN).await?;
    let authority = Arc::new(Authority::new(CaState::new(first)));
    let before = authority.current();
    moto.set_faults(&json!({"throttle_issues": -1})).await?;
    let renewal = spawn_renewal(
        Arc::clone(&issuer),
        Arc::clone(&authority),
        TRUST_DOMAIN.into(),
    );

    let mut status = renewal.status();
    let failed = wait_until(
        "two failed renewals are reported",
        Duration::from_secs(30),
        async || {
            let s = status.borrow_and_update().clone();
            ensure!(s.consecutive_failures >= 2, "{s:?}");
            Ok(s)
        },
    )
    .await?;
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(error.contains("ThrottlingException"), "{failed:?}");
    assert_eq!(failed.renewals, 0);
    assert!(
        Arc::ptr_eq(&authority.current(), &before),
        "the authority still holds the old state"
    );
    openssl_verify(
        &dir,
        "old-signer",
        &authority.current().signer,
        &root.certificate_pem,
    )?;

    // Private CA recovers: the next retry succeeds and the signer is replaced.
    moto.set_faults(&json!({"throttle_issues": 0})).await?;
    wait_until(
        "the signer is replaced once Private CA recovers",
        Duration::from_secs(30),
        async || {
            ensure!(
                !Arc::ptr_eq(&authority.current(), &before),
                "still the old state"
            );
            Ok(())
        },
    )
    .await?;
    let s = wait_until(
        "the recovery is counted",
        Duration::from_secs(5),
        async || {
            let s = status.borrow_and_update().clone();
            ensure!(s.renewals == 1, "{s:?}");
            Ok(s)
        },
    )
    .await?;
    assert_eq!((s.consecutive_failures, s.last_error), (0, None));
    Ok(())
}

/// `capstan run --ca-pca-arn`: the whole mode as users configure it. capstan has the Private
/// CA issue its intermediate at start, and its TLS port presents a certificate that a client
/// trusting only the Private CA's root accepts (and one trusting another root refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_run_serves_tls_certified_through_the_private_ca() -> anyhow::Result<()> {
    use capstan_e2e::capstan::Capstan;
    use capstan_e2e::ports::free_port;

    let (moto, root, _, dir) = pca("capstan_run_pca").await?;
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(
        config_dir.join("mesh.yaml"),
        capstan_e2e::fixtures::reviews_service_entry(&[]),
    )?;
    let tls_port = free_port()?;
    let mut cmd = Command::new(capstan_e2e::locate::capstan_bin()?);
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&config_dir)
        .args(["--xds-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--monitoring-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--outbound-port", "0"])
        .args(["--xds-tls-addr", &format!("127.0.0.1:{tls_port}")])
        .args(["--ca-pca-arn", &root.arn])
        .args(["--ca-pca-endpoint-url", &moto.endpoint_url()])
        .args(["--ca-pca-region", capstan_e2e::moto::REGION])
        .args(["--ca-pca-signing-algorithm", "SHA256WITHECDSA"])
        // Static test credentials: the default chain must never reach instance metadata.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    let mut capstan = Capstan::spawn(cmd, &dir, "capstan")?;
    Capstan::wait_listening(&mut capstan).await?;
    ensure!(
        capstan
            .log()
            .contains("intermediate issued by AWS Private CA"),
        "capstan did not say where its intermediate came from:\n{}",
        capstan.log()
    );

    tls_handshake(tls_port, &root.certificate_pem)
        .await
        .context("a client trusting only the Private CA's root")?;
    let stranger = RootCa::generate(TRUST_DOMAIN, Duration::from_secs(3600))?;
    ensure!(
        tls_handshake(tls_port, stranger.root_pem()).await.is_err(),
        "a client trusting another root accepted capstan's certificate"
    );
    Ok(())
}

/// A TLS handshake with capstan's port as `localhost`, trusting only `root_pem`.
async fn tls_handshake(port: u16, root_pem: &str) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
        root_pem.as_bytes(),
    )?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(())
}
