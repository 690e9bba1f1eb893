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
use crate::tls_pki::{TestCa, connector, https_get};
use crate::upstreams::{UpstreamTls, Upstreams};

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
    entry(name, address, &service_port(port, protocol), workload)
}

/// A ServiceEntry `name` on service address `address` with the one port `port` (flow
/// YAML), its one endpoint `workload`.
pub fn entry(name: &str, address: u16, port: &str, workload: &str) -> String {
    entry_in("bookinfo", name, address, port, &endpoint(workload))
}

/// A ServiceEntry `name` in `namespace` (host `<name>.<namespace>.svc.cluster.local`) on
/// service address `address`, with the one port `port` and the one endpoint `endpoint` (both
/// flow YAML; see [`service_port`], [`endpoint`] and [`sidecar_endpoint`]).
pub fn entry_in(namespace: &str, name: &str, address: u16, port: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  addresses: [{}]
  location: MESH_INTERNAL
  ports: [{port}]
  resolution: STATIC
  endpoints: [{endpoint}]
",
        service_ip(address),
    )
}

/// A ServiceEntry port `number` of `protocol` (flow YAML), named after the protocol.
pub fn service_port(number: u16, protocol: &str) -> String {
    format!(
        "{{number: {number}, name: {}, protocol: {protocol}}}",
        protocol.to_lowercase()
    )
}

/// A ServiceEntry endpoint at `address` (flow YAML), with nothing said of a sidecar.
pub fn endpoint(address: &str) -> String {
    format!("{{address: {address}}}")
}

/// A ServiceEntry endpoint at `address` (flow YAML) described as Istio describes a workload
/// with a sidecar: the label `security.istio.io/tlsMode: istio` (what lets clients send it
/// mutual TLS), `app: <service account>` (for policies to select it) and `serviceAccount`, a field of the endpoint (a WorkloadEntry's), which names
/// the identity its certificate carries (in the ServiceEntry's namespace).
pub fn sidecar_endpoint(address: &str, service_account: &str) -> String {
    format!(
        "{{address: {address}, labels: {{app: {service_account}, security.istio.io/tlsMode: istio}}, serviceAccount: {service_account}}}"
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
    let capstan = start_capstan(env).await?;
    let bootstrap = sidecar_bootstrap(mode, capstan.xds_port, address);
    let envoy = start_captured_sidecar(env, &bootstrap.to_json()).await?;
    Ok((capstan, envoy))
}

/// capstan in capture mode (`--sidecar-listeners capture`) on `env`'s folder.
pub async fn start_capstan(env: &TestEnv) -> anyhow::Result<Capstan> {
    start_capstan_with(env, &[]).await
}

/// [`start_capstan`] with further flags.
pub async fn start_capstan_with(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Capstan> {
    let mut args = vec!["--sidecar-listeners", "capture"];
    args.extend_from_slice(extra);
    Capstan::start_folder_with(&env.config_dir, &args, &env.log_dir, "capstan").await
}

/// The bootstrap of workload `app-0`'s sidecar (namespace `bookinfo`) at `address`, on ADS
/// `mode` to capstan's `xds_port`.
pub fn sidecar_bootstrap(mode: AdsMode, xds_port: u16, address: &str) -> Bootstrap {
    let mut bootstrap = Bootstrap::new(mode, xds_port);
    bootstrap.workload = "app-0".to_string();
    bootstrap.address = address.to_string();
    bootstrap
}

/// The workload's sidecar Envoy on `bootstrap`, run as [`capture::PROXY`] (so the capture
/// tells its traffic from the app's), once its inbound listener is up.
pub async fn start_captured_sidecar(
    env: &TestEnv,
    bootstrap: &serde_json::Value,
) -> anyhow::Result<Envoy> {
    let envoy = Envoy::start_json(
        &crate::locate::envoy_bin()?,
        bootstrap,
        &env.log_dir,
        "sidecar",
        Some(capture::PROXY),
    )
    .await?;
    envoy
        .wait_listener_port("virtualInbound", CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    Ok(envoy)
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
    let upstreams = start_apps(&env, upstream_bin).await?;
    let workload = workload().to_string();
    write_service_entries(&env, "bookinfo", &endpoint(&workload))?;
    let (capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Sotw, &workload).await?;
    Ok(CaptureMesh {
        envoy,
        capstan,
        upstreams,
        env,
    })
}

/// The workload's apps at its address: `reviews` on 9080, `db` on 5432 and `ratings` on
/// 9090 (each version v1), from `upstream_bin`.
pub async fn start_apps(env: &TestEnv, upstream_bin: &Path) -> anyhow::Result<Upstreams> {
    let workload = workload();
    let apps = [
        ("reviews", "v1", SocketAddr::from((workload, 9080))),
        ("db", "v1", SocketAddr::from((workload, 5432))),
        ("ratings", "v1", SocketAddr::from((workload, 9090))),
    ];
    Upstreams::start(upstream_bin, &apps, &env.log_dir, "apps").await
}

/// `reviews.yaml` (HTTP 9080 on 10.96.0.10) and `db.yaml` (TCP 5432 on 10.96.0.20):
/// ServiceEntries in `namespace` whose one endpoint is `endpoint` (flow YAML).
pub fn write_service_entries(env: &TestEnv, namespace: &str, endpoint: &str) -> anyhow::Result<()> {
    env.write_config(
        "reviews.yaml",
        &entry_in(
            namespace,
            "reviews",
            10,
            &service_port(9080, "HTTP"),
            endpoint,
        ),
    )?;
    env.write_config(
        "db.yaml",
        &entry_in(namespace, "db", 20, &service_port(5432, "TCP"), endpoint),
    )?;
    Ok(())
}

/// TLS apps for SNI tests behind the capture: each `(service, address)` serves HTTPS with one
/// certificate for `names` from a CA of its own, and a client trusting that CA asks
/// [`capture::EXTERNAL_HOST`]:443 (captured, so the sidecar routes it by SNI).
pub struct SniApps {
    _upstreams: Upstreams,
    connector: tokio_rustls::TlsConnector,
}

impl SniApps {
    pub async fn start(
        env: &TestEnv,
        upstream_bin: &Path,
        names: &[&str],
        apps: &[(&str, SocketAddr)],
    ) -> anyhow::Result<Self> {
        let ca = TestCa::new(&env.log_dir, "external")?;
        let server = ca.server("tls-server", names)?;
        let tls = UpstreamTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: None,
        };
        let apps: Vec<(&str, &str, SocketAddr)> = apps
            .iter()
            .map(|(service, addr)| (*service, "v1", *addr))
            .collect();
        let upstreams =
            Upstreams::start_with_tls(upstream_bin, &[], &apps, Some(&tls), &env.log_dir, "apps")
                .await?;
        Ok(Self {
            _upstreams: upstreams,
            connector: connector(&ca.cert_pem, None)?,
        })
    }

    /// The app answering a request over TLS with SNI `name` to the outside host's 443.
    pub async fn reached(&self, name: &str) -> anyhow::Result<String> {
        self.reached_at(SocketAddr::from((capture::EXTERNAL_HOST, 443)), name)
            .await
    }

    /// The app answering a request over TLS with SNI `name` to `address`.
    pub async fn reached_at(&self, address: SocketAddr, name: &str) -> anyhow::Result<String> {
        let response = https_get(&self.connector, address, name, "/").await?;
        let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
        Ok(reply.service)
    }
}

/// A ServiceEntry (bookinfo) for the HTTPS host `host` on 443 without an address (told
/// apart by SNI), whose one endpoint is `workload` on `target`.
pub fn https_entry(host: &str, target: u16, workload: &str) -> String {
    sni_entry(host, 443, "HTTPS", target, workload)
}

/// As [`https_entry`], on port `number` of `protocol` (HTTPS or TLS).
pub fn sni_entry(host: &str, number: u16, protocol: &str, target: u16, workload: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {}, namespace: bookinfo}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: {number}, name: sni, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {workload}, ports: {{sni: {target}}}}}]
",
        host.replace('.', "-")
    )
}

