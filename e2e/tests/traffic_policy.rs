//! DestinationRule traffic policy through capstan and a real Envoy, proven by real requests:
//! circuit breaking, outlier detection, consistent hashing, the simple load balancers in
//! Envoy's config, TLS origination (SIMPLE and MUTUAL) to TLS upstreams, and the PROXY
//! protocol header.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use capstan_e2e::envoy::AdsMode;
use capstan_e2e::fixtures::{REVIEWS_HOST, reviews_vs_weighted};
use capstan_e2e::http::{HttpClient, HttpResponse};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, REVIEWS_VS_FILE, ReviewsMesh};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};
use capstan_e2e::wait_until;
use hyper::StatusCode;
use serde_json::Value;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const DR_FILE: &str = "reviews-dr.yaml";

async fn start(name: &str, vs: &str) -> anyhow::Result<ReviewsMesh> {
    let envoy_bin = capstan_e2e::locate::envoy_bin()?;
    ReviewsMesh::start(name, &envoy_bin, Path::new(UPSTREAM_BIN), AdsMode::Sotw, vs).await
}

/// A DestinationRule for reviews with subsets v1..v3, `policy` as its top-level
/// `trafficPolicy` (flow YAML) and `subset_policies` per subset name.
fn reviews_dr(policy: &str, subset_policies: &[(&str, &str)]) -> String {
    let mut subsets = String::new();
    for v in ["v1", "v2", "v3"] {
        subsets.push_str(&format!("  - name: {v}\n    labels: {{version: {v}}}\n"));
        if let Some((_, p)) = subset_policies.iter().find(|(s, _)| *s == v) {
            subsets.push_str(&format!("    trafficPolicy: {p}\n"));
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: {REVIEWS_HOST}
  trafficPolicy: {policy}
  subsets:
{subsets}"
    )
}

/// A VirtualService sending all reviews traffic to the whole service (no subset): one
/// destination, every endpoint.
fn reviews_vs_whole() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{REVIEWS_HOST}]
  http:
  - route:
    - destination: {{host: {REVIEWS_HOST}}}
"
    )
}

fn cluster_name(subset: &str, host: &str) -> String {
    format!("outbound|9080|{subset}|{host}")
}

/// The dynamic clusters of a config dump, by name.
fn clusters(dump: &Value) -> BTreeMap<String, Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["dynamic_active_clusters"].as_array())
        .flatten()
        .filter_map(|c| {
            let cluster = c["cluster"].clone();
            Some((cluster["name"].as_str()?.to_string(), cluster))
        })
        .collect()
}

/// The routes of every dynamic route configuration of a config dump.
fn routes(dump: &Value) -> Vec<Value> {
    capstan_e2e::envoy::dynamic_virtual_hosts(dump)
        .filter_map(|vh| vh["routes"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// Waits until Envoy holds cluster `name` and `check` accepts it; returns it.
async fn wait_cluster(
    mesh: &ReviewsMesh,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("cluster {name} with {what}"),
        CONFIG_TIMEOUT,
        async || {
            let dump = mesh.envoy.config_dump(false).await?;
            let found = clusters(&dump);
            let cluster = found
                .get(name)
                .with_context(|| format!("no cluster {name} (have {:?})", found.keys()))?;
            ensure!(check(cluster), "cluster {name} lacks {what}: {cluster}");
            Ok(cluster.clone())
        },
    )
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))
}

/// One request for reviews through Envoy on a connection of its own.
async fn request(addr: SocketAddr, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    HttpClient::new(addr)
        .get(REVIEWS_HOST, "/reviews/1", headers)
        .await
}

