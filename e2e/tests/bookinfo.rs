//! Istio's bookinfo routing samples (the objects of `samples/bookinfo/networking/*.yaml`,
//! written out in `e2e/bookinfo/` and applied unchanged) applied to capstan, with the routing Istio's tasks document for each
//! checked by real requests through a real Envoy.
//!
//! Every test starts the bookinfo workloads as capstan-upstream instances (productpage v1,
//! details v1/v2, ratings v1, reviews v1/v2/v3), writes `bookinfo-services.yaml` (the
//! ServiceEntries standing in for bookinfo's Kubernetes Services in namespace `default`),
//! `destination-rule-all.yaml` and `virtual-service-all-v1.yaml` into capstan's folder, starts
//! capstan and one Envoy in namespace `default` (a sidecar next to productpage, so `reviews`
//! means `reviews.default.svc.cluster.local`), then applies the sample under test the way
//! `kubectl apply -f` would: each object replaces the object of the same kind, namespace and
//! name (one file per object in the folder). Logs: `<target>/debug/e2e-logs/bookinfo_*/`.
//!
//! `bookinfo-gateway.yaml` is not tested here: it needs Gateway support.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use capstan_e2e::capstan::Capstan;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use capstan_e2e::http::{HttpClient, UpstreamReply};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, TestEnv};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const JASON: &[(&str, &str)] = &[("end-user", "jason")];
const MIKE: &[(&str, &str)] = &[("end-user", "mike")];
const NO_HEADERS: &[(&str, &str)] = &[];
const SERVICES_FILE: &str = "bookinfo-services.yaml";

/// The workloads: (service, version, the placeholder port `bookinfo-services.yaml` gives it).
const WORKLOADS: &[(&str, &str, u16)] = &[
    ("productpage", "v1", 19101),
    ("details", "v1", 19111),
    ("details", "v2", 19112),
    ("ratings", "v1", 19121),
    ("reviews", "v1", 19131),
    ("reviews", "v2", 19132),
    ("reviews", "v3", 19133),
];
const SERVICES: [&str; 4] = ["productpage", "details", "ratings", "reviews"];

/// The fixed delay of virtual-service-ratings-test-delay.yaml.
const SAMPLE_DELAY: Duration = Duration::from_secs(7);
/// Envoy arms its delay timer from its event loop's cached clock, which can lag the real one
/// by a few milliseconds: a delayed request was seen to take 6.99993 s, as measured from here.
/// An undelayed one takes milliseconds, so this margin still tells them apart.
const TIMER_SLACK: Duration = Duration::from_millis(50);

fn bookinfo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bookinfo")
}

fn read_sample(file: &str) -> anyhow::Result<String> {
    let path = bookinfo_dir().join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The path a service's requests go to (as productpage calls them).
fn path_of(service: &str) -> &'static str {
    match service {
        "productpage" => "/productpage",
        "details" => "/details/0",
        "ratings" => "/ratings/0",
        _ => "/reviews/0",
    }
}

/// An object's kind, namespace and name.
type ObjectKey = (String, String, String);

/// One YAML document's kind, namespace and name, read from its lines (our sample files put
/// `kind:` and `metadata.name`/`namespace` on lines of their own).
fn object_key(doc: &str) -> Option<ObjectKey> {
    let mut kind = None;
    let (mut name, mut namespace) = (None, None);
    let mut in_metadata = false;
    for line in doc.lines() {
        if let Some(k) = line.strip_prefix("kind:") {
            kind = Some(k.trim().to_string());
        }
        if line.starts_with("metadata:") {
            in_metadata = true;
            continue;
        }
        if in_metadata {
            if !line.starts_with(' ') {
                in_metadata = false;
            } else if let Some(n) = line.trim().strip_prefix("name:") {
                name.get_or_insert_with(|| n.trim().to_string());
            } else if let Some(ns) = line.trim().strip_prefix("namespace:") {
                namespace.get_or_insert_with(|| ns.trim().to_string());
            }
        }
    }
    Some((kind?, namespace.unwrap_or_else(|| "default".into()), name?))
}

