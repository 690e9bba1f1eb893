//! xDS protocol conformance against a real Envoy, SotW and Delta: initial sync, an update, the
//! removal of a cluster, the NACK of a resource Envoy cannot accept (Envoy keeps its config and
//! capstan reports the NACK), and a reconnect after capstan restarts (Delta: Envoy's
//! `initial_resource_versions` mean nothing it already has is sent again).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::fixtures::service_entry;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv, capstan_and_sidecar};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait::wait_until;
use serde_json::Value;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const RATINGS_CLUSTER: &str = "outbound|9080||ratings.bookinfo.svc.cluster.local";
const REVIEWS_CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";

/// RE2 refuses this pattern: Envoy caps a regex's program size (100 by default), which the
/// pattern far exceeds, so the route configuration carrying it is rejected.
const OVERSIZED_REGEX_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: '/(alpha|beta|gamma|delta){50}'}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
";

fn dynamic_clusters(dump: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for config in dump["configs"].as_array().into_iter().flatten() {
        for c in config["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = c["cluster"]["name"].as_str() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names
}

/// `capstan_xds_<name>` samples from capstan's /metrics, by their label set.
async fn capstan_metric(capstan: &Capstan, name: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = capstan.monitoring_get("/metrics").await?.text();
    let prefix = format!("capstan_xds_{name}");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key[prefix.len()..].to_string(), value.parse().ok()?))
        })
        .collect())
}