/// Circuit breaking: one connection and one pending request allowed to a slow v1; of many
/// concurrent requests, the overflow is answered by Envoy itself with 503 and
/// `x-envoy-overloaded: true`, and never reaches v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_overflow_with_503_overloaded() -> anyhow::Result<()> {
    let mut mesh = start(
        "connection_pool_limits_overflow_with_503_overloaded",
        &reviews_vs_weighted(&[("v1", 100)]),
    )
    .await?;
    mesh.env.write_config(
        DR_FILE,
        &reviews_dr(
            "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}",
            &[],
        ),
    )?;
    let v1 = cluster_name("v1", REVIEWS_HOST);
    let cluster = wait_cluster(&mesh, &v1, "maxConnections 1", |c| {
        c["circuit_breakers"]["thresholds"][0]["max_connections"] == 1
    })
    .await?;
    ensure!(
        cluster["circuit_breakers"]["thresholds"][0]["max_pending_requests"] == 1,
        "pending requests not limited: {cluster}"
    );
    mesh.wait_for_all(&[], "v1", 5).await?;

    let before = mesh.upstreams.count("reviews", "v1").await?;
    let addr = mesh.proxy.addr();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move { request(addr, &[("x-upstream-delay-ms", "1500")]).await })
        })
        .collect();
    let mut ok = 0u64;
    let mut overloaded = 0u64;
    let mut other = Vec::new();
    for task in tasks {
        let response = task.await??;
        let flagged = response
            .headers
            .get("x-envoy-overloaded")
            .is_some_and(|v| v == "true");
        match response.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE if flagged => overloaded += 1,
            status => other.push((status, response.text())),
        }
    }
    let reached = mesh.upstreams.count("reviews", "v1").await? - before;
    ensure!(other.is_empty(), "unexpected answers: {other:?}");
    ensure!(
        ok >= 1 && overloaded >= 1,
        "expected some 200s and some 503 overloaded, got {ok} OK and {overloaded} overloaded"
    );
    ensure!(
        reached == ok,
        "v1 answered {reached} requests, but {ok} were answered OK: the shed ones reached it"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// The reviews mesh with a round-robin rule ejecting an endpoint after one error for 10 s
/// (`more`: further `outlierDetection` fields), once Envoy holds the whole service's cluster
/// with it (returned, as Envoy dumps it) and all three versions answer.
async fn outlier_mesh(name: &str, more: &str) -> anyhow::Result<(ReviewsMesh, Value)> {
    let mut mesh = start(name, &reviews_vs_whole()).await?;
    mesh.env.write_config(
        DR_FILE,
        &reviews_dr(
            &format!(
                "{{loadBalancer: {{simple: ROUND_ROBIN}}, outlierDetection: \
                 {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 10s, \
                 maxEjectionPercent: 100{more}}}}}"
            ),
            &[],
        ),
    )?;
    let whole = cluster_name("", REVIEWS_HOST);
    let cluster = wait_cluster(&mesh, &whole, "outlier detection", |c| {
        c["outlier_detection"]["consecutive_5xx"] == 1
    })
    .await?;
    wait_until("all three versions answering", CONFIG_TIMEOUT, async || {
        let versions = mesh.versions(&[], 12).await?;
        ensure!(versions.len() == 3, "{versions:?}");
        Ok(())
    })
    .await?;
    Ok((mesh, cluster))
}

/// Outlier detection: v1 made to fail is ejected after one 5xx (requests stop reaching it),
/// and once it recovers and the ejection time has passed it gets traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() -> anyhow::Result<()> {
    let (mut mesh, cluster) = outlier_mesh(
        "outlier_detection_ejects_a_failing_endpoint_and_readmits_it",
        "",
    )
    .await?;
    ensure!(
        cluster["outlier_detection"]["enforcing_consecutive_5xx"] == 100
            && cluster["common_lb_config"]["healthy_panic_threshold"].is_object(),
        "outlier detection not as istiod sets it: {cluster}"
    );

    let before_failing = mesh.upstreams.count("reviews", "v1").await?;
    mesh.upstreams.fail("reviews", "v1", 503).await?;
    // Requests reach v1 and fail (Envoy's default retries send them elsewhere), until Envoy
    // ejects it; then requests go only to v2 and v3.
    wait_ejection(&mesh, "ejections_enforced_consecutive_5xx").await?;
    ensure!(
        mesh.upstreams.count("reviews", "v1").await? > before_failing,
        "v1 got no request while failing"
    );
    let ejected_count = mesh.upstreams.count("reviews", "v1").await?;
    let versions = mesh.versions(&[], 30).await?;
    ensure!(
        versions.keys().all(|v| v == "v2" || v == "v3"),
        "the ejected v1 still answered: {versions:?}"
    );
    let after = mesh.upstreams.count("reviews", "v1").await?;
    ensure!(
        after == ejected_count,
        "requests still reached the ejected v1 ({ejected_count} before 30 requests, {after} after)"
    );
    // Recovered, and after the ejection time, v1 gets traffic again.
    mesh.upstreams.recover("reviews", "v1").await?;
    let upstreams = &mesh.upstreams;
    let proxy = &mut mesh.proxy;
    wait_until(
        "v1 readmitted after its ejection time",
        std::time::Duration::from_secs(40),
        async || {
            proxy.reviews_versions(&[], 6).await?;
            let now = upstreams.count("reviews", "v1").await?;
            ensure!(now > after, "v1 still at {now} requests");
            Ok(())
        },
    )
    .await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Sends requests to reviews until Envoy counts an ejection from its whole cluster in
/// outlier-detection counter `counter`.
async fn wait_ejection(mesh: &ReviewsMesh, counter: &str) -> anyhow::Result<()> {
    let addr = mesh.proxy.addr();
    let pattern = format!("outbound.9080..reviews.*outlier_detection.{counter}");
    wait_until(
        &format!("an ejection ({counter})"),
        CONFIG_TIMEOUT,
        async || {
            for _ in 0..10 {
                request(addr, &[]).await?;
            }
            let stats = mesh.envoy.stats(&pattern).await?;
            ensure!(
                stats.values().any(|n| *n >= 1),
                "no ejection yet: {stats:?}"
            );
            Ok(())
        },
    )
    .await
}

/// `outlierDetectionHttpErrorCodes`: a code outside 5xx (429) that the rule names counts as
/// an error, so v1 answering it is ejected as one answering 503 would be (Envoy's default
/// counts 5xx only: without the codes v1 would keep its share of the 429s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_counts_the_codes_the_rule_names_as_errors() -> anyhow::Result<()> {
    let (mut mesh, cluster) = outlier_mesh(
        "outlier_detection_counts_the_codes_the_rule_names_as_errors",
        ", outlierDetectionHttpErrorCodes: [429]",
    )
    .await?;
    let options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let matcher = &cluster["typed_extension_protocol_options"][options]["outlier_detection"];
    ensure!(
        matcher.to_string().contains("429"),
        "no error matcher naming 429: {cluster}"
    );

    mesh.upstreams.fail("reviews", "v1", 429).await?;
    wait_ejection(&mesh, "ejections_enforced_total").await?;
    let versions = mesh.versions(&[], 30).await?;
    ensure!(
        versions.keys().all(|v| v == "v2" || v == "v3"),
        "the ejected v1 still answered: {versions:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Consistent hash on a header: one value always reaches the same endpoint, different values
/// spread over several; through a VirtualService's route, and, once it is gone, through the
/// service's default route, which takes the rule's hash as istiod's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_sticks_to_one_endpoint() -> anyhow::Result<()> {
    let mut mesh = start(
        "consistent_hash_on_a_header_sticks_to_one_endpoint",
        &reviews_vs_whole(),
    )
    .await?;
    mesh.env.write_config(
        DR_FILE,
        &reviews_dr(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            &[],
        ),
    )?;
    let whole = cluster_name("", REVIEWS_HOST);
    wait_cluster(&mesh, &whole, "RING_HASH", |c| {
        c["lb_policy"] == "RING_HASH"
    })
    .await?;
    wait_hashed_route(&mesh, &whole, "http[0]").await?;
    sticks_per_user(&mut mesh).await?;

    std::fs::remove_file(mesh.env.config_dir.join(REVIEWS_VS_FILE))?;
    wait_hashed_route(&mesh, &whole, "default").await?;
    sticks_per_user(&mut mesh).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A split between two destinations balanced by consistent hash hashes on their key, as
/// istiod's: each user sticks to one endpoint per destination (at most two of the three),
/// where without the key the ring picks at random on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_between_hashed_destinations_keeps_each_user_on_one_endpoint_of_each()
-> anyhow::Result<()> {
    let split = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{REVIEWS_HOST}]
  http:
  - route:
    - {{destination: {{host: {REVIEWS_HOST}, subset: all}}, weight: 50}}
    - {{destination: {{host: {REVIEWS_HOST}, subset: v3}}, weight: 50}}
"
    );
    let mut mesh = start(
        "a_split_between_hashed_destinations_keeps_each_user_on_one_endpoint_of_each",
        &split,
    )
    .await?;
    mesh.env.write_config(
        DR_FILE,
        &format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: {REVIEWS_HOST}
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
  subsets:
  - {{name: all, labels: {{app: reviews}}}}
  - {{name: v3, labels: {{version: v3}}}}
"
        ),
    )?;
    let all = cluster_name("all", REVIEWS_HOST);
    wait_cluster(&mesh, &all, "RING_HASH", |c| c["lb_policy"] == "RING_HASH").await?;
    wait_until("the split hashing on x-user", CONFIG_TIMEOUT, async || {
        let dump = mesh.envoy.config_dump(false).await?;
        let hashed = routes(&dump).into_iter().any(|r| {
            r["route"]["weighted_clusters"]["clusters"][0]["name"] == all.as_str()
                && r["route"]["hash_policy"][0]["header"]["header_name"] == "x-user"
        });
        ensure!(hashed, "no split to {all} hashing on x-user");
        Ok(())
    })
    .await?;
    for user in ["alice", "bob", "carol", "dave"] {
        let versions = mesh.versions(&[("x-user", user)], 25).await?;
        ensure!(
            versions.len() <= 2,
            "x-user: {user} reached {versions:?}: more than one endpoint per destination"
        );
    }
    let mut reached = BTreeSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        reached.extend(mesh.versions(&[("x-user", &user)], 4).await?.into_keys());
    }
    ensure!(
        reached.len() == 3,
        "30 different users reached only {reached:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Waits for the route `name` to `cluster` hashing on `x-user` in Envoy's config.
async fn wait_hashed_route(mesh: &ReviewsMesh, cluster: &str, name: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("route {name} hashing on x-user"),
        CONFIG_TIMEOUT,
        async || {
            let dump = mesh.envoy.config_dump(false).await?;
            let hashed = routes(&dump).into_iter().any(|r| {
                r["name"] == name
                    && r["route"]["cluster"] == cluster
                    && r["route"]["hash_policy"][0]["header"]["header_name"] == "x-user"
            });
            ensure!(hashed, "no route {name} to {cluster} hashes on x-user");
            Ok(())
        },
    )
    .await
}

