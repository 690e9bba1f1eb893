//! `capstan`: the control plane binary.

mod index;
mod model;
mod monitoring;
mod proxy_status;
mod reconcile;
mod run;
mod source;
mod status;
mod translate;
mod validate_cmd;
mod webhook;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "capstan",
    version,
    about = "An istiod-style service-mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Istio configuration (a folder of YAML, or a Kubernetes cluster) to Envoy proxies
    /// over ADS.
    Run(RunArgs),
    /// Check Istio YAML files (like `istioctl validate`); exit status 1 if any is invalid.
    Validate(validate_cmd::ValidateArgs),
    /// Serve the ValidatingAdmissionWebhook (HTTPS, POST /validate) for Istio objects.
    Webhook(webhook::WebhookArgs),
    /// Show where every connected proxy stands, per xDS type (like `istioctl proxy-status`).
    ProxyStatus(proxy_status::ProxyStatusArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder mode: a folder of Istio YAML (`*.yaml`, `*.yml`, multi-document allowed),
    /// watched for changes.
    #[arg(long, env = "CAPSTAN_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kube: run::KubeArgs,
    /// Address of the ADS gRPC server (plaintext, like istiod's 15010).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// Address of the monitoring server: /metrics, /healthz, /readyz, /debug/syncz,
    /// /debug/config_dump, /debug/nacks, /debug/snapshot (like istiod's 15014).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring_addr: SocketAddr,
    /// Port of the proxies' outbound HTTP listener (0: the proxy picks a free port).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Address the proxies' outbound HTTP listener binds to.
    #[arg(long, default_value = "0.0.0.0")]
    pub outbound_bind: String,
    /// DNS suffix of the cluster, used to expand short host names (`reviews` in namespace
    /// `bookinfo` is `reviews.bookinfo.svc.<suffix>`).
    #[arg(long, default_value = "cluster.local")]
    pub domain_suffix: String,
    /// How long a burst of file changes must be quiet before the folder is read again, in
    /// milliseconds (editors write a file in several steps).
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
    /// Push queue: how long config changes must be quiet before they are pushed, in
    /// milliseconds (istiod's PILOT_DEBOUNCE_AFTER is 100).
    #[arg(long, default_value_t = 10)]
    pub push_quiet_ms: u64,
    /// Push queue: the longest a change waits under a continuous stream of changes, in
    /// milliseconds (istiod's PILOT_DEBOUNCE_MAX is 10000).
    #[arg(long, default_value_t = 1000)]
    pub push_max_delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CAPSTAN_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if let Command::Validate(args) = &cli.command {
        std::process::exit(validate_cmd::run(args));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::Webhook(args) => runtime.block_on(webhook::run(args)),
        Command::ProxyStatus(args) => runtime.block_on(proxy_status::run(args)),
        Command::Validate(_) => Ok(()),
    }
}