/// The documents of a multi-document YAML file, each with its object key.
fn objects(text: &str) -> anyhow::Result<Vec<(ObjectKey, String)>> {
    let mut out = Vec::new();
    let mut doc = String::new();
    let mut flush = |doc: &mut String| -> anyhow::Result<()> {
        let meaningful = doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if meaningful {
            let key = object_key(doc).with_context(|| format!("no kind or name in:\n{doc}"))?;
            out.push((key, std::mem::take(doc)));
        }
        doc.clear();
        Ok(())
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut doc)?;
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    flush(&mut doc)?;
    Ok(out)
}

/// The bookinfo workloads, capstan on a folder holding the services, destination-rule-all and
/// virtual-service-all-v1, and one Envoy. Fields drop in order: Envoy first.
struct Bookinfo {
    proxy: HttpClient,
    envoy: Envoy,
    _capstan: Capstan,
    _upstreams: Upstreams,
    env: TestEnv,
}

impl Bookinfo {
    async fn start(name: &str) -> anyhow::Result<Self> {
        let env = TestEnv::new(name)?;
        let instances: Vec<(&str, &str)> = WORKLOADS.iter().map(|(s, v, _)| (*s, *v)).collect();
        let upstreams =
            Upstreams::start_on_free_ports(Path::new(UPSTREAM_BIN), &instances, &env.log_dir)
                .await?;
        let mut services = read_sample(SERVICES_FILE)?;
        for (service, version, placeholder) in WORKLOADS {
            let from = format!("http: {placeholder}\n");
            ensure!(
                services.matches(&from).count() == 1,
                "{SERVICES_FILE} must name port {placeholder} ({service} {version}) once"
            );
            let port = upstreams.port(service, version)?;
            services = services.replace(&from, &format!("http: {port}\n"));
        }
        apply(&env, &services)?;
        apply(&env, &read_sample("destination-rule-all.yaml")?)?;
        apply(&env, &read_sample("virtual-service-all-v1.yaml")?)?;

        let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
        let mut bootstrap = Bootstrap::new(AdsMode::Sotw, capstan.xds_port);
        bootstrap.namespace = "default".to_string();
        bootstrap.workload = "productpage-v1-0".to_string();
        let envoy_bin = capstan_e2e::locate::envoy_bin()?;
        let envoy = Envoy::start(&envoy_bin, &bootstrap, &env.log_dir, "envoy").await?;
        let port = envoy
            .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", env.log_dir.display()))?;
        let mut mesh = Self {
            proxy: HttpClient::new(loopback(port)),
            envoy,
            _capstan: capstan,
            _upstreams: upstreams,
            env,
        };
        // virtual-service-all-v1.yaml: every service answers v1.
        for service in SERVICES {
            mesh.wait_for_all(service, NO_HEADERS, "v1").await?;
        }
        Ok(mesh)
    }

    /// Applies a sample file of e2e/bookinfo/ unchanged, object by object.
    fn apply_sample(&self, file: &str) -> anyhow::Result<()> {
        apply(&self.env, &read_sample(file)?)
    }

    fn logs(&self) -> String {
        format!("logs in {}", self.env.log_dir.display())
    }

    /// One request to `service` (by its short name, as bookinfo calls it) through Envoy.
    async fn call(
        &mut self,
        service: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<UpstreamReply> {
        let reply = self
            .proxy
            .upstream(service, path_of(service), headers)
            .await?;
        ensure!(
            reply.service == service,
            "a request to {service} was answered by {reply:?}"
        );
        Ok(reply)
    }

    async fn versions(
        &mut self,
        service: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let reply = self.call(service, headers).await?;
            *counts.entry(reply.version).or_default() += 1;
        }
        Ok(counts)
    }

    /// Fails unless all `n` requests to `service` with `headers` reach `version`.
    async fn expect_all(
        &mut self,
        service: &str,
        headers: &[(&str, &str)],
        version: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        let counts = self.versions(service, headers, n).await?;
        ensure!(
            counts.len() == 1 && counts.get(version) == Some(&n),
            "expected all {n} requests to {service} with {headers:?} to reach {version}, \
             got {counts:?}"
        );
        Ok(())
    }

