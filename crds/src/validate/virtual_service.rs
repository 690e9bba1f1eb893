//! VirtualService validation.

use std::collections::BTreeMap;

use super::Errors;
use super::rules::{self, HostRules};
use crate::networking::http_policy::{HttpFaultInjection, HttpRedirect, HttpRewrite};
use crate::networking::virtual_service::{Headers, L4MatchAttributes, TlsMatchAttributes};
use crate::networking::{
    Destination, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec,
};

pub(crate) fn validate(errors: &mut Errors, spec: &VirtualServiceSpec) {
    // Without hosts, a VirtualService is a delegate (as in Istio): its routes serve the roots
    // delegating to it, which alone say where they apply, and it delegates no further.
    if spec.hosts.is_empty() {
        if !spec.gateways.is_empty() {
            errors.add(
                "spec.gateways",
                "a delegate VirtualService (one without hosts) must not name gateways; its roots do",
            );
        }
        for (i, route) in spec.http.iter().enumerate() {
            if route.delegate.is_some() {
                errors.add(
                    format!("spec.http[{i}].delegate"),
                    "a delegate VirtualService (one without hosts) cannot delegate again",
                );
            }
        }
    }
    let bound_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" && bound_to_mesh {
            errors.add(
                field,
                "`*` is only allowed when the VirtualService is bound to gateways (not `mesh`)",
            );
        } else {
            errors.check(field, rules::host(host, HostRules::VIRTUAL_SERVICE));
        }
    }
    for (j, later) in spec.hosts.iter().enumerate() {
        let earlier = spec.hosts[..j]
            .iter()
            .position(|h| crate::host::covers(h, later) || crate::host::covers(later, h));
        if let Some(i) = earlier {
            errors.add(
                format!("spec.hosts[{j}]"),
                format!(
                    "duplicate host: `{later}` overlaps `{}` (spec.hosts[{i}])",
                    spec.hosts[i]
                ),
            );
        }
    }
    gateways(errors, "spec.gateways", &spec.gateways);
    let mut route_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in spec.http.iter().enumerate() {
        if route.name.is_empty() {
            continue;
        }
        if let Some(first) = route_names.insert(&route.name, i) {
            errors.add(
                format!("spec.http[{i}].name"),
                format!(
                    "duplicate route name `{}` (also spec.http[{first}])",
                    route.name
                ),
            );
        }
    }
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        errors.add(
            "spec",
            "at least one of `http`, `tls` or `tcp` routes is required",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(errors, &format!("spec.http[{i}]"), route);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        if route.matches.is_empty() {
            errors.add(
                format!("{field}.match"),
                "TLS routes need at least one match",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            tls_match(errors, &format!("{field}.match[{j}]"), m);
        }
        let weighted = route.route.iter().map(|r| (&r.destination, r.weight));
        destinations(errors, &field, weighted.collect());
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(errors, &format!("{field}.match[{j}]"), m);
        }
        let weighted = route.route.iter().map(|r| (&r.destination, r.weight));
        destinations(errors, &field, weighted.collect());
    }
    errors.export_to("spec.exportTo", &spec.export_to);
}

fn gateways(errors: &mut Errors, field: &str, gateways: &[String]) {
    for (i, gateway) in gateways.iter().enumerate() {
        errors.check(format!("{field}[{i}]"), rules::gateway_ref(gateway));
    }
}

