//! Sidecar validation.

use std::collections::{BTreeMap, BTreeSet};

use super::Errors;
use super::gateway::server_tls;
use super::rules::{self, ProtocolClass};
use crate::networking::SidecarSpec;
use crate::networking::gateway::ServerTlsMode;
use crate::networking::sidecar::{
    CaptureMode, OutboundTrafficMode, OutboundTrafficPolicy, SidecarPort,
};
use crate::validate::destination_rule::connection_pool;
use crate::validate::virtual_service::destination;

pub(crate) fn validate(errors: &mut Errors, spec: &SidecarSpec) {
    if let Some(selector) = &spec.workload_selector {
        errors.check_all(
            "spec.workloadSelector.labels",
            rules::labels(&selector.labels),
        );
    }
    if spec.ingress.is_empty()
        && spec.egress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        errors.add(
            "spec",
            "empty Sidecar: set at least one of `ingress`, `egress`, `outboundTrafficPolicy` or `inboundConnectionPool`",
        );
    }
    ingress(errors, spec);
    if let Some(pool) = &spec.inbound_connection_pool {
        connection_pool(errors, "spec.inboundConnectionPool", pool);
    }
    egress(errors, spec);
    if let Some(policy) = &spec.outbound_traffic_policy {
        outbound_traffic_policy(errors, "spec.outboundTrafficPolicy", policy);
    }
}

fn ingress(errors: &mut Errors, spec: &SidecarSpec) {
    let mut ports: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, listener) in spec.ingress.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let Some(port) = &listener.port else {
            errors.add(
                format!("{field}.port"),
                "port is required for ingress listeners",
            );
            continue;
        };
        port_common(errors, &format!("{field}.port"), port);
        errors.check(format!("{field}.port.number"), rules::port(port.number));
        if !listener.bind.is_empty() {
            errors.check(format!("{field}.bind"), rules::ip(&listener.bind));
        }
        if let Some(first) = ports.insert(port.number, i) {
            errors.add(
                format!("{field}.port.number"),
                format!(
                    "port {} is already used by spec.ingress[{first}]; ports of IP-bound listeners must be unique",
                    port.number
                ),
            );
        }
        if !listener.default_endpoint.is_empty() {
            errors.check(
                format!("{field}.defaultEndpoint"),
                default_endpoint(&listener.default_endpoint),
            );
        }
        if let Some(tls) = &listener.tls {
            let tf = format!("{field}.tls");
            let unsupported = [
                ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                ("httpsRedirect", tls.https_redirect),
                ("credentialName", !tls.credential_name.is_empty()),
                ("credentialNames", !tls.credential_names.is_empty()),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ];
            for (name, set) in unsupported {
                if set {
                    errors.add(
                        format!("{tf}.{name}"),
                        format!("`{name}` is not supported in Sidecar ingress TLS"),
                    );
                }
            }
            let mode = tls.mode.unwrap_or_default();
            if matches!(
                mode,
                ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
            ) {
                errors.add(
                    format!("{tf}.mode"),
                    "modes ISTIO_MUTUAL and AUTO_PASSTHROUGH are not allowed in Sidecar ingress TLS",
                );
            }
            if rules::protocol_class(&port.protocol) != Some(ProtocolClass::Tls) {
                errors.add(
                    tf.clone(),
                    "TLS settings need a port with protocol HTTPS or TLS",
                );
            }
            server_tls(errors, &tf, tls);
        }
        if let Some(pool) = &listener.connection_pool {
            connection_pool(errors, &format!("{field}.connectionPool"), pool);
        }
    }
}