    /// Polls until 10 consecutive requests to `service` with `headers` reach `version`.
    async fn wait_for_all(
        &mut self,
        service: &str,
        headers: &[(&str, &str)],
        version: &str,
    ) -> anyhow::Result<()> {
        let what = format!("requests to {service} with {headers:?} to reach {version} only");
        let logs = self.logs();
        wait_until(&what, CONFIG_TIMEOUT, async || {
            self.expect_all(service, headers, version, 10).await
        })
        .await
        .context(logs)
    }

    /// Polls until Envoy holds a route for `domain` that matches on `header` (the sample's
    /// rules are in force, whatever they do to the requests).
    async fn wait_for_header_route(&self, domain: &str, header: &str) -> anyhow::Result<()> {
        let what = format!("Envoy to hold a route for {domain} matching header {header}");
        wait_until(&what, CONFIG_TIMEOUT, async || {
            let dump = self.envoy.config_dump(false).await?;
            ensure!(has_header_route(&dump, domain, header), "no such route yet");
            Ok(())
        })
        .await
        .context(self.logs())
    }

    /// The split of `n` requests to reviews, once Envoy's only weighted route sends
    /// exactly `expected` (subset, weight) and `appearing` has answered.
    async fn weighted_reviews(
        &mut self,
        expected: &[(&str, u64)],
        appearing: &str,
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let allowed: Vec<&str> = expected.iter().map(|(s, _)| *s).collect();
        let logs = self.logs();
        wait_until(
            &format!("reviews {appearing} to answer, and only {allowed:?}"),
            CONFIG_TIMEOUT,
            async || {
                let counts = self.versions("reviews", NO_HEADERS, 40).await?;
                ensure!(
                    counts.contains_key(appearing)
                        && counts.keys().all(|v| allowed.contains(&v.as_str())),
                    "{counts:?}"
                );
                Ok(())
            },
        )
        .await
        .context(logs)?;
        let dump = self.envoy.config_dump(false).await?;
        let mut weights = Vec::new();
        for (subset, host, weight) in capstan_e2e::envoy::weighted_clusters(&dump)? {
            ensure!(
                host == "reviews.default.svc.cluster.local",
                "weighted cluster of another host: {host}"
            );
            weights.push((subset, weight));
        }
        let expected: Vec<(String, u64)> =
            expected.iter().map(|(s, w)| (s.to_string(), *w)).collect();
        ensure!(
            weights == expected,
            "Envoy's weighted clusters are {weights:?}, expected {expected:?}"
        );
        self.versions("reviews", NO_HEADERS, n).await
    }
}

/// Writes each object of `text` into the folder as `<kind>-<namespace>-<name>.yaml`,
/// replacing the file of the same object (what `kubectl apply -f` does to a cluster).
fn apply(env: &TestEnv, text: &str) -> anyhow::Result<()> {
    for ((kind, namespace, name), doc) in objects(text)? {
        let file = format!("{kind}-{namespace}-{name}.yaml").to_ascii_lowercase();
        env.write_config(&file, &doc)?;
    }
    Ok(())
}