async fn conformance(name: &str, mode: AdsMode) -> anyhow::Result<()> {
    let env = TestEnv::new(name)?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[
            ("reviews", "v1"),
            ("ratings", "v1"),
            ("ratings", "v2"),
            ("details", "v1"),
        ],
        &env.log_dir,
    )
    .await?;
    env.write_config(
        "reviews.yaml",
        &service_entry("reviews", upstreams.port("reviews", "v1")?),
    )?;
    env.write_config(
        "ratings.yaml",
        &service_entry("ratings", upstreams.port("ratings", "v1")?),
    )?;
    let (mut capstan, envoy, mut proxy) = capstan_and_sidecar(&env, mode).await?;
    let logs = || format!("logs in {}", env.log_dir.display());

    // Initial sync: both clusters, their endpoints, listener and routes.
    wait_until("initial sync", CONFIG_TIMEOUT, async || {
        let clusters = dynamic_clusters(&envoy.config_dump(false).await?);
        ensure!(
            clusters == [RATINGS_CLUSTER, REVIEWS_CLUSTER],
            "clusters {clusters:?}"
        );
        let reply = proxy.upstream("ratings", "/", &[]).await?;
        ensure!(reply.version == "v1", "ratings answered by {reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;

    // Update: the ratings endpoint moves to the v2 instance. (SotW sends only the changed load
    // assignment; reviews' endpoints, not in that response, must stay in place.)
    let eds = |m: &BTreeMap<String, f64>| m.get("{type=\"eds\"}").copied().unwrap_or(0.0);
    let eds_before = eds(&capstan_metric(&capstan, "pushed_resources_total").await?);
    env.write_config(
        "ratings.yaml",
        &service_entry("ratings", upstreams.port("ratings", "v2")?),
    )?;
    wait_until("ratings to move to v2", CONFIG_TIMEOUT, async || {
        let reply = proxy.upstream("ratings", "/", &[]).await?;
        ensure!(reply.version == "v2", "ratings answered by {reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    let reply = proxy.upstream("reviews", "/", &[]).await?;
    ensure!(
        reply.version == "v1",
        "reviews lost its endpoints: {reply:?}"
    );
    let eds_sent = eds(&capstan_metric(&capstan, "pushed_resources_total").await?) - eds_before;
    ensure!(
        eds_sent == 1.0,
        "one endpoint change should send one load assignment, sent {eds_sent}"
    );

    // A service added later: its cluster, and then its endpoints (SotW: the new load
    // assignment alone), arrive and route.
    env.write_config(
        "details.yaml",
        &service_entry("details", upstreams.port("details", "v1")?),
    )?;
    wait_until("details to route", CONFIG_TIMEOUT, async || {
        let reply = proxy.upstream("details", "/", &[]).await?;
        ensure!(reply.service == "details", "details answered by {reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    std::fs::remove_file(env.config_dir.join("details.yaml"))?;

    // A cluster updated (its DestinationRule's load balancer) while its endpoints stay: Envoy
    // warms the new cluster until a load assignment arrives, and on Delta does not ask again
    // for one it holds, so capstan sends it again; without it the cluster would wait out
    // Envoy's initial fetch timeout (15 s) and count no EDS update.
    let eds_updates = format!("cluster.{RATINGS_CLUSTER}.update_success");
    let eds_before = envoy.stat(&eds_updates).await?;
    env.write_config(
        "ratings-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings.bookinfo.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
",
    )?;
    wait_until(
        "ratings' cluster to balance at random",
        CONFIG_TIMEOUT,
        async || {
            let cluster = envoy.active_cluster(RATINGS_CLUSTER).await?;
            let random = cluster.is_some_and(|c| c["lb_policy"] == "RANDOM");
            ensure!(random, "ratings' active cluster is not RANDOM yet");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    let eds_after = envoy.stat(&eds_updates).await?;
    ensure!(
        eds_after > eds_before,
        "the updated cluster got no load assignment ({eds_updates}: {eds_before} → {eds_after})"
    );
    let reply = proxy.upstream("ratings", "/", &[]).await?;
    ensure!(reply.version == "v2", "ratings answered by {reply:?}");
    std::fs::remove_file(env.config_dir.join("ratings-dr.yaml"))?;

    // Removal: without its ServiceEntry the ratings cluster and route go away.
    std::fs::remove_file(env.config_dir.join("ratings.yaml"))?;
    wait_until(
        "the ratings cluster to be removed",
        CONFIG_TIMEOUT,
        async || {
            let clusters = dynamic_clusters(&envoy.config_dump(false).await?);
            ensure!(clusters == [REVIEWS_CLUSTER], "clusters {clusters:?}");
            let status = proxy.get("ratings", "/", &[]).await?.status;
            ensure!(status.as_u16() == 404, "ratings still routed: {status}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    envoy
        .ensure_no_rejected_updates()
        .await
        .with_context(logs)?;

    // NACK: Envoy rejects the route configuration, keeps serving the previous one, and
    // capstan records the rejection.
    env.write_config("reviews-vs.yaml", OVERSIZED_REGEX_VS)?;
    let nacks = wait_until("capstan to record the NACK", CONFIG_TIMEOUT, async || {
        let nacks: Value = capstan.monitoring_get("/debug/nacks").await?.json()?;
        let list = nacks.as_array().cloned().unwrap_or_default();
        ensure!(!list.is_empty(), "no NACK recorded yet");
        Ok(list)
    })
    .await
    .with_context(logs)?;
    ensure!(
        nacks.iter().all(|n| n["type"] == "rds"),
        "unexpected NACKs {nacks:?}"
    );
    ensure!(
        nacks[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("regex")),
        "NACK message does not name the regex: {nacks:?}"
    );
    let rejected = envoy.stats("rds.outbound_http.update_rejected").await?;
    ensure!(
        rejected.values().any(|v| *v >= 1),
        "Envoy reports no rejected RDS update: {rejected:?}"
    );
    let reply = proxy.upstream("reviews", "/", &[]).await?;
    ensure!(
        reply.version == "v1",
        "the previous routes no longer serve: {reply:?}"
    );
    let counted = capstan_metric(&capstan, "nacks_total").await?;
    ensure!(
        counted.get("{type=\"rds\"}") == Some(&1.0),
        "nack metric {counted:?}"
    );
    // Fixing the config is accepted again.
    let accepted_before = envoy.stats("rds.outbound_http.update_success").await?;
    std::fs::remove_file(env.config_dir.join("reviews-vs.yaml"))?;
    wait_until(
        "Envoy to accept the fixed routes",
        CONFIG_TIMEOUT,
        async || {
            let now = envoy.stats("rds.outbound_http.update_success").await?;
            ensure!(
                now.values().sum::<u64>() > accepted_before.values().sum::<u64>(),
                "not yet: {now:?}"
            );
            Ok(())
        },
    )
    .await
    .with_context(logs)?;

    // Reconnect: capstan restarts on the same port and config; Envoy reconnects.
    let pid = envoy.pid();
    capstan.restart().await?;
    wait_until("Envoy to reconnect", CONFIG_TIMEOUT, async || {
        let connected = capstan_metric(&capstan, "connected_proxies").await?;
        ensure!(
            connected.values().sum::<f64>() == 1.0,
            "connected {connected:?}"
        );
        let pushes = capstan_metric(&capstan, "pushes_total").await?;
        for t in ["cds", "lds"] {
            ensure!(
                pushes
                    .get(&format!("{{type=\"{t}\"}}"))
                    .is_some_and(|v| *v >= 1.0),
                "no {t} push yet: {pushes:?}"
            );
        }
        Ok(())
    })
    .await
    .with_context(logs)?;
    let resent = capstan_metric(&capstan, "pushed_resources_total").await?;
    let clusters_resent = resent.get("{type=\"cds\"}").copied().unwrap_or(-1.0);
    match mode {
        // Envoy told the new process which versions it holds: nothing is sent again.
        AdsMode::Delta => ensure!(
            clusters_resent == 0.0,
            "clusters sent again after reconnect: {resent:?}"
        ),
        // SotW has no such thing: the full set is sent again.
        AdsMode::Sotw => ensure!(
            clusters_resent >= 1.0,
            "SotW reconnect got no clusters: {resent:?}"
        ),
    }
    ensure!(envoy.pid() == pid, "Envoy restarted");
    let reply = proxy.upstream("reviews", "/", &[]).await?;
    ensure!(reply.version == "v1", "routing after reconnect: {reply:?}");
    // The one deliberate rejection is the only one.
    let rejected = envoy.stats("update_rejected").await?;
    let unexpected: Vec<_> = rejected
        .iter()
        .filter(|(name, count)| **count != 0 && !name.contains("rds.outbound_http"))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "Envoy rejected other updates: {unexpected:?}"
    );
    drop(upstreams);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sotw() -> anyhow::Result<()> {
    conformance("conformance_sotw", AdsMode::Sotw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_delta() -> anyhow::Result<()> {
    conformance("conformance_delta", AdsMode::Delta).await
}