fn egress(errors: &mut Errors, spec: &SidecarSpec) {
    let mut ports: BTreeMap<u32, usize> = BTreeMap::new();
    let mut sockets: BTreeSet<&str> = BTreeSet::new();
    let mut catch_all: Option<usize> = None;
    let last = spec.egress.len().saturating_sub(1);
    for (i, listener) in spec.egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        match &listener.port {
            None => {
                if let Some(first) = catch_all {
                    errors.add(
                        format!("{field}.port"),
                        format!(
                            "only one egress listener may omit `port` (also spec.egress[{first}])"
                        ),
                    );
                } else if i != last {
                    errors.add(
                        format!("{field}.port"),
                        "the egress listener without `port` (the catch-all) must be the last one",
                    );
                }
                catch_all.get_or_insert(i);
            }
            Some(port) => {
                let pf = format!("{field}.port");
                port_common(errors, &pf, port);
                if port.number == 0 {
                    match listener.bind.strip_prefix("unix://") {
                        Some(path) => {
                            errors.check(format!("{field}.bind"), rules::unix_address(path));
                            if !sockets.insert(&listener.bind) {
                                errors.add(
                                    format!("{field}.bind"),
                                    format!(
                                        "unix socket `{}` is used by another listener",
                                        listener.bind
                                    ),
                                );
                            }
                        }
                        None => errors.add(
                            format!("{field}.bind"),
                            "a listener with port 0 must bind to a unix socket (`unix://PATH`)",
                        ),
                    }
                    if !matches!(
                        listener.capture_mode.unwrap_or_default(),
                        CaptureMode::Default | CaptureMode::None
                    ) {
                        errors.add(
                            format!("{field}.captureMode"),
                            "captureMode must be DEFAULT or NONE for unix socket listeners",
                        );
                    }
                } else {
                    errors.check(format!("{pf}.number"), rules::port(port.number));
                    if !listener.bind.is_empty() {
                        errors.check(format!("{field}.bind"), rules::ip(&listener.bind));
                    }
                    if let Some(first) = ports.insert(port.number, i) {
                        errors.add(
                            format!("{pf}.number"),
                            format!(
                                "port {} is already used by spec.egress[{first}]; ports of IP-bound listeners must be unique",
                                port.number
                            ),
                        );
                    }
                }
            }
        }
        if listener.hosts.is_empty() {
            errors.add(format!("{field}.hosts"), "at least one host is required");
        }
        for (j, host) in listener.hosts.iter().enumerate() {
            errors.check(
                format!("{field}.hosts[{j}]"),
                rules::namespaced_host(host, false),
            );
        }
    }
}

/// Checks shared by ingress and egress ports (not the number, whose rules differ).
fn port_common(errors: &mut Errors, field: &str, port: &SidecarPort) {
    if !port.name.is_empty() {
        errors.check(format!("{field}.name"), rules::dns1123_label(&port.name));
    }
    errors.check(format!("{field}.protocol"), rules::protocol(&port.protocol));
    if port.target_port != 0 {
        errors.add(
            format!("{field}.targetPort"),
            "targetPort has no effect on sidecars; remove it",
        );
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix://PATH`.
fn default_endpoint(value: &str) -> rules::Check {
    if let Some(path) = value.strip_prefix("unix://") {
        return rules::unix_address(path);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!(
            "defaultEndpoint `{value}` must be `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT` or `unix://PATH`"
        ));
    };
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") {
        return Err(format!(
            "defaultEndpoint `{value}`: host must be 127.0.0.1, 0.0.0.0, [::1] or [::]"
        ));
    }
    match port.parse::<u32>() {
        Ok(number) => rules::port(number),
        Err(_) => Err(format!(
            "defaultEndpoint `{value}`: `{port}` is not a port number"
        )),
    }
}

fn outbound_traffic_policy(errors: &mut Errors, field: &str, policy: &OutboundTrafficPolicy) {
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let ef = format!("{field}.egressProxy");
    if policy.mode.unwrap_or_default() != OutboundTrafficMode::AllowAny {
        errors.add(&ef, "`egressProxy` can only be set with mode ALLOW_ANY");
        return;
    }
    // `destination` checks the name; an egress proxy must be a name, not an address.
    if rules::ip(&proxy.host).is_ok() {
        errors.add(
            format!("{ef}.host"),
            format!("`{}` is an IP address; a DNS name is required", proxy.host),
        );
    }
    if proxy.port.is_none() {
        errors.add(format!("{ef}.port"), "the egress proxy's port is required");
    }
    destination(errors, &ef, proxy);
}
