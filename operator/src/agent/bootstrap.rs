//! The Envoy bootstrap the agent writes, Istio-style: ADS to capstan over mutual TLS whose
//! certificate (`default`) and roots (`ROOTCA`) come from the agent's SDS socket.

use std::net::IpAddr;
use std::path::Path;

use capstan_ca::sds::{DEFAULT_SECRET, ROOT_SECRET};
use serde_json::{Map, Value, json};

use super::{AgentArgs, AgentError};

/// The cluster Envoy reaches the agent's SDS socket through (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// The cluster Envoy reaches capstan's xDS through (Istio's name).
pub const XDS_CLUSTER: &str = "xds-grpc";
/// The readiness listener.
const HEALTH_LISTENER: &str = "health";

/// Istio's node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (`router~` for
/// gateways).
pub fn node_id(args: &AgentArgs) -> String {
    format!(
        "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
        args.proxy_type.node_prefix(),
        args.pod_ip,
        args.pod_name,
        ns = args.namespace
    )
}

/// Splits `host:port` (`[v6]:port` for IPv6).
fn split_address(address: &str) -> Result<(&str, u16), AgentError> {
    let bad = || AgentError::Config(format!("--xds-address {address:?} is not host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

fn sds_source() -> Value {
    json!({
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [ { "envoy_grpc": { "cluster_name": SDS_CLUSTER } } ],
            "set_node_on_first_message_only": true,
        },
        "resource_api_version": "V3",
    })
}

fn http2() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    })
}

/// The listener answering readiness probes: `/healthz/ready` 200, anything else 404. Envoy
/// starts its listeners only once its first clusters and listeners are in, so the probe
/// fails until then (connection refused) — readiness without reaching the admin port.
fn health_listener(args: &AgentArgs) -> Value {
    json!({
        "name": HEALTH_LISTENER,
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": args.health_port } },
        "filter_chains": [ { "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": HEALTH_LISTENER,
                "route_config": { "virtual_hosts": [ {
                    "name": HEALTH_LISTENER,
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": { "path": "/healthz/ready" },
                            "direct_response": { "status": 200, "body": { "inline_string": "LIVE\n" } },
                        },
                        { "match": { "prefix": "/" }, "direct_response": { "status": 404 } },
                    ],
                } ] },
                "http_filters": [ {
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                } ],
            },
        } ] } ],
    })
}

/// The bootstrap for `args`, with SDS at `sds_socket` (an absolute path: Envoy may run in
/// another directory).
pub fn bootstrap_json(args: &AgentArgs, sds_socket: &Path) -> Result<Value, AgentError> {
    let xds = args
        .xds_address
        .as_deref()
        .ok_or_else(|| AgentError::Config("a bootstrap needs --xds-address".into()))?;
    let (host, port) = split_address(xds)?;
    let discovery = if host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let labels: Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    // No initial fetch timeout, as Istio's bootstrap: Envoy waits for its first clusters and
    // listeners however long capstan takes, so it starts no listener (15021 included) on an
    // empty config.
    let ads_source =
        json!({ "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3" });
    let mut bootstrap = json!({
        "node": {
            "id": node_id(args),
            "cluster": format!("{}.{}", args.pod_name, args.namespace),
            "metadata": {
                "NAMESPACE": args.namespace,
                "SERVICE_ACCOUNT": args.service_account,
                "NAME": args.pod_name,
                "INSTANCE_IPS": args.pod_ip.to_string(),
                "LABELS": labels,
            },
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": args.admin_port } },
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [ { "envoy_grpc": { "cluster_name": XDS_CLUSTER } } ],
                "set_node_on_first_message_only": true,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": SDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": SDS_CLUSTER,
                        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                            "pipe": { "path": sds_socket.to_string_lossy() }
                        } } } ] } ],
                    },
                    "typed_extension_protocol_options": http2(),
                },
                {
                    "name": XDS_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                            "socket_address": { "address": host, "port_value": port }
                        } } } ] } ],
                    },
                    "typed_extension_protocol_options": http2(),
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": args.xds_server_name,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [
                                    { "name": DEFAULT_SECRET, "sds_config": sds_source() }
                                ],
                                "combined_validation_context": {
                                    "default_validation_context": {
                                        "match_typed_subject_alt_names": [ {
                                            "san_type": "DNS",
                                            "matcher": { "exact": args.xds_server_name },
                                        } ],
                                    },
                                    "validation_context_sds_secret_config": {
                                        "name": ROOT_SECRET, "sds_config": sds_source()
                                    },
                                },
                            },
                        },
                    },
                },
            ],
        },
    });
    if args.health_port != 0 {
        bootstrap["static_resources"]["listeners"] = json!([health_listener(args)]);
    }
    Ok(bootstrap)
}

#[cfg(test)]
mod tests;
