//! `capstan run`: a source (a YAML folder, or a Kubernetes API server) → index → model →
//! translation → push queue → cache → ADS.

mod args;
mod ca;
mod ca_mode;
mod cloud_map;
mod folder;
mod kube;
mod webhook;

pub use args::{OptionalAddr, RunArgs, TlsArgs};
pub use ca_mode::CaArgs;
pub use kube::{KubeArgs, client as kube_client};
pub use webhook::WebhookRunArgs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use capstan_xds::net::ConnectionLimits;
use capstan_xds::net::grpc::GrpcLimits;
use capstan_xds::{PushQueue, SnapshotCache};
use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::monitoring::ReadyState;
use crate::reconcile::{ReconcileMetrics, Reconciler};
use crate::translate;

/// What every mode shares: the cache and its push queue, metrics, the bound ports.
pub(crate) struct Serving {
    pub cache: SnapshotCache,
    pub queue: PushQueue,
    pub registry: prometheus_client::registry::Registry,
    pub reconcile_metrics: ReconcileMetrics,
    pub options: translate::Options,
    pub ads: TcpListener,
    /// The TLS xDS port, when a CA is configured.
    pub ads_tls: Option<ca::XdsTls>,
    pub ready: watch::Sender<ReadyState>,
    pub ads_limits: GrpcLimits,
    pub monitoring_limits: ConnectionLimits,
    /// The push queue's task, for a mode to supervise (taken by the folder mode).
    pub queue_task: Option<tokio::task::JoinHandle<()>>,
    /// The Cloud Map source, when configured: its events, for the mode to apply (in-memory)
    /// or write (materialised).
    pub cloud_map: Option<cloud_map::CloudMapFeed>,
}

pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    let mesh_settings = apply_mesh_config(&mut args)?;
    let metrics = capstan_xds::Metrics::new();
    let mut registry = prometheus_client::registry::Registry::with_prefix("capstan");
    metrics.register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::default();
    reconcile_metrics.register(&mut registry);
    let cloud_map = cloud_map::start(&args, &mut registry).await?;
    let cache = SnapshotCache::with_metrics(metrics);
    let (queue, queue_task) = PushQueue::start(
        cache.clone(),
        Duration::from_millis(args.push_quiet_ms),
        Duration::from_millis(args.push_max_delay_ms),
    );
    ensure_plaintext_allowed(&args)?;
    // Bound before anything is read, so a port in use fails at once; the ADS port accepts
    // proxies only once the first complete config is in the cache.
    let ads = bind(args.xds_addr, "the ADS server").await?;
    let ads_tls = xds_tls(&args, &mut registry).await?;
    let authority = ads_tls.as_ref().map(|tls| tls._ca.authority.clone());
    let _webhook = webhook::start(&args, authority).await?;
    let (ready, _) = watch::channel(ReadyState::waiting(vec!["the first config".into()]));
    let serving = Serving {
        cache,
        queue,
        registry,
        reconcile_metrics,
        options: translate::Options {
            outbound_bind: args.outbound_bind.clone(),
            outbound_port: args.outbound_port,
            sidecar_listeners: args.sidecar_listeners,
            root_namespace: args.root_namespace.clone(),
            outbound_traffic_policy: args.outbound_traffic_policy.clone(),
            mesh_settings,
        },
        ads,
        ads_tls,
        ready,
        ads_limits: ads_limits(&args),
        monitoring_limits: monitoring_limits(&args),
        queue_task: Some(queue_task),
        cloud_map,
    };
    match (&args.config_dir, args.kube.kubernetes()) {
        (Some(dir), false) => folder::run(&args, dir, serving).await,
        (None, true) => kube::run(&args, serving).await,
        (Some(_), true) => anyhow::bail!(
            "--config-dir and --kubeconfig/--in-cluster choose different sources; give one"
        ),
        (None, false) => anyhow::bail!(
            "no config source: give --config-dir DIR (a folder of Istio YAML) or --kubeconfig FILE / --in-cluster (a Kubernetes API server)"
        ),
    }
}

