//! A test environment: a temp config dir for capstan, a log dir, and the `reviews` mesh
//! (three upstream versions, capstan, one Envoy) most tests start from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::capstan::Capstan;
use crate::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use crate::fixtures;
use crate::http::{HttpClient, UpstreamReply};
use crate::locate;
use crate::upstreams::Upstreams;
use crate::wait::wait_until;

/// Name of the HTTP listener capstan generates.
pub const OUTBOUND_LISTENER: &str = "outbound_http";
/// Generous deadline for config to reach Envoy (only bounds a hang; nothing is timed).
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(20);

/// Directories of one test: `config_dir` (watched by capstan), a scratch dir next to it for
/// atomic writes, and a log dir kept after the test (`<target>/debug/e2e-logs/<name>`).
#[derive(Debug)]
pub struct TestEnv {
    pub name: String,
    pub log_dir: PathBuf,
    pub config_dir: PathBuf,
    scratch_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("capstan-e2e-{name}-"))
            .tempdir()?;
        let config_dir = tmp.path().join("config");
        let scratch_dir = tmp.path().join("scratch");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::create_dir_all(&scratch_dir)?;
        Ok(Self {
            name: name.to_string(),
            log_dir: locate::fresh_log_dir(name)?,
            config_dir,
            scratch_dir,
            _tmp: tmp,
        })
    }

    /// Writes `config_dir/<file>` atomically (write elsewhere, then rename), so capstan never
    /// sees a half-written file. A copy also goes to the log dir for post-mortems.
    pub fn write_config(&self, file: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let staged = self.scratch_dir.join(file);
        std::fs::write(&staged, contents)
            .with_context(|| format!("writing {}", staged.display()))?;
        let target = self.config_dir.join(file);
        std::fs::rename(&staged, &target)
            .with_context(|| format!("renaming into {}", target.display()))?;
        let _ = std::fs::write(self.log_dir.join(format!("config-{file}")), contents);
        Ok(target)
    }
}

/// capstan on `env`'s config folder and one sidecar Envoy (namespace `bookinfo`, ADS `mode`)
/// whose outbound listener is up, with a client for that listener.
pub async fn capstan_and_sidecar(
    env: &TestEnv,
    mode: AdsMode,
) -> anyhow::Result<(Capstan, Envoy, HttpClient)> {
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let envoy = Envoy::start(
        &locate::envoy_bin()?,
        &Bootstrap::new(mode, capstan.xds_port),
        &env.log_dir,
        "envoy",
    )
    .await?;
    let port = envoy
        .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    Ok((capstan, envoy, HttpClient::new(loopback(port))))
}

/// `reviews` v1/v2/v3 upstreams, capstan on a config dir holding their ServiceEntry,
/// DestinationRule and a VirtualService in `reviews-vs.yaml`, and one Envoy.
/// Fields drop in order: Envoy first, the config dir last (so capstan never sees it vanish).
pub struct ReviewsMesh {
    /// Client for Envoy's outbound listener.
    pub proxy: HttpClient,
    pub envoy: Envoy,
    pub capstan: Capstan,
    pub upstreams: Upstreams,
    pub env: TestEnv,
}

/// The file holding the reviews VirtualService.
pub const REVIEWS_VS_FILE: &str = "reviews-vs.yaml";

