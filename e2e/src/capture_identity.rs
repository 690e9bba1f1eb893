//! A captured workload with an identity, as an Istio pod has one, for mutual-TLS tests: the
//! workload of [`crate::capture_mesh`] (apps reviews 9080, db 5432 and ratings 9090 at
//! 10.244.1.7, capstan in capture mode), with an in-test CA ([`TestCa`]), a real
//! `capstan agent` certified for `spiffe://cluster.local/ns/<namespace>/sa/<account>`, and a
//! sidecar whose bootstrap has the static cluster `sds-grpc` to that agent's socket.
//!
//! Agent and sidecar both run as the proxy user ([`capture::PROXY`], uid/gid 1337), as
//! pilot-agent and Envoy do in an Istio pod: the agent's SDS socket is mode 0600, so only its
//! own user may connect to it. The agent reaches the CA on 127.0.0.1, which the capture
//! never takes. Everything those two read (token, CA roots, socket) lives under the system
//! temp dir, out of root's home where the logs are.
//!
//! Clients "from another pod" (plain text, no sidecar) are
//! [`Capture::connect_from_another_pod`] and [`Capture::another_pod_client`].

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use capstan_ca::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::{Agent, AgentSpec, SERVING_LINE, TestCa, with_agent_sds};
use crate::capture::{self, Capture};
use crate::capture_mesh::{
    CaptureMesh, sidecar_bootstrap, sidecar_endpoint, start_apps, start_capstan_with,
    start_captured_sidecar, workload, write_service_entries,
};
use crate::envoy::AdsMode;
use crate::locate::capstan_bin;
use crate::mesh::TestEnv;

/// The trust domain of the workload's SPIFFE id.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The token the workload's agent presents, which the CA maps to its identity.
const TOKEN: &str = "app-0-token";

/// The agent's name: its log is `<log dir>/app-agent.log`.
const AGENT_NAME: &str = "app-agent";

/// The longest certificate the CA grants (and what the agent asks for): no rotation in a test.
const CERT_TTL: Duration = Duration::from_secs(3600);

/// A [`CaptureMesh`] whose workload has an identity: its CA, agent and SPIFFE id.
///
/// Fields drop in order: the sidecar and capstan (in `mesh`) first, then the agent, then the
/// CA and the directory of its roots.
pub struct IdentityMesh {
    /// The workload's sidecar (`mesh.envoy`, with `sds-grpc`), capstan, apps and test env.
    pub mesh: CaptureMesh,
    /// The workload's agent (uid 1337), serving its certificate on `agent.sds_socket`.
    pub agent: Agent,
    /// The CA that certified the workload; `ca.roots_file` holds its serving root and the
    /// root that signs workloads (`ca.workload_root_pem`).
    pub ca: TestCa,
    /// `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
    pub identity: SpiffeId,
    /// The capture, for its counters and for clients from another pod.
    pub capture: Capture,
    /// Where the CA's roots are, readable by uid 1337.
    _shared: tempfile::TempDir,
}