/// Reads `--mesh-config`, if given, into the flags it overrides; returns what translation
/// reads of it and of those flags (the trust domain).
fn apply_mesh_config(
    args: &mut RunArgs,
) -> anyhow::Result<std::sync::Arc<crate::mesh_config::MeshSettings>> {
    let Some(path) = &args.mesh_config else {
        let settings = crate::mesh_config::MeshSettings {
            trust_domains: crate::mesh_config::TrustDomains::new(&args.tls.trust_domain, &[]),
            ..Default::default()
        };
        return Ok(std::sync::Arc::new(settings));
    };
    let config = crate::mesh_config::MeshConfig::read(path)?;
    config.warn(path);
    if let Some(root) = &config.root_namespace {
        args.root_namespace = root.clone();
    }
    if let Some(domain) = &config.trust_domain {
        args.tls.trust_domain = domain.clone();
    }
    if let Some(mode) = &config.outbound_traffic_policy {
        args.outbound_traffic_policy = mode.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut settings = config.settings();
    settings.trust_domains =
        crate::mesh_config::TrustDomains::new(&args.tls.trust_domain, &config.trust_domain_aliases);
    info!(
        mesh_config = %path.display(),
        providers = ?settings.extension_providers.names().collect::<Vec<_>>(),
        auto_mtls = settings.enable_auto_mtls,
        trust_domains = ?settings.trust_domains.all(),
        "mesh config read"
    );
    Ok(std::sync::Arc::new(settings))
}

/// Refuses plaintext xDS beyond loopback unless asked for: whoever reaches it is served
/// whatever namespace its node names.
fn ensure_plaintext_allowed(args: &RunArgs) -> anyhow::Result<()> {
    let addr = args.xds_addr;
    anyhow::ensure!(
        addr.ip().is_loopback() || args.xds_plaintext_insecure,
        "--xds-addr {addr} would serve plaintext xDS beyond this host, where any client can \
         claim any proxy's identity; serve proxies on the TLS port (--xds-tls-addr with \
         --ca-dir or --cacerts-dir), bind --xds-addr to loopback, or give \
         --xds-plaintext-insecure to serve it anyway"
    );
    if !addr.ip().is_loopback() {
        warn!(%addr, "serving plaintext xDS beyond loopback (--xds-plaintext-insecure)");
    }
    Ok(())
}

/// The TLS xDS port, when a CA is configured and the port is not turned off; in a cluster,
/// with the CSR service beside ADS.
async fn xds_tls(
    args: &RunArgs,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Option<ca::XdsTls>> {
    let Some(addr) = args.tls.xds_tls_addr.0 else {
        return Ok(None);
    };
    let client = match args.kube.kubernetes() {
        true => Some(args.kube.client().await?),
        false => None,
    };
    let cluster = client
        .as_ref()
        .map(|client| (client, args.kube.namespace.as_str()));
    let trust_domain = &args.tls.trust_domain;
    let running = ca_mode::start(
        &args.tls.ca,
        trust_domain,
        args.tls.ca_dir.as_ref(),
        args.tls.cacerts_dir.as_ref(),
        cluster,
    )
    .await?;
    let Some(mut running) = running else {
        info!(
            "xDS over TLS is off: no CA configured (--ca-dir, --cacerts-dir, --ca-pca-arn, or a cluster)"
        );
        return Ok(None);
    };
    let names = ca::ServingNames {
        dns: args.tls.xds_tls_dns_names.clone(),
        ips: args.tls.xds_tls_ips.clone(),
    };
    let routes = match client {
        Some(client) => {
            running.publish_roots(client.clone());
            let service = ca_mode::csr_service(
                &args.tls.ca,
                trust_domain,
                running.authority.clone(),
                client,
            );
            service.metrics().register(registry);
            info!(
                "serving the CA's CreateCertificate on the TLS port (tokens checked by TokenReview)"
            );
            tonic::service::Routes::new(capstan_ca::api::IstioCertificateServer::new(service))
        }
        None => {
            info!(
                "CreateCertificate is not served: without a cluster there are no tokens to check"
            );
            tonic::service::Routes::default()
        }
    };
    let tls = ca::xds_tls(addr, running, names, routes).await?;
    tls.tls.register(registry);
    Ok(Some(tls))
}

/// The ADS server's limits from the flags, its connection cap lowered to what the open-file
/// limit leaves beside the monitoring server's.
fn ads_limits(args: &RunArgs) -> GrpcLimits {
    let wanted = ConnectionLimits {
        max_connections: count(args.xds_max_connections),
        max_per_ip: count(args.xds_max_connections_per_ip),
    };
    let (connections, lowered) = wanted.within_fd_limit(count(args.monitoring_max_connections));
    if lowered {
        warn!(
            wanted = wanted.max_connections,
            cap = connections.max_connections,
            "--xds-max-connections lowered to what the open-file limit (ulimit -n) allows"
        );
    }
    GrpcLimits {
        connections,
        max_streams_per_connection: args.xds_max_streams_per_connection.max(1),
        first_request_timeout: Duration::from_millis(args.xds_first_request_timeout_ms.into()),
        max_connection_age: (args.xds_max_connection_age_secs > 0)
            .then(|| Duration::from_secs(args.xds_max_connection_age_secs.into())),
    }
}

/// A count from a flag (flags are u32 to keep `RunArgs` small).
fn count(flag: u32) -> usize {
    usize::try_from(flag).unwrap_or(usize::MAX)
}

fn monitoring_limits(args: &RunArgs) -> ConnectionLimits {
    let wanted = ConnectionLimits {
        max_connections: count(args.monitoring_max_connections),
        max_per_ip: count(args.monitoring_max_connections_per_ip),
    };
    let (limits, lowered) = wanted.within_fd_limit(0);
    if lowered {
        warn!(
            wanted = wanted.max_connections,
            cap = limits.max_connections,
            "--monitoring-max-connections lowered to what the open-file limit (ulimit -n) allows"
        );
    }
    limits
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))
}