fn http_route(errors: &mut Errors, field: &str, route: &HttpRoute) {
    errors.check(
        field,
        rules::one_of(
            &[
                ("route", !route.route.is_empty()),
                ("redirect", route.redirect.is_some()),
                ("directResponse", route.direct_response.is_some()),
                ("delegate", route.delegate.is_some()),
            ],
            true,
        ),
    );
    if route.rewrite.is_some() && (route.redirect.is_some() || route.direct_response.is_some()) {
        errors.add(
            format!("{field}.rewrite"),
            "`rewrite` cannot be combined with `redirect` or `directResponse`",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        http_match(errors, &format!("{field}.match[{j}]"), m);
    }

    let weighted: Vec<_> = route
        .route
        .iter()
        .map(|r| (&r.destination, r.weight))
        .collect();
    if !weighted.is_empty() {
        destinations(errors, field, weighted);
    }
    for (k, destination) in route.route.iter().enumerate() {
        if let Some(headers) = &destination.headers {
            header_operations(errors, &format!("{field}.route[{k}].headers"), headers);
        }
    }

    if let Some(redirect) = &route.redirect {
        self::redirect(errors, &format!("{field}.redirect"), redirect);
    }
    if let Some(response) = &route.direct_response {
        let df = format!("{field}.directResponse");
        if !(200..=599).contains(&response.status) {
            errors.add(
                format!("{df}.status"),
                format!("status {} is out of range 200..=599", response.status),
            );
        }
        if let Some(body) = &response.body {
            errors.check(
                format!("{df}.body"),
                rules::one_of(
                    &[
                        ("string", body.string.is_some()),
                        ("bytes", body.bytes.is_some()),
                    ],
                    false,
                ),
            );
            if let Some(bytes) = &body.bytes {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD
                    .decode(bytes)
                    .is_err()
                {
                    errors.add(format!("{df}.body.bytes"), "bytes must be base64");
                }
            }
        }
    }
    if let Some(delegate) = &route.delegate {
        if delegate.name.is_empty() {
            errors.add(
                format!("{field}.delegate.name"),
                "delegate name is required",
            );
        } else {
            errors.check(
                format!("{field}.delegate.name"),
                rules::dns1123_subdomain(&delegate.name),
            );
        }
        if !delegate.namespace.is_empty() {
            errors.check(
                format!("{field}.delegate.namespace"),
                rules::dns1123_label(&delegate.namespace),
            );
        }
    }
    if let Some(rewrite) = &route.rewrite {
        self::rewrite(errors, &format!("{field}.rewrite"), rewrite);
    }
    errors.duration(format!("{field}.timeout"), &route.timeout);
    if let Some(retries) = &route.retries {
        let rf = format!("{field}.retries");
        if retries.attempts < 0 {
            errors.add(format!("{rf}.attempts"), "attempts must not be negative");
        }
        if let Some(timeout) = &retries.per_try_timeout {
            errors.check(
                format!("{rf}.perTryTimeout"),
                rules::positive_duration(timeout),
            );
        }
        errors.duration(format!("{rf}.backoff"), &retries.backoff);
    }
    if let Some(fault) = &route.fault {
        self::fault(errors, &format!("{field}.fault"), fault);
    }
    mirrors(errors, field, route);
    if let Some(cors) = &route.cors_policy {
        let cf = format!("{field}.corsPolicy");
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            errors.check(
                format!("{cf}.allowOrigins[{i}]"),
                rules::string_match(origin, false),
            );
        }
        errors.duration(format!("{cf}.maxAge"), &cors.max_age);
    }
    if let Some(headers) = &route.headers {
        header_operations(errors, &format!("{field}.headers"), headers);
    }
}

fn http_match(errors: &mut Errors, field: &str, m: &HttpMatchRequest) {
    let single: [(&str, &Option<StringMatch>); 4] = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (name, matcher) in single {
        if let Some(matcher) = matcher {
            errors.check(
                format!("{field}.{name}"),
                rules::string_match(matcher, false),
            );
        }
    }
    // Maps keyed by header (or parameter) name; `{}` means "present".
    let maps: [(&str, &BTreeMap<String, StringMatch>, bool); 3] = [
        ("headers", &m.headers, true),
        ("withoutHeaders", &m.without_headers, true),
        ("queryParams", &m.query_params, false),
    ];
    for (name, map, keys_are_headers) in maps {
        for (key, matcher) in map {
            let kf = format!("{field}.{name}.{key}");
            if keys_are_headers {
                errors.check(&kf, rules::header_name(key, true));
            } else if key.is_empty() {
                errors.add(&kf, "query parameter name must not be empty");
            }
            errors.check(kf, rules::string_match(matcher, true));
        }
    }
    if m.port != 0 {
        errors.check(format!("{field}.port"), rules::port(m.port));
    }
    errors.check_all(
        &format!("{field}.sourceLabels"),
        rules::labels(&m.source_labels),
    );
    gateways(errors, &format!("{field}.gateways"), &m.gateways);
    if !m.source_namespace.is_empty() {
        errors.check(
            format!("{field}.sourceNamespace"),
            rules::dns1123_label(&m.source_namespace),
        );
    }
}

