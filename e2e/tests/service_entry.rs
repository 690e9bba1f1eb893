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

/// `exportTo`: a proxy of a namespace the entry is exported to reaches it; a proxy of another
/// namespace gets no route for it (404) until the entry is exported there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_limits_which_namespaces_reach_an_entry() -> anyhow::Result<()> {
    use capstan_e2e::capstan::Capstan;
    use capstan_e2e::envoy::{Bootstrap, Envoy, loopback};
    use capstan_e2e::http::HttpClient;
    use capstan_e2e::mesh::OUTBOUND_LISTENER;
    use capstan_e2e::wait_until;

    let env = TestEnv::new("export_to_limits_which_namespaces_reach_an_entry")?;
    let upstreams =
        Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &[("ledger", "v1")], &env.log_dir)
            .await?;
    let port = upstreams.port("ledger", "v1")?;
    let ledger = |export_to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ledger, namespace: finance}}
spec:
  hosts: [ledger.finance.svc.cluster.local]
  exportTo: {export_to}
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
        )
    };
    env.write_config("ledger.yaml", &ledger("[.]"))?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let mut clients = Vec::new();
    let mut envoys = Vec::new();
    for namespace in ["finance", "shop"] {
        let mut bootstrap = Bootstrap::new(AdsMode::Sotw, capstan.xds_port);
        bootstrap.namespace = namespace.to_string();
        let envoy = Envoy::start(&envoy_bin, &bootstrap, &env.log_dir, namespace).await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await?;
        clients.push(HttpClient::new(loopback(port)));
        envoys.push(envoy);
    }
    let host = "ledger.finance.svc.cluster.local";
    let status = async |client: &mut HttpClient| -> anyhow::Result<u16> {
        Ok(client.get(host, "/", &[]).await?.status.as_u16())
    };
    let [finance, shop] = &mut clients[..] else {
        anyhow::bail!("two clients");
    };
    wait_until(
        "finance reaching its own ledger",
        CONFIG_TIMEOUT,
        async || {
            ensure!(status(finance).await? == 200);
            Ok(())
        },
    )
    .await?;
    ensure!(
        status(shop).await? == 404,
        "shop reached a ledger exported to `.`"
    );
    // Not exported to shop: its sidecar does not even hold the ledger's cluster.
    let ledger_cluster = vec![format!("outbound|80||{host}")];
    ensure!(envoys[0].outbound_clusters().await? == ledger_cluster);
    ensure!(envoys[1].outbound_clusters().await?.is_empty());

    env.write_config("ledger.yaml", &ledger("[., shop]"))?;
    wait_until(
        "shop reaching the ledger exported to it",
        CONFIG_TIMEOUT,
        async || {
            ensure!(status(shop).await? == 200);
            Ok(())
        },
    )
    .await?;
    ensure!(status(finance).await? == 200);
    ensure!(envoys[1].outbound_clusters().await? == ledger_cluster);
    for envoy in &envoys {
        envoy.ensure_no_rejected_updates().await?;
    }
    Ok(())
}
