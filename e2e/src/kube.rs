//! A real Kubernetes control plane on loopback for the Kubernetes end-to-end tests
//! (envtest-style): etcd + kube-apiserver, no kubelet, scheduler or controller-manager.
//!
//! [`KubeCluster::shared`] starts one cluster per test binary, reused by every test in it;
//! tests isolate by namespace ([`KubeCluster::create_namespace`]). [`KubeCluster::start`]
//! starts a private one, for a test that disturbs the cluster (an apiserver outage).
//!
//! At start the cluster gets the Istio CRDs from `crds/generated/` (the apiserver judges their
//! schemas), namespace `istio-system` and `charts/manifests/rbac.yaml`. Two identities:
//! - admin: client certificate with O=system:masters (cluster-admin);
//! - capstan: a static token for `system:serviceaccount:istio-system:capstan` in the
//!   ServiceAccount groups, so the chart's RBAC decides what it may do, as in a cluster.
//!
//! Binaries: `$CAPSTAN_KUBE_BIN_DIR`, else `$CAPSTAN_TOOLS_DIR/kube` (`make kube-tools` builds
//! them there); kubectl from `$KUBECTL` or `PATH`. A missing binary fails, never skips.
//! Logs: `<profile dir>/e2e-logs/kube-<test binary>/`; the state (PKI, kubeconfigs, etcd
//! data) lives in a temp dir removed at exit.
//!
//! Start-up, measured on 2 cores: ~3.4 s when the machine is quiet (etcd 0.1 s, apiserver
//! ~2 s, CRDs + RBAC ~1.2-1.5 s, most of it kubectl runs), 5-9 s when it is busy compiling or
//! starts two clusters at once. Later callers of `shared()` get the running cluster at once.

mod keeper;
pub mod kubectl;
pub mod pki;
mod procs;
mod setup;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

pub use kubectl::{KUBECTL_TIMEOUT, KubectlOutput, kubectl_bin};
pub use pki::CAPSTAN_USER;
pub use procs::{APISERVER_START_TIMEOUT, ETCD_START_TIMEOUT, KubeBins, kube_bin_dir, kube_bins};
pub use setup::CRD_TIMEOUT;

use crate::locate;
use crate::process::ChildProcess;
use procs::ApiserverSpec;

/// Who kubectl runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeUser {
    /// cluster-admin (client certificate, O=system:masters).
    Admin,
    /// `system:serviceaccount:istio-system:capstan`, bound by `charts/manifests/rbac.yaml`.
    Capstan,
}

/// How long the phases of a cluster start took.
#[derive(Debug, Clone, Copy)]
pub struct StartTimings {
    pub etcd: Duration,
    pub apiserver: Duration,
    /// CRDs applied and Established, istio-system and RBAC applied.
    pub setup: Duration,
    pub total: Duration,
}

/// A running etcd + kube-apiserver on 127.0.0.1. Dropping it stops both and removes its
/// state; the shared one lives until the test binary exits.
#[derive(Debug)]
pub struct KubeCluster {
    // Fields drop in order: apiserver before etcd, the state directory last.
    apiserver: Mutex<Option<ChildProcess>>,
    etcd: Mutex<ChildProcess>,
    bins: KubeBins,
    pki: pki::Pki,
    etcd_url: String,
    port: u16,
    server: String,
    admin_kubeconfig: PathBuf,
    capstan_kubeconfig: PathBuf,
    kubectl_cache: PathBuf,
    log_dir: PathBuf,
    apiserver_restarts: AtomicUsize,
    shared: bool,
    timings: StartTimings,
    state: TempDir,
}

static SHARED: tokio::sync::OnceCell<Result<KubeCluster, String>> =
    tokio::sync::OnceCell::const_new();
static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

