//! Operability views against real Envoys: one SotW and one Delta proxy on one capstan show up
//! in `/debug/syncz` with every type SYNCED, `capstan proxy-status` prints them, and
//! `/debug/config_dump?proxy=ID` lists what each is served. A proxy that goes away is no longer
//! listed.

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::fixtures::service_entry;
use capstan_e2e::http::{HttpClient, percent_encode};
use capstan_e2e::locate::{capstan_bin, envoy_bin};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, TestEnv};
use capstan_e2e::wait::wait_until;
use serde_json::Value;

const REVIEWS_CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const RATINGS_CLUSTER: &str = "outbound|9080||ratings.bookinfo.svc.cluster.local";
const SHOWN_TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];

/// Envoy rejects this route (the regex exceeds RE2's default program size).
const OVERSIZED_REGEX_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: '/(alpha|beta|gamma|delta){50}'}}]
    route: [{destination: {host: reviews}}]
";

fn bootstrap(mode: AdsMode, xds_port: u16, workload: &str) -> Bootstrap {
    let mut bootstrap = Bootstrap::new(mode, xds_port);
    bootstrap.workload = workload.to_string();
    bootstrap
}

/// The syncz entry of `node`, if listed.
fn entry<'a>(syncz: &'a Value, node: &str) -> Option<&'a Value> {
    syncz.as_array()?.iter().find(|e| e["node"] == node)
}

