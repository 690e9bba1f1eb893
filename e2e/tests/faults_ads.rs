//! capstan's ADS server against hostile and buggy clients, each beside a well-behaved real
//! Envoy: while the fault goes on, a config change must still reach Envoy and route its
//! traffic, and capstan's memory must stay bounded (its RSS, from /proc, before and after).
//! The bad actors are raw gRPC clients ([`capstan_e2e::hostile_ads`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use capstan_e2e::envoy::{AdsMode, loopback};
use capstan_e2e::fixtures::reviews_vs_weighted;
use capstan_e2e::hostile_ads::{
    AdsClient, READING_WINDOW, delta_request, framed, grpc_message, nack_everything, node,
    subscribe_all,
};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, REVIEWS_VS_FILE, ReviewsMesh};
use capstan_e2e::transport::rss_kib;
use capstan_e2e::wait_until;
use capstan_xds::type_url::{CLUSTER, ENDPOINT};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tokio::task::JoinSet;
use tonic::Code;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const NO_HEADERS: &[(&str, &str)] = &[];

/// How much capstan's RSS may grow during a fault. Every stream's keep is capped (node fields
/// 1 KiB, 100,000 names a type, 1 MiB of unknown names, 4 KiB NACKs) and requests are at most
/// 4 MiB; unbounded, these faults pin gigabytes.
const GROWTH_LIMIT_KIB: u64 = 200 * 1024;

async fn start(name: &str) -> anyhow::Result<ReviewsMesh> {
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    let vs = reviews_vs_weighted(&[("v1", 100)]);
    let mut mesh = ReviewsMesh::start(
        name,
        &envoy_bin,
        Path::new(UPSTREAM_BIN),
        AdsMode::Delta,
        &vs,
    )
    .await?;
    mesh.wait_for_all(NO_HEADERS, "v1", 5).await?;
    Ok(mesh)
}

fn ads(mesh: &ReviewsMesh) -> SocketAddr {
    loopback(mesh.capstan.xds_port)
}

fn rss(mesh: &ReviewsMesh) -> anyhow::Result<u64> {
    rss_kib(mesh.capstan.process.pid()).context("capstan's RSS")
}

/// Sends every request to `version` and waits until Envoy routes them there.
async fn route_all_to(mesh: &mut ReviewsMesh, version: &str) -> anyhow::Result<()> {
    mesh.env
        .write_config(REVIEWS_VS_FILE, &reviews_vs_weighted(&[(version, 100)]))?;
    mesh.wait_for_all(NO_HEADERS, version, 5).await
}

fn ensure_bounded(before_kib: u64, mesh: &ReviewsMesh) -> anyhow::Result<()> {
    let after = rss(mesh)?;
    ensure!(
        after.saturating_sub(before_kib) < GROWTH_LIMIT_KIB,
        "capstan grew from {before_kib} KiB to {after} KiB"
    );
    Ok(())
}

/// `fault` to its end, failing (instead of hanging) if capstan never ends it. Bounds only a
/// hang; how long it took is not checked.
async fn within<T>(
    what: &str,
    fault: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(CONFIG_TIMEOUT * 3, fault)
        .await
        .with_context(|| format!("{what} never ended"))?
}

