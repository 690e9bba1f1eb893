//! An API server outage: capstan keeps serving the last good config while the API server is
//! down, and when it returns, catches up without pushing proxies anything that did not
//! change. Its own test binary: stopping the API server would disturb other tests.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::kube_mesh::{KubeReviewsMesh, all_to_yaml};
use capstan_e2e::mesh::CONFIG_TIMEOUT;
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const NOBODY: &[(&str, &str)] = &[];

/// The sum of every sample of a Prometheus metric family.
fn metric(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_keeps_config_and_pushes_nothing_unchanged() -> anyhow::Result<()> {
    let name = "apiserver_restart_keeps_config_and_pushes_nothing_unchanged";
    let upstream = Path::new(UPSTREAM_BIN);
    let mut mesh = KubeReviewsMesh::start(
        name,
        upstream,
        AdsMode::Delta,
        None,
        &["--leader-elect=false"],
    )
    .await?;
    let ns = mesh.namespace.clone();
    mesh.apply("vs-v1", &all_to_yaml(&ns, "v1")).await?;
    mesh.wait_for_versions(NOBODY, &["v1"], 20).await?;

    let metrics = mesh.capstan.monitoring_get("/metrics").await?.text();
    let version_before = metric(&metrics, "capstan_xds_snapshot_version");
    let pushes_before = metric(&metrics, "capstan_xds_pushes_total");
    ensure!(pushes_before > 0.0, "no pushes counted:\n{metrics}");

    mesh.cluster.stop_apiserver().await?;
    // Down: capstan notices (its watches fail) and Envoy routes as before.
    let capstan = &mesh.capstan;
    wait_until("capstan to notice the outage", CONFIG_TIMEOUT, async || {
        let text = capstan.monitoring_get("/metrics").await?.text();
        ensure!(
            metric(&text, "capstan_kube_watch_errors_total") > 0.0,
            "no watch errors yet"
        );
        Ok(())
    })
    .await?;
    mesh.wait_for_versions(NOBODY, &["v1"], 20).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    mesh.cluster.start_apiserver().await?;
    // Back: every watch recovers (logged once per kind) ...
    let capstan = &mesh.capstan;
    wait_until(
        "every watch to recover",
        Duration::from_secs(60),
        async || {
            let recovered = capstan.process.log_lines(|l| l.contains("recovered"));
            ensure!(
                recovered.len() >= 15,
                "{} of 15 watches recovered",
                recovered.len()
            );
            Ok(())
        },
    )
    .await?;
    // ... and nothing was pushed: the config is what it was.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = mesh.capstan.monitoring_get("/metrics").await?.text();
    ensure!(
        metric(&metrics, "capstan_xds_snapshot_version") == version_before,
        "the snapshot changed over the outage: {version_before} -> {}",
        metric(&metrics, "capstan_xds_snapshot_version")
    );
    ensure!(
        metric(&metrics, "capstan_xds_pushes_total") == pushes_before,
        "pushes over the outage: {pushes_before} -> {}",
        metric(&metrics, "capstan_xds_pushes_total")
    );

    // The watches work again: a change made now is followed.
    mesh.apply("vs-v2", &all_to_yaml(&ns, "v2")).await?;
    mesh.wait_for_versions(NOBODY, &["v2"], 20).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}