/// Whether a virtual host answering `domain` has a route matching on header `header`.
fn has_header_route(dump: &Value, domain: &str, header: &str) -> bool {
    capstan_e2e::envoy::dynamic_virtual_hosts(dump)
        .filter(|vh| {
            vh["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == domain))
        })
        .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
        .flat_map(|r| r["match"]["headers"].as_array().into_iter().flatten())
        .any(|h| h["name"] == header)
}

/// Fails unless `hits` of `n` is within 5 sigma of `p * n` (binomial).
fn within_5_sigma(what: &str, hits: usize, n: usize, p: f64) -> anyhow::Result<()> {
    let nf = n as f64;
    let sigma = (nf * p * (1.0 - p)).sqrt();
    let deviation = (hits as f64 - nf * p).abs();
    ensure!(
        deviation <= 5.0 * sigma,
        "{what}: {hits} of {n}; expected {:.0} ± {:.0} (5 sigma)",
        nf * p,
        5.0 * sigma
    );
    Ok(())
}

/// One GET through Envoy on a new connection, waiting up to `timeout` (longer than the
/// sample's delay, unlike [`HttpClient`]'s): its status, body and how long it took.
async fn timed_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, String, Duration)> {
    let started = Instant::now();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::get(path).header(hyper::header::HOST, host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("GET {path} (Host: {host}) took over {timeout:?}"))??;
    Ok((status, body, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_all_v1_every_service_answers_v1() -> anyhow::Result<()> {
    // Start applies virtual-service-all-v1.yaml and waits for it.
    let mut mesh = Bookinfo::start("bookinfo_all_v1").await?;
    for service in SERVICES {
        for headers in [NO_HEADERS, JASON] {
            mesh.expect_all(service, headers, "v1", 30).await?;
        }
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_reviews_test_v2_jason_gets_v2() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_reviews_test_v2").await?;
    mesh.apply_sample("virtual-service-reviews-test-v2.yaml")?;
    mesh.wait_for_all("reviews", JASON, "v2").await?;
    mesh.expect_all("reviews", JASON, "v2", 50).await?;
    mesh.expect_all("reviews", NO_HEADERS, "v1", 50).await?;
    mesh.expect_all("reviews", MIKE, "v1", 50).await?;
    for service in ["productpage", "details", "ratings"] {
        mesh.expect_all(service, JASON, "v1", 10).await?;
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_reviews_50_v3_splits_v1_v3() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_reviews_50_v3").await?;
    mesh.apply_sample("virtual-service-reviews-50-v3.yaml")?;
    const N: usize = 1000;
    let counts = mesh
        .weighted_reviews(&[("v1", 50), ("v3", 50)], "v3", N)
        .await?;
    let v3 = counts.get("v3").copied().unwrap_or(0);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    ensure!(v1 + v3 == N, "replies from outside the split: {counts:?}");
    within_5_sigma("reviews v3", v3, N, 0.5)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_reviews_80_20_splits_v1_v2() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_reviews_80_20").await?;
    mesh.apply_sample("virtual-service-reviews-80-20.yaml")?;
    const N: usize = 1000;
    let counts = mesh
        .weighted_reviews(&[("v1", 80), ("v2", 20)], "v2", N)
        .await?;
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    ensure!(v1 + v2 == N, "replies from outside the split: {counts:?}");
    within_5_sigma("reviews v2", v2, N, 0.2)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_reviews_v3_everyone_gets_v3() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_reviews_v3").await?;
    mesh.apply_sample("virtual-service-reviews-v3.yaml")?;
    mesh.wait_for_all("reviews", NO_HEADERS, "v3").await?;
    for headers in [NO_HEADERS, JASON, MIKE] {
        mesh.expect_all("reviews", headers, "v3", 50).await?;
    }
    mesh.expect_all("ratings", NO_HEADERS, "v1", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_details_v2_everyone_gets_details_v2() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_details_v2").await?;
    mesh.apply_sample("virtual-service-details-v2.yaml")?;
    mesh.wait_for_all("details", NO_HEADERS, "v2").await?;
    mesh.expect_all("details", NO_HEADERS, "v2", 50).await?;
    mesh.expect_all("details", JASON, "v2", 20).await?;
    mesh.expect_all("reviews", NO_HEADERS, "v1", 20).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Istio's fault-injection task: with reviews-test-v2 in force, ratings-test-delay holds
/// jason's requests to ratings for 7 s; everyone else's are not delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_ratings_test_delay_holds_jason_7s() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_ratings_test_delay").await?;
    mesh.apply_sample("virtual-service-reviews-test-v2.yaml")?;
    mesh.wait_for_all("reviews", JASON, "v2").await?;
    mesh.apply_sample("virtual-service-ratings-test-delay.yaml")?;
    mesh.wait_for_header_route("ratings", "end-user").await?;

    let addr = mesh.proxy.addr();
    let timeout = SAMPLE_DELAY + Duration::from_secs(10);
    let (status, body, took) = timed_get(addr, "ratings", "/ratings/0", JASON, timeout).await?;
    ensure!(
        status == hyper::StatusCode::OK && body.contains("\"service\":\"ratings\""),
        "jason's request to ratings: {status} {body}"
    );
    ensure!(
        took + TIMER_SLACK >= SAMPLE_DELAY,
        "jason's request to ratings took {took:?}: the sample's {SAMPLE_DELAY:?} delay was \
         not applied ({})",
        mesh.logs()
    );
    for headers in [NO_HEADERS, MIKE] {
        let (status, body, took) =
            timed_get(addr, "ratings", "/ratings/0", headers, timeout).await?;
        ensure!(
            status == hyper::StatusCode::OK && body.contains("\"service\":\"ratings\""),
            "request with {headers:?} to ratings: {status} {body}"
        );
        ensure!(
            took < SAMPLE_DELAY,
            "a request with {headers:?} took {took:?}: the delay is only for jason"
        );
    }
    mesh.envoy.ensure_no_rejected_updates().await
}

/// Istio's fault-injection task: ratings-test-abort answers jason's requests to ratings
/// with 500 (from Envoy, ratings never sees them); everyone else gets ratings v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_ratings_test_abort_fails_jason_with_500() -> anyhow::Result<()> {
    let mut mesh = Bookinfo::start("bookinfo_ratings_test_abort").await?;
    mesh.apply_sample("virtual-service-reviews-test-v2.yaml")?;
    mesh.wait_for_all("reviews", JASON, "v2").await?;
    mesh.apply_sample("virtual-service-ratings-test-abort.yaml")?;
    mesh.wait_for_header_route("ratings", "end-user").await?;

    for _ in 0..20 {
        let resp = mesh.proxy.get("ratings", "/ratings/0", JASON).await?;
        if resp.status != hyper::StatusCode::INTERNAL_SERVER_ERROR {
            bail!(
                "jason's request to ratings answered {} {} instead of the sample's abort with \
                 500 ({})",
                resp.status,
                resp.text().trim(),
                mesh.logs()
            );
        }
        ensure!(
            resp.json::<UpstreamReply>().is_err(),
            "the 500 came from the ratings upstream, not from Envoy's fault: {}",
            resp.text()
        );
    }
    mesh.expect_all("ratings", NO_HEADERS, "v1", 20).await?;
    mesh.expect_all("ratings", MIKE, "v1", 20).await?;
    mesh.expect_all("reviews", JASON, "v2", 10).await?;
    mesh.envoy.ensure_no_rejected_updates().await
}

#[test]
fn samples_split_into_objects_by_kind_namespace_and_name() -> anyhow::Result<()> {
    let all = objects(&read_sample("virtual-service-all-v1.yaml")?)?;
    let keys: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
    let vs = |n: &str| {
        (
            "VirtualService".to_string(),
            "default".to_string(),
            n.to_string(),
        )
    };
    ensure!(
        keys == [
            vs("productpage"),
            vs("reviews"),
            vs("ratings"),
            vs("details")
        ],
        "{keys:?}"
    );
    let services = objects(&read_sample(SERVICES_FILE)?)?;
    ensure!(services.len() == 4, "{services:?}");
    ensure!(
        services
            .iter()
            .all(|((kind, ns, _), _)| kind == "ServiceEntry" && ns == "default"),
        "{services:?}"
    );
    // The sample objects stay as Istio ships them: no namespace of our own.
    for file in std::fs::read_dir(bookinfo_dir())? {
        let path = file?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == SERVICES_FILE || !name.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        ensure!(
            !text.contains("namespace:"),
            "{name} names a namespace; Istio's sample does not"
        );
        ensure!(
            text.starts_with(&format!("# The objects of Istio's bookinfo sample {name} ")),
            "{name} must say which sample it holds"
        );
    }
    Ok(())
}
