//! WorkloadEntries (VMs and other workloads outside Kubernetes) as the endpoints of the
//! ServiceEntry selecting them: a real sidecar Envoy's requests reach exactly the entries the
//! selector picks, and follow entries as they are relabelled and removed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::ensure;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv, capstan_and_sidecar};
use capstan_e2e::upstreams::Upstreams;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

const BILLING: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: vms}
spec:
  hosts: [billing.vms.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: billing}}
";

fn entry(name: &str, app: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: vms}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: {app}}}}}
"
    )
}

async fn versions(client: &mut HttpClient, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = client
            .get("billing.vms.svc.cluster.local", "/", &[])
            .await?
            .upstream_reply()?;
        *counts.entry(reply.version).or_default() += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_endpoints_follow_the_workload_entries_it_selects() -> anyhow::Result<()> {
    let env = TestEnv::new("service_entry_endpoints_follow_the_workload_entries_it_selects")?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("billing", "vm-1"), ("billing", "vm-2")],
        &env.log_dir,
    )
    .await?;
    let (one, two) = (
        upstreams.port("billing", "vm-1")?,
        upstreams.port("billing", "vm-2")?,
    );
    env.write_config("billing.yaml", BILLING)?;
    env.write_config("vm-1.yaml", &entry("vm-1", "billing", one))?;
    env.write_config("vm-2.yaml", &entry("vm-2", "payroll", two))?;
    let (_capstan, envoy, mut client) = capstan_and_sidecar(&env, AdsMode::Delta).await?;

    // vm-2 is labelled for another service: only vm-1 answers.
    capstan_e2e::wait_until("vm-1 alone", CONFIG_TIMEOUT, async || {
        let counts = versions(&mut client, 10).await?;
        ensure!(counts.keys().eq(["vm-1"]), "{counts:?}");
        Ok(())
    })
    .await?;
    let counts = versions(&mut client, 40).await?;
    ensure!(counts.keys().eq(["vm-1"]), "{counts:?}");

    // Relabelled, vm-2 joins: round robin over both.
    env.write_config("vm-2.yaml", &entry("vm-2", "billing", two))?;
    capstan_e2e::wait_until("vm-1 and vm-2", CONFIG_TIMEOUT, async || {
        let counts = versions(&mut client, 20).await?;
        ensure!(counts.keys().eq(["vm-1", "vm-2"]), "{counts:?}");
        Ok(())
    })
    .await?;

    // vm-1 removed: only vm-2 is left.
    std::fs::remove_file(env.config_dir.join("vm-1.yaml"))?;
    capstan_e2e::wait_until("vm-2 alone", CONFIG_TIMEOUT, async || {
        let counts = versions(&mut client, 20).await?;
        ensure!(counts.keys().eq(["vm-2"]), "{counts:?}");
        Ok(())
    })
    .await?;
    envoy.ensure_no_rejected_updates().await
}
