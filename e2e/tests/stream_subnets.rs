//! `destinationSubnets` on a captured sidecar (`--sidecar-listeners capture`, the `capture`
//! harness: a real Envoy behind istio-init's iptables rules, in this binary's own network
//! namespace): `tcp` and `tls` routes that hold only for connections to some addresses, as
//! with istiod. Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture::{self, service_ip};
use capstan_e2e::capture_mesh::{StreamApps, call, capstan_and_captured_sidecar};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::netns::pod_ip;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// A TCP ServiceEntry `db` without an address on port 7000 (so its listener takes every
/// destination on the port), its endpoint `workload`:5432.
fn db_without_address(workload: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {workload}, ports: {{tcp: 5432}}}}]
"
    )
}

/// db's connections to `subnet` go to db2, the rest to db; secure.example.com's to `subnet`
/// go to other.example.com.
fn routes_by_subnet(subnet: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
  - match: [{{destinationSubnets: [{subnet}]}}]
    route: [{{destination: {{host: db2.bookinfo.svc.cluster.local, port: {{number: 5433}}}}}}]
  - route: [{{destination: {{host: db.bookinfo.svc.cluster.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: bookinfo}}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{{sniHosts: [secure.example.com], destinationSubnets: [{subnet}]}}]
    route: [{{destination: {{host: other.example.com}}}}]
"
    )
}

/// Connections on one port told apart by where they were headed: a TCP service without an
/// address takes every destination on its port, and its `tcp` route for a subnet sends the
/// connections to addresses in it elsewhere; a TLS host's `tls` route for a subnet does the
/// same for that SNI name. Moving the subnet moves which address is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_tls_routes_by_destination_subnet() -> anyhow::Result<()> {
    capture::install()?;
    let name = "tcp_and_tls_routes_by_destination_subnet";
    let env = TestEnv::new(name)?;
    let workload = pod_ip(263);
    let apps = StreamApps::start(&env, Path::new(UPSTREAM_BIN), workload).await?;
    let address = workload.to_string();
    env.write_config("db.yaml", &db_without_address(&address))?;
    let first = service_ip(50);
    let second = service_ip(51);
    env.write_config("routes.yaml", &routes_by_subnet(&format!("{first}/32")))?;
    let (_capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Delta, &address).await?;
    let log_dir = env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());

    for (routed, unrouted, step) in [
        (first, second, "the subnet names the first address"),
        (second, first, "the subnet moved to the second address"),
    ] {
        if routed == second {
            env.write_config("routes.yaml", &routes_by_subnet(&second.to_string()))?;
        }
        wait_until(step, CONFIG_TIMEOUT, async || {
            for (address, expected) in [(routed, "db2"), (unrouted, "db")] {
                let reply = call(SocketAddr::from((address, 7000)), "db").await?;
                ensure!(reply.service == expected, "{address}:7000: {reply:?}");
            }
            for (address, expected) in [(routed, "other"), (unrouted, "secure")] {
                let to = SocketAddr::from((address, 443));
                let reply = apps.https_reply(to, "secure.example.com").await?;
                ensure!(
                    reply.service == expected,
                    "{to} secure.example.com: {reply:?}"
                );
            }
            Ok(())
        })
        .await
        .with_context(logs)?;
    }
    envoy.ensure_no_rejected_updates().await
}
