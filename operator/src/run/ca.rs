//! capstan's CA in `capstan run`, and the TLS xDS port it certifies (istiod's 15012).
//!
//! One [`Authority`] holds the signer and trust bundle; the TLS port presents a serving
//! certificate issued from it, renewed at half its life and whenever the authority swaps
//! (a reloaded plug-in CA, a rotated root), and trusts client certificates chaining to the
//! authority's trust bundle of the moment.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capstan_ca::CaState;
use capstan_xds::net::tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tracing::{error, info, warn};

/// Validity of capstan's serving certificate. Renewed at half life, so a day leaves half a
/// day to notice a CA that stopped signing, and a stolen key is useless a day later.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(86_400);
/// How long to wait before trying again after a renewal failed (the old certificate is
/// kept meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The TLS xDS server's parts, bound and certified at start.
pub(crate) struct XdsTls {
    pub listener: TcpListener,
    pub tls: ServerTls,
    /// The CA, kept current (renewed, reloaded, rotated) for as long as this is held.
    pub _ca: super::ca_mode::RunningCa,
    /// The services beside ADS (the CA's `CreateCertificate` in a cluster).
    pub routes: Routes,
    /// Renews the serving certificate; aborted when the server stops.
    pub renewal: tokio::task::JoinHandle<()>,
}

/// What capstan's serving certificate names.
#[derive(Debug, Clone)]
pub(crate) struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Binds the TLS xDS port, certifies it from `authority` and starts renewing its certificate.
pub(crate) async fn xds_tls(
    addr: SocketAddr,
    ca: super::ca_mode::RunningCa,
    names: ServingNames,
    routes: Routes,
) -> anyhow::Result<XdsTls> {
    let authority = ca.authority.clone();
    // Subscribed before the first certificate is issued, so no swap falls in between.
    let mut swaps = authority.subscribe();
    let state = swaps.borrow_and_update().clone();
    let issued = issue(&state, &names)?;
    let tls = ServerTls::new(
        &issued.certificate_pem,
        &issued.private_key_pem,
        &state.trust_bundle,
    )
    .context("the xDS TLS configuration")?;
    let listener = super::bind(addr, "the xDS TLS server").await?;
    let renewal = tokio::spawn(renew(swaps, tls.clone(), names));
    Ok(XdsTls {
        listener,
        tls,
        _ca: ca,
        routes,
        renewal,
    })
}

/// A serving certificate from `state`'s signer for `names`.
pub(crate) fn issue(
    state: &CaState,
    names: &ServingNames,
) -> anyhow::Result<capstan_ca::IssuedCertificate> {
    state
        .signer
        .issue_server(&names.dns, &names.ips, None, SERVING_VALIDITY)
        .context("issuing a serving certificate")
}

/// Keeps the TLS port's certificate and trusted roots current.
async fn renew(swaps: watch::Receiver<Arc<CaState>>, tls: ServerTls, names: ServingNames) {
    renew_serving(swaps, names, "xDS TLS", |state, swapped, issued| {
        if swapped && let Err(err) = tls.set_roots(&state.trust_bundle) {
            // The old roots stay: better than trusting none.
            error!(%err, "the CA's new trust bundle is unusable for TLS; keeping the old one");
        }
        Ok(tls.set_certificate(&issued.certificate_pem, &issued.private_key_pem)?)
    })
    .await
}

/// Keeps a serving certificate for `names` current: a new one at half life, and at once when
/// the authority swaps; `install` puts it in place (`swapped`: the authority changed). A
/// failure is retried after [`RETRY_AFTER_FAILURE`]; the old certificate serves meanwhile.
pub(crate) async fn renew_serving(
    mut swaps: watch::Receiver<Arc<CaState>>,
    names: ServingNames,
    what: &'static str,
    mut install: impl FnMut(&CaState, bool, &capstan_ca::IssuedCertificate) -> anyhow::Result<()>,
) {
    let mut wait = SERVING_VALIDITY / 2;
    loop {
        let swapped = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            changed = swaps.changed() => {
                if changed.is_err() {
                    return; // the authority is gone: shutting down
                }
                true
            }
        };
        let state = swaps.borrow_and_update().clone();
        wait = match issue(&state, &names).and_then(|c| install(&state, swapped, &c)) {
            Ok(()) => {
                info!(swapped, "{what} serving certificate renewed");
                SERVING_VALIDITY / 2
            }
            Err(err) => {
                warn!(
                    err = format!("{err:#}"),
                    "renewing the {what} serving certificate failed; retrying"
                );
                RETRY_AFTER_FAILURE
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use capstan_ca::{Authority, RootCa};

    use super::super::ca_mode::RunningCa;
    use super::*;

    const ROOT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

    fn names() -> ServingNames {
        ServingNames {
            dns: vec!["localhost".to_string()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
        }
    }

    #[tokio::test]
    async fn a_swapped_authority_renews_the_certificate_and_roots() {
        let first = RootCa::generate("cluster.local", ROOT_VALIDITY).expect("root");
        let authority = Arc::new(Authority::new(CaState::new(first)));
        let parts = xds_tls(
            "127.0.0.1:0".parse().expect("addr"),
            RunningCa::fixed(authority.clone()),
            names(),
            Routes::default(),
        )
        .await
        .expect("TLS port");
        let second = RootCa::generate("cluster.local", ROOT_VALIDITY).expect("root");
        let second_root = second.root_pem().to_string();
        authority.set(CaState::new(second));

        // The renewal task installs a certificate from the new root: a client trusting only
        // that root completes a handshake.
        let addr = parts.listener.local_addr().expect("addr");
        let renewal = parts.renewal;
        let tls = parts.tls.clone();
        let listener = parts.listener;
        tokio::spawn(async move {
            let limits = capstan_xds::net::grpc::GrpcLimits::default();
            let cache = capstan_xds::SnapshotCache::new();
            let routes = Routes::default();
            capstan_xds::ads::serve_tls(
                listener,
                cache,
                &tls,
                &limits,
                routes,
                std::future::pending(),
            )
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if handshake(addr, &second_root).await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "certificate never renewed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        renewal.abort();
    }

    async fn handshake(addr: SocketAddr, root_pem: &str) -> anyhow::Result<()> {
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
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(())
    }
}
