//! AWS Cloud Map as a registry (moto on loopback): services registered there are routed to by
//! their Cloud Map name through a real Envoy, follow registrations, health and attributes
//! within a poll, read only what changed, and survive throttling on the last good view; in the
//! materialised mode they become ServiceEntries on a real API server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::cloudmap::{CloudMap, ServiceHealth};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy};
use capstan_e2e::http::HttpClient;
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::mesh::{CONFIG_TIMEOUT, OUTBOUND_LISTENER, TestEnv};
use capstan_e2e::moto::{Moto, MotoFaults};
use capstan_e2e::upstreams::Upstreams;
use capstan_e2e::wait_until;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");
const HOST: &str = "orders.example.local";

/// Subsets by the `version` attribute; `x-version: v2` goes to v2, the rest anywhere.
const ROUTING: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders, namespace: cloud-map}
spec:
  host: orders.example.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders, namespace: cloud-map}
spec:
  hosts: [orders.example.local]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: orders.example.local, subset: v2}}]
  - route: [{destination: {host: orders.example.local}}]
";

/// The Cloud Map config for `moto`: `namespaces` (a YAML list), `mode`, 1 s polls.
fn cloud_map_config(moto: &Moto, namespaces: &str, mode: &str, extra: &str) -> String {
    format!(
        "namespaces: {namespaces}
mode: {mode}
interval: 1s
jitter: 0
endpoint: {}
region: {}
{extra}",
        moto.endpoint_url(),
        capstan_e2e::moto::REGION,
    )
}

/// Which upstream versions answer `n` requests (with `x-version: v2` when `v2`); failures
/// are counted by status.
async fn answers(
    client: &mut HttpClient,
    host: &str,
    v2: bool,
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let headers: &[(&str, &str)] = if v2 { &[("x-version", "v2")] } else { &[] };
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let response = client.get(host, "/", headers).await?;
        let key = match response.upstream_reply() {
            Ok(reply) => reply.version,
            Err(_) => format!("status {}", response.status.as_u16()),
        };
        *counts.entry(key).or_default() += 1;
    }
    Ok(counts)
}

async fn wait_answers(
    what: &str,
    client: &mut HttpClient,
    host: &str,
    v2: bool,
    expected: &[&str],
) -> anyhow::Result<()> {
    wait_until(what, CONFIG_TIMEOUT, async || {
        let counts = answers(client, host, v2, 12).await?;
        ensure!(counts.keys().eq(expected.iter()), "{counts:?}");
        Ok(())
    })
    .await
}

/// capstan on `env`'s config folder and moto's Cloud Map `namespaces` (in-memory mode), and
/// one sidecar Envoy (in `locality`, if given) with a client for its outbound listener.
async fn capstan_and_sidecar(
    env: &TestEnv,
    moto: &Moto,
    namespaces: &str,
    mode: AdsMode,
    locality: Option<&str>,
) -> anyhow::Result<(Capstan, Envoy, HttpClient)> {
    let config = env.log_dir.join("cloud-map.yaml");
    std::fs::write(&config, cloud_map_config(moto, namespaces, "in-memory", ""))?;
    let capstan = Capstan::start_folder_with(
        &env.config_dir,
        &["--cloud-map-config", &config.display().to_string()],
        &env.log_dir,
        "capstan",
    )
    .await?;
    let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
    bootstrap.locality = locality.map(str::to_string);
    let envoy = Envoy::start(
        &capstan_e2e::locate::envoy_bin()?,
        &bootstrap,
        &env.log_dir,
        "envoy",
    )
    .await?;
    let listener = envoy
        .wait_listener_port(OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    let client = HttpClient::new(capstan_e2e::envoy::loopback(listener));
    Ok((capstan, envoy, client))
}

/// Registers instance `id` of `service`: an HTTP server on 127.0.0.1:`port`.
async fn register_http(
    cloud_map: &CloudMap<'_>,
    service: &str,
    id: &str,
    port: u16,
) -> anyhow::Result<()> {
    let port = port.to_string();
    cloud_map
        .register(
            service,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", port.as_str()),
                ("protocol", "HTTP"),
            ],
        )
        .await
}

