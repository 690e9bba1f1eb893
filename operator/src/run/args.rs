//! The flags of `capstan run`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use capstan_xds::net::grpc;
use clap::Args;

use crate::monitoring;

use super::KubeArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder mode: a folder of Istio YAML (`*.yaml`, `*.yml`, multi-document allowed),
    /// watched for changes.
    #[arg(long, env = "CAPSTAN_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Address of the ADS gRPC server (plaintext, like istiod's 15010). Plaintext proves
    /// nothing about who connects, so an address other than loopback is refused unless
    /// --xds-plaintext-insecure is given.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// Serve plaintext ADS on a non-loopback --xds-addr: any client that reaches it gets any
    /// namespace's config by naming that namespace in its node.
    #[arg(long)]
    pub xds_plaintext_insecure: bool,
    /// The TLS xDS port and the CA behind it (boxed: `RunArgs` is a variant of the command
    /// enum and stays small).
    #[command(flatten)]
    pub tls: Box<TlsArgs>,
    /// The admission webhooks served in-process (boxed, as `tls`).
    #[command(flatten)]
    pub webhook: Box<super::WebhookRunArgs>,
    /// Address of the monitoring server: /metrics, /healthz, /readyz, /debug/syncz,
    /// /debug/config_dump, /debug/nacks, /debug/snapshot (like istiod's 15014).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring_addr: SocketAddr,
    /// ADS: connections open at once. Beyond it new clients wait in the listen backlog until
    /// one closes. Lowered at start to what the open-file limit (`ulimit -n`) allows.
    #[arg(long, default_value_t = grpc::DEFAULT_MAX_CONNECTIONS as u32)]
    pub xds_max_connections: u32,
    /// ADS: connections open at once from one IP address (0: no cap); a connection beyond it
    /// is closed at once. Off by default: a remote cluster's proxies all arrive through its
    /// east-west gateway's address.
    #[arg(long, default_value_t = grpc::DEFAULT_MAX_CONNECTIONS_PER_IP as u32)]
    pub xds_max_connections_per_ip: u32,
    /// ADS: concurrent HTTP/2 streams per connection (Envoy opens one). A client asking for
    /// more waits until one of its streams ends.
    #[arg(long, default_value_t = grpc::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub xds_max_streams_per_connection: u32,
    /// ADS: milliseconds a new connection has to send its first request (Envoy sends it at
    /// once); a connection that sends none, or only the HTTP/2 preface, is closed then.
    #[arg(long, default_value_t = grpc::DEFAULT_FIRST_REQUEST_TIMEOUT.as_millis() as u32)]
    pub xds_first_request_timeout_ms: u32,
    /// ADS: seconds after which a connection is sent GOAWAY and, 10 s later, closed; Envoy
    /// reconnects and keeps its config meanwhile (0: never; istiod's default is 30 minutes).
    #[arg(long, default_value_t = grpc::DEFAULT_MAX_CONNECTION_AGE.as_secs() as u32)]
    pub xds_max_connection_age_secs: u32,
    /// Monitoring server: connections open at once (beyond it, new clients wait).
    #[arg(long, default_value_t = monitoring::DEFAULT_MAX_CONNECTIONS as u32)]
    pub monitoring_max_connections: u32,
    /// Monitoring server: connections open at once from one IP address (0: no cap); a
    /// connection beyond it is closed at once.
    #[arg(long, default_value_t = monitoring::DEFAULT_MAX_CONNECTIONS_PER_IP as u32)]
    pub monitoring_max_connections_per_ip: u32,
    /// Port of the proxies' outbound HTTP listener (0: the proxy picks a free port).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Address the proxies' outbound HTTP listener binds to.
    #[arg(long, default_value = "0.0.0.0")]
    pub outbound_bind: String,
    /// The sidecars' listeners: `direct` (one outbound HTTP listener on --outbound-bind and
    /// --outbound-port that applications dial) or `capture` (Istio's, behind an iptables
    /// capture: virtualOutbound on 15001 with a listener per service port, virtualInbound
    /// on 15006 to the workload; --outbound-bind and --outbound-port do not apply).
    #[arg(long, default_value = "direct")]
    pub sidecar_listeners: crate::translate::ListenerMode,
    /// DNS suffix of the cluster, used to expand short host names (`reviews` in namespace
    /// `bookinfo` is `reviews.bookinfo.svc.<suffix>`).
    #[arg(long, default_value = "cluster.local")]
    pub domain_suffix: String,
    /// Istio's MeshConfig YAML (the `mesh` key of the `istio` ConfigMap, as istiod reads it at
    /// `/etc/istio/config/mesh`): its `rootNamespace`, `trustDomain` and
    /// `outboundTrafficPolicy` win over the flags of the same names, `enableAutoMtls: false`
    /// turns auto mTLS off, and its `extensionProviders` serve `CUSTOM` AuthorizationPolicies.
    /// Read at start.
    #[arg(long, env = "CAPSTAN_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// AWS Cloud Map as a registry: a YAML file naming the Cloud Map namespaces to serve and
    /// how (docs/cloud-map.md). Credentials come from the standard AWS chain (IRSA on EKS).
    #[arg(long, env = "CAPSTAN_CLOUD_MAP_CONFIG")]
    pub cloud_map_config: Option<PathBuf>,
    /// Istio's `meshConfig.rootNamespace`: a `Sidecar` without `workloadSelector` in it is
    /// the default egress scope of every namespace without one of its own.
    #[arg(long, default_value = crate::model::sidecar_scope::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// Istio's `meshConfig.outboundTrafficPolicy.mode` for capture-mode sidecars: where a
    /// connection to a destination no service has goes when no `Sidecar` says otherwise —
    /// `ALLOW_ANY` (on to where it was headed) or `REGISTRY_ONLY` (refused).
    #[arg(long, default_value = "ALLOW_ANY")]
    pub outbound_traffic_policy: crate::model::sidecar_scope::OutboundMode,
    /// A file change after a quiet spell is read at once; the changes that follow it (a
    /// burst: editors write a file in several steps) are read once they have been quiet
    /// this long, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
    /// Folder mode: let a rescan that finds no objects at all replace a config that had some
    /// (without it, an emptied or half-synced folder keeps the last good config, and the
    /// refusal is logged).
    #[arg(long, env = "CAPSTAN_ALLOW_EMPTY_CONFIG")]
    pub allow_empty_config: bool,
    /// Push queue: how long config changes must be quiet before they are pushed, in
    /// milliseconds (istiod's PILOT_DEBOUNCE_AFTER is 100).
    #[arg(long, default_value_t = 10)]
    pub push_quiet_ms: u64,
    /// Push queue: the longest a change waits under a continuous stream of changes, in
    /// milliseconds (istiod's PILOT_DEBOUNCE_MAX is 10000).
    #[arg(long, default_value_t = 1000)]
    pub push_max_delay_ms: u64,
}

