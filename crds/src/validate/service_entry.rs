//! ServiceEntry validation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Errors;
use super::rules::{self, HostRules, ProtocolClass};
use crate::networking::{Resolution, ServiceEntrySpec, WorkloadEntrySpec};

/// Whether a proxy can tell several hosts on one port of this protocol apart (HTTP
/// by authority, TLS by SNI); `None` for an unknown protocol.
fn protocol(name: &str) -> Option<bool> {
    rules::protocol_class(name).map(|class| class != ProtocolClass::Opaque)
}

pub(crate) fn validate(errors: &mut Errors, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        errors.add("spec.hosts", "at least one host is required");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        errors.check(
            format!("spec.hosts[{i}]"),
            rules::host(host, HostRules::SERVICE_ENTRY),
        );
    }

    for (i, address) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        errors.check(&field, rules::ip_or_cidr(address));
        if address.contains('/')
            && !matches!(spec.resolution, Resolution::None | Resolution::Static)
        {
            errors.add(
                field,
                "CIDR addresses are only allowed with resolution NONE or STATIC",
            );
        }
    }

    ports(errors, spec);

    if let Some(selector) = &spec.workload_selector {
        errors.check_all(
            "spec.workloadSelector.labels",
            rules::labels(&selector.labels),
        );
        if !spec.endpoints.is_empty() {
            errors.add(
                "spec.workloadSelector",
                "`workloadSelector` and `endpoints` are mutually exclusive",
            );
        }
    }

    resolution(errors, spec);

    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        endpoint_common(errors, &format!("spec.endpoints[{i}]"), endpoint, spec);
    }

    errors.export_to("spec.exportTo", &spec.export_to);
    for (i, san) in spec.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            errors.add(format!("spec.subjectAltNames[{i}]"), "must not be empty");
        }
    }
}

fn ports(errors: &mut Errors, spec: &ServiceEntrySpec) {
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_number: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        errors.check(format!("{field}.number"), rules::port(port.number));
        if port.target_port != 0 {
            errors.check(format!("{field}.targetPort"), rules::port(port.target_port));
        }
        if port.name.is_empty() {
            errors.add(format!("{field}.name"), "port name is required");
        } else {
            errors.check(format!("{field}.name"), rules::dns1123_label(&port.name));
        }
        if !port.protocol.is_empty() && protocol(&port.protocol).is_none() {
            errors.add(
                format!("{field}.protocol"),
                format!("unsupported protocol `{}`", port.protocol),
            );
        }
        if let Some(first) = by_name
            .insert(&port.name, i)
            .filter(|_| !port.name.is_empty())
        {
            errors.add(
                format!("{field}.name"),
                format!(
                    "duplicate port name `{}` (also spec.ports[{first}])",
                    port.name
                ),
            );
        }
        if let Some(first) = by_number.insert(port.number, i) {
            errors.add(
                format!("{field}.number"),
                format!(
                    "duplicate port number {} (also spec.ports[{first}])",
                    port.number
                ),
            );
        }
    }

    // Plain TCP cannot tell hosts apart, so several hosts need HTTP or TLS ports.
    if spec.resolution != Resolution::None && spec.hosts.len() > 1 {
        let indistinct = spec
            .ports
            .iter()
            .position(|p| protocol(&p.protocol) != Some(true));
        if let Some(i) = indistinct {
            errors.add(
                format!("spec.ports[{i}].protocol"),
                "several hosts need HTTP or TLS ports (plain TCP cannot tell hosts apart) unless resolution is NONE",
            );
        }
    }
}

fn resolution(errors: &mut Errors, spec: &ServiceEntrySpec) {
    let wildcard_host = spec.hosts.iter().position(|h| h.starts_with('*'));
    match spec.resolution {
        Resolution::None => {
            if !spec.endpoints.is_empty() {
                errors.add(
                    "spec.endpoints",
                    "endpoints cannot be given with resolution NONE",
                );
            }
        }
        Resolution::Static => {
            if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
                errors.add(
                    "spec.endpoints",
                    "resolution STATIC requires endpoints (or a workloadSelector)",
                );
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let address = &endpoint.address;
                let field = format!("spec.endpoints[{i}].address");
                if let Some(path) = address.strip_prefix("unix://") {
                    if path.is_empty() {
                        errors.add(&field, "unix socket path must not be empty");
                    }
                    if !endpoint.ports.is_empty() {
                        errors.add(
                            format!("spec.endpoints[{i}].ports"),
                            "unix socket endpoints cannot have ports",
                        );
                    }
                } else if address.parse::<IpAddr>().is_err() {
                    errors.add(
                        field,
                        format!("resolution STATIC requires IP addresses, got `{address}`"),
                    );
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints.is_empty()
                && let Some(i) = wildcard_host
            {
                errors.add(
                    format!("spec.hosts[{i}]"),
                    "wildcard hosts need endpoints with resolution DNS/DNS_ROUND_ROBIN",
                );
            }
            if spec.resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                errors.add(
                    "spec.endpoints",
                    "resolution DNS_ROUND_ROBIN allows at most one endpoint",
                );
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let address = &endpoint.address;
                if address.parse::<IpAddr>().is_err()
                    && rules::host(address, HostRules::FQDN).is_err()
                {
                    errors.add(
                        format!("spec.endpoints[{i}].address"),
                        format!("`{address}` is neither an IP address nor a DNS name"),
                    );
                }
            }
        }
        Resolution::DynamicDns => {
            if !spec.endpoints.is_empty() {
                errors.add(
                    "spec.endpoints",
                    "endpoints cannot be given with resolution DYNAMIC_DNS",
                );
            }
            if spec.hosts.iter().any(|h| !h.starts_with("*.")) {
                errors.add(
                    "spec.hosts",
                    "resolution DYNAMIC_DNS requires wildcard hosts (`*.example.com`)",
                );
            }
        }
    }
}

/// Checks that apply to endpoints whatever the resolution.
fn endpoint_common(
    errors: &mut Errors,
    field: &str,
    endpoint: &WorkloadEntrySpec,
    spec: &ServiceEntrySpec,
) {
    if endpoint.address.is_empty() && endpoint.network.is_empty() {
        errors.add(
            format!("{field}.address"),
            "address is required (unless `network` is set)",
        );
    }
    for (name, number) in &endpoint.ports {
        let port_field = format!("{field}.ports.{name}");
        if spec.port_named(name).is_none() {
            errors.add(
                &port_field,
                format!("port name `{name}` is not declared in spec.ports"),
            );
        }
        errors.check(port_field, rules::port(*number));
    }
    errors.check_all(&format!("{field}.labels"), rules::labels(&endpoint.labels));
    if !endpoint.service_account.is_empty() {
        errors.check(
            format!("{field}.serviceAccount"),
            rules::dns1123_subdomain(&endpoint.service_account),
        );
    }
}