/// Starts reviews v1, v2 and v3 and writes their ServiceEntry, DestinationRule and
/// `virtual_service` into `env`'s config folder.
pub async fn start_reviews(
    env: &TestEnv,
    upstream_bin: &Path,
    virtual_service: &str,
) -> anyhow::Result<Upstreams> {
    let versions = ["v1", "v2", "v3"];
    let instances: Vec<_> = versions.iter().map(|v| ("reviews", *v)).collect();
    let upstreams = Upstreams::start_on_free_ports(upstream_bin, &instances, &env.log_dir).await?;
    let endpoints = versions
        .iter()
        .map(|v| Ok((*v, upstreams.port("reviews", v)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    env.write_config(
        "reviews-se.yaml",
        &fixtures::reviews_service_entry(&endpoints),
    )?;
    env.write_config(
        "reviews-dr.yaml",
        &fixtures::reviews_destination_rule(&versions),
    )?;
    env.write_config(REVIEWS_VS_FILE, virtual_service)?;
    Ok(upstreams)
}

impl ReviewsMesh {
    pub async fn start(
        name: &str,
        envoy_bin: &Path,
        upstream_bin: &Path,
        mode: AdsMode,
        virtual_service: &str,
    ) -> anyhow::Result<Self> {
        let env = TestEnv::new(name)?;
        let upstreams = start_reviews(&env, upstream_bin, virtual_service).await?;

        let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
        let envoy = Envoy::start(
            envoy_bin,
            &Bootstrap::new(mode, capstan.xds_port),
            &env.log_dir,
            "envoy",
        )
        .await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", env.log_dir.display()))?;
        Ok(Self {
            proxy: HttpClient::new(loopback(port)),
            envoy,
            capstan,
            upstreams,
            env,
        })
    }

    /// [`ReviewsMesh::start`] on SotW with the VirtualService `reviews` whose `http` routes
    /// are `http` (YAML list items, indented two spaces).
    pub async fn start_http(name: &str, upstream_bin: &Path, http: &str) -> anyhow::Result<Self> {
        let vs = format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{}]
  http:
{http}",
            fixtures::REVIEWS_HOST
        );
        Self::start(
            name,
            &locate::envoy_bin()?,
            upstream_bin,
            AdsMode::Sotw,
            &vs,
        )
        .await
    }

    /// One request to `reviews` through Envoy; the reply must come from a reviews upstream.
    pub async fn reviews(
        &mut self,
        host: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<UpstreamReply> {
        self.proxy.reviews(host, headers).await
    }

    /// Versions answering `n` requests.
    pub async fn versions(
        &mut self,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        self.proxy.reviews_versions(headers, n).await
    }

    /// Fails unless all `n` requests with `headers` are answered by `version`.
    pub async fn expect_all(
        &mut self,
        headers: &[(&str, &str)],
        version: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        self.proxy.expect_all_reviews(headers, version, n).await
    }

    /// Polls until `n` consecutive requests with `headers` reach `version`.
    pub async fn wait_for_all(
        &mut self,
        headers: &[(&str, &str)],
        version: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        let what = format!("{n} consecutive requests with {headers:?} to reach reviews {version}");
        let log_dir = self.env.log_dir.clone();
        wait_until(&what, CONFIG_TIMEOUT, async || {
            self.expect_all(headers, version, n).await
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    }

    /// Another sidecar, of workload `workload` in `namespace`, on the same capstan; and a
    /// client for its outbound listener once it has one.
    pub async fn start_sidecar(
        &self,
        mode: AdsMode,
        namespace: &str,
        workload: &str,
    ) -> anyhow::Result<(Envoy, HttpClient)> {
        self.start_labelled_sidecar(mode, namespace, workload, &[])
            .await
    }

    /// [`ReviewsMesh::start_sidecar`] of a workload with `labels` (its `LABELS` node
    /// metadata, as Istio's agent sends its pod's labels).
    pub async fn start_labelled_sidecar(
        &self,
        mode: AdsMode,
        namespace: &str,
        workload: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<(Envoy, HttpClient)> {
        let mut bootstrap = Bootstrap::new(mode, self.capstan.xds_port);
        bootstrap.namespace = namespace.to_string();
        bootstrap.workload = workload.to_string();
        bootstrap.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let envoy = Envoy::start(
            &locate::envoy_bin()?,
            &bootstrap,
            &self.env.log_dir,
            workload,
        )
        .await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", self.env.log_dir.display()))?;
        Ok((envoy, HttpClient::new(loopback(port))))
    }
}
