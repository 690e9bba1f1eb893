//! The reviews mesh for the folder-fault tests: capstan started with extra flags on a config
//! folder that may be a symlink swapped git-sync style, three `reviews` upstreams, one Envoy,
//! and the ways a folder gets written badly (in place, emptied, renamed over, swapped,
//! deleted).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::capstan::Capstan;
use crate::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use crate::fixtures;
use crate::http::{HttpClient, HttpResponse};
use crate::locate;
use crate::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER};
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::upstreams::Upstreams;
use crate::wait::wait_until;

pub const SE_FILE: &str = "reviews-se.yaml";
pub const DR_FILE: &str = "reviews-dr.yaml";
pub const VS_FILE: &str = "reviews-vs.yaml";

/// How the config folder is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `config/` is a plain directory.
    Plain,
    /// `config` is a symlink to `rev-1/`, later swapped to other revisions (git-sync).
    Symlinked,
    /// `current/config` where `current` is a symlink to `rev-1/`, later swapped: the swap
    /// happens above the folder's parent.
    SymlinkedAbove,
}

/// Fields drop in order: Envoy first, the temp dir last.
pub struct FolderMesh {
    pub proxy: HttpClient,
    pub envoy: Envoy,
    pub capstan: ChildProcess,
    pub monitoring: SocketAddr,
    pub upstreams: Upstreams,
    /// The path capstan was given (`--config-dir`).
    pub config_dir: PathBuf,
    pub log_dir: PathBuf,
    root: PathBuf,
    layout: Layout,
    revisions: usize,
    _tmp: tempfile::TempDir,
}