/// The value of the metric line starting with `prefix` (0 when absent).
async fn metric(capstan: &Capstan, prefix: &str) -> anyhow::Result<f64> {
    let text = capstan.monitoring_get("/metrics").await?.text();
    Ok(text
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_services_are_routed_by_name_and_follow_registrations_and_health()
-> anyhow::Result<()> {
    let env = TestEnv::new("cloud_map_in_memory")?;
    let moto = Moto::start(&env.log_dir, &MotoFaults::default()).await?;
    let cloud_map = CloudMap::new(&moto).await?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[
            ("orders", "v1"),
            ("orders", "v2"),
            ("hidden", "v1"),
            ("billing", "v1"),
        ],
        &env.log_dir,
    )
    .await?;
    let port =
        |version| -> anyhow::Result<String> { Ok(upstreams.port("orders", version)?.to_string()) };

    let ns = cloud_map.create_http_namespace("example.local").await?;
    let other = cloud_map.create_http_namespace("other.local").await?;
    let orders = cloud_map
        .create_service(&ns, "orders", ServiceHealth::Custom)
        .await?;
    let v1_port = port("v1")?;
    let v2_port = port("v2")?;
    let v1 = [
        ("AWS_INSTANCE_IPV4", "127.0.0.1"),
        ("AWS_INSTANCE_PORT", v1_port.as_str()),
        ("protocol", "HTTP"),
        ("version", "v1"),
    ];
    cloud_map.register(&orders, "i-1", &v1).await?;
    // In a namespace capstan is not configured to read.
    let hidden = cloud_map
        .create_service(&other, "hidden", ServiceHealth::None)
        .await?;
    register_http(&cloud_map, &hidden, "h-1", upstreams.port("hidden", "v1")?).await?;

    // A private DNS namespace, configured by its id.
    let corp = cloud_map
        .create_private_dns_namespace("corp.internal", "vpc-e2e")
        .await?;
    let billing = cloud_map
        .create_service(&corp, "billing", ServiceHealth::None)
        .await?;
    register_http(
        &cloud_map,
        &billing,
        "b-1",
        upstreams.port("billing", "v1")?,
    )
    .await?;

    env.write_config("routing.yaml", ROUTING)?;
    let namespaces = format!("[{{name: example.local}}, {{id: {corp}}}]");
    let (capstan, envoy, mut client) =
        capstan_and_sidecar(&env, &moto, &namespaces, AdsMode::Delta, None).await?;

    // Reached by its Cloud Map name; the other namespace's service is not in the mesh.
    wait_answers(
        "orders by its Cloud Map name",
        &mut client,
        HOST,
        false,
        &["v1"],
    )
    .await?;
    wait_answers(
        "billing in the DNS namespace named by id",
        &mut client,
        "billing.corp.internal",
        false,
        &["v1"],
    )
    .await?;
    let hidden_answers = answers(&mut client, "hidden.other.local", false, 3).await?;
    ensure!(
        !hidden_answers.contains_key("v1"),
        "a service of an unconfigured namespace was routed: {hidden_answers:?}"
    );

    // A second instance, its `version` attribute a label: the v2 subset reaches it alone.
    let v2 = [
        ("AWS_INSTANCE_IPV4", "127.0.0.1"),
        ("AWS_INSTANCE_PORT", v2_port.as_str()),
        ("protocol", "HTTP"),
        ("version", "v2"),
    ];
    cloud_map.register(&orders, "i-2", &v2).await?;
    wait_answers("the v2 subset", &mut client, HOST, true, &["v2"]).await?;
    wait_answers("both instances", &mut client, HOST, false, &["v1", "v2"]).await?;

    // Unhealthy, it leaves within a poll; healthy again, it is back.
    cloud_map.set_health(&orders, "i-2", false).await?;
    wait_answers("v2 unhealthy", &mut client, HOST, false, &["v1"]).await?;
    let v2_down = answers(&mut client, HOST, true, 3).await?;
    ensure!(
        v2_down.keys().all(|k| k.starts_with("status 5")),
        "the unhealthy instance still answers its subset: {v2_down:?}"
    );
    cloud_map.set_health(&orders, "i-2", true).await?;
    wait_answers("v2 healthy again", &mut client, HOST, true, &["v2"]).await?;

    // Quiet polls read revisions only: no instance list is fetched while nothing changes.
    cloud_map.reset_counts().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let counts = cloud_map.counts().await?;
    ensure!(
        counts
            .get("DiscoverInstancesRevision")
            .copied()
            .unwrap_or(0)
            >= 2,
        "polls did not read revisions: {counts:?}"
    );
    ensure!(
        !counts.contains_key("DiscoverInstances"),
        "a quiet poll fetched instances: {counts:?}"
    );

    // An attribute change relabels the endpoint: i-1 now counts as v2 too.
    let relabelled = [
        ("AWS_INSTANCE_IPV4", "127.0.0.1"),
        ("AWS_INSTANCE_PORT", v1_port.as_str()),
        ("protocol", "HTTP"),
        ("version", "v2"),
    ];
    cloud_map.register(&orders, "i-1", &relabelled).await?;
    wait_answers("i-1 relabelled v2", &mut client, HOST, true, &["v1", "v2"]).await?;

    // Throttled: capstan backs off, counts it, and keeps serving the last good view.
    let throttled_before = metric(
        &capstan,
        "capstan_cloud_map_errors_total{operation=\"ListNamespaces\",code=\"ThrottlingException\"}",
    )
    .await?;
    cloud_map
        .throttle_only(-1, &["ListNamespaces", "ListServices"])
        .await?;
    cloud_map.deregister(&orders, "i-2").await?;
    wait_until("throttling counted", CONFIG_TIMEOUT, async || {
        let now = metric(
            &capstan,
            "capstan_cloud_map_errors_total{operation=\"ListNamespaces\",code=\"ThrottlingException\"}",
        )
        .await?;
        ensure!(now > throttled_before, "errors {now}");
        ensure!(metric(&capstan, "capstan_cloud_map_synced ").await? == 0.0);
        Ok(())
    })
    .await?;
    let during = answers(&mut client, HOST, true, 12).await?;
    ensure!(
        during.keys().eq(["v1", "v2"]),
        "the last good view was not kept while throttled: {during:?}"
    );
    // Once AWS answers again, what changed meanwhile arrives.
    cloud_map.throttle(0).await?;
    wait_answers("i-2 deregistered", &mut client, HOST, true, &["v1"]).await?;
    // The gauge says whether the last poll succeeded: a poll that times out on a loaded
    // machine sets it to 0 until the next one succeeds.
    wait_until("synced again", CONFIG_TIMEOUT, async || {
        let synced = metric(&capstan, "capstan_cloud_map_synced ").await?;
        ensure!(synced == 1.0, "synced {synced}");
        Ok(())
    })
    .await?;
    drop(envoy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialised_service_entries_are_written_and_only_ours_are_touched() -> anyhow::Result<()>
{
    let cluster = KubeCluster::shared().await?;
    let env = TestEnv::new("cloud_map_materialised")?;
    let mesh_ns = cluster.create_namespace("cloud-map").await?;
    // What the chart grants the materialised mode: ServiceEntries of the mesh namespace.
    cluster
        .kubectl_apply_yaml(&capstan_e2e::kube_mesh::cloud_map_role_yaml(&mesh_ns))
        .await?;
    // A hand-written entry under the name capstan would use for `carts`: left alone.
    cluster
        .kubectl_apply_yaml(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: carts-example-local, namespace: {mesh_ns}}}
spec:
  hosts: [carts.hand.written]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.9.9.9}}]
