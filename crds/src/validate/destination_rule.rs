//! DestinationRule validation.

use std::collections::BTreeMap;

use super::Errors;
use super::rules::{self, HostRules};
use crate::networking::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, LocalityLbSetting,
    OutlierDetection, TrafficPolicy, ZoneAwareLbSetting,
};
use crate::networking::{DestinationRuleSpec, TlsMode};

pub(crate) fn validate(errors: &mut Errors, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        errors.add("spec.host", "host is required");
    } else {
        errors.check(
            "spec.host",
            rules::host(&spec.host, HostRules::DESTINATION_RULE),
        );
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(errors, "spec.trafficPolicy", policy);
    }

    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            errors.add(format!("{field}.name"), "subset name is required");
        } else {
            errors.check(format!("{field}.name"), rules::dns1123_label(&subset.name));
            if let Some(first) = names.insert(&subset.name, i) {
                errors.add(
                    format!("{field}.name"),
                    format!(
                        "duplicate subset name `{}` (also spec.subsets[{first}])",
                        subset.name
                    ),
                );
            }
        }
        if subset.labels.is_empty() {
            errors.add(
                format!("{field}.labels"),
                "a subset needs at least one label",
            );
        }
        errors.check_all(&format!("{field}.labels"), rules::labels(&subset.labels));
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(errors, &format!("{field}.trafficPolicy"), policy);
        }
    }

    errors.export_to("spec.exportTo", &spec.export_to);
    if let Some(selector) = &spec.workload_selector {
        errors.check_all(
            "spec.workloadSelector.matchLabels",
            rules::labels(&selector.match_labels),
        );
    }
}

fn traffic_policy(errors: &mut Errors, field: &str, policy: &TrafficPolicy) {
    settings(
        errors,
        field,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );

    let mut ports: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let pf = format!("{field}.portLevelSettings[{i}]");
        match &port_policy.port {
            None => errors.add(format!("{pf}.port"), "port is required"),
            Some(port) => {
                errors.check(format!("{pf}.port.number"), rules::port(port.number));
                if let Some(first) = ports.insert(port.number, i) {
                    errors.add(
                        format!("{pf}.port.number"),
                        format!(
                            "port {} already has settings ({field}.portLevelSettings[{first}])",
                            port.number
                        ),
                    );
                }
            }
        }
        settings(
            errors,
            &pf,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }

    if let Some(tunnel) = &policy.tunnel {
        let tf = format!("{field}.tunnel");
        let known = ["", "CONNECT", "POST"];
        if !known
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&tunnel.protocol))
        {
            errors.add(
                format!("{tf}.protocol"),
                format!(
                    "tunnel protocol must be CONNECT or POST, got `{}`",
                    tunnel.protocol
                ),
            );
        }
        if tunnel.target_host.is_empty() {
            errors.add(format!("{tf}.targetHost"), "targetHost is required");
        } else {
            let target = &tunnel.target_host;
            if rules::ip(target).is_err() {
                errors.check(
                    format!("{tf}.targetHost"),
                    rules::host(target, HostRules::FQDN),
                );
            }
        }
        errors.check(format!("{tf}.targetPort"), rules::port(tunnel.target_port));
    }

    if let Some(budget) = &policy.retry_budget {
        if let Some(percent) = budget.percent {
            errors.check(
                format!("{field}.retryBudget.percent"),
                rules::percent(percent),
            );
        }
        errors.duration(
            format!("{field}.retryBudget.budgetInterval"),
            &budget.budget_interval,
        );
    }
}

/// Settings that may appear both at the top of a policy and per port.
fn settings(
    errors: &mut Errors,
    field: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = load_balancer {
        self::load_balancer(errors, &format!("{field}.loadBalancer"), lb);
    }
    if let Some(pool) = connection_pool {
        self::connection_pool(errors, &format!("{field}.connectionPool"), pool);
    }
    if let Some(outlier) = outlier {
        outlier_detection(errors, &format!("{field}.outlierDetection"), outlier);
    }
    if let Some(tls) = tls {
        client_tls(errors, &format!("{field}.tls"), tls);
    }
}

