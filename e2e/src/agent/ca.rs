//! A CA server inside the test process: `IstioCertificateService` over TLS on loopback,
//! signing with a real [`RootCa`], with a token → identity table standing in for token
//! review (tested on its own against a real API server elsewhere).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use capstan_ca::api::{
    CreateCertificate, IstioCertificateRequest, IstioCertificateResponse, IstioCertificateServer,
};
use capstan_ca::{RootCa, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::tls_pki::Issued;

/// The name the CA's serving certificate carries (what agents pass as `--ca-server-name`).
pub const CA_SERVER_NAME: &str = "localhost";

struct TableSigner {
    root: Arc<RootCa>,
    tokens: HashMap<String, SpiffeId>,
    max_ttl: Duration,
    issued: Arc<AtomicUsize>,
}

impl CreateCertificate for TableSigner {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| tonic::Status::unauthenticated("no bearer token"))?;
        let identity = self
            .tokens
            .get(token)
            .ok_or_else(|| tonic::Status::unauthenticated("unknown token"))?;
        let request = request.into_inner();
        let asked = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
        let ttl = if asked.is_zero() { self.max_ttl } else { asked };
        let signed = self
            .root
            .sign_csr(&request.csr, identity, ttl, self.max_ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: signed.chain_pem,
        }))
    }
}

/// A running in-test CA. Stops when dropped.
pub struct TestCa {
    pub addr: SocketAddr,
    /// What agents get as `--ca-root-cert`: the root of the CA's serving certificate and the
    /// root that signs workloads.
    pub roots_file: PathBuf,
    /// The root that signs workloads.
    pub workload_root_pem: String,
    root: Arc<RootCa>,
    issued: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestCa {
    /// Starts a CA on 127.0.0.1 for `tokens` (token → identity), granting at most `max_ttl`;
    /// writes `<dir>/<name>-roots.pem`.
    pub async fn start(
        dir: &Path,
        name: &str,
        tokens: &[(&str, SpiffeId)],
        max_ttl: Duration,
    ) -> anyhow::Result<Self> {
        // Each CA's root gets a subject of its own: verifiers look a signer up by subject
        // name, and two roots named alike in one bundle make them pick the wrong one.
        let root = Arc::new(RootCa::generate(
            &format!("{name}.test"),
            Duration::from_secs(86_400),
        )?);
        let workload_root_pem = root.root_pem().to_string();
        let (serving_root_pem, serving) = serving_identity()?;
        let roots_file = dir.join(format!("{name}-roots.pem"));
        std::fs::write(
            &roots_file,
            format!("{serving_root_pem}{workload_root_pem}"),
        )
        .with_context(|| format!("writing {}", roots_file.display()))?;

        let issued = Arc::new(AtomicUsize::new(0));
        let signer = TableSigner {
            root: Arc::clone(&root),
            tokens: tokens
                .iter()
                .map(|(t, id)| (t.to_string(), id.clone()))
                .collect(),
            max_ttl,
            issued: Arc::clone(&issued),
        };
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(serving))?
            .add_service(IstioCertificateServer::new(signer));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = server.serve_with_incoming(incoming).await {
                tracing::error!("test CA stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            roots_file,
            workload_root_pem,
            root,
            issued,
            task,
        })
    }

    /// A certificate for `identity` signed by the workload root, as the CA would grant it
    /// to an agent, written to `<dir>/<file>.pem` (the chain) and `<dir>/<file>-key.pem`:
    /// for a client the test plays itself, whatever trust domain `identity` is in. Its
    /// `serial` is 0: the CA picks the certificate's own, and no test revokes these.
    pub fn issue(&self, dir: &Path, file: &str, identity: &SpiffeId) -> anyhow::Result<Issued> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = CertificateParams::default()
            .serialize_request(&key)?
            .pem()?;
        let ttl = Duration::from_secs(3600);
        let signed = self.root.sign_csr(&csr, identity, ttl, ttl)?;
        let issued = Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}-key.pem")),
            serial: 0,
        };
        std::fs::write(&issued.cert, signed.chain_pem.concat())
            .with_context(|| format!("writing {}", issued.cert.display()))?;
        std::fs::write(&issued.key, key.serialize_pem())
            .with_context(|| format!("writing {}", issued.key.display()))?;
        Ok(issued)
    }

    /// `https://127.0.0.1:PORT`, for `--ca-address`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// This CA as an agent's target. The bootstrap's xDS address is written but never
    /// used: these agents' Envoys run static bootstraps.
    pub fn target(&self) -> super::AgentTarget {
        super::AgentTarget {
            ca_url: self.url(),
            roots_file: self.roots_file.clone(),
            server_name: CA_SERVER_NAME.to_string(),
            xds_address: "127.0.0.1:15012".to_string(),
        }
    }

    /// How many certificates this CA has signed.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A root of its own and a serving certificate it signs for `localhost` and 127.0.0.1.
fn serving_identity() -> anyhow::Result<(String, Identity)> {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "test CA serving root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root_params.self_signed(&root_key)?;
    let issuer = Issuer::new(root_params, root_key);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![CA_SERVER_NAME.to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        root_cert.pem(),
        Identity::from_pem(cert.pem(), key.serialize_pem()),
    ))
}
