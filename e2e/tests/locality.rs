//! Locality load balancing through capstan and real Envoys, proven by real requests: each
//! proxy prefers the endpoints nearest its own locality and fails over zone → region → other
//! regions when the near ones fail (outlier detection), and `distribute` splits a locality's
//! traffic by weight. Logs: `<target>/debug/e2e-logs/<test name>/`.
//!
//! reviews v1 runs in us-east-1/us-east-1a, v2 in us-east-1/us-east-1b and v3 in
//! us-west-2/us-west-2a; the version answering tells where a request went.
//!
//! Envoy must be installed (`make test` installs it); a missing Envoy fails the tests.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::fixtures::REVIEWS_HOST;
use capstan_e2e::http::HttpClient;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, TestEnv};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const DR_FILE: &str = "reviews-dr.yaml";

const LOCALITIES: [(&str, &str); 3] = [
    ("v1", "us-east-1/us-east-1a"),
    ("v2", "us-east-1/us-east-1b"),
    ("v3", "us-west-2/us-west-2a"),
];

/// reviews with one endpoint per locality, capstan, and one sidecar per given locality.
struct LocalityMesh {
    proxies: Vec<(HttpClient, Envoy)>,
    _capstan: Capstan,
    upstreams: Upstreams,
    env: TestEnv,
}

fn service_entry(upstreams: &Upstreams) -> anyhow::Result<String> {
    let mut endpoints = String::new();
    for (version, locality) in LOCALITIES {
        let port = upstreams.port("reviews", version)?;
        endpoints.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {port}}}, locality: {locality}, \
             labels: {{app: reviews, version: {version}}}}}\n"
        ));
    }
    Ok(format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [{REVIEWS_HOST}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
{endpoints}"
    ))
}

fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: {REVIEWS_HOST}
  trafficPolicy: {traffic_policy}
"
    )
}

/// Outlier detection that ejects an endpoint after one 5xx, for long enough to watch.
const OUTLIER: &str = "outlierDetection: {consecutive5xxErrors: 1, interval: 1s, \
                       baseEjectionTime: 60s, maxEjectionPercent: 100}";

impl LocalityMesh {
    async fn start(name: &str, proxy_localities: &[&str]) -> anyhow::Result<Self> {
        let env = TestEnv::new(name)?;
        let instances: Vec<_> = LOCALITIES.iter().map(|(v, _)| ("reviews", *v)).collect();
        let upstreams =
            Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &instances, &env.log_dir)
                .await?;
        env.write_config("reviews-se.yaml", &service_entry(&upstreams)?)?;
        let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
        let envoy_bin = capstan_e2e::locate::envoy_bin()?;
        let mut proxies = Vec::new();
        for (i, locality) in proxy_localities.iter().enumerate() {
            let mut bootstrap = Bootstrap::new(AdsMode::Sotw, capstan.xds_port);
            bootstrap.workload = format!("sleep-{i}");
            bootstrap.locality = Some(locality.to_string());
            let envoy =
                Envoy::start(&envoy_bin, &bootstrap, &env.log_dir, &format!("envoy-{i}")).await?;
            let port = envoy
                .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
                .await
                .with_context(|| format!("logs in {}", env.log_dir.display()))?;
            proxies.push((HttpClient::new(loopback(port)), envoy));
        }
        Ok(Self {
            proxies,
            _capstan: capstan,
            upstreams,
            env,
        })
    }

    /// The versions answering `n` requests through proxy `i`.
    async fn versions(&mut self, i: usize, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        self.proxies[i].0.reviews_versions(&[], n).await
    }

    /// Polls until `n` requests in a row through proxy `i` all reach `version`.
    async fn wait_all(&mut self, i: usize, version: &str, n: usize) -> anyhow::Result<()> {
        let log_dir = self.env.log_dir.clone();
        let client = &mut self.proxies[i].0;
        wait_until(
            &format!("proxy {i}: {n} requests in a row to reach {version}"),
            CONFIG_TIMEOUT,
            async || {
                let seen = client.reviews_versions(&[], n).await?;
                ensure!(
                    seen.len() == 1 && seen.contains_key(version),
                    "answered by {seen:?}"
                );
                Ok(())
            },
        )
        .await
        .with_context(|| format!("logs in {}", log_dir.display()))
    }

    async fn no_rejected_updates(&self) -> anyhow::Result<()> {
        for (_, envoy) in &self.proxies {
            envoy.ensure_no_rejected_updates().await?;
        }
        Ok(())
    }
}

