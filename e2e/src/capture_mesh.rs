//! A workload behind the capture with its own sidecar, for capture-mode tests: capstan in
//! capture mode on a folder, the workload's apps at its pod address, and its sidecar Envoy
//! as uid 1337 (see [`crate::capture`]). Both pods are one: the sidecar of workload
//! 10.244.1.7 calls its own services, out through `virtualOutbound` and back in through
//! `virtualInbound`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};

use crate::capstan::Capstan;
use crate::capture::{self, service_ip};
use crate::envoy::{AdsMode, Bootstrap, Envoy};
use crate::http::{HttpClient, UpstreamReply};
use crate::mesh::{CONFIG_TIMEOUT, TestEnv};
use crate::netns::pod_ip;
use crate::upstreams::Upstreams;

/// The workload's address (pod 263: 10.244.1.7).
pub fn workload() -> std::net::Ipv4Addr {
    pod_ip(263)
}

/// A ServiceEntry `name` on service address `address` with one port of `protocol`.
pub fn service_entry(
    name: &str,
    address: u16,
    port: u16,
    protocol: &str,
    workload: &str,
) -> String {
    let port = format!(
        "{{number: {port}, name: {}, protocol: {protocol}}}",
        protocol.to_lowercase()
    );
    entry(name, address, &port, workload)
}

/// A ServiceEntry `name` on service address `address` with the one port `port` (flow
/// YAML), its one endpoint `workload`.
pub fn entry(name: &str, address: u16, port: &str, workload: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [{}]
  location: MESH_INTERNAL
  ports: [{port}]
  resolution: STATIC
  endpoints: [{{address: {workload}}}]
",
        service_ip(address),
    )
}

/// One request to `address` (a service's address, so the capture takes it) as `host`.
pub async fn call(address: SocketAddr, host: &str) -> anyhow::Result<UpstreamReply> {
    let response = HttpClient::new(address).get(host, "/whoami", &[]).await?;
    ensure!(
        response.status.is_success(),
        "{address} as {host}: {} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    serde_json::from_slice(&response.body).context("an upstream's reply")
}

/// capstan in capture mode on `env`'s folder, and the sidecar (uid 1337, behind the capture)
/// of the workload at `address`, with its inbound listener up.
pub async fn capstan_and_captured_sidecar(
    env: &TestEnv,
    mode: AdsMode,
    address: &str,
) -> anyhow::Result<(Capstan, Envoy)> {
    let capstan = Capstan::start_folder_with(
        &env.config_dir,
        &["--sidecar-listeners", "capture"],
        &env.log_dir,
        "capstan",
    )
    .await?;
    let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
    bootstrap.workload = "app-0".to_string();
    bootstrap.address = address.to_string();
    let envoy = Envoy::start_as(
        &crate::locate::envoy_bin()?,
        &bootstrap,
        &env.log_dir,
        "sidecar",
        capture::PROXY,
    )
    .await?;
    envoy
        .wait_listener_port("virtualInbound", CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    Ok((capstan, envoy))
}

/// capstan in capture mode, a workload's apps and its captured sidecar.
pub struct CaptureMesh {
    pub envoy: Envoy,
    pub capstan: Capstan,
    pub upstreams: Upstreams,
    pub env: TestEnv,
}

/// The workload's apps (`reviews` on 9080, `db` on 5432, `ratings` on 9090, each a
/// `capstan-upstream` from `upstream_bin`), capstan in capture mode on their ServiceEntries
/// (reviews and db; ratings comes later), and the workload's sidecar.
pub async fn start(name: &str, upstream_bin: &Path) -> anyhow::Result<CaptureMesh> {
    capture::install()?;
    let env = TestEnv::new(name)?;
    let workload = workload();
    let apps = [
        ("reviews", "v1", SocketAddr::from((workload, 9080))),
        ("db", "v1", SocketAddr::from((workload, 5432))),
        ("ratings", "v1", SocketAddr::from((workload, 9090))),
    ];
    let upstreams = Upstreams::start(upstream_bin, &apps, &env.log_dir, "apps").await?;
    let workload = workload.to_string();
    env.write_config(
        "reviews.yaml",
        &service_entry("reviews", 10, 9080, "HTTP", &workload),
    )?;
    env.write_config("db.yaml", &service_entry("db", 20, 5432, "TCP", &workload))?;
    let (capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Sotw, &workload).await?;
    Ok(CaptureMesh {
        envoy,
        capstan,
        upstreams,
        env,
    })
}
