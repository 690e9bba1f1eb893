//! The bench's configuration: the folder's files and the Envoy stats settings.

use std::fmt::Write as _;

use super::{Cli, EDITED_HOST, NAMESPACE};

/// The stats Istio's proxy bootstrap keeps by default (its `stats_matcher` inclusion list),
/// and RDS's and the control plane connection's, which the bench reads: per-virtual-host and
/// per-cluster stats are not kept.
pub(crate) fn istio_stats_config() -> serde_json::Value {
    let prefixes = [
        "reporter=",
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
        "component",
        "control_plane",
    ];
    let suffixes = [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
        "downstream_cx_active",
    ];
    let mut patterns: Vec<serde_json::Value> = prefixes
        .iter()
        .map(|p| serde_json::json!({ "prefix": p }))
        .chain(suffixes.iter().map(|s| serde_json::json!({ "suffix": s })))
        .collect();
    patterns.push(serde_json::json!({ "safe_regex": { "regex": ".*\\.rds\\..*" } }));
    serde_json::json!({ "stats_matcher": { "inclusion_list": { "patterns": patterns } } })
}

pub(crate) fn filler_files(cli: &Cli, port: u16) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let per_file = cli.hosts_per_file.max(1);
    for first in (0..cli.hosts).step_by(per_file) {
        let mut text = String::new();
        for i in first..(first + per_file).min(cli.hosts) {
            let host = format!("svc-{i}.{NAMESPACE}.svc.cluster.local");
            let _ = write!(
                text,
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  http:
"
            );
            for r in 0..cli.routes_per_host {
                let dest = format!("    route: [{{destination: {{host: {host}}}}}]\n");
                if r + 1 == cli.routes_per_host {
                    text.push_str("  - name: default\n");
                } else if r == 0 {
                    let _ = writeln!(
                        text,
                        "  - name: tenant\n    match: [{{headers: {{x-tenant: {{exact: tenant-{i}}}}}}}]"
                    );
                } else {
                    let _ = writeln!(
                        text,
                        "  - name: api-{r}\n    match: [{{uri: {{prefix: /api/{r}/}}}}]"
                    );
                }
                text.push_str(&dest);
            }
            text.push_str("---\n");
        }
        files.push((format!("hosts-{first:05}.yaml"), text));
    }
    files
}

pub(crate) fn edited_service(v1: u16, v2: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edited, namespace: {NAMESPACE}}}
spec:
  hosts: [{EDITED_HOST}]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
"
    )
}

/// The edited host's DestinationRule: subsets v1 and v2, balanced by `simple` (Istio's name).
pub(crate) fn edited_rule(simple: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: edited, namespace: {NAMESPACE}}}
spec:
  host: {EDITED_HOST}
  trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
    )
}

/// The edited VirtualService: jason to `jason_to`, `/api/` and everything else to v1. `edit`
/// names the jason route, so every edit is new content.
pub(crate) fn edited_vs(jason_to: &str, edit: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edited, namespace: {NAMESPACE}}}
spec:
  hosts: [{EDITED_HOST}]
  http:
  - name: jason-edit-{edit}
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: {EDITED_HOST}, subset: {jason_to}}}}}]
  - name: api
    match: [{{uri: {{prefix: /api/}}}}]
    route: [{{destination: {{host: {EDITED_HOST}, subset: v1}}}}]
  - name: default
    route: [{{destination: {{host: {EDITED_HOST}, subset: v1}}}}]
"
    )
}