/// As [`crate::capture_mesh::start`], with an identity: the ServiceEntries (reviews, db) are
/// in `namespace` and say their endpoint has a sidecar running as `service_account`
/// ([`sidecar_endpoint`]); before the sidecar starts, an in-test CA and a `capstan agent`
/// (uid 1337) certified for `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`;
/// then the sidecar (node `app-0.<namespace>`, with that service account, as uid 1337) with
/// the static cluster `sds-grpc` to the agent's socket, once its inbound listener is up.
pub async fn start_with_identity(
    name: &str,
    upstream_bin: &Path,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<IdentityMesh> {
    start_with_identity_and(name, upstream_bin, namespace, service_account, &[]).await
}

/// [`start_with_identity`], with further `capstan run` flags.
pub async fn start_with_identity_and(
    name: &str,
    upstream_bin: &Path,
    namespace: &str,
    service_account: &str,
    capstan_args: &[&str],
) -> anyhow::Result<IdentityMesh> {
    let capture = capture::install()?;
    let env = TestEnv::new(name)?;
    let upstreams = start_apps(&env, upstream_bin).await?;
    let address = workload().to_string();
    write_service_entries(
        &env,
        namespace,
        &sidecar_endpoint(&address, service_account),
    )?;
    let capstan = start_capstan_with(&env, capstan_args).await?;
    let identity = SpiffeId::new(TRUST_DOMAIN, namespace, service_account);
    let shared = shared_dir()?;
    let (ca, agent) = start_ca_and_agent(&env, shared.path(), &identity).await?;
    let mut bootstrap = sidecar_bootstrap(AdsMode::Sotw, capstan.xds_port, &address);
    bootstrap.namespace = namespace.to_string();
    bootstrap.service_account = Some(service_account.to_string());
    let envoy = start_captured_sidecar(&env, &with_agent_sds(&bootstrap, &agent.sds_socket))
        .await
        .with_context(|| format!("the sidecar of {identity}"))?;
    Ok(IdentityMesh {
        mesh: CaptureMesh {
            envoy,
            capstan,
            upstreams,
            env,
        },
        agent,
        ca,
        identity,
        capture,
        _shared: shared,
    })
}

/// The CA (its roots in `shared`) and the workload's agent, as [`capture::PROXY`], once it
/// serves its first certificate.
async fn start_ca_and_agent(
    env: &TestEnv,
    shared: &Path,
    identity: &SpiffeId,
) -> anyhow::Result<(TestCa, Agent)> {
    let ca = TestCa::start(shared, "mesh-ca", &[(TOKEN, identity.clone())], CERT_TTL).await?;
    let spec = AgentSpec::for_identity(AGENT_NAME, identity, TOKEN);
    let agent = Agent::start_as(
        &capstan_bin()?,
        &ca.target(),
        &env.log_dir,
        &spec,
        capture::PROXY,
    )
    .await
    .with_context(|| format!("the agent of {identity}; logs in {}", env.log_dir.display()))?;
    Ok((ca, agent))
}

/// A fresh directory under the system temp dir that everyone may enter (mode 0755), for
/// files root writes and uid 1337 reads.
fn shared_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("capstan-e2e-identity-")
        .tempdir()
        .context("creating a directory for the CA's roots")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("opening {} to uid 1337", dir.path().display()))?;
    Ok(dir)
}

impl IdentityMesh {
    /// The workload's SPIFFE id, as its certificate's URI SAN carries it.
    pub fn spiffe_id(&self) -> String {
        self.identity.to_string()
    }

    /// The agent's log lines saying it serves a certificate for the workload's identity.
    pub fn certificates_served(&self) -> Vec<String> {
        let id = self.spiffe_id();
        self.agent
            .process
            .log_lines(|l| l.contains(SERVING_LINE) && l.contains(&id))
    }

    /// The workload's app on `port`, at its pod address (e.g. 9080 for reviews): where a
    /// client from another pod connects, and the capture sends it into the sidecar.
    pub fn workload_port(&self, port: u16) -> SocketAddr {
        SocketAddr::from((workload(), port))
    }

    /// Plain TCP from another pod to db (5432) at the workload's address: the bytes of one
    /// HTTP/1.0 request, and what comes back before the connection closes (empty when it is
    /// refused).
    pub async fn other_pod_tcp_to_db(&self) -> anyhow::Result<String> {
        let mut stream = self
            .capture
            .connect_from_another_pod(self.workload_port(5432))
            .await?;
        // A refused connection may be reset while this is written: that reads as refused too.
        let request = b"GET /whoami HTTP/1.0\r\nHost: db\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return Ok(String::new());
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            crate::http::REQUEST_TIMEOUT,
            stream.read_to_end(&mut answer),
        )
        .await
        .context("the answer over plain TCP took too long")?;
        if read.is_err() {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}