/// The flags of the TLS xDS port and capstan's CA.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Address of the TLS xDS server (istiod's 15012): ADS for proxies presenting a client
    /// certificate from capstan's CA, beside the CA's own service. Served only when a CA is
    /// configured (--ca-dir or --cacerts-dir); `off` (or empty) disables it.
    #[arg(long, default_value = "127.0.0.1:15012", value_parser = parse_optional_addr)]
    pub xds_tls_addr: OptionalAddr,
    /// DNS names in capstan's TLS serving certificate (proxies check the name they dial).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "capstan.istio-system.svc,istiod.istio-system.svc,localhost"
    )]
    pub xds_tls_dns_names: Vec<String>,
    /// IP addresses in capstan's TLS serving certificate.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub xds_tls_ips: Vec<IpAddr>,
    /// SPIFFE trust domain of the mesh (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Folder of capstan's built-in root CA (`ca-cert.pem`, `ca-key.pem`): loaded if there,
    /// else generated there (10 years). Keep it private; replicas must share it.
    #[arg(long, env = "CAPSTAN_CA_DIR", conflicts_with = "cacerts_dir")]
    pub ca_dir: Option<PathBuf>,
    /// Plug-in CA: a folder in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`) holding an intermediate of the operator's PKI;
    /// re-read every --ca-reload-interval-secs.
    #[arg(long, env = "CAPSTAN_CACERTS_DIR", conflicts_with = "ca_pca_arn")]
    pub cacerts_dir: Option<PathBuf>,
    #[command(flatten)]
    pub ca: super::CaArgs,
}

/// An address, or none (`off` or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(value: &str) -> Result<OptionalAddr, String> {
    match value.trim() {
        "" | "off" => Ok(OptionalAddr(None)),
        addr => addr
            .parse()
            .map(|addr| OptionalAddr(Some(addr)))
            .map_err(|e| format!("{addr:?} is not host:port or `off`: {e}")),
    }
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

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("capstan").chain(args.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn tls_flags_default_to_the_loopback_port_and_capstans_names() {
        let args = parse(&[]).expect("defaults");
        assert_eq!(
            args.tls.xds_tls_addr,
            OptionalAddr(Some("127.0.0.1:15012".parse().expect("addr")))
        );
        assert_eq!(args.tls.trust_domain, "cluster.local");
        assert!(
            args.tls
                .xds_tls_dns_names
                .contains(&"istiod.istio-system.svc".to_string())
        );
        assert_eq!(args.tls.xds_tls_ips, vec![IpAddr::from([127, 0, 0, 1])]);
        assert!(!args.xds_plaintext_insecure);

        for off in ["off", ""] {
            let args = parse(&["--xds-tls-addr", off]).expect("off");
            assert_eq!(args.tls.xds_tls_addr, OptionalAddr(None), "{off:?}");
        }
        assert!(parse(&["--xds-tls-addr", "nowhere"]).is_err());
    }

    #[test]
    fn a_built_in_root_and_a_plugged_ca_exclude_each_other() {
        let both = parse(&["--ca-dir", "/a", "--cacerts-dir", "/b"]);
        assert!(both.is_err());
        let one = parse(&["--cacerts-dir", "/b"]).expect("plugged");
        assert_eq!(one.tls.cacerts_dir, Some(PathBuf::from("/b")));
    }
}