impl Serving {
    /// Starts the monitoring server (before the first config: `/readyz` says what is awaited).
    pub fn monitor(&mut self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let registry = std::mem::take(&mut self.registry);
        tokio::spawn(crate::monitoring::serve_with(
            listener,
            self.monitoring_limits,
            self.cache.clone(),
            registry,
            self.ready.subscribe(),
        ))
    }

    /// Marks capstan ready and serves ADS (plaintext, and TLS if configured) until a
    /// shutdown signal.
    pub async fn serve_ads(self) -> anyhow::Result<()> {
        let addr = self.ads.local_addr()?;
        // Only the wait is over: a part that already failed keeps capstan not ready.
        self.ready.send_modify(|state| state.waiting_for.clear());
        let shutdown = shutdown_signal().shared();
        let plaintext = async {
            capstan_xds::ads::serve_with(
                self.ads,
                self.cache.clone(),
                &self.ads_limits,
                shutdown.clone(),
            )
            .await
            .context("ADS server")
        };
        match self.ads_tls {
            None => {
                // Tests and the demo wait for this line: from now on the ADS port answers.
                info!(%addr, "ADS server listening on {addr}");
                plaintext.await?;
            }
            Some(tls) => {
                let tls_addr = tls.listener.local_addr()?;
                let routes = tls.routes;
                let secure = async {
                    capstan_xds::ads::serve_tls(
                        tls.listener,
                        self.cache.clone(),
                        &tls.tls,
                        &self.ads_limits,
                        routes,
                        shutdown.clone(),
                    )
                    .await
                    .context("xDS TLS server")
                };
                info!(addr = %tls_addr, "xDS TLS server listening on {tls_addr}");
                info!(%addr, "ADS server listening on {addr}");
                let served = tokio::try_join!(plaintext, secure);
                tls.renewal.abort();
                served?;
            }
        }
        info!("stopped");
        Ok(())
    }

    pub fn reconciler(
        &self,
        domain_suffix: &str,
        status: Option<crate::status::writer::StatusWriter>,
    ) -> Reconciler {
        let reconciler = Reconciler::new(
            self.options.clone(),
            domain_suffix.to_string(),
            self.queue.clone(),
            status,
            self.reconcile_metrics.clone(),
        );
        self.cache.set_proxy_resolver(reconciler.pod_localities());
        reconciler
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(xds_addr: &str, insecure: bool) -> RunArgs {
        let mut argv = vec!["capstan", "--xds-addr", xds_addr];
        if insecure {
            argv.push("--xds-plaintext-insecure");
        }
        Cli::try_parse_from(argv).expect("flags").run
    }

    #[test]
    fn plaintext_beyond_loopback_needs_the_insecure_flag() {
        ensure_plaintext_allowed(&args("127.0.0.1:15010", false)).expect("loopback");
        ensure_plaintext_allowed(&args("[::1]:15010", false)).expect("loopback v6");
        let err = ensure_plaintext_allowed(&args("0.0.0.0:15010", false)).expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("--xds-plaintext-insecure"), "{message}");
        assert!(message.contains("0.0.0.0:15010"), "{message}");
        ensure_plaintext_allowed(&args("0.0.0.0:15010", true)).expect("insecure allowed");
    }

    /// Translation names identities in the trust domain the CA issues them in: the flag's,
    /// unless the mesh config sets one; the mesh config's aliases come with it.
    #[test]
    fn translation_reads_the_trust_domain_of_the_flag_or_the_mesh_config() {
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).expect("flags").run;
        let mut flag = parse(&["capstan", "--trust-domain", "example.org"]);
        let settings = apply_mesh_config(&mut flag).expect("no mesh config");
        assert_eq!(settings.trust_domains.all(), ["example.org"]);

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mesh.yaml");
        std::fs::write(
            &path,
            "trustDomain: new.example\ntrustDomainAliases: [old.example]\n",
        )
        .expect("written");
        let path = path.to_str().expect("utf-8");
        let mut both = parse(&[
            "capstan",
            "--trust-domain",
            "example.org",
            "--mesh-config",
            path,
        ]);
        let settings = apply_mesh_config(&mut both).expect("mesh config");
        assert_eq!(settings.trust_domains.all(), ["new.example", "old.example"]);
        assert_eq!(both.tls.trust_domain, "new.example", "the CA's too");
    }
}
