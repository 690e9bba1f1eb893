//! capstan + real Envoy routing on loopback: each test writes Istio YAML for a `reviews`
//! service (v1/v2/v3 upstreams) into its own config dir, starts capstan and one Envoy, and
//! checks what Envoy serves. Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::path::Path;

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

/// (b) An 80/20 split over v1/v3 lands within 5 sigma of 800 out of 1000.
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
    mesh.capstan.process.ensure_running()?;

    // capstan still applies good edits after all that.
    mesh.env
        .write_config(REVIEWS_VS_FILE, &reviews_vs_weighted(&[("v3", 100)]))?;
    mesh.wait_for_all(NO_HEADERS, "v3", 20).await?;

    // (e) Envoy never saw (and so never rejected) bad config.
    mesh.envoy.ensure_no_rejected_updates().await
}

async fn check_jason_v2_else_v1(mesh: &mut ReviewsMesh) -> anyhow::Result<()> {
    mesh.expect_all(JASON, "v2", 30).await?;
    mesh.expect_all(NO_HEADERS, "v1", 30).await
}