/// Destinations of one route, with weights: each weight in 0..=100 and, when there
/// are several destinations, a total of exactly 100.
fn destinations(errors: &mut Errors, field: &str, weighted: Vec<(&Destination, i32)>) {
    if weighted.is_empty() {
        errors.add(
            format!("{field}.route"),
            "at least one destination is required",
        );
        return;
    }
    let mut total: i64 = 0;
    for (k, (dest, weight)) in weighted.iter().enumerate() {
        destination(errors, &format!("{field}.route[{k}].destination"), dest);
        if !(0..=100).contains(weight) {
            errors.add(
                format!("{field}.route[{k}].weight"),
                format!("weight {weight} is out of range 0..=100"),
            );
        }
        total += i64::from(*weight);
    }
    if weighted.len() > 1 && total != 100 {
        errors.add(
            format!("{field}.route"),
            format!("weights must sum to 100, got {total}"),
        );
    }
}

pub(crate) fn destination(errors: &mut Errors, field: &str, dest: &Destination) {
    if dest.host.is_empty() {
        errors.add(format!("{field}.host"), "destination host is required");
    } else {
        errors.check(
            format!("{field}.host"),
            rules::host(&dest.host, HostRules::DESTINATION),
        );
    }
    if !dest.subset.is_empty() {
        errors.check(
            format!("{field}.subset"),
            rules::dns1123_label(&dest.subset),
        );
    }
    if let Some(port) = &dest.port {
        errors.check(format!("{field}.port.number"), rules::port(port.number));
    }
}

fn redirect(errors: &mut Errors, field: &str, redirect: &HttpRedirect) {
    const CODES: [u32; 5] = [301, 302, 303, 307, 308];
    if redirect.redirect_code != 0 && !CODES.contains(&redirect.redirect_code) {
        errors.add(
            format!("{field}.redirectCode"),
            format!(
                "redirect code {} is not one of 301, 302, 303, 307, 308",
                redirect.redirect_code
            ),
        );
    }
    errors.check(
        field,
        rules::one_of(
            &[
                ("port", redirect.port.is_some()),
                ("derivePort", redirect.derive_port.is_some()),
            ],
            false,
        ),
    );
    if let Some(port) = redirect.port {
        errors.check(format!("{field}.port"), rules::port(port));
    }
    if !redirect.uri.is_empty() && !redirect.prefix_rewrite.is_empty() {
        errors.add(field, "only one of `uri` and `prefixRewrite` may be set");
    }
}

fn rewrite(errors: &mut Errors, field: &str, rewrite: &HttpRewrite) {
    errors.check(
        field,
        rules::one_of(
            &[
                ("uri", !rewrite.uri.is_empty()),
                ("uriRegexRewrite", rewrite.uri_regex_rewrite.is_some()),
            ],
            false,
        ),
    );
    if let Some(regex) = &rewrite.uri_regex_rewrite {
        errors.check(
            format!("{field}.uriRegexRewrite.match"),
            rules::regex(&regex.pattern),
        );
    }
}