/// Runs `capstan proxy-status` against the monitoring port; returns its stdout.
async fn proxy_status(capstan: &Capstan, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(capstan_bin()?)
        .arg("proxy-status")
        .arg("--monitoring-addr")
        .arg(loopback(capstan.monitoring_port).to_string())
        .args(args)
        .output()
        .await
        .context("running capstan proxy-status")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "capstan proxy-status failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncz_proxy_status_and_config_dump() -> anyhow::Result<()> {
    let env = TestEnv::new("syncz")?;
    // No traffic is sent: the endpoints need not answer.
    env.write_config("reviews.yaml", &service_entry("reviews", 9))?;
    env.write_config("ratings.yaml", &service_entry("ratings", 9))?;
    let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
    let envoy_bin = envoy_bin()?;
    let sotw_boot = bootstrap(AdsMode::Sotw, capstan.xds_port, "sotw-0");
    let delta_boot = bootstrap(AdsMode::Delta, capstan.xds_port, "delta-0");
    let sotw = Envoy::start(&envoy_bin, &sotw_boot, &env.log_dir, "envoy-sotw").await?;
    let delta = Envoy::start(&envoy_bin, &delta_boot, &env.log_dir, "envoy-delta").await?;
    let logs = || format!("logs in {}", env.log_dir.display());
    for envoy in [&sotw, &delta] {
        envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(logs)?;
    }
    let proxies = [
        (sotw_boot.node_id(), "sotw", "sotw-0"),
        (delta_boot.node_id(), "delta", "delta-0"),
    ];

    let health = capstan.monitoring_get("/healthz").await?;
    ensure!(health.text() == "ok\n", "/healthz said {:?}", health.text());
    wait_until("capstan to be ready", CONFIG_TIMEOUT, async || {
        let ready = capstan.monitoring_get("/readyz").await?;
        ensure!(ready.text() == "ready\n", "/readyz said {:?}", ready.text());
        Ok(())
    })
    .await
    .with_context(logs)?;

    // Both proxies, every type acknowledged at the version sent.
    let syncz = wait_until("both proxies SYNCED in syncz", CONFIG_TIMEOUT, async || {
        let syncz: Value = capstan.monitoring_get("/debug/syncz").await?.json()?;
        for (node, protocol, pod) in &proxies {
            let e = entry(&syncz, node).with_context(|| format!("{node} not listed: {syncz}"))?;
            ensure!(e["protocol"] == *protocol, "protocol of {node}: {e}");
            ensure!(e["pod"] == *pod && e["namespace"] == "bookinfo", "{e}");
            for t in SHOWN_TYPES {
                let ty = &e["types"][t];
                ensure!(ty["status"] == "SYNCED", "{node} {t} not synced: {e}");
                ensure!(ty["sent"] == ty["acked"] && ty["sent"].is_u64(), "{e}");
            }
        }
        Ok(syncz)
    })
    .await
    .with_context(logs)?;
    let snapshot: Value = capstan.monitoring_get("/debug/snapshot").await?.json()?;
    for (node, _, _) in &proxies {
        let e = entry(&syncz, node).context("listed")?;
        ensure!(
            e["snapshot_version"] == snapshot["version"],
            "syncz reports snapshot version {} but the cache holds {}",
            e["snapshot_version"],
            snapshot["version"]
        );
        ensure!(
            e["proxy_version"]
                .as_str()
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())),
            "Envoy's build version not read from its node: {e}"
        );
        ensure!(e["types"]["cds"]["last_nack"].is_null(), "{e}");
    }

    // `capstan proxy-status`: a row per proxy, SYNCED in all four type columns.
    let table = proxy_status(&capstan, &[]).await?;
    let mut lines = table.lines();
    let header = lines.next().context("no header")?;
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["NAME", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION"],
        "header {header:?}"
    );
    for (node, _, _) in &proxies {
        let row = table
            .lines()
            .find(|l| l.starts_with(node.as_str()))
            .with_context(|| format!("no row for {node}:\n{table}"))?;
        ensure!(row.matches("SYNCED").count() == 4, "row {row:?}");
    }
    ensure!(lines.count() == 2, "one row per proxy:\n{table}");
    let json: Value = serde_json::from_str(&proxy_status(&capstan, &["-o", "json"]).await?)
        .context("proxy-status -o json")?;
    ensure!(json.as_array().map(Vec::len) == Some(2), "-o json: {json}");

    // config_dump: each proxy's clusters, endpoints, listener and routes.
    for (node, _, _) in &proxies {
        let path = format!("/debug/config_dump?proxy={}", percent_encode(node));
        let dump: Value = capstan.monitoring_get(&path).await?.json()?;
        ensure!(dump["node"] == node.as_str(), "{dump}");
        let names = |t: &str| -> Vec<String> {
            dump["types"][t]["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        };
        ensure!(
            names("cds") == [RATINGS_CLUSTER, REVIEWS_CLUSTER],
            "clusters {:?}",
            names("cds")
        );
        ensure!(names("eds") == names("cds"), "endpoints {:?}", names("eds"));
        ensure!(names("lds") == [OUTBOUND_LISTENER], "{:?}", names("lds"));
        let cluster = &dump["types"]["cds"]["resources"][0];
        ensure!(
            cluster["size"].as_u64().is_some_and(|s| s > 0)
                && cluster["version"].as_str().is_some_and(|v| v.len() == 16),
            "{cluster}"
        );
    }
    let monitoring = loopback(capstan.monitoring_port);
    let missing = HttpClient::new(monitoring)
        .get(
            &monitoring.to_string(),
            "/debug/config_dump?proxy=nobody",
            &[],
        )
        .await?;
    ensure!(missing.status == 404, "unknown proxy: {}", missing.status);

    // A route both proxies reject: RDS is NACKED with Envoy's message, the rest stays
    // SYNCED; fixing the config syncs it again.
    env.write_config("reviews-vs.yaml", OVERSIZED_REGEX_VS)?;
    wait_until("the NACK to show in syncz", CONFIG_TIMEOUT, async || {
        let syncz: Value = capstan.monitoring_get("/debug/syncz").await?.json()?;
        for (node, _, _) in &proxies {
            let e = entry(&syncz, node).with_context(|| format!("{node} not listed"))?;
            let rds = &e["types"]["rds"];
            ensure!(rds["status"] == "NACKED", "{node}: {rds}");
            ensure!(
                rds["last_nack"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("regex")),
                "{rds}"
            );
            ensure!(rds["last_nack"]["version"] == rds["sent"], "{rds}");
            ensure!(e["types"]["cds"]["status"] == "SYNCED", "{e}");
        }
        Ok(())
    })
    .await
    .with_context(logs)?;
    let table = proxy_status(&capstan, &[]).await?;
    ensure!(
        table.lines().skip(1).all(|l| l.contains("NACKED")),
        "NACKED not shown:\n{table}"
    );
    std::fs::remove_file(env.config_dir.join("reviews-vs.yaml"))?;
    wait_until("RDS to be SYNCED again", CONFIG_TIMEOUT, async || {
        let syncz: Value = capstan.monitoring_get("/debug/syncz").await?.json()?;
        for (node, _, _) in &proxies {
            let rds = &entry(&syncz, node).context("listed")?["types"]["rds"];
            ensure!(rds["status"] == "SYNCED", "{node}: {rds}");
            ensure!(!rds["last_nack"].is_null(), "the last NACK is kept: {rds}");
        }
        Ok(())
    })
    .await
    .with_context(logs)?;

    // The Delta proxy goes away: it is no longer listed; the SotW one still is.
    drop(delta);
    wait_until(
        "the stopped proxy to leave syncz",
        CONFIG_TIMEOUT,
        async || {
            let syncz: Value = capstan.monitoring_get("/debug/syncz").await?.json()?;
            ensure!(entry(&syncz, &proxies[1].0).is_none(), "still listed");
            ensure!(entry(&syncz, &proxies[0].0).is_some(), "sotw gone: {syncz}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    drop(sotw);
    Ok(())
}