fn load_balancer(errors: &mut Errors, field: &str, lb: &LoadBalancerSettings) {
    errors.check(
        field,
        rules::one_of(
            &[
                ("simple", lb.simple.is_some()),
                ("consistentHash", lb.consistent_hash.is_some()),
            ],
            false,
        ),
    );
    if let Some(hash) = &lb.consistent_hash {
        let hf = format!("{field}.consistentHash");
        if hash.hash_key_count() != 1 {
            errors.check(
                &hf,
                rules::one_of(
                    &[
                        ("httpHeaderName", hash.http_header_name.is_some()),
                        ("httpCookie", hash.http_cookie.is_some()),
                        ("useSourceIp", hash.use_source_ip.is_some()),
                        (
                            "httpQueryParameterName",
                            hash.http_query_parameter_name.is_some(),
                        ),
                    ],
                    true,
                ),
            );
        }
        errors.check(
            &hf,
            rules::one_of(
                &[
                    ("ringHash", hash.ring_hash.is_some()),
                    ("maglev", hash.maglev.is_some()),
                ],
                false,
            ),
        );
        if let Some(header) = &hash.http_header_name {
            errors.check(
                format!("{hf}.httpHeaderName"),
                rules::header_name(header, false),
            );
        }
        if let Some(cookie) = &hash.http_cookie {
            if cookie.name.is_empty() {
                errors.add(format!("{hf}.httpCookie.name"), "cookie name is required");
            }
            errors.duration(format!("{hf}.httpCookie.ttl"), &cookie.ttl);
            let mut seen = BTreeMap::new();
            for (i, attribute) in cookie.attributes.iter().enumerate() {
                let af = format!("{hf}.httpCookie.attributes[{i}].name");
                if attribute.name.is_empty() {
                    errors.add(af, "attribute name is required");
                } else if let Some(first) = seen.insert(attribute.name.as_str(), i) {
                    errors.add(
                        af,
                        format!(
                            "duplicate cookie attribute `{}` (also attributes[{first}])",
                            attribute.name
                        ),
                    );
                }
            }
        }
        if hash.minimum_ring_size != 0 && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
            errors.add(
                format!("{hf}.minimumRingSize"),
                "the deprecated `minimumRingSize` cannot be combined with `ringHash` or `maglev`",
            );
        }
        if let Some(maglev) = &hash.maglev {
            let size = maglev.table_size;
            if size == 0 || size >= 5_000_011 || !is_prime(size) {
                errors.add(
                    format!("{hf}.maglev.tableSize"),
                    format!("tableSize must be a prime number below 5000011, got {size}"),
                );
            }
        }
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(errors, &format!("{field}.localityLbSetting"), locality);
    }
    if let Some(zone_aware) = &lb.zone_aware_lb_setting {
        let zf = format!("{field}.zoneAwareLbSetting");
        if lb.locality_lb_setting.is_some() {
            errors.add(
                &zf,
                "only one of `localityLbSetting` and `zoneAwareLbSetting` may be set",
            );
        }
        zone_aware_lb(errors, &zf, zone_aware);
    }
    errors.duration(
        format!("{field}.warmupDurationSecs"),
        &lb.warmup_duration_secs,
    );
    if let Some(warmup) = &lb.warmup {
        let wf = format!("{field}.warmup");
        if warmup.duration.is_empty() {
            errors.add(format!("{wf}.duration"), "duration is required");
        } else {
            errors.check(
                format!("{wf}.duration"),
                rules::positive_duration(&warmup.duration),
            );
        }
        if let Some(min) = warmup.minimum_percent {
            errors.check(format!("{wf}.minimumPercent"), rules::percent(min));
        }
        if let Some(aggression) = warmup.aggression.filter(|a| *a < 1.0) {
            errors.add(
                format!("{wf}.aggression"),
                format!("aggression must be at least 1, got {aggression}"),
            );
        }
    }
}

fn locality_lb(errors: &mut Errors, field: &str, setting: &LocalityLbSetting) {
    if !setting.distribute.is_empty() && !setting.failover.is_empty() {
        errors.add(field, "`distribute` and `failover` are mutually exclusive");
    }
    for (i, distribute) in setting.distribute.iter().enumerate() {
        let df = format!("{field}.distribute[{i}]");
        if distribute.from.is_empty() {
            errors.add(format!("{df}.from"), "`from` locality is required");
        }
        let total: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
        if distribute.to.values().any(|w| !(1..=100).contains(w)) {
            errors.add(format!("{df}.to"), "locality weights must be in 1..=100");
        }
        if total != 100 {
            errors.add(
                format!("{df}.to"),
                format!("locality weights sum to {total}, not 100"),
            );
        }
    }
    for (i, failover) in setting.failover.iter().enumerate() {
        if failover.from == failover.to {
            errors.add(
                format!("{field}.failover[{i}]"),
                "`from` and `to` must be different regions",
            );
        }
        if failover.to.contains('*') {
            errors.add(
                format!("{field}.failover[{i}].to"),
                "`to` cannot contain `*`",
            );
        }
    }
    for (i, key) in setting.failover_priority.iter().enumerate() {
        if key.is_empty() {
            errors.add(
                format!("{field}.failoverPriority[{i}]"),
                "must not be empty",
            );
        }
    }
}

