//! The flags of `capstan run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::KubeArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder mode: a folder of Istio YAML (`*.yaml`, `*.yml`, multi-document allowed),
    /// watched for changes.
    #[arg(long, env = "CAPSTAN_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
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