/// The apps of the `tcp`/`tls` route tests, all on one workload address: db and db2 (HTTP
/// over TCP) on 5432 and 5433, secure.example.com and other.example.com (HTTPS, one
/// certificate for both) on 8443 and 8444; and the ServiceEntries of db2 (service address
/// 21, TCP 5433) and of the two HTTPS hosts. db's ServiceEntry is the test's.
pub struct StreamApps {
    pub upstreams: Upstreams,
    pub connector: tokio_rustls::TlsConnector,
}

impl StreamApps {
    pub async fn start(
        env: &TestEnv,
        upstream_bin: &Path,
        workload: std::net::Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let at = |port: u16| SocketAddr::from((workload, port));
        let ca = TestCa::new(&env.log_dir, "external")?;
        let server = ca.server(
            "external-server",
            &["secure.example.com", "other.example.com"],
        )?;
        let tls = UpstreamTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: None,
        };
        let upstreams = Upstreams::start_with_tls(
            upstream_bin,
            &[("db", "v1", at(5432)), ("db2", "v1", at(5433))],
            &[("secure", "v1", at(8443)), ("other", "v1", at(8444))],
            Some(&tls),
            &env.log_dir,
            "apps",
        )
        .await?;
        let address = workload.to_string();
        env.write_config("db2.yaml", &service_entry("db2", 21, 5433, "TCP", &address))?;
        for (host, target) in [("secure.example.com", 8443), ("other.example.com", 8444)] {
            let file = format!("{}.yaml", host.replace('.', "-"));
            env.write_config(&file, &https_entry(host, target, &address))?;
        }
        Ok(Self {
            upstreams,
            connector: connector(&ca.cert_pem, None)?,
        })
    }

    /// What answers HTTPS with SNI `name` to `to`.
    pub async fn https_reply(&self, to: SocketAddr, name: &str) -> anyhow::Result<UpstreamReply> {
        let response = https_get(&self.connector, to, name, "/").await?;
        serde_json::from_slice(&response.body).context("an upstream's reply")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_entry_is_as_it_was() {
        assert_eq!(
            service_entry("db", 20, 5432, "TCP", "10.244.1.7"),
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.244.1.7}]
"
        );
    }

    #[test]
    fn a_sidecar_endpoint_has_the_tls_mode_label_and_the_account() {
        assert_eq!(
            sidecar_endpoint("10.244.1.7", "reviews"),
            "{address: 10.244.1.7, labels: {app: reviews, security.istio.io/tlsMode: istio}, serviceAccount: reviews}"
        );
    }
}
