//! A route configuration large enough to go out as one buffer shared by every proxy's
//! response (capstan sends a resource of 16 KiB or more as its own chunk, a Delta resource's
//! `Any` after its name and version): two real Envoys, one on SotW and one on Delta, take it
//! whole, and an edit reaches both. Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback, route_counts};
use capstan_e2e::fixtures::reviews_vs_header_match;
use capstan_e2e::http::HttpClient;
use capstan_e2e::identity::metric;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, REVIEWS_VS_FILE, ReviewsMesh};
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
/// Services besides reviews: their virtual hosts make the route configuration ~100 KB.
const FILLERS: usize = 300;

fn fillers(port: u16) -> String {
    let mut text = String::new();
    for i in 0..FILLERS {
        let _ = write!(
            text,
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: filler-{i}, namespace: bookinfo}}
spec:
  hosts: [filler-{i}.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
"
        );
    }
    text
}

/// Which version answers jason through `client`.
async fn jason_reaches(client: &mut HttpClient) -> anyhow::Result<String> {
    Ok(client.reviews("reviews", JASON).await?.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_route_configuration_reaches_sotw_and_delta_proxies_whole() -> anyhow::Result<()> {
    let name = "a_large_route_configuration_reaches_sotw_and_delta_proxies_whole";
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let vs = reviews_vs_header_match("jason", "v2", "v1");
    let mut mesh = ReviewsMesh::start(
        name,
        &envoy_bin,
        Path::new(UPSTREAM_BIN),
        AdsMode::Sotw,
        &vs,
    )
    .await?;
    let filler_port = mesh.upstreams.port("reviews", "v1")?;
    mesh.env
        .write_config("fillers.yaml", &fillers(filler_port))?;
    let logs = mesh.env.log_dir.clone();
    let delta = Envoy::start(
        &envoy_bin,
        &Bootstrap::new(AdsMode::Delta, mesh.capstan.xds_port),
        &logs,
        "envoy-delta",
    )
    .await?;
    let port = delta
        .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", logs.display()))?;
    let mut delta_client = HttpClient::new(loopback(port));

    // Both hold every virtual host, the fillers' and reviews': some 300 x 400 bytes, well
    // past the size sent as a shared chunk.
    for (envoy, label) in [(&mesh.envoy, "sotw"), (&delta, "delta")] {
        wait_until(
            &format!("the {label} Envoy to hold every virtual host"),
            CONFIG_TIMEOUT,
            async || {
                let (hosts, _) = route_counts(&envoy.config_dump(false).await?);
                ensure!(hosts > FILLERS, "{hosts} virtual hosts");
                Ok(())
            },
        )
        .await?;
    }
    // What went out per route configuration response: past the shared-chunk size.
    let text = mesh.capstan.monitoring_get("/metrics").await?.text();
    let series = |name: &str| metric(&text, &format!("{name}{{type=\"rds\"}}")).unwrap_or(0.0);
    let (bytes, pushes) = (
        series("capstan_xds_push_bytes_total"),
        series("capstan_xds_pushes_total"),
    );
    ensure!(
        pushes >= 2.0 && bytes / pushes > 32.0 * 1024.0,
        "{pushes} route configuration responses of {bytes} bytes in all"
    );
    ensure!(jason_reaches(&mut mesh.proxy).await? == "v2");
    ensure!(jason_reaches(&mut delta_client).await? == "v2");

    // An edit: both take the new configuration.
    mesh.env.write_config(
        REVIEWS_VS_FILE,
        &reviews_vs_header_match("jason", "v3", "v1"),
    )?;
    for (client, label) in [(&mut mesh.proxy, "sotw"), (&mut delta_client, "delta")] {
        wait_until(
            &format!("jason to reach v3 through the {label} Envoy"),
            CONFIG_TIMEOUT,
            async || {
                let version = jason_reaches(client).await?;
                ensure!(version == "v3", "jason reaches {version}");
                Ok(())
            },
        )
        .await?;
    }
    // The edit was timed from the folder to the push queue.
    let text = mesh.capstan.monitoring_get("/metrics").await?.text();
    let timed = metric(&text, "capstan_folder_change_seconds_count").unwrap_or(0.0);
    ensure!(timed >= 1.0, "folder changes timed: {timed}");
    let filler = mesh.proxy.reviews("filler-299", &[]).await?;
    ensure!(
        filler.version == "v1",
        "filler-299 answered by {}",
        filler.version
    );
    mesh.envoy.ensure_no_rejected_updates().await?;
    delta.ensure_no_rejected_updates().await
}