pub(crate) fn connection_pool(errors: &mut Errors, field: &str, pool: &ConnectionPoolSettings) {
    if let Some(tcp) = &pool.tcp {
        let tf = format!("{field}.tcp");
        non_negative(errors, &tf, &[("maxConnections", tcp.max_connections)]);
        if let Some(timeout) = &tcp.connect_timeout {
            errors.check(
                format!("{tf}.connectTimeout"),
                rules::positive_duration(timeout),
            );
        }
        errors.duration(
            format!("{tf}.maxConnectionDuration"),
            &tcp.max_connection_duration,
        );
        errors.duration(format!("{tf}.idleTimeout"), &tcp.idle_timeout);
        if let Some(keepalive) = &tcp.tcp_keepalive {
            errors.duration(format!("{tf}.tcpKeepalive.time"), &keepalive.time);
            errors.duration(format!("{tf}.tcpKeepalive.interval"), &keepalive.interval);
        }
    }
    if let Some(http) = &pool.http {
        let hf = format!("{field}.http");
        non_negative(
            errors,
            &hf,
            &[
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ],
        );
        errors.duration(format!("{hf}.idleTimeout"), &http.idle_timeout);
        if let Some(keepalive) = &http.http2_keep_alive {
            let kf = format!("{hf}.http2KeepAlive");
            for (name, value) in [
                ("interval", &keepalive.interval),
                ("timeout", &keepalive.timeout),
            ] {
                match value {
                    None => errors.add(format!("{kf}.{name}"), format!("`{name}` is required")),
                    Some(d) => errors.check(format!("{kf}.{name}"), rules::positive_duration(d)),
                }
            }
        }
    }
}

fn outlier_detection(errors: &mut Errors, field: &str, outlier: &OutlierDetection) {
    if !outlier.split_external_local_origin_errors
        && outlier
            .consecutive_local_origin_failures
            .is_some_and(|n| n > 0)
    {
        errors.add(
            format!("{field}.consecutiveLocalOriginFailures"),
            "only used with `splitExternalLocalOriginErrors: true`",
        );
    }
    for (i, code) in outlier
        .outlier_detection_http_error_codes
        .iter()
        .enumerate()
    {
        if !(100..=599).contains(code) {
            errors.add(
                format!("{field}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code (100..=599)"),
            );
        }
    }
    non_negative(
        errors,
        field,
        &[("consecutiveErrors", outlier.consecutive_errors)],
    );
    for (name, value) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if !(0..=100).contains(&value) {
            errors.add(
                format!("{field}.{name}"),
                format!("{value} is out of range 0..=100"),
            );
        }
    }
    if let Some(interval) = &outlier.interval {
        errors.check(
            format!("{field}.interval"),
            rules::positive_duration(interval),
        );
    }
    if let Some(time) = &outlier.base_ejection_time {
        errors.check(
            format!("{field}.baseEjectionTime"),
            rules::positive_duration(time),
        );
    }
}

fn client_tls(errors: &mut Errors, field: &str, tls: &ClientTlsSettings) {
    match tls.mode {
        TlsMode::Mutual if tls.credential_name.is_empty() => {
            for (name, value) in [
                ("clientCertificate", &tls.client_certificate),
                ("privateKey", &tls.private_key),
            ] {
                if value.is_empty() {
                    errors.add(
                        format!("{field}.{name}"),
                        format!(
                            "`{name}` is required with mode MUTUAL unless `credentialName` is set"
                        ),
                    );
                }
            }
        }
        TlsMode::IstioMutual => {
            for (name, value) in [
                ("clientCertificate", &tls.client_certificate),
                ("privateKey", &tls.private_key),
                ("caCertificates", &tls.ca_certificates),
                ("credentialName", &tls.credential_name),
            ] {
                if !value.is_empty() {
                    errors.add(
                        format!("{field}.{name}"),
                        format!("`{name}` cannot be set with mode ISTIO_MUTUAL (mesh certificates are used)"),
                    );
                }
            }
        }
        _ => {}
    }
}

fn non_negative(errors: &mut Errors, field: &str, values: &[(&str, i32)]) {
    for (name, value) in values {
        if *value < 0 {
            errors.add(
                format!("{field}.{name}"),
                format!("must not be negative, got {value}"),
            );
        }
    }
}

/// Zone-aware load balancing fails over between regions only; zones and subzones
/// are handled automatically.
fn zone_aware_lb(errors: &mut Errors, field: &str, setting: &ZoneAwareLbSetting) {
    const TOPOLOGY_LABELS: [&str; 3] = [
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.istio.io/subzone",
    ];
    for (i, label) in setting.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            errors.add(
                format!("{field}.failoverPriority[{i}]"),
                format!("`{label}` is handled automatically by zone-aware load balancing"),
            );
        }
    }
    for (i, failover) in setting.failover.iter().enumerate() {
        let ff = format!("{field}.failover[{i}]");
        if failover.from == failover.to {
            errors.add(&ff, "`from` and `to` must be different regions");
        }
        if [&failover.from, &failover.to]
            .iter()
            .any(|r| r.contains('/'))
        {
            errors.add(
                &ff,
                "only regions can be given; zones fail over automatically",
            );
        }
        if [&failover.from, &failover.to]
            .iter()
            .any(|r| r.contains('*'))
        {
            errors.add(&ff, "regions cannot contain `*`");
        }
    }
}

/// Primality by trial division (table sizes are below 5000011).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