/// One `x-user` value always reaches one endpoint; 30 values reach more than one.
async fn sticks_per_user(mesh: &mut ReviewsMesh) -> anyhow::Result<()> {
    for user in ["alice", "bob", "carol", "dave"] {
        let versions = mesh.versions(&[("x-user", user)], 25).await?;
        ensure!(
            versions.len() == 1,
            "x-user: {user} reached several endpoints: {versions:?}"
        );
    }
    let mut reached = BTreeSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let versions = mesh.versions(&[("x-user", &user)], 3).await?;
        ensure!(versions.len() == 1, "x-user: {user}: {versions:?}");
        reached.extend(versions.into_keys());
    }
    ensure!(
        reached.len() > 1,
        "30 different users all reached {reached:?}"
    );
    Ok(())
}

/// The simple load balancers, their slow start (`warmup`) and the retry budget land in
/// Envoy's clusters, merged per subset as istiod merges:
/// the top level's for the whole service, a subset's own where it has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_load_balancers_reach_envoy_per_subset() -> anyhow::Result<()> {
    let mut mesh = start(
        "simple_load_balancers_reach_envoy_per_subset",
        &reviews_vs_whole(),
    )
    .await?;
    mesh.env.write_config(
        DR_FILE,
        &reviews_dr(
            "{loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 30s}, \
             retryBudget: {percent: 25, minRetryConcurrency: 2}}",
            &[
                ("v1", "{loadBalancer: {simple: RANDOM}}"),
                (
                    "v2",
                    "{loadBalancer: {simple: ROUND_ROBIN, \
                     warmup: {duration: 20s, minimumPercent: 5, aggression: 1.5}}}",
                ),
            ],
        ),
    )?;
    let v1 = cluster_name("v1", REVIEWS_HOST);
    wait_cluster(&mesh, &v1, "RANDOM", |c| c["lb_policy"] == "RANDOM").await?;
    let dump = mesh.envoy.config_dump(false).await?;
    let found = clusters(&dump);
    let policy = |subset: &str| {
        let name = cluster_name(subset, REVIEWS_HOST);
        found
            .get(&name)
            .map(|c| c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN").to_string())
    };
    ensure!(
        policy("").as_deref() == Some("LEAST_REQUEST"),
        "whole service: {:?}",
        policy("")
    );
    ensure!(
        policy("v2").as_deref() == Some("ROUND_ROBIN"),
        "v2: {:?}",
        policy("v2")
    );
    ensure!(
        policy("v3").as_deref() == Some("LEAST_REQUEST"),
        "v3 (inherits the top level): {:?}",
        policy("v3")
    );
    // Slow start (warmup) and the retry budget, as Envoy holds them.
    let whole = &found[&cluster_name("", REVIEWS_HOST)];
    ensure!(
        whole["least_request_lb_config"]["slow_start_config"]["slow_start_window"] == "30s",
        "whole service's slow start: {whole}"
    );
    let budget = &whole["circuit_breakers"]["thresholds"][0]["retry_budget"];
    ensure!(
        budget["budget_percent"]["value"] == 25.0 && budget["min_retry_concurrency"] == 2,
        "retry budget: {budget}"
    );
    let v2 = &found[&cluster_name("v2", REVIEWS_HOST)];
    let slow_start = &v2["round_robin_lb_config"]["slow_start_config"];
    ensure!(
        slow_start["slow_start_window"] == "20s"
            && slow_start["min_weight_percent"]["value"] == 5.0
            && slow_start["aggression"]["default_value"] == 1.5,
        "v2's slow start: {v2}"
    );
    ensure!(
        v2["circuit_breakers"]["thresholds"][0]["retry_budget"]["budget_percent"]["value"] == 25.0,
        "v2 keeps the destination's retry budget: {v2}"
    );
    // Traffic still flows over every endpoint of the least-request cluster.
    let versions = mesh.versions(&[], 30).await?;
    ensure!(versions.len() == 3, "{versions:?}");
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A throwaway CA writing PEM files.
struct Ca {
    cert: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem())?;
        Ok(Self {
            cert: path,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A certificate for `names` (server and client use), as PEM files `<file>.pem`, `-key.pem`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, file);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

fn host(name: &str) -> String {
    format!("{name}.bookinfo.svc.cluster.local")
}

/// A STATIC ServiceEntry `name` with one endpoint on 127.0.0.1:`port`, and, if `tls` is
/// given (flow YAML), a DestinationRule originating TLS to it.
fn tls_service(name: &str, port: u16, tls: Option<&str>) -> String {
    let host = host(name);
    let mut out = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    );
    if let Some(tls) = tls {
        out.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  host: {host}
  trafficPolicy: {{tls: {tls}}}
"
        ));
    }
    out
}