impl KubeCluster {
    /// The cluster shared by all tests of this test binary, started by the first caller
    /// (later callers wait for it). A failed start is remembered: every test gets its error
    /// rather than each waiting for its own failing start.
    pub async fn shared() -> anyhow::Result<&'static KubeCluster> {
        let started = SHARED
            .get_or_init(|| async {
                let name = format!("kube-{}", test_binary_name());
                Self::start_inner(&name, true)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })
            .await;
        started.as_ref().map_err(|e| {
            anyhow!("the shared Kubernetes cluster of this test binary did not start: {e}")
        })
    }

    /// A private cluster, logging to `<profile dir>/e2e-logs/kube-<name>/`; stopped on drop.
    pub async fn start(name: &str) -> anyhow::Result<KubeCluster> {
        Self::start_inner(&format!("kube-{name}"), false).await
    }

    async fn start_inner(log_name: &str, shared: bool) -> anyhow::Result<KubeCluster> {
        // A test binary in its own network namespace starts with loopback down.
        crate::netns::network_up()?;
        let t0 = Instant::now();
        let bins = kube_bins()?;
        kubectl_bin()?;
        let state = keeper::state_dir(shared)?;
        let log_dir = locate::fresh_log_dir(log_name)?;
        let pki_dir = state.path().join("pki");
        std::fs::create_dir(&pki_dir)?;
        let pki = pki::write(&pki_dir)?;
        let kubectl_cache = state.path().join("kubectl-cache");

        let etcd = procs::start_etcd(&bins.etcd, &state.path().join("etcd"), &log_dir, shared)
            .await
            .context("starting etcd")?;
        let t_etcd = t0.elapsed();

        let admin_kubeconfig = state.path().join("admin.kubeconfig");
        let capstan_kubeconfig = state.path().join("capstan.kubeconfig");
        let mut attempt = 0;
        let (apiserver, port) = loop {
            attempt += 1;
            let port = crate::ports::free_port()?;
            let server = format!("https://127.0.0.1:{port}");
            let admin_user = pki::cert_user(&pki.admin_cert, &pki.admin_key);
            pki::write_kubeconfig(&admin_kubeconfig, &server, &pki.ca_cert, &admin_user)?;
            let capstan_user = pki::token_user(&pki.capstan_token);
            pki::write_kubeconfig(&capstan_kubeconfig, &server, &pki.ca_cert, &capstan_user)?;
            let spec = ApiserverSpec {
                bin: &bins.apiserver,
                pki: &pki,
                etcd_url: &etcd.url,
                log_dir: &log_dir,
                admin_kubeconfig: &admin_kubeconfig,
                kubectl_cache: &kubectl_cache,
                at_exit: shared,
            };
            let name = if attempt == 1 {
                "kube-apiserver".to_string()
            } else {
                format!("kube-apiserver-{attempt}")
            };
            match spec.launch(&name, port).await {
                Ok(p) => break (p, port),
                Err((e, true)) if attempt < 3 => {
                    eprintln!("kube: apiserver lost a port race, retrying: {e:#}");
                }
                Err((e, _)) => return Err(e.context("starting kube-apiserver")),
            }
        };
        let t_apiserver = t0.elapsed();

        let mut cluster = KubeCluster {
            apiserver: Mutex::new(Some(apiserver)),
            etcd: Mutex::new(etcd.process),
            bins,
            pki,
            etcd_url: etcd.url,
            port,
            server: format!("https://127.0.0.1:{port}"),
            admin_kubeconfig,
            capstan_kubeconfig,
            kubectl_cache,
            log_dir,
            apiserver_restarts: AtomicUsize::new(0),
            shared,
            timings: StartTimings {
                etcd: t_etcd,
                apiserver: t_apiserver - t_etcd,
                setup: Duration::ZERO,
                total: Duration::ZERO,
            },
            state,
        };
        setup::set_up(&cluster)
            .await
            .context("setting up the cluster")?;
        cluster.timings.setup = t0.elapsed() - t_apiserver;
        cluster.timings.total = t0.elapsed();
        let t = cluster.timings;
        eprintln!(
            "kube: cluster {} up in {:?} (etcd {:?}, apiserver {:?}, CRDs+RBAC {:?}); logs {}",
            cluster.server,
            t.total,
            t.etcd,
            t.apiserver,
            t.setup,
            cluster.log_dir.display()
        );
        Ok(cluster)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// etcd's client URL (`http://127.0.0.1:<port>`).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    pub fn kubeconfig(&self, user: KubeUser) -> &Path {
        match user {
            KubeUser::Admin => &self.admin_kubeconfig,
            KubeUser::Capstan => &self.capstan_kubeconfig,
        }
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub fn capstan_kubeconfig(&self) -> &Path {
        &self.capstan_kubeconfig
    }

    /// The CA that signed the apiserver's serving certificate (PEM file).
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The bearer token authenticating as `system:serviceaccount:istio-system:capstan`.
    pub fn capstan_token(&self) -> &str {
        &self.pki.capstan_token
    }

    /// The PEM (PKCS#8, ECDSA P-256) key the apiserver signs service-account tokens with, for
    /// tests that mint tokens the apiserver must judge (expired ones, say).
    pub fn service_account_signing_key(&self) -> &Path {
        &self.pki.sa_key
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub fn bins(&self) -> &KubeBins {
        &self.bins
    }

    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// `kubectl <args>` as admin; stdout, or an error with both outputs.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_as(KubeUser::Admin, args).await
    }

    /// `kubectl <args>` as `user`; stdout, or an error with both outputs.
    pub async fn kubectl_as(&self, user: KubeUser, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_output(user, args, None).await?.into_result()
    }

    /// `kubectl apply -f -` as admin with `yaml` on stdin (namespaces as the YAML says).
    pub async fn kubectl_apply_yaml(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_output(KubeUser::Admin, &["apply", "-f", "-"], Some(yaml))
            .await?
            .into_result()
    }

    /// `kubectl <args>` as `user` with optional stdin, whatever its exit status.
    pub async fn kubectl_output(
        &self,
        user: KubeUser,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<KubectlOutput> {
        kubectl::run(self.kubeconfig(user), &self.kubectl_cache, args, stdin).await
    }

    /// `kubectl auth can-i <args>` as `user`: true for "yes", false for "no".
    pub async fn can_i(&self, user: KubeUser, args: &[&str]) -> anyhow::Result<bool> {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        kubectl::parse_can_i(&self.kubectl_output(user, &full, None).await?)
    }

    /// Creates a namespace named after `prefix` (made DNS-safe) plus a counter, unique in
    /// this cluster, and returns its name. Namespaces are not deleted: without a
    /// controller-manager a deleted namespace would stay Terminating forever.
    pub async fn create_namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = namespace_name(prefix, n);
        self.kubectl(&["create", "namespace", &name]).await?;
        Ok(name)
    }

    /// Stops the apiserver (etcd and its data stay), as in a control-plane outage. On the
    /// shared cluster this affects every test of the binary: outage tests use [`Self::start`].
    pub async fn stop_apiserver(&self) -> anyhow::Result<()> {
        let taken = self
            .apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut process) = taken else {
            return Ok(());
        };
        // ChildProcess::stop blocks (SIGTERM, up to 5 s before SIGKILL).
        tokio::task::spawn_blocking(move || process.stop())
            .await
            .context("stopping kube-apiserver")?;
        Ok(())
    }

    /// Starts the apiserver again on the same port and waits until it is ready; a no-op if
    /// it runs. Its log is `kube-apiserver-restart-N.log`.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        if self
            .apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        self.etcd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ensure_running()?;
        let n = self.apiserver_restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = ApiserverSpec {
            bin: &self.bins.apiserver,
            pki: &self.pki,
            etcd_url: &self.etcd_url,
            log_dir: &self.log_dir,
            admin_kubeconfig: &self.admin_kubeconfig,
            kubectl_cache: &self.kubectl_cache,
            at_exit: self.shared,
        };
        let process = spec
            .launch(&format!("kube-apiserver-restart-{n}"), self.port)
            .await
            .map_err(|(e, taken)| {
                if taken {
                    e.context(format!(
                        "port {} was taken while the apiserver was down",
                        self.port
                    ))
                } else {
                    e
                }
            })?;
        let mut slot = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            bail!("kube-apiserver was started twice concurrently");
        }
        *slot = Some(process);
        Ok(())
    }

    /// The state directory (PKI, kubeconfigs, etcd data).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

/// The running test binary's name without cargo's `-<hash>` suffix (`kube_harness`).
fn test_binary_name() -> String {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tests".to_string());
    match stem.rsplit_once('-') {
        Some((name, hash)) if !name.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

/// A DNS-1123 label from `prefix` and `n`: lowercase alphanumerics and '-', at most 63.
fn namespace_name(prefix: &str, n: usize) -> String {
    let mut base: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    base.truncate(50);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "test" } else { base };
    format!("{base}-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        assert_eq!(namespace_name("bookinfo_applies", 3), "bookinfo-applies-3");
        assert_eq!(namespace_name("__", 0), "test-0");
        let long = namespace_name(&"A".repeat(80), 12345);
        assert!(long.len() <= 63 && long.starts_with("aaa"), "{long}");
    }
}
