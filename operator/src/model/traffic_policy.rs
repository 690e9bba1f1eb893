//! A DestinationRule's traffic policy in capstan's own types: read once from the API structs
//! (durations parsed), and resolved per cluster the way istiod merges it (port-level settings
//! replace the destination level wholesale; a subset's settings override field by field).

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_crds::networking::common::parse_duration;
use capstan_crds::networking::destination_rule as api;

/// The policy of one DestinationRule: its top level and its subsets'.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    pub top: Option<TrafficPolicy>,
    /// Subset name → its own traffic policy (subsets without one are absent).
    pub subsets: BTreeMap<String, TrafficPolicy>,
    /// The TLS settings that read a Secret (`credentialName`), with where they are.
    pub credentials: Vec<(String, ClientTls)>,
}

/// A traffic policy with its port-level overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficPolicy {
    pub policy: Policy,
    /// Port number → the settings for that port (they replace `policy` wholesale).
    pub ports: BTreeMap<u32, Policy>,
}

/// The settings that apply to one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
    /// Destination and subset level only (Istio has none per port).
    pub retry_budget: Option<RetryBudget>,
    /// `proxyProtocol`: the PROXY header version sent first on each upstream connection
    /// (destination and subset level, as the budget).
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// `tunnel`: TCP routes to the host go through it as an HTTP tunnel (destination and
    /// subset level, as the budget).
    pub tunnel: Option<Tunnel>,
}

/// Where a tunnelling proxy is asked to connect, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// `targetHost:targetPort` (an IPv6 address in brackets), what CONNECT asks for.
    pub authority: String,
    /// `protocol: POST` (HTTP POST rather than CONNECT).
    pub use_post: bool,
}

/// `host:port`, brackets around an IPv6 address, as Go's `net.JoinHostPort`.
fn format_authority(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimpleLb {
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadBalancer {
    /// `None`: unset (istiod's default, LEAST_REQUEST).
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHash>,
    /// `None`: unset, the mesh's default (enabled, no rules).
    pub locality: Option<LocalitySetting>,
    /// `warmup` (or the older `warmupDurationSecs`): new endpoints' share ramps up.
    pub warmup: Option<Warmup>,
}

/// Slow start: an endpoint's weight grows over `duration` after it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    pub duration: Duration,
    /// The weight it starts at, in percent (`None`: Envoy's 10).
    pub minimum_percent: Option<f64>,
    /// How fast it grows (`None`: Envoy's 1.0, linear).
    pub aggression: Option<f64>,
}

/// `retryBudget`: retries at most a share of the active requests, instead of a fixed count.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// `None`: Envoy's 20.
    pub percent: Option<f64>,
    /// 0: Envoy's 3.
    pub min_retry_concurrency: u32,
    /// The window the share is counted over (`None`: Envoy's).
    pub interval: Option<Duration>,
}

/// `localityLbSetting` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalitySetting {
    /// `enabled: false`: no locality preference at all.
    Disabled,
    Enabled(LocalityLb),
}

/// What decides a proxy's preference among localities: `distribute` weights, else failover
/// priorities (region → region rules, then by label).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityLb {
    /// `from` locality pattern → (`to` pattern, weight) pairs.
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// (`from` region, `to` region).
    pub failover: Vec<(String, String)>,
    /// Label names (optionally `name=value`) in priority order.
    pub failover_priority: Vec<String>,
}