"
        ))
        .await?;

    let moto = Moto::start(&env.log_dir, &MotoFaults::default()).await?;
    let cloud_map = CloudMap::new(&moto).await?;
    let ns = cloud_map.create_http_namespace("example.local").await?;
    let orders = cloud_map
        .create_service(&ns, "orders", ServiceHealth::Custom)
        .await?;
    let carts = cloud_map
        .create_service(&ns, "carts", ServiceHealth::None)
        .await?;
    for (service, id, ip) in [(&orders, "i-1", "10.0.0.1"), (&carts, "c-1", "10.0.0.7")] {
        cloud_map
            .register(
                service,
                id,
                &[
                    ("AWS_INSTANCE_IPV4", ip),
                    ("AWS_INSTANCE_PORT", "8080"),
                    ("protocol", "HTTP"),
                    ("AVAILABILITY_ZONE", "us-east-1a"),
                    ("version", "v1"),
                ],
            )
            .await?;
    }
    let config = env.log_dir.join("cloud-map.yaml");
    std::fs::write(
        &config,
        cloud_map_config(
            &moto,
            "[{name: example.local}]",
            "materialize",
            &format!("meshNamespace: {mesh_ns}\n"),
        ),
    )?;
    let _capstan = Capstan::start_kube(
        cluster.capstan_kubeconfig(),
        // Elected (the Lease in istio-system): only the leader writes the ServiceEntries.
        &["--cloud-map-config", &config.display().to_string()],
        &env.log_dir,
        "capstan",
    )
    .await?;

    let get = |name: &'static str| {
        let mesh_ns = mesh_ns.clone();
        async move {
            let json = cluster
                .kubectl(&["get", "serviceentry", "-n", &mesh_ns, name, "-o", "json"])
                .await?;
            Ok::<serde_json::Value, anyhow::Error>(serde_json::from_str(&json)?)
        }
    };
    wait_until("the orders ServiceEntry", CONFIG_TIMEOUT, async || {
        let se = get("orders-example-local").await?;
        ensure!(
            se["metadata"]["labels"]["capstan.io/managed-by"] == "cloudmap",
            "{se}"
        );
        ensure!(se["spec"]["hosts"][0] == HOST, "{se}");
        let endpoint = &se["spec"]["endpoints"][0];
        ensure!(endpoint["address"] == "10.0.0.1", "{se}");
        ensure!(endpoint["labels"]["version"] == "v1", "{se}");
        ensure!(endpoint["locality"] == "us-east-1/us-east-1a", "{se}");
        Ok(())
    })
    .await?;

    // Unhealthy: the endpoint leaves the object.
    cloud_map.set_health(&orders, "i-1", false).await?;
    wait_until("no endpoint once unhealthy", CONFIG_TIMEOUT, async || {
        let se = get("orders-example-local").await?;
        ensure!(
            se["spec"]["endpoints"].as_array().is_none_or(Vec::is_empty),
            "{se}"
        );
        Ok(())
    })
    .await?;

    // The hand-written object of the same name is never touched.
    let hand = get("carts-example-local").await?;
    ensure!(hand["spec"]["hosts"][0] == "carts.hand.written", "{hand}");
    ensure!(
        hand["metadata"]["labels"]["capstan.io/managed-by"].is_null(),
        "{hand}"
    );

    // Synced, then throttled: the condition says the object is the last good view.
    let condition = |se: &serde_json::Value| -> Option<(String, String)> {
        se["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "CloudMapSynced")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    };
    let wait_condition = |what: &'static str, status: &'static str, reason: &'static str| {
        let (get, condition) = (&get, &condition);
        async move {
            wait_until(what, Duration::from_secs(45), async || {
                let se = get("orders-example-local").await?;
                let expected = Some((status.to_string(), reason.to_string()));
                ensure!(condition(&se) == expected, "{}", se["status"]);
                Ok(())
            })
            .await
        }
    };
    wait_condition("CloudMapSynced True", "True", "Polled").await?;
    cloud_map
        .throttle_only(-1, &["ListNamespaces", "ListServices"])
        .await?;
    wait_condition("CloudMapSynced False", "False", "Throttled").await?;
    cloud_map.throttle(0).await?;
    wait_condition("CloudMapSynced True again", "True", "Polled").await?;

    // A deleted Cloud Map service takes its object with it.
    cloud_map.deregister(&orders, "i-1").await?;
    cloud_map.delete_service(&orders).await?;
    wait_until(
        "the orders ServiceEntry deleted",
        CONFIG_TIMEOUT,
        async || {
            let listed = cluster
                .kubectl(&["get", "serviceentry", "-n", &mesh_ns, "-o", "name"])
                .await?;
            ensure!(!listed.contains("orders-example-local"), "{listed}");
            ensure!(listed.contains("carts-example-local"), "{listed}");
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// EC2 instances in two zones, their `AVAILABILITY_ZONE` attributes as localities: a proxy in
/// us-east-1a sends everything to its zone's instance and fails over to us-east-1b when that
/// instance fails (outlier detection), as for Kubernetes endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_zones_give_locality_failover() -> anyhow::Result<()> {
    let env = TestEnv::new("cloud_map_locality")?;
    let moto = Moto::start(&env.log_dir, &MotoFaults::default()).await?;
    let cloud_map = CloudMap::new(&moto).await?;
    let upstreams = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("orders", "v1"), ("orders", "v2")],
        &env.log_dir,
    )
    .await?;
    let ns = cloud_map.create_http_namespace("example.local").await?;
    let orders = cloud_map
        .create_service(&ns, "orders", ServiceHealth::None)
        .await?;
    for (id, version, zone) in [("i-a", "v1", "us-east-1a"), ("i-b", "v2", "us-east-1b")] {
        let port = upstreams.port("orders", version)?.to_string();
        cloud_map
            .register(
                &orders,
                id,
                &[
                    ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                    ("AWS_INSTANCE_PORT", port.as_str()),
                    ("protocol", "HTTP"),
                    ("AVAILABILITY_ZONE", zone),
                    ("REGION", "us-east-1"),
                ],
            )
            .await?;
    }
    env.write_config(
        "orders-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders, namespace: cloud-map}
spec:
  host: orders.example.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
",
    )?;
    let (_capstan, envoy, mut client) = capstan_and_sidecar(
        &env,
        &moto,
        "[{name: example.local}]",
        AdsMode::Sotw,
        Some("us-east-1/us-east-1a"),
    )
    .await?;

    // Its own zone only, while it answers.
    wait_answers(
        "the local zone's instance",
        &mut client,
        HOST,
        false,
        &["v1"],
    )
    .await?;
    let steady = answers(&mut client, HOST, false, 30).await?;
    ensure!(steady.keys().eq(["v1"]), "left its zone: {steady:?}");

    // The local instance fails: ejected, the other zone takes over.
    upstreams.fail("orders", "v1", 503).await?;
    wait_until("failover to us-east-1b", CONFIG_TIMEOUT, async || {
        let counts = answers(&mut client, HOST, false, 12).await?;
        ensure!(counts.get("v2") == Some(&12), "{counts:?}");
        Ok(())
    })
    .await?;
    drop(envoy);
    Ok(())
}
