//! Real Envoy: bootstrap generation, process start, and admin API helpers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::http::{HttpClient, HttpResponse, percent_encode};
use crate::process::ChildProcess;
use crate::wait::wait_until;

mod tls;
pub use tls::XdsTls;

/// How long to wait for Envoy's admin interface and first xDS config.
pub const ENVOY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The ADS flavour Envoy speaks to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdsMode {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

impl AdsMode {
    pub fn api_type(self) -> &'static str {
        match self {
            AdsMode::Sotw => "GRPC",
            AdsMode::Delta => "DELTA_GRPC",
        }
    }
}

/// What goes into an Envoy bootstrap pointing at an ADS server on loopback.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub mode: AdsMode,
    /// ADS server port on 127.0.0.1.
    pub xds_port: u16,
    /// Admin port on 127.0.0.1; 0 lets Envoy pick (read back via `--admin-address-path`).
    pub admin_port: u16,
    /// Workload (pod) name, used in the Istio-style node id.
    pub workload: String,
    pub namespace: String,
    /// `SERVICE_ACCOUNT` node metadata, if set.
    pub service_account: Option<String>,
    /// Reach the ADS server over TLS (capstan's `--xds-tls-addr`) instead of plaintext.
    pub tls: Option<XdsTls>,
    /// `sidecar`, or `router` for a gateway: the first part of the node id.
    pub proxy_type: String,
    /// The `LABELS` node metadata (a gateway's labels select its Gateways).
    pub labels: BTreeMap<String, String>,
    /// The node's `region/zone/subzone`, if set.
    pub locality: Option<String>,
    /// The workload's (pod's) address, the second part of the node id.
    pub address: String,
}

impl Bootstrap {
    pub fn new(mode: AdsMode, xds_port: u16) -> Self {
        Self {
            mode,
            xds_port,
            admin_port: 0,
            workload: "sleep-0".to_string(),
            namespace: "bookinfo".to_string(),
            service_account: None,
            tls: None,
            proxy_type: "sidecar".to_string(),
            labels: BTreeMap::new(),
            locality: None,
            address: "127.0.0.1".to_string(),
        }
    }

    /// A gateway's bootstrap: a `router` node with `labels`.
    pub fn gateway(mode: AdsMode, xds_port: u16, labels: &[(&str, &str)]) -> Self {
        Self {
            workload: "istio-ingressgateway-0".to_string(),
            namespace: "istio-system".to_string(),
            proxy_type: "router".to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Self::new(mode, xds_port)
        }
    }

    /// Istio node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (`router~` for a
    /// gateway).
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.proxy_type,
            self.address,
            self.workload,
            ns = self.namespace
        )
    }

    pub fn node_cluster(&self) -> String {
        format!("{}.{}", self.workload, self.namespace)
    }

    /// The bootstrap as JSON (Envoy reads it from a `.json` file).
    pub fn to_json(&self) -> Value {
        let ads_source = json!({ "ads": {}, "resource_api_version": "V3" });
        let mut metadata = json!({ "NAMESPACE": self.namespace });
        if let Some(sa) = &self.service_account {
            metadata["SERVICE_ACCOUNT"] = json!(sa);
        }
        if !self.labels.is_empty() {
            metadata["LABELS"] = json!(self.labels);
        }
        let mut bootstrap = json!({
            "node": {
                "id": self.node_id(),
                "cluster": self.node_cluster(),
                "metadata": metadata,
            },
            "admin": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": self.admin_port } },
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": self.mode.api_type(),
                    "transport_api_version": "V3",
                    "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds_cluster" } } ],
                    "set_node_on_first_message_only": true,
                },
                "cds_config": ads_source,
                "lds_config": ads_source,
            },
            "static_resources": {
                "clusters": [ {
                    "name": "xds_cluster",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds_cluster",
                        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                            "socket_address": { "address": "127.0.0.1", "port_value": self.xds_port }
                        } } } ] } ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": { "http2_protocol_options": {} },
                        },
                    },
                } ],
            },
        });
        if let Some(tls) = &self.tls {
            bootstrap["static_resources"]["clusters"][0]["transport_socket"] =
                tls.transport_socket();
        }
        if let Some(locality) = &self.locality {
            let mut parts = locality.splitn(3, '/');
            bootstrap["node"]["locality"] = json!({
                "region": parts.next().unwrap_or_default(),
                "zone": parts.next().unwrap_or_default(),
                "sub_zone": parts.next().unwrap_or_default(),
            });
        }
        bootstrap
    }

    /// Writes the bootstrap to `path` (should end in `.json`).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Runs `envoy --mode validate -c <bootstrap>`; fails with Envoy's output if it rejects it.