impl Policy {
    /// The locality preference that applies, as istiod's `GetLocalityLbSetting` picks it: the
    /// DestinationRule's unless it disables it, else the mesh default (enabled, no rules).
    pub fn locality_lb(&self) -> Option<LocalityLb> {
        match self
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.locality.as_ref())
        {
            Some(LocalitySetting::Disabled) => None,
            Some(LocalitySetting::Enabled(rules)) => Some(rules.clone()),
            None => Some(LocalityLb::default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: String,
        ttl: Option<Duration>,
        /// Attributes of a cookie Envoy sets (`SameSite`, …): (name, value).
        attributes: Vec<(String, String)>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// `ringHash`, with its minimum ring size (0: Envoy's default).
    RingHash { minimum_ring_size: u64 },
    /// `maglev`, with its table size (0: Envoy's default).
    Maglev { table_size: u64 },
    /// Neither set: a ring hash of the deprecated `minimumRingSize`, else 1024.
    Default { minimum_ring_size: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistentHash {
    /// `None`: no hash key (`useSourceIp: false`, or none given).
    pub key: Option<HashKey>,
    pub algorithm: HashAlgorithm,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    pub http: Option<HttpPool>,
}

/// Zero means unset, as in istiod (which cannot tell them apart either).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpPool {
    pub max_connections: u32,
    pub connect_timeout: Option<Duration>,
    pub keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: u32,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum H2Upgrade {
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpPool {
    pub http1_max_pending_requests: u32,
    pub http2_max_requests: u32,
    pub max_requests_per_connection: u32,
    pub max_retries: u32,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade: H2Upgrade,
    pub use_client_protocol: bool,
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING keepalive: (interval, timeout).
    pub http2_keepalive: Option<(Option<Duration>, Option<Duration>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    /// 0: unset.
    pub max_ejection_percent: u32,
    /// Negative values cannot pass validation; 0 is "unset", as for istiod.
    pub min_health_percent: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failures: Option<u32>,
    /// `outlierDetectionHttpErrorCodes`: the response codes counted as errors (none: 5xx).
    pub http_error_codes: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub client_certificate: String,
    pub private_key: String,
    pub ca_certificates: String,
    pub ca_crl: String,
    pub subject_alt_names: Vec<String>,
    pub sni: String,
    pub insecure_skip_verify: bool,
    /// `credentialName`: the client certificate and CA come from this Secret, in the
    /// namespace of each gateway proxy reading the rule (served over SDS).
    pub credential_name: String,
}

impl ClientTls {
    /// The Secret SIMPLE or MUTUAL TLS reads its certificate and CA from, if any.
    pub fn credential(&self) -> Option<&str> {
        let reads = matches!(self.mode, TlsMode::Simple | TlsMode::Mutual);
        (reads && !self.credential_name.is_empty()).then_some(self.credential_name.as_str())
    }
}

impl Policies {
    /// Reads a DestinationRule's policies; `None` when it has none at all.
    pub fn from_api(spec: &api::DestinationRuleSpec) -> Option<Policies> {
        let subsets: BTreeMap<String, TrafficPolicy> = spec
            .subsets
            .iter()
            .filter_map(|s| {
                s.traffic_policy
                    .as_ref()
                    .map(|p| (s.name.clone(), TrafficPolicy::from_api(p)))
            })
            .collect();
        let top = spec.traffic_policy.as_ref().map(TrafficPolicy::from_api);
        (top.is_some() || !subsets.is_empty()).then(|| Policies {
            top,
            subsets,
            credentials: credentials(spec),
        })
    }

    /// The policy of the cluster for `subset` (none: the whole service) on service port
    /// `port`, merged as istiod's `MergeSubsetTrafficPolicy`: the port's settings replace the
    /// top level; a subset's (port-level, or its own) fields override what they set, and a
    /// subset's port-level settings replace every field.
    pub fn for_cluster(&self, subset: Option<&str>, port: u32) -> Option<Policy> {
        let original = self.top.as_ref().map(|t| t.for_port(port).0);
        let Some(subset_policy) = subset.and_then(|s| self.subsets.get(s)) else {
            return original;
        };
        let (subset_policy, port_level) = subset_policy.for_port(port);
        let Some(mut merged) = original else {
            return Some(subset_policy);
        };
        if subset_policy.connection_pool.is_some() || port_level {
            merged.connection_pool = subset_policy.connection_pool;
        }
        if subset_policy.outlier_detection.is_some() || port_level {
            merged.outlier_detection = subset_policy.outlier_detection;
        }
        if subset_policy.load_balancer.is_some() || port_level {
            merged.load_balancer = subset_policy.load_balancer;
        }
        if subset_policy.tls.is_some() || port_level {
            merged.tls = subset_policy.tls;
        }
        if subset_policy.retry_budget.is_some() {
            merged.retry_budget = subset_policy.retry_budget;
        }
        if subset_policy.proxy_protocol.is_some() {
            merged.proxy_protocol = subset_policy.proxy_protocol;
        }
        if subset_policy.tunnel.is_some() {
            merged.tunnel = subset_policy.tunnel;
        }
        Some(merged)
    }

    /// The consistent hash requests to `subset` of the host on `port` are balanced by, as
    /// istiod's `HashForHTTPDestination` picks it: the subset's port-level, the subset's, the
    /// top level's port-level, else the top level's.
    pub fn consistent_hash(&self, subset: Option<&str>, port: u32) -> Option<&ConsistentHash> {
        let subset = subset.and_then(|s| self.subsets.get(s));
        let top = self.top.as_ref();
        subset
            .and_then(|s| s.ports.get(&port))
            .and_then(hash)
            .or_else(|| subset.and_then(|s| hash(&s.policy)))
            .or_else(|| top.and_then(|t| t.ports.get(&port)).and_then(hash))
            .or_else(|| top.and_then(|t| hash(&t.policy)))
    }
}

fn hash(p: &Policy) -> Option<&ConsistentHash> {
    p.load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
}

impl TrafficPolicy {
    pub fn from_api(api: &api::TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            policy: Policy::read(
                api.load_balancer.as_ref(),
                api.connection_pool.as_ref(),
                api.outlier_detection.as_ref(),
                api.tls.as_ref(),
                api,
            ),
            ports: api
                .port_level_settings
                .iter()
                .filter_map(|p| {
                    let number = p.port.as_ref()?.number;
                    let policy = Policy::read(
                        p.load_balancer.as_ref(),
                        p.connection_pool.as_ref(),
                        p.outlier_detection.as_ref(),
                        p.tls.as_ref(),
                        // Not port-level settings: the destination's apply on every port.
                        api,
                    );
                    Some((number, policy))
                })
                // The first setting for a port wins, as in istiod.
                .fold(BTreeMap::new(), |mut ports, (number, policy)| {
                    ports.entry(number).or_insert(policy);
                    ports
                }),
        }
    }

    /// The settings for `port`, and whether they are port-level ones.
    fn for_port(&self, port: u32) -> (Policy, bool) {
        match self.ports.get(&port) {
            Some(p) => (p.clone(), true),
            None => (self.policy.clone(), false),
        }
    }
}

/// A Go duration validation accepted; anything else counts as unset.
fn duration(text: Option<&String>) -> Option<Duration> {
    text.and_then(|t| parse_duration(t))
}

fn positive(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl Policy {
    fn read(
        lb: Option<&api::LoadBalancerSettings>,
        pool: Option<&api::ConnectionPoolSettings>,
        outlier: Option<&api::OutlierDetection>,
        tls: Option<&api::ClientTlsSettings>,
        destination: &api::TrafficPolicy,
    ) -> Policy {
        let retry_budget = destination.retry_budget.as_ref();
        let proxy_protocol = destination.proxy_protocol.as_ref();
        Policy {
            load_balancer: lb.map(load_balancer),
            connection_pool: pool.map(connection_pool),
            outlier_detection: outlier.map(outlier_detection),
            tls: tls.map(client_tls),
            retry_budget: retry_budget.map(|b| RetryBudget {
                percent: b.percent,
                min_retry_concurrency: b.min_retry_concurrency,
                interval: duration(b.budget_interval.as_ref()),
            }),
            proxy_protocol: proxy_protocol.map(|p| match p.version {
                api::ProxyProtocolVersion::V1 => ProxyProtocolVersion::V1,
                api::ProxyProtocolVersion::V2 => ProxyProtocolVersion::V2,
            }),
            tunnel: destination.tunnel.as_ref().map(|t| Tunnel {
                authority: format_authority(&t.target_host, t.target_port),
                use_post: t.protocol.eq_ignore_ascii_case("POST"),
            }),
        }
    }
}

fn load_balancer(lb: &api::LoadBalancerSettings) -> LoadBalancer {
    LoadBalancer {
        simple: match lb.simple {
            None | Some(api::SimpleLb::Unspecified) => None,
            Some(api::SimpleLb::RoundRobin) => Some(SimpleLb::RoundRobin),
            Some(api::SimpleLb::LeastRequest | api::SimpleLb::LeastConn) => {
                Some(SimpleLb::LeastRequest)
            }
            Some(api::SimpleLb::Random) => Some(SimpleLb::Random),
            Some(api::SimpleLb::Passthrough) => Some(SimpleLb::Passthrough),
        },
        consistent_hash: lb.consistent_hash.as_ref().map(consistent_hash),
        locality: lb.locality_lb_setting.as_ref().map(locality_setting),
        warmup: warmup(lb),
    }
}

/// `warmup`, else `warmupDurationSecs` (a duration validation accepted).
fn warmup(lb: &api::LoadBalancerSettings) -> Option<Warmup> {
    match &lb.warmup {
        Some(w) => Some(Warmup {
            duration: parse_duration(&w.duration)?,
            minimum_percent: w.minimum_percent,
            aggression: w.aggression,
        }),
        None => Some(Warmup {
            duration: duration(lb.warmup_duration_secs.as_ref())?,
            minimum_percent: None,
            aggression: None,
        }),
    }
}

fn locality_setting(setting: &api::LocalityLbSetting) -> LocalitySetting {
    if setting.enabled == Some(false) {
        return LocalitySetting::Disabled;
    }
    LocalitySetting::Enabled(LocalityLb {
        distribute: setting
            .distribute
            .iter()
            .map(|d| {
                let to = d.to.iter().map(|(l, w)| (l.clone(), *w)).collect();
                (d.from.clone(), to)
            })
            .collect(),
        failover: setting
            .failover
            .iter()
            .map(|f| (f.from.clone(), f.to.clone()))
            .collect(),
        failover_priority: setting.failover_priority.clone(),
    })
}

fn consistent_hash(ch: &api::ConsistentHashLb) -> ConsistentHash {
    let key = if let Some(name) = &ch.http_header_name {
        Some(HashKey::Header(name.clone()))
    } else if let Some(cookie) = &ch.http_cookie {
        Some(HashKey::Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone(),
            ttl: duration(cookie.ttl.as_ref()),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        Some(HashKey::SourceIp)
    } else {
        ch.http_query_parameter_name
            .as_ref()
            .map(|name| HashKey::QueryParameter(name.clone()))
    };
    let algorithm = match (&ch.maglev, &ch.ring_hash) {
        (Some(m), _) => HashAlgorithm::Maglev {
            table_size: m.table_size,
        },
        (None, Some(r)) => HashAlgorithm::RingHash {
            minimum_ring_size: r.minimum_ring_size,
        },
        (None, None) => HashAlgorithm::Default {
            minimum_ring_size: if ch.minimum_ring_size != 0 {
                ch.minimum_ring_size
            } else {
                1024
            },
        },
    };
    ConsistentHash { key, algorithm }
}

/// A `connectionPool` as read from a DestinationRule or a `Sidecar`.
pub(crate) fn connection_pool(pool: &api::ConnectionPoolSettings) -> ConnectionPool {
    ConnectionPool {
        tcp: pool.tcp.as_ref().map(|t| TcpPool {
            max_connections: positive(t.max_connections),
            connect_timeout: duration(t.connect_timeout.as_ref()),
            keepalive: t.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
                probes: k.probes,
                time: duration(k.time.as_ref()),
                interval: duration(k.interval.as_ref()),
            }),
            max_connection_duration: duration(t.max_connection_duration.as_ref()),
            idle_timeout: duration(t.idle_timeout.as_ref()),
        }),
        http: pool.http.as_ref().map(|h| HttpPool {
            http1_max_pending_requests: positive(h.http1_max_pending_requests),
            http2_max_requests: positive(h.http2_max_requests),
            max_requests_per_connection: positive(h.max_requests_per_connection),
            max_retries: positive(h.max_retries),
            idle_timeout: duration(h.idle_timeout.as_ref()),
            h2_upgrade: match h.h2_upgrade_policy {
                api::H2UpgradePolicy::Default => H2Upgrade::Default,
                api::H2UpgradePolicy::DoNotUpgrade => H2Upgrade::DoNotUpgrade,
                api::H2UpgradePolicy::Upgrade => H2Upgrade::Upgrade,
            },
            use_client_protocol: h.use_client_protocol,
            max_concurrent_streams: positive(h.max_concurrent_streams),
            http2_keepalive: h
                .http2_keep_alive
                .as_ref()
                .map(|k| (duration(k.interval.as_ref()), duration(k.timeout.as_ref()))),
        }),
    }
}

fn outlier_detection(o: &api::OutlierDetection) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx_errors: o.consecutive_5xx_errors,
        consecutive_gateway_errors: o.consecutive_gateway_errors,
        interval: duration(o.interval.as_ref()),
        base_ejection_time: duration(o.base_ejection_time.as_ref()),
        max_ejection_percent: positive(o.max_ejection_percent),
        min_health_percent: positive(o.min_health_percent),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failures: o.consecutive_local_origin_failures,
        http_error_codes: o.outlier_detection_http_error_codes.clone(),
    }
}

/// The TLS settings of a rule that read a Secret, by field path.
fn credentials(spec: &api::DestinationRuleSpec) -> Vec<(String, ClientTls)> {
    let top = spec
        .traffic_policy
        .iter()
        .map(|p| ("spec.trafficPolicy".to_string(), p));
    let subsets = spec.subsets.iter().enumerate().filter_map(|(i, s)| {
        let policy = s.traffic_policy.as_ref()?;
        Some((format!("spec.subsets[{i}].trafficPolicy"), policy))
    });
    let mut out = Vec::new();
    for (at, policy) in top.chain(subsets) {
        let ports = policy.port_level_settings.iter().enumerate();
        let settings = std::iter::once((format!("{at}.tls"), policy.tls.as_ref())).chain(
            ports.map(|(i, p)| (format!("{at}.portLevelSettings[{i}].tls"), p.tls.as_ref())),
        );
        for (field, tls) in settings {
            let Some(tls) = tls.map(client_tls) else {
                continue;
            };
            if tls.credential().is_some() {
                out.push((field, tls));
            }
        }
    }
    out
}

fn client_tls(t: &api::ClientTlsSettings) -> ClientTls {
    ClientTls {
        mode: match t.mode {
            api::TlsMode::Disable => TlsMode::Disable,
            api::TlsMode::Simple => TlsMode::Simple,
            api::TlsMode::Mutual => TlsMode::Mutual,
            api::TlsMode::IstioMutual => TlsMode::IstioMutual,
        },
        client_certificate: t.client_certificate.clone(),
        private_key: t.private_key.clone(),
        ca_certificates: t.ca_certificates.clone(),
        ca_crl: t.ca_crl.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        sni: t.sni.clone(),
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
        credential_name: t.credential_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Policies {
        let spec: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        let document = capstan_crds::parse_single(
            "t.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: r, namespace: default}}\nspec:\n{spec}"
            ),
        )
        .expect("valid");
        let capstan_crds::IstioObject::DestinationRule(dr) = &document.object else {
            panic!("not a DestinationRule");
        };
        Policies::from_api(&dr.spec).expect("has a policy")
    }

    const MERGED: &str = r#"
host: reviews
trafficPolicy:
  connectionPool: {tcp: {maxConnections: 10}}
  outlierDetection: {consecutive5xxErrors: 3}
  loadBalancer: {simple: RANDOM}
  portLevelSettings:
  - port: {number: 9443}
    tls: {mode: SIMPLE}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 9090}
      outlierDetection: {consecutive5xxErrors: 1}
- name: v2
  labels: {version: v2}
"#;

    #[test]
    fn subset_fields_override_and_port_level_replaces_wholesale() {
        let p = policies(MERGED);
        // Whole service, port without overrides: the top level.
        let whole = p.for_cluster(None, 9080).expect("policy");
        assert_eq!(
            whole.load_balancer.and_then(|l| l.simple),
            Some(SimpleLb::Random)
        );
        // Top-level port settings replace everything else of the top level.
        let tls_port = p.for_cluster(None, 9443).expect("policy");
        assert!(tls_port.connection_pool.is_none() && tls_port.load_balancer.is_none());
        assert_eq!(tls_port.tls.map(|t| t.mode), Some(TlsMode::Simple));
        // Subset: its load balancer, the rest inherited.
        let v1 = p.for_cluster(Some("v1"), 9080).expect("policy");
        assert_eq!(
            v1.load_balancer.and_then(|l| l.simple),
            Some(SimpleLb::RoundRobin)
        );
        assert_eq!(
            v1.connection_pool
                .and_then(|c| c.tcp)
                .map(|t| t.max_connections),
            Some(10)
        );
        assert_eq!(
            v1.outlier_detection.and_then(|o| o.consecutive_5xx_errors),
            Some(3)
        );
        // Subset port-level: replaces every field, even those it leaves unset.
        let v1_9090 = p.for_cluster(Some("v1"), 9090).expect("policy");
        assert!(v1_9090.connection_pool.is_none() && v1_9090.load_balancer.is_none());
        assert_eq!(
            v1_9090
                .outlier_detection
                .and_then(|o| o.consecutive_5xx_errors),
            Some(1)
        );
        // A subset without a policy takes the top level's.
        assert_eq!(p.for_cluster(Some("v2"), 9080), p.for_cluster(None, 9080));
    }

    #[test]
    fn hash_precedence_follows_istiod() {
        let p = policies(
            r#"
host: reviews
trafficPolicy:
  loadBalancer: {consistentHash: {httpHeaderName: x-top}}
  portLevelSettings:
  - port: {number: 9090}
    loadBalancer: {consistentHash: {httpHeaderName: x-top-port}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
"#,
        );
        let key = |subset, port| p.consistent_hash(subset, port).and_then(|h| h.key.clone());
        assert_eq!(key(None, 9080), Some(HashKey::Header("x-top".into())));
        assert_eq!(key(None, 9090), Some(HashKey::Header("x-top-port".into())));
        assert_eq!(key(Some("v1"), 9090), Some(HashKey::SourceIp));
        assert_eq!(
            p.consistent_hash(Some("v1"), 9080).map(|h| h.algorithm),
            Some(HashAlgorithm::Maglev { table_size: 65537 })
        );
        assert_eq!(
            p.consistent_hash(None, 9080).map(|h| h.algorithm),
            Some(HashAlgorithm::Default {
                minimum_ring_size: 1024
            })
        );
    }

    #[test]
    fn durations_are_parsed_once() {
        let p = policies(
            r#"
host: reviews
trafficPolicy:
  connectionPool:
    tcp: {connectTimeout: 250ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}}
    http: {idleTimeout: 1m, h2UpgradePolicy: UPGRADE}
  outlierDetection: {interval: 1s, baseEjectionTime: 30s}
"#,
        );
        let policy = p.for_cluster(None, 80).expect("policy");
        let pool = policy.connection_pool.expect("pool");
        let tcp = pool.tcp.expect("tcp");
        assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            tcp.keepalive.and_then(|k| k.time),
            Some(Duration::from_secs(7200))
        );
        let http = pool.http.expect("http");
        assert_eq!(http.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(http.h2_upgrade, H2Upgrade::Upgrade);
        assert_eq!(
            policy.outlier_detection.and_then(|o| o.base_ejection_time),
            Some(Duration::from_secs(30))
        );
    }
}
