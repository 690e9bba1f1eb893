//! capstan + real Envoy routing on loopback: each test writes Istio YAML for a `reviews`
//! service (v1/v2/v3 upstreams) into its own config dir, starts capstan and one Envoy, and
//! checks what Envoy serves. Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::fixtures::{
    BROKEN_YAML, reviews_vs_header_match, reviews_vs_weighted, reviews_vs_weighted_named,
};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, REVIEWS_VS_FILE, ReviewsMesh};

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
const NO_HEADERS: &[(&str, &str)] = &[];

async fn start(name: &str, mode: AdsMode, vs: &str) -> anyhow::Result<ReviewsMesh> {
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    ReviewsMesh::start(name, &envoy_bin, Path::new(UPSTREAM_BIN), mode, vs).await
}

fn jason_v2_else_v1() -> String {
    reviews_vs_header_match("jason", "v2", "v1")
}

/// (a) `end-user: jason` → v2, everything else → v1, under every host form.
async fn header_match(name: &str, mode: AdsMode) -> anyhow::Result<()> {
    let mut mesh = start(name, mode, &jason_v2_else_v1()).await?;
    mesh.wait_for_all(JASON, "v2", 10).await?;
    mesh.expect_all(JASON, "v2", 50).await?;
    mesh.expect_all(NO_HEADERS, "v1", 50).await?;
    mesh.expect_all(&[("end-user", "mike")], "v1", 50).await?;

    for host in [
        "reviews",
        "reviews:9080",
        "reviews.bookinfo",
        "reviews.bookinfo.svc",
        "reviews.bookinfo.svc.cluster.local",
        "reviews.bookinfo.svc.cluster.local:9080",
    ] {
        let jason = mesh
            .reviews(host, JASON)
            .await
            .with_context(|| format!("Host: {host}"))?;
        let other = mesh
            .reviews(host, NO_HEADERS)
            .await
            .with_context(|| format!("Host: {host}"))?;
        ensure!(
            (jason.version.as_str(), other.version.as_str()) == ("v2", "v1"),
            "Host: {host}: jason got {}, others got {}",
            jason.version,
            other.version
        );
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_to_subset_sotw() -> anyhow::Result<()> {
    header_match("header_match_routes_to_subset_sotw", AdsMode::Sotw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_to_subset_delta() -> anyhow::Result<()> {
    header_match("header_match_routes_to_subset_delta", AdsMode::Delta).await
}

/// (b) Envoy holds exactly the 80/20 weights over v1/v3, and traffic follows them (within
/// 5 sigma of 800 out of 1000: a loose check, the weights are checked exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_80_20_within_5_sigma() -> anyhow::Result<()> {
    let name = "weighted_split_80_20_within_5_sigma";
    let vs = reviews_vs_weighted(&[("v1", 80), ("v3", 20)]);
    let mut mesh = start(name, AdsMode::Sotw, &vs).await?;
    // Ready once replies come only from the split's subsets (without the VirtualService,
    // Envoy would balance over all three versions).
    capstan_e2e::wait_until("only v1/v3 answering", CONFIG_TIMEOUT, async || {
        let counts = mesh.versions(NO_HEADERS, 30).await?;
        ensure!(counts.keys().all(|v| v == "v1" || v == "v3"), "{counts:?}");
        Ok(())
    })
    .await?;

    let dump = mesh.envoy.config_dump(false).await?;
    let weights: Vec<(String, u64)> = capstan_e2e::envoy::weighted_clusters(&dump)?
        .into_iter()
        .map(|(subset, _, weight)| (subset, weight))
        .collect();
    ensure!(
        weights == [("v1".to_string(), 80), ("v3".to_string(), 20)],
        "Envoy's weighted clusters are {weights:?}, expected v1: 80, v3: 20"
    );

    const N: usize = 1000;
    let counts = mesh.versions(NO_HEADERS, N).await?;
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v3 = counts.get("v3").copied().unwrap_or(0);
    ensure!(v1 + v3 == N, "replies from outside the split: {counts:?}");
    let (n, p) = (N as f64, 0.8);
    let sigma = (n * p * (1.0 - p)).sqrt();
    let deviation = (v1 as f64 - n * p).abs();
    ensure!(
        deviation <= 5.0 * sigma,
        "v1 got {v1} of {N} (v3 {v3}); expected 800 ± {:.0} (5 sigma)",
        5.0 * sigma
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// (c) Rewriting the VirtualService file to 100% v3 reroutes the running Envoy.
async fn edit_reroutes(name: &str, mode: AdsMode) -> anyhow::Result<()> {
    let mut mesh = start(name, mode, &jason_v2_else_v1()).await?;
    mesh.wait_for_all(JASON, "v2", 10).await?;
    mesh.expect_all(NO_HEADERS, "v1", 10).await?;
    let pid = mesh.envoy.pid();
    let port = mesh.envoy.listener_port(OUTBOUND_LISTENER).await?;

    mesh.env
        .write_config(REVIEWS_VS_FILE, &reviews_vs_weighted(&[("v3", 100)]))?;
    mesh.wait_for_all(NO_HEADERS, "v3", 20).await?;
    mesh.expect_all(JASON, "v3", 20).await?;

    mesh.envoy
        .process()
        .ensure_running()
        .context("Envoy must keep running")?;
    ensure!(mesh.envoy.pid() == pid, "Envoy was restarted");
    let port_after = mesh.envoy.listener_port(OUTBOUND_LISTENER).await?;
    ensure!(
        port_after == port,
        "listener moved from port {port} to {port_after}"
    );
    ensure!(
        mesh.proxy.resets() == 0,
        "{} requests were reset on a kept-alive connection across the edit",
        mesh.proxy.resets()
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_virtual_service_reroutes_running_envoy_sotw() -> anyhow::Result<()> {
    edit_reroutes(
        "editing_virtual_service_reroutes_running_envoy_sotw",
        AdsMode::Sotw,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_virtual_service_reroutes_running_envoy_delta() -> anyhow::Result<()> {
    edit_reroutes(
        "editing_virtual_service_reroutes_running_envoy_delta",
        AdsMode::Delta,
    )
    .await
}

/// (d) + (e) Broken YAML and invalid VirtualServices are reported in capstan's log (naming the
/// file) and do not change routing; a later good edit still applies; Envoy rejected nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_reported_and_last_good_config_kept() -> anyhow::Result<()> {
    let name = "broken_files_are_reported_and_last_good_config_kept";
    let mut mesh = start(name, AdsMode::Sotw, &jason_v2_else_v1()).await?;
    mesh.wait_for_all(JASON, "v2", 10).await?;
    let before = quiet_pushes(&mesh).await?;

    // A new file that is not YAML at all.
    mesh.env.write_config("broken.yaml", BROKEN_YAML)?;
    mesh.capstan
        .wait_for_problem_report("broken.yaml", 0, CONFIG_TIMEOUT)
        .await?;

    // A new file with a VirtualService whose weights sum to 90.
    let canary = reviews_vs_weighted_named("reviews-canary", &[("v1", 50), ("v3", 40)]);
    mesh.env.write_config("canary.yaml", &canary)?;
    let lines = mesh
        .capstan
        .wait_for_problem_report("canary.yaml", 0, CONFIG_TIMEOUT)
        .await?;
    let joined = lines.join("\n");
    ensure!(
        joined.contains("reviews-canary") && joined.to_ascii_lowercase().contains("weight"),
        "report for canary.yaml should name the VirtualService and the weight field:\n{joined}"
    );
    check_jason_v2_else_v1(&mut mesh)
        .await
        .context("after broken.yaml and canary.yaml")?;
    ensure_nothing_pushed(&mesh, &before)
        .await
        .context("after broken.yaml and canary.yaml")?;

    // Broken edits of the file holding the VirtualService in force: invalid weights, then
    // invalid YAML. The previous VirtualService must stay in force.
    let seen = mesh.capstan.problems_with(REVIEWS_VS_FILE).len();
    mesh.env.write_config(
        REVIEWS_VS_FILE,
        &reviews_vs_weighted(&[("v1", 50), ("v3", 40)]),
    )?;
    let seen = mesh
        .capstan
        .wait_for_problem_report(REVIEWS_VS_FILE, seen, CONFIG_TIMEOUT)
        .await?
        .len();
    check_jason_v2_else_v1(&mut mesh)
        .await
        .context("after invalid weights in the VS file")?;

    mesh.env.write_config(REVIEWS_VS_FILE, BROKEN_YAML)?;
    mesh.capstan
        .wait_for_problem_report(REVIEWS_VS_FILE, seen, CONFIG_TIMEOUT)
        .await?;
    check_jason_v2_else_v1(&mut mesh)
        .await
        .context("after a YAML syntax error in the VS file")?;
    ensure_nothing_pushed(&mesh, &before)
        .await
        .context("after the broken edits of the VS file")?;
    mesh.capstan.process.ensure_running()?;

    // capstan still applies good edits after all that.
    mesh.env
        .write_config(REVIEWS_VS_FILE, &reviews_vs_weighted(&[("v3", 100)]))?;
    mesh.wait_for_all(NO_HEADERS, "v3", 20).await?;
    let after = pushes(&mesh).await?;
    ensure!(
        after.capstan > before.capstan && after.envoy != before.envoy,
        "the good edit must show as a push: before {before:?}, after {after:?}"
    );
    ensure!(
        mesh.proxy.resets() == 0,
        "{} requests were reset on a kept-alive connection across the edits",
        mesh.proxy.resets()
    );

    // (e) Envoy never saw (and so never rejected) bad config.
    mesh.envoy.ensure_no_rejected_updates().await
}

async fn check_jason_v2_else_v1(mesh: &mut ReviewsMesh) -> anyhow::Result<()> {
    mesh.expect_all(JASON, "v2", 30).await?;
    mesh.expect_all(NO_HEADERS, "v1", 30).await
}

/// How long to wait for a push that should not come. A wrongly queued push goes out within
/// capstan's debounce (100 ms by default) and reaches a local Envoy within milliseconds; this
/// is many times that, so such a push would be seen, yet short enough to wait twice per test.
const SETTLE: Duration = Duration::from_secs(2);

/// What shows config reaching Envoy: capstan's count of discovery responses sent, and
/// Envoy's count of xDS updates received, per subscription.
#[derive(Debug, PartialEq, Eq)]
struct Pushes {
    capstan: u64,
    envoy: BTreeMap<String, u64>,
}

async fn pushes(mesh: &ReviewsMesh) -> anyhow::Result<Pushes> {
    let metrics = mesh.capstan.monitoring_get("/metrics").await?.text();
    let sent: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("capstan_xds_pushes_total"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unreadable metric line {l:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        !sent.is_empty(),
        "no capstan_xds_pushes_total in:\n{metrics}"
    );
    let envoy = mesh.envoy.stats("update_attempt$").await?;
    ensure!(
        envoy.contains_key("listener_manager.lds.update_attempt"),
        "Envoy has no LDS update_attempt stat: {envoy:?}"
    );
    Ok(Pushes {
        capstan: sent.iter().sum(),
        envoy,
    })
}

/// The push counts once they stay the same for [`SETTLE`] (startup pushes are done).
async fn quiet_pushes(mesh: &ReviewsMesh) -> anyhow::Result<Pushes> {
    capstan_e2e::wait_until("pushes to settle", CONFIG_TIMEOUT, async || {
        let first = pushes(mesh).await?;
        tokio::time::sleep(SETTLE).await;
        let then = pushes(mesh).await?;
        ensure!(first == then, "still pushing: {first:?} then {then:?}");
        Ok(then)
    })
    .await
}

/// Fails if anything was pushed since `before`, waiting [`SETTLE`] for a push still queued.
async fn ensure_nothing_pushed(mesh: &ReviewsMesh, before: &Pushes) -> anyhow::Result<()> {
    tokio::time::sleep(SETTLE).await;
    let now = pushes(mesh).await?;
    ensure!(
        &now == before,
        "config was pushed although no good change was made: before {before:?}, now {now:?}"
    );
    Ok(())
}