fn expect_code(status: &tonic::Status, code: Code, words: &str) -> anyhow::Result<()> {
    ensure!(
        status.code() == code && grpc_message(status).contains(words),
        "expected {code:?} saying {words:?}, got {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_node_ids_and_metadata() -> anyhow::Result<()> {
    let mut mesh = start("faults_ads_oversized_node").await?;
    let (before, server) = (rss(&mesh)?, ads(&mesh));
    let log = mesh.capstan.process.log_path().to_path_buf();
    let log_before = std::fs::metadata(&log)?.len();
    let mut clients = JoinSet::new();
    for i in 0..8 {
        // A 3 MiB node id: refused on the first request.
        clients.spawn(async move {
            let mut first = delta_request(CLUSTER, &[], "");
            first.node = node(&format!("huge-{i}\n{}", "x".repeat(3 << 20)));
            let mut client = AdsClient::delta(server, READING_WINDOW, framed(&[&first])).await?;
            expect_code(
                &client.final_status().await,
                Code::InvalidArgument,
                "node.id",
            )
        });
        // 3 MiB of metadata capstan does not read, then thousands of requests for a type it
        // does not serve: served, then cut off, logged once.
        clients.spawn(async move {
            let mut first = delta_request("type.googleapis.com/not.Served", &[], "");
            first.node = Some(Node {
                id: format!("sidecar~10.0.0.{i}~meta.ns~ns.svc.cluster.local"),
                metadata: Some(Struct {
                    fields: [(
                        "ANNOTATIONS".to_string(),
                        Value {
                            kind: Some(Kind::StringValue("a".repeat(3 << 20))),
                        },
                    )]
                    .into(),
                }),
                ..Default::default()
            });
            let mut client = AdsClient::delta(server, READING_WINDOW, framed(&[&first])).await?;
            let tiny = delta_request("type.googleapis.com/not.Served", &[], "");
            client.send(framed(&vec![&tiny; 5_000]))?;
            expect_code(
                &client.final_status().await,
                Code::InvalidArgument,
                "does not serve",
            )
        });
    }
    route_all_to(&mut mesh, "v2").await?;
    within("the oversized clients' streams", async {
        while let Some(done) = clients.join_next().await {
            done??;
        }
        Ok(())
    })
    .await?;
    route_all_to(&mut mesh, "v3").await?;
    let logged = std::fs::metadata(&log)?.len() - log_before;
    ensure!(
        logged < 1 << 20,
        "capstan logged {logged} bytes about 16 clients"
    );
    ensure_bounded(before, &mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_name_delta_subscription_and_unsubscription() -> anyhow::Result<()> {
    let mut mesh = start("faults_ads_million_names").await?;
    let (before, server) = (rss(&mesh)?, ads(&mesh));
    let task = tokio::spawn(async move {
        let chunk = 100_000;
        let names = |round: usize| -> Vec<String> {
            (round * chunk..(round + 1) * chunk)
                .map(|i| format!("m{i:x}"))
                .collect()
        };
        let mut first = delta_request(ENDPOINT, &names(0), "");
        first.node = node("sidecar~10.0.0.9~names.ns~ns.svc.cluster.local");
        let mut client = AdsClient::delta(server, READING_WINDOW, framed(&[&first])).await?;
        // A million names subscribed and unsubscribed, 100,000 at a time: within the limit,
        // each unsubscription one pass.
        let mut unsubscribe = delta_request(ENDPOINT, &[], "");
        unsubscribe.resource_names_unsubscribe = names(0);
        client.send(framed(&[&unsubscribe]))?;
        for round in 1..10 {
            let mut swap = delta_request(ENDPOINT, &names(round), "");
            client.send(framed(&[&swap]))?;
            swap.resource_names_unsubscribe = std::mem::take(&mut swap.resource_names_subscribe);
            client.send(framed(&[&swap]))?;
        }
        // Then a million held at once: refused past the limit.
        for round in 0..10 {
            client.send(framed(&[&delta_request(ENDPOINT, &names(round), "")]))?;
        }
        expect_code(
            &client.final_status().await,
            Code::ResourceExhausted,
            "names",
        )
    });
    route_all_to(&mut mesh, "v2").await?;
    within("the million-name stream", async { task.await? }).await?;
    route_all_to(&mut mesh, "v3").await?;
    ensure_bounded(before, &mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_storm_from_200_proxies() -> anyhow::Result<()> {
    let mut mesh = start("faults_ads_nack_storm").await?;
    let (before, server) = (rss(&mesh)?, ads(&mesh));
    let nacked = Arc::new(tokio::sync::Semaphore::new(0));
    let mut clients = JoinSet::new();
    for i in 0..200 {
        let nacked = nacked.clone();
        clients.spawn(async move {
            let id = format!(
                "sidecar~10.1.{}.{}~nack-{i}.ns~ns.svc.cluster.local",
                i / 250,
                i % 250
            );
            let reason = format!("nack-{i}: {}", "r".repeat(64 * 1024));
            nack_everything(server, &id, &reason, || nacked.add_permits(1)).await
        });
    }
    // Every proxy rejected its first response of each type before the change.
    within("the first NACK of every proxy", async {
        nacked.acquire_many(200 * 4).await?.forget();
        Ok(())
    })
    .await?;
    route_all_to(&mut mesh, "v2").await?;
    let nacks = mesh.capstan.monitoring_get("/debug/nacks").await?;
    ensure!(
        nacks.body.len() < 2 << 20,
        "/debug/nacks holds {} bytes",
        nacks.body.len()
    );
    ensure!(
        String::from_utf8_lossy(&nacks.body).contains("nack-"),
        "the NACKs are recorded"
    );
    ensure_bounded(before, &mesh)?;
    clients.abort_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read() -> anyhow::Result<()> {
    let mut mesh = start("faults_ads_never_read").await?;
    let (before, server) = (rss(&mesh)?, ads(&mesh));
    let mut stuck = Vec::new();
    for i in 0..100 {
        // A 1 KiB window, never read: capstan's first response already fills it.
        let id = format!("sidecar~10.2.0.{i}~stuck.ns~ns.svc.cluster.local");
        stuck.push(AdsClient::delta(server, 1024, subscribe_all(&id)).await?);
    }
    for version in ["v2", "v3"] {
        route_all_to(&mut mesh, version).await?;
    }
    ensure_bounded(before, &mesh)?;
    drop(stuck);
    Ok(())
}

/// capstan's count of open Delta streams, from its metrics.
async fn delta_streams(mesh: &ReviewsMesh) -> anyhow::Result<u64> {
    let metrics = mesh.capstan.monitoring_get("/metrics").await?;
    let text = String::from_utf8_lossy(&metrics.body);
    text.lines()
        .find_map(|l| l.strip_prefix("capstan_xds_connected_proxies{protocol=\"delta\"} "))
        .and_then(|n| n.trim().parse().ok())
        .context("capstan_xds_connected_proxies{protocol=\"delta\"} in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnects_mid_response() -> anyhow::Result<()> {
    let mut mesh = start("faults_ads_disconnects").await?;
    let (before, server) = (rss(&mesh)?, ads(&mesh));
    for round in 0..2 {
        let mut clients = JoinSet::new();
        for i in 0..200 {
            clients.spawn(async move {
                let id = format!("sidecar~10.3.{round}.{i}~gone.ns~ns.svc.cluster.local");
                // A small window: each response is still being written when the client goes.
                let mut client = AdsClient::delta(server, 512, subscribe_all(&id)).await?;
                if i % 2 == 0 {
                    let _ = client.delta_response().await;
                }
                drop(client);
                anyhow::Ok(())
            });
        }
        while let Some(done) = clients.join_next().await {
            done??;
        }
        route_all_to(&mut mesh, ["v2", "v3"][round]).await?;
    }
    // Every stream whose client went away ended: only Envoy's is left.
    wait_until(
        "only Envoy's Delta stream open",
        CONFIG_TIMEOUT,
        async || {
            let open = delta_streams(&mesh).await?;
            ensure!(open == 1, "{open} Delta streams open");
            Ok(())
        },
    )
    .await?;
    ensure_bounded(before, &mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_of_5000_delta_proxies_after_restart() -> anyhow::Result<()> {
    const PROXIES: usize = 5_000;
    let mut mesh = start("faults_ads_reconnect_storm").await?;
    let server = ads(&mesh);
    let clusters =
        |response: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse| {
            let mut names: Vec<String> =
                response.resources.iter().map(|r| r.name.clone()).collect();
            names.sort();
            names
        };
    let mut probe = AdsClient::delta(server, READING_WINDOW, subscribe_all("probe")).await?;
    let expected = loop {
        let response = probe.delta_response().await?.context("a response")?;
        if response.type_url == CLUSTER {
            break clusters(&response);
        }
    };
    ensure!(!expected.is_empty(), "the mesh has clusters");
    drop(probe);

    mesh.capstan.restart().await?;
    let before = rss(&mesh)?;
    let expected = Arc::new(expected);
    let mut proxies = JoinSet::new();
    for i in 0..PROXIES {
        let expected = expected.clone();
        proxies.spawn(async move {
            let id = format!(
                "sidecar~10.4.{}.{}~storm-{i}.ns~ns.svc.cluster.local",
                i / 250,
                i % 250
            );
            let mut first = delta_request(CLUSTER, &["*".to_string()], "");
            first.node = node(&id);
            // Like Envoy, retry until the restarted capstan accepts the connection.
            let mut attempts = 0;
            let mut client = loop {
                match AdsClient::delta(server, READING_WINDOW, framed(&[&first])).await {
                    Ok(client) => break client,
                    Err(e) if attempts == 300 => return Err(e.context(format!("proxy {i}"))),
                    Err(_) => attempts += 1,
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            let response = client.delta_response().await?.context("a response")?;
            ensure!(response.type_url == CLUSTER, "{}", response.type_url);
            ensure!(
                clusters(&response) == *expected,
                "proxy {i} got {:?}",
                clusters(&response)
            );
            anyhow::Ok(client)
        });
    }
    let synced = within("the resync of every proxy", async {
        let mut synced = Vec::with_capacity(PROXIES);
        while let Some(done) = proxies.join_next().await {
            synced.push(done??);
        }
        Ok(synced)
    })
    .await?;
    ensure!(synced.len() == PROXIES);
    route_all_to(&mut mesh, "v2").await?;
    ensure_bounded(before, &mesh)?;
    drop(synced);
    Ok(())
}
