//! Real Envoys with static bootstraps (no xDS) whose TLS certificates and roots come over
//! SDS from a `capstan agent` socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::envoy::{Bootstrap, ENVOY_START_TIMEOUT, parse_stats};
use crate::http::{HttpClient, HttpResponse, percent_encode};
use crate::process::ChildProcess;
use crate::wait::wait_until;

const SDS_CLUSTER: &str = "sds-grpc";

fn sds(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [ { "envoy_grpc": { "cluster_name": SDS_CLUSTER } } ],
            },
            "resource_api_version": "V3",
        },
    })
}

fn endpoint(cluster: &str, address: Value) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address } } ] } ],
    })
}

fn socket_address(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

/// TLS with the agent's `default` certificate, and peers checked against `ROOTCA` and
/// required to present `peer_san` (a SPIFFE URI).
fn common_tls(peer_san: &str) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [ sds("default") ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [ {
                    "san_type": "URI", "matcher": { "exact": peer_san },
                } ],
            },
            "validation_context_sds_secret_config": sds("ROOTCA"),
        },
    })
}

fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": endpoint(SDS_CLUSTER, json!({ "pipe": { "path": socket.to_string_lossy() } })),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
    })
}

/// `bootstrap` with the static cluster `sds-grpc` to an agent's SDS socket, as Istio's pods
/// have it (a sidecar's and a gateway's alike): where the listeners and clusters capstan sends
/// take the workload certificate (`default`) and the mesh roots (`ROOTCA`) from.
pub fn with_agent_sds(bootstrap: &Bootstrap, sds_socket: &Path) -> Value {
    let mut json = bootstrap.to_json();
    if let Some(clusters) = json["static_resources"]["clusters"].as_array_mut() {
        clusters.push(sds_cluster(sds_socket));
    }
    json
}

/// An HTTP listener on 127.0.0.1 (port 0: Envoy picks) routing everything to `cluster`.
fn http_listener(name: &str, cluster: &str, transport_socket: Option<Value>) -> Value {
    let mut chain = json!({
        "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [ {
                    "name": "all", "domains": ["*"],
                    "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": cluster } } ],
                } ] },
                "http_filters": [ { "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                } } ],
            },
        } ],
    });
    if let Some(ts) = transport_socket {
        chain["transport_socket"] = ts;
    }
    json!({ "name": name, "address": socket_address(0), "filter_chains": [chain] })
}

fn bootstrap(node: &str, listener: Value, clusters: Vec<Value>) -> Value {
    json!({
        "node": { "id": node, "cluster": node },
        "admin": { "address": socket_address(0) },
        "static_resources": { "listeners": [listener], "clusters": clusters },
    })
}

/// The server side: listener `mtls` requiring a client certificate for `client_san`,
/// proxying to the plaintext upstream on `upstream_port`.
pub fn server_bootstrap(sds_socket: &Path, client_san: &str, upstream_port: u16) -> Value {
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common_tls(client_san),
        },
    });
    let upstream = json!({
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": endpoint("upstream", socket_address(upstream_port)),
    });
    bootstrap(
        "server",
        http_listener("mtls", "upstream", Some(tls)),
        vec![upstream, sds_cluster(sds_socket)],
    )
}

/// The client side: plaintext listener `plain` sending everything to the server Envoy on
/// `server_port` over mutual TLS, requiring the server to be `server_san`. Each request
/// takes a new connection (and so a new handshake with the certificates of the moment).
pub fn client_bootstrap(sds_socket: &Path, server_san: &str, server_port: u16) -> Value {
    let server = json!({
        "name": "server", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": endpoint("server", socket_address(server_port)),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": { "max_requests_per_connection": 1 },
                "explicit_http_config": { "http_protocol_options": {} },
            },
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls(server_san),
            },
        },
    });
    bootstrap(
        "client",
        http_listener("plain", "server", None),
        vec![server, sds_cluster(sds_socket)],
    )
}

/// A running Envoy started from a static bootstrap.
#[derive(Debug)]
pub struct StaticEnvoy {
    pub process: ChildProcess,
    admin: SocketAddr,
}

impl StaticEnvoy {
    /// Writes `<dir>/<name>.json`, starts Envoy (log `<dir>/<name>.log`) and waits for its
    /// admin interface.
    pub async fn start(
        envoy_bin: &Path,
        bootstrap: &Value,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.json"));
        let address_path = dir.join(format!("{name}.admin-address"));
        std::fs::write(&path, serde_json::to_vec_pretty(bootstrap)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = Command::new(envoy_bin);
        cmd.arg("-c")
            .arg(&path)
            .arg("--admin-address-path")
            .arg(&address_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info", "--drain-time-s", "1"]);
        let mut process = ChildProcess::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))?;
        let admin = wait_until("Envoy's admin address", ENVOY_START_TIMEOUT, async || {
            process.ensure_running()?;
            let text = std::fs::read_to_string(&address_path)?;
            text.trim()
                .parse::<SocketAddr>()
                .with_context(|| format!("parsing {text:?}"))
        })
        .await?;
        Ok(Self { process, admin })
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let resp = HttpClient::new(self.admin)
            .get(&self.admin.to_string(), path, &[])
            .await?;
        ensure!(resp.status.is_success(), "admin {path}: {}", resp.status);
        Ok(resp)
    }

    /// Waits until `listener` accepts connections (its certificates have arrived over SDS:
    /// an SDS listener stays warming until then) and returns its port. A bound port is not
    /// enough: Envoy binds static listeners at once but listens only when the server is
    /// initialized (`/ready`), which waits for its clusters' certificates too.
    pub async fn wait_listener_port(&self, listener: &str) -> anyhow::Result<u16> {
        wait_until(
            &format!("listener {listener}"),
            ENVOY_START_TIMEOUT,
            async || {
                self.admin_get("/ready").await?;
                let v: Value = self.admin_get("/listeners?format=json").await?.json()?;
                let port = v["listener_statuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["name"] == listener)
                    .and_then(|s| s["local_address"]["socket_address"]["port_value"].as_u64())
                    .context("not listed yet")?;
                ensure!(port != 0, "not bound yet");
                Ok(u16::try_from(port)?)
            },
        )
        .await
    }

    /// Counters matching the regex `filter`.
    pub async fn stats(&self, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let path = format!("/stats?filter={}", percent_encode(filter));
        Ok(parse_stats(&self.admin_get(&path).await?.text()))
    }

    /// The serial numbers of the certificates Envoy presents (`/certs`, `cert_chain`), empty
    /// until SDS has delivered one.
    pub async fn presented_serials(&self) -> anyhow::Result<Vec<String>> {
        let v: Value = self.admin_get("/certs").await?.json()?;
        let mut serials: Vec<String> = v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
            .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
            .collect();
        serials.sort();
        serials.dedup();
        Ok(serials)
    }
}