pub fn validate_bootstrap(envoy_bin: &Path, bootstrap: &Path) -> anyhow::Result<String> {
    let out = Command::new(envoy_bin)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(bootstrap)
        .output()
        .with_context(|| format!("running {} --mode validate", envoy_bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "Envoy rejected {}:\n{text}",
        bootstrap.display()
    );
    Ok(text)
}

/// The user and group a process runs as (an Istio sidecar's Envoy runs as 1337, which is
/// how istio-init's iptables rules tell its traffic from the app's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    process: ChildProcess,
    admin: SocketAddr,
    bootstrap_path: PathBuf,
    /// What a [`RunAs`] Envoy reads and writes; it may not reach the log dir (under a home
    /// directory only root can enter, in CI). Removed when Envoy is dropped.
    _runtime_dir: Option<tempfile::TempDir>,
}

impl Envoy {
    /// Writes the bootstrap into `dir` (`<name>.json`), starts Envoy logging to `<name>.log`
    /// there, and waits until its admin interface answers.
    pub async fn start(
        envoy_bin: &Path,
        bootstrap: &Bootstrap,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::start_json(envoy_bin, &bootstrap.to_json(), dir, name, None).await
    }

    /// As [`Envoy::start`], with Envoy running as `run_as` (e.g. the sidecar's uid 1337 of
    /// [`crate::capture`]).
    pub async fn start_as(
        envoy_bin: &Path,
        bootstrap: &Bootstrap,
        dir: &Path,
        name: &str,
        run_as: RunAs,
    ) -> anyhow::Result<Self> {
        Self::start_json(envoy_bin, &bootstrap.to_json(), dir, name, Some(run_as)).await
    }