impl FolderMesh {
    /// Upstreams reviews v1..v3, the reviews ServiceEntry and DestinationRule and
    /// `virtual_service` in the folder, `capstan run --config-dir <folder> <flags>`, one Envoy
    /// (SotW) with its outbound listener up.
    pub async fn start(
        name: &str,
        upstream_bin: &Path,
        layout: Layout,
        flags: &[&str],
        virtual_service: &str,
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("capstan-e2e-{name}-"))
            .tempdir()?;
        let root = tmp.path().to_path_buf();
        let log_dir = locate::fresh_log_dir(name)?;
        let config_dir = match layout {
            Layout::Plain | Layout::Symlinked => root.join("config"),
            Layout::SymlinkedAbove => root.join("current").join("config"),
        };
        match layout {
            Layout::Plain => std::fs::create_dir(&config_dir)?,
            Layout::Symlinked => {
                std::fs::create_dir(root.join("rev-1"))?;
                std::os::unix::fs::symlink("rev-1", &config_dir)?;
            }
            Layout::SymlinkedAbove => {
                std::fs::create_dir_all(root.join("rev-1").join("config"))?;
                std::os::unix::fs::symlink("rev-1", root.join("current"))?;
            }
        }
        let versions = ["v1", "v2", "v3"];
        let instances: Vec<_> = versions.iter().map(|v| ("reviews", *v)).collect();
        let upstreams = Upstreams::start_on_free_ports(upstream_bin, &instances, &log_dir).await?;
        let mut endpoints = Vec::new();
        for version in versions {
            endpoints.push((version, upstreams.port("reviews", version)?));
        }
        write_atomic(
            &root,
            &config_dir,
            SE_FILE,
            &fixtures::reviews_service_entry(&endpoints),
        )?;
        write_atomic(
            &root,
            &config_dir,
            DR_FILE,
            &fixtures::reviews_destination_rule(&versions),
        )?;
        write_atomic(&root, &config_dir, VS_FILE, virtual_service)?;
        let (capstan, xds_port, monitoring) = start_capstan(&config_dir, flags, &log_dir).await?;
        let envoy_bin = locate::envoy_bin()?;
        let envoy = Envoy::start(
            &envoy_bin,
            &Bootstrap::new(AdsMode::Sotw, xds_port),
            &log_dir,
            "envoy",
        )
        .await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", log_dir.display()))?;
        Ok(Self {
            proxy: HttpClient::new(loopback(port)),
            envoy,
            capstan,
            monitoring,
            upstreams,
            config_dir,
            log_dir,
            root,
            layout,
            revisions: 1,
            _tmp: tmp,
        })
    }

    /// Writes `file` atomically: into a scratch file outside the folder, then renamed in.
    pub fn write_atomic(&self, file: &str, contents: &str) -> anyhow::Result<()> {
        write_atomic(&self.root, &self.config_dir, file, contents)
    }

    /// Writes `file` in place (truncate, then write), as a shell redirection does.
    pub fn write_in_place(&self, file: &str, contents: &str) -> anyhow::Result<()> {
        let path = self.config_dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    }

    /// A writer still busy with `file`: appends `line` to it every `every` until stopped.
    pub fn slow_writer(&self, file: &str, line: &str, every: Duration) -> SlowWriter {
        let path = self.config_dir.join(file);
        let line = line.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) {
                    let _ = f.write_all(line.as_bytes());
                }
                std::thread::sleep(every);
            }
        });
        SlowWriter {
            stop,
            thread: Some(thread),
        }
    }

    /// git-sync style: writes `files` into a new revision directory, points a new symlink at
    /// it and renames that over the old symlink. The old revision stays until
    /// [`FolderMesh::remove_revision`].
    pub fn swap_revision(&mut self, files: &[(&str, &str)]) -> anyhow::Result<()> {
        self.revisions += 1;
        let new = format!("rev-{}", self.revisions);
        let (folder, link) = match self.layout {
            Layout::Plain => anyhow::bail!("a plain folder has no revisions"),
            Layout::Symlinked => (self.root.join(&new), self.root.join("config")),
            Layout::SymlinkedAbove => (
                self.root.join(&new).join("config"),
                self.root.join("current"),
            ),
        };
        std::fs::create_dir_all(&folder)?;
        for (file, contents) in files {
            std::fs::write(folder.join(file), contents)?;
        }
        let staged = self.root.join("link.tmp");
        std::os::unix::fs::symlink(&new, &staged)?;
        std::fs::rename(&staged, &link).context("swapping the symlink")?;
        Ok(())
    }

    /// Deletes revision `n` (git-sync cleans up old worktrees).
    pub fn remove_revision(&self, n: usize) -> anyhow::Result<()> {
        Ok(std::fs::remove_dir_all(self.root.join(format!("rev-{n}")))?)
    }

    /// The files of the folder now, by name.
    pub fn files(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.config_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.insert(name, std::fs::read_to_string(entry.path())?);
        }
        Ok(out)
    }

    /// GET a path of capstan's monitoring server (any status).
    pub async fn monitoring_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        HttpClient::new(self.monitoring)
            .get(&self.monitoring.to_string(), path, &[])
            .await
    }

    /// The version of the snapshot capstan serves (`/debug/snapshot`): it moves with every
    /// config pushed.
    pub async fn snapshot_version(&self) -> anyhow::Result<u64> {
        let resp = self.monitoring_get("/debug/snapshot").await?;
        ensure!(resp.status.is_success(), "/debug/snapshot: {}", resp.status);
        let body: Value = resp.json()?;
        body["version"]
            .as_u64()
            .with_context(|| format!("no version in /debug/snapshot: {body}"))
    }

    /// Versions of reviews answering `n` requests with `headers`.
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
        let log_dir = self.log_dir.clone();
        wait_until(&what, CONFIG_TIMEOUT, async || {
            self.capstan.ensure_running()?;
            self.expect_all(headers, version, n).await
        })
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    }
}

/// Stops its writer thread on drop.
pub struct SlowWriter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SlowWriter {
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SlowWriter {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `capstan run --config-dir <dir> <flags>` on free ports; retried on a port taken meanwhile.
async fn start_capstan(
    dir: &Path,
    flags: &[&str],
    log_dir: &Path,
) -> anyhow::Result<(ChildProcess, u16, SocketAddr)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (xds_port, monitoring_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(locate::capstan_bin()?);
        cmd.arg("run")
            .arg("--config-dir")
            .arg(dir)
            .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{monitoring_port}")])
            .args(["--outbound-port", "0"])
            .args(flags);
        let mut process = Capstan::spawn(cmd, log_dir, &format!("capstan-{attempt}"))?;
        match Capstan::wait_listening(&mut process).await {
            Ok(()) => return Ok((process, xds_port, loopback(monitoring_port))),
            Err(e) if attempt < 3 && process.log().contains("in use") => {
                eprintln!("capstan could not bind its ports, retrying: {e:#}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `dir/file` by writing `scratch/staged-<file>` and renaming it over.
fn write_atomic(scratch: &Path, dir: &Path, file: &str, contents: &str) -> anyhow::Result<()> {
    let staged = scratch.join(format!("staged-{file}"));
    std::fs::write(&staged, contents)?;
    let target = dir.join(file);
    std::fs::rename(&staged, &target).with_context(|| format!("renaming into {}", target.display()))
}
