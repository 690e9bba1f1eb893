//! WorkloadEntry and WorkloadGroup validation.

use super::Errors;
use super::rules::{self, HostRules};
use crate::networking::workload_group::ReadinessProbe;
use crate::networking::{WorkloadEntrySpec, WorkloadGroupSpec};

pub(crate) fn validate_entry(errors: &mut Errors, spec: &WorkloadEntrySpec) {
    let address = spec.address.as_str();
    if address.is_empty() {
        if spec.network.is_empty() {
            errors.add(
                "spec.address",
                "address is required (unless `network` is set)",
            );
        }
    } else if let Some(path) = address.strip_prefix("unix://") {
        errors.check("spec.address", rules::unix_address(path));
        if !spec.ports.is_empty() {
            errors.add("spec.ports", "a unix socket endpoint cannot have ports");
        }
    } else if rules::ip(address).is_err() && rules::host(address, HostRules::FQDN).is_err() {
        errors.add(
            "spec.address",
            format!("`{address}` is neither an IP address nor a DNS name"),
        );
    }
    ports_and_labels(errors, "spec", spec);
    if !spec.service_account.is_empty() {
        errors.check(
            "spec.serviceAccount",
            rules::dns1123_subdomain(&spec.service_account),
        );
    }
}

/// Port names and numbers, and labels, of a workload entry (or template).
fn ports_and_labels(errors: &mut Errors, field: &str, entry: &WorkloadEntrySpec) {
    for (name, number) in &entry.ports {
        let pf = format!("{field}.ports.{name}");
        errors.check(&pf, rules::dns1123_label(name));
        errors.check(pf, rules::port(*number));
    }
    errors.check_all(&format!("{field}.labels"), rules::labels(&entry.labels));
}

pub(crate) fn validate_group(errors: &mut Errors, spec: &WorkloadGroupSpec) {
    match &spec.template {
        None => errors.add("spec.template", "template is required"),
        // Address and labels are filled in per workload, so only what is copied as
        // is gets checked.
        Some(template) => ports_and_labels(errors, "spec.template", template),
    }
    if let Some(metadata) = &spec.metadata {
        errors.check_all("spec.metadata.labels", rules::labels(&metadata.labels));
    }
    if let Some(probe) = &spec.probe {
        readiness_probe(errors, "spec.probe", probe);
    }
}

fn readiness_probe(errors: &mut Errors, field: &str, probe: &ReadinessProbe) {
    let counts = [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (name, value) in counts {
        if value < 0 {
            errors.add(
                format!("{field}.{name}"),
                format!("must not be negative, got {value}"),
            );
        }
    }
    errors.check(
        field,
        rules::one_of(
            &[
                ("httpGet", probe.http_get.is_some()),
                ("tcpSocket", probe.tcp_socket.is_some()),
                ("exec", probe.exec.is_some()),
                ("grpc", probe.grpc.is_some()),
            ],
            true,
        ),
    );
    if let Some(http) = &probe.http_get {
        let hf = format!("{field}.httpGet");
        errors.check(format!("{hf}.port"), rules::port(http.port));
        if !matches!(http.scheme.as_str(), "" | "HTTP" | "HTTPS") {
            errors.add(
                format!("{hf}.scheme"),
                format!("scheme must be HTTP or HTTPS, got `{}`", http.scheme),
            );
        }
        for (k, header) in http.http_headers.iter().enumerate() {
            errors.check(
                format!("{hf}.httpHeaders[{k}].name"),
                rules::header_name(&header.name, false),
            );
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        errors.check(format!("{field}.tcpSocket.port"), rules::port(tcp.port));
    }
    if let Some(exec) = &probe.exec
        && exec.command.is_empty()
    {
        errors.add(format!("{field}.exec.command"), "command is required");
    }
    if let Some(grpc) = &probe.grpc {
        errors.check(format!("{field}.grpc.port"), rules::port(grpc.port));
    }
}
