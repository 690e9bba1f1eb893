//! ServiceEntry resolutions with a real Envoy: DNS and DNS_ROUND_ROBIN entries name their
//! endpoints by DNS name, and Envoy resolves them itself (STRICT_DNS / LOGICAL_DNS clusters).

use std::path::Path;

use anyhow::ensure;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv, capstan_and_sidecar};
use capstan_e2e::upstreams::Upstreams;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

fn entry(name: &str, resolution: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
  endpoints: [{{address: localhost, ports: {{http: {port}}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_entries_are_resolved_by_envoy() -> anyhow::Result<()> {
    let env = TestEnv::new("dns_entries_are_resolved_by_envoy")?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("strict", "v1"), ("logical", "v1")],
        &env.log_dir,
    )
    .await?;
    env.write_config(
        "entries.yaml",
        &format!(
            "{}---\n{}",
            entry("strict", "DNS", upstreams.port("strict", "v1")?),
            entry(
                "logical",
                "DNS_ROUND_ROBIN",
                upstreams.port("logical", "v1")?
            )
        ),
    )?;
    let (_capstan, envoy, mut client) = capstan_and_sidecar(&env, AdsMode::Sotw).await?;
    for name in ["strict", "logical"] {
        let host = format!("{name}.example.com");
        let reply = capstan_e2e::wait_until(&host, CONFIG_TIMEOUT, async || {
            client.get(&host, "/", &[]).await?.upstream_reply()
        })
        .await?;
        ensure!(reply.service == name, "{host} reached {reply:?}");
    }
    envoy.ensure_no_rejected_updates().await
}
