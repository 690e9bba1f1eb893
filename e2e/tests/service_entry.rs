//! ServiceEntry resolutions with a real Envoy: DNS and DNS_ROUND_ROBIN entries name their
//! endpoints by DNS name, and Envoy resolves them itself (STRICT_DNS / LOGICAL_DNS clusters);
//! `exportTo`; a STATIC endpoint on a Unix socket.

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

/// A STATIC entry's endpoint `unix:///path`: the sidecar connects to that Unix socket (an
/// Envoy `pipe` address, as istiod builds it), where a plain HTTP server answers; before,
/// Envoy was sent the path as an IP address and rejected the load assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_endpoint_is_reached() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new("a_unix_socket_endpoint_is_reached")?;
    let socket = env.log_dir.join("local-api.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let body = "from the unix socket";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    env.write_config(
        "local-api.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: local-api, namespace: shop}}
spec:
  hosts: [local-api.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 'unix://{}'}}]
",
            socket.display()
        ),
    )?;
    let (_capstan, envoy, mut client) = capstan_and_sidecar(&env, AdsMode::Sotw).await?;
    let body = capstan_e2e::wait_until("the unix socket endpoint", CONFIG_TIMEOUT, async || {
        let response = client.get("local-api.example.com", "/", &[]).await?;
        ensure!(response.status == 200, "{}", response.status);
        Ok(response.text())
    })
    .await?;
    ensure!(body == "from the unix socket", "{body}");
    ensure!(served.load(std::sync::atomic::Ordering::SeqCst) > 0);
    server.abort();
    envoy.ensure_no_rejected_updates().await
}