    /// Starts Envoy from any bootstrap (e.g. a static one without ADS), as root's child or as
    /// `run_as`. `<name>.json` in `dir` is always the bootstrap Envoy runs; with `run_as`,
    /// Envoy reads a copy of it (and writes its admin address) in a private directory under
    /// the system temp dir owned by that user.
    pub async fn start_json(
        envoy_bin: &Path,
        bootstrap: &Value,
        dir: &Path,
        name: &str,
        run_as: Option<RunAs>,
    ) -> anyhow::Result<Self> {
        let bootstrap_path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(bootstrap)?;
        std::fs::write(&bootstrap_path, &text)
            .with_context(|| format!("writing {}", bootstrap_path.display()))?;
        let runtime_dir = match run_as {
            Some(user) => {
                ensure_user_may_read_files(bootstrap, user)?;
                Some(runtime_dir_for(user, name)?)
            }
            None => None,
        };
        let (read_path, address_path) = match &runtime_dir {
            Some(rt) => {
                let copy = rt.path().join(format!("{name}.json"));
                std::fs::write(&copy, &text)
                    .with_context(|| format!("writing {}", copy.display()))?;
                (copy, rt.path().join(format!("{name}.admin-address")))
            }
            None => (
                bootstrap_path.clone(),
                dir.join(format!("{name}.admin-address")),
            ),
        };
        let _ = std::fs::remove_file(&address_path);
        let (mut cmd, binary) = match run_as {
            Some(user) => {
                let (cmd, binary) = command_as(envoy_bin, user)?;
                (cmd, Some(binary))
            }
            None => (Command::new(envoy_bin), None),
        };
        cmd.arg("-c")
            .arg(&read_path)
            .arg("--admin-address-path")
            .arg(&address_path)
            // No shared memory: several Envoys can run side by side.
            .arg("--disable-hot-restart")
            .args([
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--drain-time-s",
                "1",
            ]);
        let mut process = ChildProcess::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))?;
        drop(binary);

        let admin = wait_until(
            "Envoy to write its admin address",
            ENVOY_START_TIMEOUT,
            async || {
                process.ensure_running()?;
                let text = std::fs::read_to_string(&address_path)
                    .with_context(|| format!("reading {}", address_path.display()))?;
                text.trim()
                    .parse::<SocketAddr>()
                    .with_context(|| format!("parsing admin address {text:?}"))
            },
        )
        .await?;
        let envoy = Self {
            process,
            admin,
            bootstrap_path,
            _runtime_dir: runtime_dir,
        };
        envoy.wait_admin_up().await?;
        Ok(envoy)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap_path
    }

    /// GET an admin path (e.g. `/stats?filter=x`), requiring 200. A request that fails
    /// before any answer (a connection reset on loopback, seen once in CI on a host slowed to
    /// a crawl) is sent once more on a new connection: admin reads are idempotent.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let host = self.admin.to_string();
        let resp = match HttpClient::new(self.admin).get(&host, path, &[]).await {
            Ok(resp) => resp,
            Err(first) => {
                tracing::warn!("Envoy admin {path} failed, trying once more: {first:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                HttpClient::new(self.admin)
                    .get(&host, path, &[])
                    .await
                    .with_context(|| format!("after a first failure: {first:#}"))?
            }
        };
        ensure!(
            resp.status.is_success(),
            "Envoy admin {path} answered {}: {}",
            resp.status,
            resp.text()
        );
        Ok(resp)
    }

    /// Waits until `/server_info` answers.
    pub async fn wait_admin_up(&self) -> anyhow::Result<()> {
        wait_until(
            "Envoy admin to answer /server_info",
            ENVOY_START_TIMEOUT,
            async || self.admin_get("/server_info").await.map(|_| ()),
        )
        .await
    }

    /// The port a listener is actually bound to (`/listeners?format=json`), e.g. for a listener
    /// configured with port 0.
    pub async fn listener_port(&self, listener: &str) -> anyhow::Result<u16> {
        let v: Value = self.admin_get("/listeners?format=json").await?.json()?;
        let statuses = v["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = statuses.iter().filter_map(|s| s["name"].as_str()).collect();
        let status = statuses
            .iter()
            .find(|s| s["name"] == listener)
            .with_context(|| format!("Envoy has no listener {listener:?} (has {names:?})"))?;
        let port = status["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .with_context(|| format!("listener {listener:?} has no port: {status}"))?;
        ensure!(port != 0, "listener {listener:?} is not bound yet");
        u16::try_from(port).context("listener port out of range")
    }

    /// Waits until `listener` exists and returns its bound port.
    pub async fn wait_listener_port(
        &self,
        listener: &str,
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        wait_until(&format!("Envoy listener {listener}"), timeout, async || {
            self.listener_port(listener).await
        })
        .await
    }

    /// `/config_dump`, with endpoints (`include_eds`) if asked.
    pub async fn config_dump(&self, include_eds: bool) -> anyhow::Result<Value> {
        let path = if include_eds {
            "/config_dump?include_eds"
        } else {
            "/config_dump"
        };
        self.admin_get(path).await?.json()
    }

    /// The dynamic cluster `name` as Envoy holds it in service (warmed), if it has one;
    /// Envoy is asked for that one cluster only (cheap to poll in a mesh of thousands).
    pub async fn active_cluster(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let path = format!(
            "/config_dump?resource=dynamic_active_clusters&name_regex={}",
            percent_encode(&format!("^{}$", regex_escape(name)))
        );
        let dump: Value = self.admin_get(&path).await?.json()?;
        Ok(dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name)
            .cloned())
    }

    /// The names of the clusters capstan gave Envoy (`outbound|…`), sorted, from `/clusters`.
    pub async fn outbound_clusters(&self) -> anyhow::Result<Vec<String>> {
        let text = self.admin_get("/clusters").await?.text();
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.split("::").next())
            .filter(|name| name.starts_with("outbound|"))
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The counter or gauge named exactly `name` (0 when Envoy has none by that name).
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let stats = self.stats(&format!("^{}$", regex_escape(name))).await?;
        Ok(stats.get(name).copied().unwrap_or(0))
    }

    /// Counters and gauges from `/stats` whose names match the regex `filter`.
    /// Histograms (which have no single value) are left out.
    pub async fn stats(&self, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let text = self
            .admin_get(&format!("/stats?filter={}", percent_encode(filter)))
            .await?
            .text();
        Ok(parse_stats(&text))
    }

    /// Envoy's CDS and LDS `update_success` counters; an error if either is missing. Whether
    /// a proxy was ever served, which `control_plane.connected_state` cannot say: Envoy sets
    /// it to 1 as it opens each stream, before the server has read a request.
    pub async fn accepted_updates(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let stats = self
            .stats(r"^(cluster_manager\.cds|listener_manager\.lds)\.update_success$")
            .await?;
        for required in [
            "cluster_manager.cds.update_success",
            "listener_manager.lds.update_success",
        ] {
            ensure!(stats.contains_key(required), "no {required} in {stats:?}");
        }
        Ok(stats)
    }

    /// [`Self::ensure_nothing_rejected`], and that Envoy was answered in time: every
    /// `*init_fetch_timeout` stat is 0.
    pub async fn ensure_no_rejected_updates(&self) -> anyhow::Result<()> {
        self.ensure_nothing_rejected().await?;
        // A resource Envoy waited for until its initial fetch timeout (15 s) means capstan
        // left a subscription unanswered (a warming cluster without its load assignment, say):
        // served late, which a test's 20 s wait would otherwise hide.
        let timed_out = self.stats("init_fetch_timeout").await?;
        let waited: Vec<_> = timed_out.iter().filter(|(_, v)| **v != 0).collect();
        ensure!(
            waited.is_empty(),
            "Envoy waited out its initial fetch timeout for: {waited:?}"
        );
        Ok(())
    }

    /// Fails unless Envoy is connected to the control plane and has rejected nothing:
    /// no `error_state` (or NACKED `client_status`) anywhere in `/config_dump?include_eds`
    /// and every `*update_rejected` stat is 0 (the LDS and CDS ones must exist). For tests
    /// whose fault may keep Envoy's first requests unanswered for a while; the others use
    /// [`Self::ensure_no_rejected_updates`].
    pub async fn ensure_nothing_rejected(&self) -> anyhow::Result<()> {
        let dump = self.config_dump(true).await?;
        let mut problems = Vec::new();
        find_rejections(&dump, "$", &mut problems);
        ensure!(
            problems.is_empty(),
            "Envoy config_dump shows rejected config:\n{}",
            problems.join("\n")
        );

        let stats = self.stats("update_rejected").await?;
        for required in [
            "listener_manager.lds.update_rejected",
            "cluster_manager.cds.update_rejected",
        ] {
            ensure!(
                stats.contains_key(required),
                "stat {required} missing; have {stats:?}"
            );
        }
        let rejected: Vec<_> = stats.iter().filter(|(_, v)| **v != 0).collect();
        ensure!(
            rejected.is_empty(),
            "Envoy rejected xDS updates: {rejected:?}"
        );

        let connected = self.stats("^control_plane.connected_state$").await?;
        ensure!(
            connected.get("control_plane.connected_state") == Some(&1),
            "Envoy is not connected to the control plane: {connected:?}"
        );
        Ok(())
    }
}