fn fault(errors: &mut Errors, field: &str, fault: &HttpFaultInjection) {
    if fault.delay.is_none() && fault.abort.is_none() {
        errors.add(field, "one of `delay` or `abort` must be set");
    }
    if let Some(delay) = &fault.delay {
        let df = format!("{field}.delay");
        errors.check(
            &df,
            rules::one_of(
                &[
                    ("fixedDelay", delay.fixed_delay.is_some()),
                    ("exponentialDelay", delay.exponential_delay.is_some()),
                ],
                true,
            ),
        );
        errors.duration(format!("{df}.fixedDelay"), &delay.fixed_delay);
        errors.duration(format!("{df}.exponentialDelay"), &delay.exponential_delay);
        if !(0..=100).contains(&delay.percent) {
            errors.add(format!("{df}.percent"), "percent must be in 0..=100");
        }
        if let Some(p) = &delay.percentage {
            errors.check(format!("{df}.percentage.value"), rules::percent(p.value));
        }
    }
    if let Some(abort) = &fault.abort {
        let af = format!("{field}.abort");
        errors.check(
            &af,
            rules::one_of(
                &[
                    ("httpStatus", abort.http_status.is_some()),
                    ("grpcStatus", abort.grpc_status.is_some()),
                    ("http2Error", abort.http2_error.is_some()),
                ],
                true,
            ),
        );
        if let Some(status) = abort.http_status.filter(|s| !(200..=599).contains(s)) {
            errors.add(
                format!("{af}.httpStatus"),
                format!("status {status} is out of range 200..=599"),
            );
        }
        if let Some(p) = &abort.percentage {
            errors.check(format!("{af}.percentage.value"), rules::percent(p.value));
        }
    }
}

fn mirrors(errors: &mut Errors, field: &str, route: &HttpRoute) {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        errors.add(
            format!("{field}.mirrors"),
            "only one of `mirror` and `mirrors` may be set",
        );
    }
    if let Some(mirror) = &route.mirror {
        destination(errors, &format!("{field}.mirror"), mirror);
    }
    for (i, policy) in route.mirrors.iter().enumerate() {
        let mf = format!("{field}.mirrors[{i}]");
        destination(errors, &format!("{mf}.destination"), &policy.destination);
        if let Some(p) = &policy.percentage {
            errors.check(format!("{mf}.percentage.value"), rules::percent(p.value));
        }
    }
    if let Some(p) = &route.mirror_percentage {
        errors.check(
            format!("{field}.mirrorPercentage.value"),
            rules::percent(p.value),
        );
    }
    if let Some(p) = route.mirror_percent.filter(|p| *p > 100) {
        errors.add(
            format!("{field}.mirrorPercent"),
            format!("{p} is out of range 0..=100"),
        );
    }
}

fn header_operations(errors: &mut Errors, field: &str, headers: &Headers) {
    let sides = [
        ("request", &headers.request),
        ("response", &headers.response),
    ];
    for (side, ops) in sides {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                errors.check(
                    format!("{field}.{side}.{op}.{name}"),
                    rules::header_name(name, false),
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            errors.check(
                format!("{field}.{side}.remove[{i}]"),
                rules::header_name(name, false),
            );
        }
    }
}

fn tls_match(errors: &mut Errors, field: &str, m: &TlsMatchAttributes) {
    if m.sni_hosts.is_empty() {
        errors.add(
            format!("{field}.sniHosts"),
            "at least one SNI host is required",
        );
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        errors.check(
            format!("{field}.sniHosts[{i}]"),
            rules::host(sni, HostRules::DESTINATION_RULE),
        );
    }
    l4_common(
        errors,
        field,
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
    );
}

fn l4_match(errors: &mut Errors, field: &str, m: &L4MatchAttributes) {
    l4_common(
        errors,
        field,
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
    );
    if !m.source_subnet.is_empty() {
        errors.check(
            format!("{field}.sourceSubnet"),
            rules::ip_or_cidr(&m.source_subnet),
        );
    }
}

fn l4_common(
    errors: &mut Errors,
    field: &str,
    subnets: &[String],
    port: u32,
    source_labels: &BTreeMap<String, String>,
    gateway_refs: &[String],
) {
    for (i, subnet) in subnets.iter().enumerate() {
        errors.check(
            format!("{field}.destinationSubnets[{i}]"),
            rules::ip_or_cidr(subnet),
        );
    }
    if port != 0 {
        errors.check(format!("{field}.port"), rules::port(port));
    }
    errors.check_all(
        &format!("{field}.sourceLabels"),
        rules::labels(source_labels),
    );
    gateways(errors, &format!("{field}.gateways"), gateway_refs);
}
