//! Capture-mode sidecar listeners built incrementally end up exactly as a full build: ports
//! gained and lost, TCP services with and without addresses, workloads moving.

use capstan_crds::Kind;

use super::tests::{check_with, delete, istio, options, service};
use super::*;

fn capture() -> Options {
    Options {
        sidecar_listeners: ListenerMode::Capture,
        ..options()
    }
}

fn tcp_entry(name: &str, port: u32, addresses: &str, endpoints: &[&str]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|a| format!("  - {{address: {a}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [{addresses}]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
{endpoints}"
    )
}

#[test]
fn capture_listeners_follow_services_and_workloads() {
    check_with(
        capture(),
        vec![
            service("reviews", &[("http", 9080)]),
            istio(&tcp_entry("db", 5432, "240.0.0.5", &["10.0.0.1"])),
            // A second address and a workload moving.
            istio(&tcp_entry(
                "db",
                5432,
                "240.0.0.5, 240.0.0.6",
                &["10.0.0.2"],
            )),
            // Another TCP service on the port, with an address of its own, then claiming
            // the same one (reported, not routed).
            istio(&tcp_entry("db2", 5432, "240.0.0.7", &["10.0.0.2"])),
            istio(&tcp_entry("db2", 5432, "240.0.0.6", &["10.0.0.3"])),
            // A TCP service without an address on an HTTP port (reported).
            istio(&tcp_entry("legacy", 9080, "", &["10.0.0.4"]).replace("  addresses: []\n", "")),
            delete(Kind::ServiceEntry, "bookinfo", "legacy"),
            delete(Kind::ServiceEntry, "bookinfo", "db"),
            delete(Kind::ServiceEntry, "bookinfo", "db2"),
        ],
    );
}