/// `bin` to be run as `user`, and the descriptor it is executed through: the user may not be
/// allowed to walk to the binary (a venv or a target dir under /root), but exec through a
/// descriptor root opened needs only the file's own mode bits. Keep the file open until
/// spawned.
pub(crate) fn command_as(bin: &Path, user: RunAs) -> anyhow::Result<(Command, std::fs::File)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let binary = std::fs::File::open(bin).with_context(|| format!("opening {}", bin.display()))?;
    let mut cmd = Command::new(format!("/proc/self/fd/{}", binary.as_raw_fd()));
    // Supplementary groups go too: std clears them when root sets a uid.
    cmd.arg0(bin).uid(user.uid).gid(user.gid);
    Ok((cmd, binary))
}

/// A fresh directory for Envoy `name` owned by `user`, under the system temp dir.
fn runtime_dir_for(user: RunAs, name: &str) -> anyhow::Result<tempfile::TempDir> {
    dir_owned_by(user, &format!("capstan-envoy-{name}-"))
}

/// A fresh directory (mode 0700) named `<prefix>…` under the system temp dir, owned by
/// `user`: where a process run as `user` keeps what it reads and writes, since the log dir
/// may be out of its reach (under a home directory only root can enter, in CI).
pub(crate) fn dir_owned_by(user: RunAs, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::chown;
    let base = std::env::temp_dir();
    // TMPDIR could point into a home directory the user cannot enter; say so rather than
    // leave the process to fail on its first file.
    ensure_user_may(user, &base, 0o1).with_context(|| {
        format!(
            "the temp dir must be usable by uid {} (set TMPDIR)",
            user.uid
        )
    })?;
    let rt = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("creating a directory {prefix}… in {}", base.display()))?;
    chown(rt.path(), Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to uid {}", rt.path().display(), user.uid))?;
    Ok(rt)
}