/// Istio's default: with outlier detection, each proxy stays in its own zone; when that
/// zone's endpoint fails it goes to the other zone of its region, then to the other region.
/// Without outlier detection there is no preference at all (Envoy could never fail over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_zone_then_region_when_the_local_endpoints_fail() -> anyhow::Result<()> {
    failover_zone_then_region(
        "failover_zone_then_region_when_the_local_endpoints_fail",
        "{simple: ROUND_ROBIN}",
    )
    .await
}

/// The same preference by `failoverPriority` on the topology labels (what Kubernetes'
/// `trafficDistribution: PreferClose` means in Istio): the proxies' labels come from their
/// locality, the endpoints' from theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_priority_on_topology_labels() -> anyhow::Result<()> {
    failover_zone_then_region(
        "failover_priority_on_topology_labels",
        "{simple: ROUND_ROBIN, localityLbSetting: {failoverPriority: \
         [topology.kubernetes.io/region, topology.kubernetes.io/zone]}}",
    )
    .await
}

async fn failover_zone_then_region(name: &str, load_balancer: &str) -> anyhow::Result<()> {
    let mut mesh =
        LocalityMesh::start(name, &["us-east-1/us-east-1a", "us-west-2/us-west-2a"]).await?;
    let everywhere = mesh.versions(0, 30).await?;
    ensure!(
        everywhere.len() == 3,
        "without outlier detection every locality answers: {everywhere:?}"
    );

    mesh.env.write_config(
        DR_FILE,
        &destination_rule(&format!("{{loadBalancer: {load_balancer}, {OUTLIER}}}")),
    )?;
    // Each proxy is served its own zone's endpoint.
    mesh.wait_all(0, "v1", 20).await?;
    mesh.wait_all(1, "v3", 20).await?;

    // us-east-1a fails: the east proxy goes to the other east zone, never west.
    mesh.upstreams.fail("reviews", "v1", 503).await?;
    mesh.wait_all(0, "v2", 20).await?;
    let west_before = mesh.upstreams.count("reviews", "v3").await?;
    let east = mesh.versions(0, 30).await?;
    ensure!(east.keys().all(|v| v == "v2"), "{east:?}");
    // (The west proxy's own requests are the only ones v3 saw meanwhile.)
    ensure!(
        mesh.upstreams.count("reviews", "v3").await? == west_before,
        "the east proxy reached us-west-2 while us-east-1b was healthy"
    );

    // The whole region fails: the other region.
    mesh.upstreams.fail("reviews", "v2", 503).await?;
    mesh.wait_all(0, "v3", 20).await?;
    // The west proxy never moved.
    let west = mesh.versions(1, 20).await?;
    ensure!(west.keys().all(|v| v == "v3"), "{west:?}");
    mesh.no_rejected_updates().await
}

/// `distribute`: proxies in us-east-1a send 20% to their zone and 80% to us-west-2; no
/// `to` names us-east-1b, so it gets nothing. A proxy the rule does not name sees all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_splits_a_localitys_traffic_by_weight() -> anyhow::Result<()> {
    let mut mesh = LocalityMesh::start(
        "distribute_splits_a_localitys_traffic_by_weight",
        &["us-east-1/us-east-1a", "us-west-2/us-west-2a"],
    )
    .await?;
    mesh.env.write_config(
        DR_FILE,
        &destination_rule(
            "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {distribute: [\
             {from: us-east-1/us-east-1a/*, to: {us-east-1/us-east-1a/*: 20, us-west-2/*: 80}}]}}}",
        ),
    )?;
    let log_dir = mesh.env.log_dir.clone();
    let client = &mut mesh.proxies[0].0;
    wait_until(
        "us-east-1b dropped for us-east-1a",
        CONFIG_TIMEOUT,
        async || {
            let seen = client.reviews_versions(&[], 20).await?;
            ensure!(!seen.contains_key("v2"), "{seen:?}");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;

    let n = 400;
    let seen = mesh.versions(0, n).await?;
    ensure!(!seen.contains_key("v2"), "{seen:?}");
    let west = seen.get("v3").copied().unwrap_or(0) as f64;
    // Binomial(400, 0.8): σ = 8; 5σ either side.
    let (expected, sigma) = (0.8 * n as f64, (n as f64 * 0.8 * 0.2).sqrt());
    ensure!(
        (west - expected).abs() <= 5.0 * sigma,
        "{west} of {n} to us-west-2, expected {expected} ± {}: {seen:?}",
        5.0 * sigma
    );

    let other = mesh.versions(1, 30).await?;
    ensure!(
        other.len() == 3,
        "a proxy no rule names balances over every locality: {other:?}"
    );
    mesh.no_rejected_updates().await
}