/// A server that answers one HTTP request per connection with the first line the connection
/// began with (a PROXY protocol header, when the client sent one).
async fn first_line_server() -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // The PROXY line and the request's headers; a request has no body here.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let first = seen.split(|b| *b == b'\n').next().unwrap_or_default();
                let body = String::from_utf8_lossy(first).trim_end().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

/// `proxyProtocol`: Envoy starts each connection to the destination with a PROXY protocol
/// (v1) header naming the client, which the upstream reads before the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_heads_each_upstream_connection() -> anyhow::Result<()> {
    let mesh = start(
        "proxy_protocol_heads_each_upstream_connection",
        &reviews_vs_whole(),
    )
    .await?;
    let port = first_line_server().await?;
    let host = host("legacy");
    mesh.env.write_config(
        "legacy.yaml",
        &format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: bookinfo}}
spec:
  host: {host}
  trafficPolicy: {{proxyProtocol: {{version: V1}}}}
",
            tls_service("legacy", port, None)
        ),
    )?;
    let addr = mesh.proxy.addr();
    let line = wait_until(
        "the upstream reading a PROXY header",
        CONFIG_TIMEOUT,
        async || {
            let response = HttpClient::new(addr).get(&host, "/", &[]).await?;
            let text = response.text();
            ensure!(
                response.status == StatusCode::OK,
                "{} {text}",
                response.status
            );
            ensure!(
                text.starts_with("PROXY "),
                "no PROXY header first: {text:?}"
            );
            Ok(text)
        },
    )
    .await
    .with_context(|| format!("logs in {}", mesh.env.log_dir.display()))?;
    // v1: `PROXY TCP4 <client> <address it dialled> <client port> <port it dialled>`: the
    // test's own connection to Envoy's listener.
    let fields: Vec<&str> = line.split(' ').collect();
    ensure!(
        fields.len() == 6 && fields[1] == "TCP4" && fields[2] == "127.0.0.1",
        "{line:?}"
    );
    ensure!(
        fields[5] == addr.port().to_string(),
        "the port the client dialled, Envoy's: {line:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// TLS origination: the client speaks plain HTTP to Envoy, which speaks TLS to the upstream.
/// SIMPLE verifies the server with `caCertificates` (a rule trusting another CA fails, and so
/// does plain text); MUTUAL presents the client certificate an mTLS upstream requires (the
/// same upstream refuses Envoy without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_simple_and_mutual() -> anyhow::Result<()> {
    let mesh = start("tls_origination_simple_and_mutual", &reviews_vs_whole()).await?;
    let dir = mesh.env.log_dir.join("pki");
    std::fs::create_dir_all(&dir)?;
    let ca = Ca::new(&dir, "mesh")?;
    let rogue = Ca::new(&dir, "rogue")?;
    let names: Vec<String> = ["secure", "untrusted", "mutual", "mutual-nocert", "plain"]
        .iter()
        .map(|n| host(n))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (server_cert, server_key) = ca.issue(&dir, "server", &name_refs)?;
    let (client_cert, client_key) = ca.issue(&dir, "client", &["envoy.client"])?;
    let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let bin = Path::new(UPSTREAM_BIN);
    let tls = UpstreamTls {
        cert: server_cert.clone(),
        key: server_key.clone(),
        client_ca: None,
    };
    let server_only = Upstreams::start_with_tls(
        bin,
        &[],
        &[("secure", "v1", any)],
        Some(&tls),
        &mesh.env.log_dir,
        "tls-upstream",
    )
    .await?;
    let mtls = UpstreamTls {
        client_ca: Some(ca.cert.clone()),
        ..tls
    };
    let client_auth = Upstreams::start_with_tls(
        bin,
        &[],
        &[("mutual", "v1", any)],
        Some(&mtls),
        &mesh.env.log_dir,
        "mtls-upstream",
    )
    .await?;
    let secure_port = server_only.port("secure", "v1")?;
    let mutual_port = client_auth.port("mutual", "v1")?;
    let (ca_path, rogue_path) = (ca.cert.display(), rogue.cert.display());
    let files = [
        (
            "secure",
            secure_port,
            Some(format!("{{mode: SIMPLE, caCertificates: {ca_path}}}")),
        ),
        (
            "untrusted",
            secure_port,
            Some(format!("{{mode: SIMPLE, caCertificates: {rogue_path}}}")),
        ),
        ("plain", secure_port, None),
        (
            "mutual",
            mutual_port,
            Some(format!(
                "{{mode: MUTUAL, caCertificates: {ca_path}, clientCertificate: {}, \
                 privateKey: {}}}",
                client_cert.display(),
                client_key.display()
            )),
        ),
        (
            "mutual-nocert",
            mutual_port,
            Some(format!("{{mode: SIMPLE, caCertificates: {ca_path}}}")),
        ),
    ];
    for (name, port, tls) in &files {
        mesh.env.write_config(
            &format!("{name}.yaml"),
            &tls_service(name, *port, tls.as_deref()),
        )?;
    }
    for (name, _, tls) in &files {
        let cluster = cluster_name("", &host(name));
        let originates = tls.is_some();
        wait_cluster(&mesh, &cluster, "its transport socket", |c| {
            c["transport_socket"].is_object() == originates
        })
        .await?;
    }

    let addr = mesh.proxy.addr();
    let get = |name: &'static str| async move {
        HttpClient::new(addr)
            .get(&host(name), "/tls", &[])
            .await
            .with_context(|| format!("GET for {name}"))
    };
    let mut answers = BTreeMap::new();
    wait_until("SIMPLE and MUTUAL answering", CONFIG_TIMEOUT, async || {
        for name in ["secure", "mutual"] {
            let reply = get(name).await?.upstream_reply()?;
            ensure!(
                (reply.service.as_str(), reply.version.as_str()) == (name, "v1"),
                "{name}: {reply:?}"
            );
            answers.insert(name, reply);
        }
        Ok(())
    })
    .await?;
    ensure!(
        answers["secure"].path == "/tls" && answers["mutual"].path == "/tls",
        "{answers:?}"
    );
    // Refused: Envoy answers for the upstream (503 when the handshake fails, 502 when the
    // TLS server cannot make sense of plain text), never with the upstream's reply.
    for name in ["untrusted", "plain", "mutual-nocert"] {
        let response = get(name).await?;
        let text = response.text();
        ensure!(
            matches!(
                response.status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
            ) && text.contains("upstream connect error or disconnect/reset"),
            "{name}: expected Envoy to be refused, got {} {}",
            response.status,
            text.trim()
        );
    }
    // The mTLS upstream saw Envoy's handshake without a client certificate and refused it.
    wait_until(
        "the mTLS upstream to log a refused handshake",
        CONFIG_TIMEOUT,
        async || {
            let log = client_auth.process.log();
            ensure!(
                log.contains("TLS handshake from") && log.contains("refused"),
                "no refused handshake logged:\n{log}"
            );
            Ok(())
        },
    )
    .await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A DestinationRule for the whole mesh (`host: "*.local"` in the root namespace, as Istio
/// users write mesh-wide defaults) applies to a service no rule names; a rule naming the
/// service wins over it, and the wildcard applies again once that rule is gone. Here the
/// wildcard's subset `v2` selects the pods labelled v3, so which rule applies shows in which
/// version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_destination_rule_applies_where_no_rule_names_the_host() -> anyhow::Result<()> {
    let mut mesh = start(
        "a_wildcard_destination_rule_applies_where_no_rule_names_the_host",
        &reviews_vs_weighted(&[("v2", 100)]),
    )
    .await?;
    mesh.wait_for_all(&[], "v2", 10).await?;
    let own_rule = std::fs::read_to_string(mesh.env.config_dir.join(DR_FILE))?;

    mesh.env.write_config(
        "mesh-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-defaults, namespace: istio-system}
spec:
  host: \"*.local\"
  subsets:
  - name: v2
    labels: {version: v3}
",
    )?;
    std::fs::remove_file(mesh.env.config_dir.join(DR_FILE))?;
    mesh.wait_for_all(&[], "v3", 10).await?;

    mesh.env.write_config(DR_FILE, &own_rule)?;
    mesh.wait_for_all(&[], "v2", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}