/// Fails, naming the file, unless `user` can read every file the bootstrap names
/// (`filename` data sources: certificates, keys, CAs), which Envoy would otherwise only
/// report as a bootstrap error once started.
fn ensure_user_may_read_files(bootstrap: &Value, user: RunAs) -> anyhow::Result<()> {
    match bootstrap {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("filename", Value::String(file)) => {
                        ensure_user_may(user, Path::new(file), 0o4).with_context(|| {
                            format!("Envoy runs as uid {} and reads {file}", user.uid)
                        })?
                    }
                    _ => ensure_user_may_read_files(value, user)?,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                ensure_user_may_read_files(item, user)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fails unless `user` (with no supplementary groups) may search every directory above
/// `path` and has the `want` bits (0o4 read, 0o2 write, 0o1 execute/search) on `path`.
pub(crate) fn ensure_user_may(user: RunAs, path: &Path, want: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let check = |p: &Path, want: u32| -> anyhow::Result<()> {
        let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let class = if meta.uid() == user.uid {
            meta.mode() >> 6
        } else if meta.gid() == user.gid {
            meta.mode() >> 3
        } else {
            meta.mode()
        };
        ensure!(
            class & want == want,
            "uid {} may not {} {} (mode {:o}, owner {}:{})",
            user.uid,
            if want == 0o1 { "enter" } else { "use" },
            p.display(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        );
        Ok(())
    };
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        check(dir, 0o1)?;
    }
    check(path, want)
}

/// `s` with the characters a regex gives a meaning to escaped.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The virtual hosts of every dynamic route configuration in a `/config_dump`.
pub fn dynamic_virtual_hosts(dump: &Value) -> impl Iterator<Item = &Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_route_configs"].as_array().into_iter().flatten())
        .flat_map(|r| {
            r["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
        })
}

/// The names of the dynamic route configurations in a `/config_dump`.
pub fn dynamic_route_config_names(dump: &Value) -> Vec<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_route_configs"].as_array().into_iter().flatten())
        .filter_map(|r| r["route_config"]["name"].as_str().map(str::to_string))
        .collect()
}

/// (virtual hosts, routes) in the dynamic route configurations of a `/config_dump`.
pub fn route_counts(dump: &Value) -> (usize, usize) {
    let vhosts: Vec<&Value> = dynamic_virtual_hosts(dump).collect();
    let routes = vhosts
        .iter()
        .map(|vh| vh["routes"].as_array().map_or(0, Vec::len))
        .sum();
    (vhosts.len(), routes)
}

/// The one weighted split in a `/config_dump`, as (subset, host, weight) read off its cluster
/// names (`outbound|<port>|<subset>|<host>`); fails unless there is exactly one.
pub fn weighted_clusters(dump: &Value) -> anyhow::Result<Vec<(String, String, u64)>> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "weighted_clusters" {
                        out.push(v.clone());
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dump, &mut found);
    ensure!(
        found.len() == 1,
        "expected one weighted route, found {}: {found:?}",
        found.len()
    );
    let clusters = found[0]["clusters"]
        .as_array()
        .with_context(|| format!("weighted_clusters without clusters: {}", found[0]))?;
    clusters
        .iter()
        .map(|c| {
            let mut parts = c["name"].as_str().unwrap_or("").split('|').skip(2);
            let (Some(subset), Some(host)) = (parts.next(), parts.next()) else {
                anyhow::bail!("unexpected cluster name in {c}");
            };
            let weight = c["weight"]
                .as_u64()
                .with_context(|| format!("no weight in {c}"))?;
            Ok((subset.to_string(), host.to_string(), weight))
        })
        .collect()
}

/// Parses Envoy's plain-text stats (`name: value` per line), skipping non-integer values.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Collects JSON paths of `error_state` keys and NACKED `client_status` values.
fn find_rejections(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let child_path = format!("{path}.{k}");
                if k == "error_state" {
                    out.push(format!("{child_path} = {child}"));
                } else if k == "client_status" && child.as_str() == Some("NACKED") {
                    out.push(format!("{child_path} = NACKED"));
                } else {
                    find_rejections(child, &child_path, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_rejections(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The address of a listener bound on all interfaces, as reached from loopback.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_istio_node_and_ads() {
        let b = Bootstrap::new(AdsMode::Delta, 15010).to_json();
        assert_eq!(
            b["node"]["id"],
            "sidecar~127.0.0.1~sleep-0.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "bookinfo");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(
            b["dynamic_resources"]["lds_config"]["resource_api_version"],
            "V3"
        );
    }

    #[test]
    fn parses_stats_and_finds_rejections() {
        let s = parse_stats("a.b: 3\nc.update_rejected: 0\nh: P0(nan,1) P25(nan,2)\n");
        assert_eq!(s.get("a.b"), Some(&3));
        assert_eq!(s.get("c.update_rejected"), Some(&0));
        assert!(!s.contains_key("h"));

        let mut out = Vec::new();
        let dump = json!({"configs": [{"dynamic_listeners": [
            {"name": "ok", "active_state": {}},
            {"name": "bad", "error_state": {"details": "boom"}}
        ]}]});
        find_rejections(&dump, "$", &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].contains("dynamic_listeners[1].error_state"),
            "{out:?}"
        );
    }
}
