//! `capstan agent`'s command line. Where Istio's pilot-agent reads an environment variable
//! for the same setting, so does this flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use capstan_ca::SpiffeId;

/// Which kind of proxy the agent bootstraps (Istio's `pilot-agent proxy sidecar|router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyType {
    Sidecar,
    Router,
}

impl ProxyType {
    /// The first field of the Istio node id.
    pub fn node_prefix(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The CA's gRPC address (TLS).
    #[arg(
        long,
        env = "CA_ADDR",
        default_value = "https://istiod.istio-system.svc:15012"
    )]
    pub ca_address: String,
    /// PEM roots trusted for the CA's server certificate and as the initial trust bundle;
    /// re-read at every rotation.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub ca_root_cert: PathBuf,
    /// The name the CA's server certificate must carry (and the SNI sent).
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub ca_server_name: String,
    /// The workload's token, sent as a bearer token; re-read for every request.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    pub token_file: PathBuf,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: String,
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    #[arg(long, env = "INSTANCE_IP", default_value = "127.0.0.1")]
    pub pod_ip: IpAddr,
    /// Where to serve SDS (a Unix socket, mode 0600).
    #[arg(long, default_value = "./var/run/secrets/workload-spiffe-uds/socket")]
    pub sds_socket: PathBuf,
    /// Requested certificate lifetime (`90s`, `30m`, `24h`, `1h30m`); the CA may cap it.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// capstan's xDS address over TLS (`host:port`), for the bootstrap.
    #[arg(long)]
    pub xds_address: Option<String>,
    /// The name capstan's xDS certificate must carry.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub xds_server_name: String,
    /// Where to write the Envoy bootstrap (JSON).
    #[arg(long)]
    pub bootstrap_out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "sidecar")]
    pub proxy_type: ProxyType,
    /// A pod label for the node metadata, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Envoy's admin port, on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Where Envoy answers `GET /healthz/ready` for the kubelet's readiness probe (Istio's
    /// 15021), on every address: 200 once Envoy has its first config (it waits for it
    /// however long it takes); before, nothing listens there (0: no such listener).
    #[arg(long, default_value_t = 15021)]
    pub health_port: u16,
    /// Start this Envoy with the bootstrap once the first certificate is served, and exit
    /// when it exits.
    #[arg(long)]
    pub envoy_bin: Option<PathBuf>,
    /// Extra arguments for Envoy (after `--`).
    #[arg(last = true)]
    pub envoy_args: Vec<String>,
}

impl AgentArgs {
    pub fn identity(&self) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// Parses `90s`, `30m`, `24h`, `2d`, or a sum of them (`1h30m`); at least one second.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 24h or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not a label key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "10", "0s", "h", "5x", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("app=web"), Ok(("app".into(), "web".into())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
    }
}
