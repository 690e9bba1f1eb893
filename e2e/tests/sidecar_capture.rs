//! capstan's capture-mode sidecar listeners (`--sidecar-listeners capture`) with real traffic:
//! a real Envoy running as uid 1337 behind istio-init's iptables rules (the `capture`
//! harness), in this binary's own network namespace. An application's connection to a
//! service address is captured into `virtualOutbound`, handed to the port's listener, sent to
//! the workload's address, captured again into `virtualInbound` and delivered to the
//! application from 127.0.0.6 — the path every request takes between two pods with Istio.
//! Here both pods are one: the sidecar of workload 10.244.1.7 calls its own services.
//! Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capstan::Capstan;
use capstan_e2e::capture::{self, service_ip};
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy};
use capstan_e2e::http::{HttpClient, UpstreamReply};
use capstan_e2e::mesh::{CONFIG_TIMEOUT, TestEnv};
use capstan_e2e::netns::pod_ip;
use capstan_e2e::tls_pki::{TestCa, connector, https_get};
use capstan_e2e::upstreams::{UpstreamTls, Upstreams};
use capstan_e2e::wait_until;

capstan_e2e::private_network!();

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

/// bookinfo's `Sidecar` locking its sidecars' egress down to the mesh's services.
const REGISTRY_ONLY_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
";

/// Every test listens on 15001 and 15006 in the one namespace this binary has.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn service_entry(name: &str, address: u16, port: u16, protocol: &str, workload: &str) -> String {
    let port = format!(
        "{{number: {port}, name: {}, protocol: {protocol}}}",
        protocol.to_lowercase()
    );
    entry(name, address, &port, workload)
}

/// A ServiceEntry `name` on service address `address` with the one port `port` (flow
/// YAML), its one endpoint `workload`.
fn entry(name: &str, address: u16, port: &str, workload: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  addresses: [{}]
  location: MESH_INTERNAL
  ports: [{port}]
  resolution: STATIC
  endpoints: [{{address: {workload}}}]
",
        service_ip(address),
    )
}

/// One request to `address` (a service's address, so the capture takes it) as `host`.
async fn call(address: SocketAddr, host: &str) -> anyhow::Result<UpstreamReply> {
    let response = HttpClient::new(address).get(host, "/whoami", &[]).await?;
    ensure!(
        response.status.is_success(),
        "{address} as {host}: {} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    serde_json::from_slice(&response.body).context("an upstream's reply")
}

/// capstan in capture mode on `env`'s folder, and the sidecar (uid 1337, behind the capture)
/// of the workload at `address`, with its inbound listener up.
async fn capstan_and_captured_sidecar(
    env: &TestEnv,
    mode: AdsMode,
    address: &str,
) -> anyhow::Result<(Capstan, Envoy)> {
    let capstan = Capstan::start_folder_with(
        &env.config_dir,
        &["--sidecar-listeners", "capture"],
        &env.log_dir,
        "capstan",
    )
    .await?;
    let mut bootstrap = Bootstrap::new(mode, capstan.xds_port);
    bootstrap.workload = "app-0".to_string();
    bootstrap.address = address.to_string();
    let envoy = Envoy::start_as(
        &capstan_e2e::locate::envoy_bin()?,
        &bootstrap,
        &env.log_dir,
        "sidecar",
        capture::PROXY,
    )
    .await?;
    envoy
        .wait_listener_port("virtualInbound", CONFIG_TIMEOUT)
        .await
        .with_context(|| format!("logs in {}", env.log_dir.display()))?;
    Ok((capstan, envoy))
}

struct CaptureMesh {
    envoy: Envoy,
    _capstan: Capstan,
    upstreams: Upstreams,
    env: TestEnv,
}

/// The workload's apps (`reviews` on 9080, `db` on 5432, `ratings` on 9090), capstan in
/// capture mode on their ServiceEntries (reviews and db; ratings comes later), and the
/// workload's sidecar.
async fn start(name: &str) -> anyhow::Result<CaptureMesh> {
    capture::install()?;
    let env = TestEnv::new(name)?;
    let workload = pod_ip(263); // 10.244.1.7
    let apps = [
        ("reviews", "v1", SocketAddr::from((workload, 9080))),
        ("db", "v1", SocketAddr::from((workload, 5432))),
        ("ratings", "v1", SocketAddr::from((workload, 9090))),
    ];
    let upstreams = Upstreams::start(Path::new(UPSTREAM_BIN), &apps, &env.log_dir, "apps").await?;
    let workload = workload.to_string();
    env.write_config(
        "reviews.yaml",
        &service_entry("reviews", 10, 9080, "HTTP", &workload),
    )?;
    env.write_config("db.yaml", &service_entry("db", 20, 5432, "TCP", &workload))?;
    let (capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Sotw, &workload).await?;
    Ok(CaptureMesh {
        envoy,
        _capstan: capstan,
        upstreams,
        env,
    })
}

/// HTTP by service address and Host, and TCP by service address, out through virtualOutbound
/// and back in through virtualInbound; then a service added while running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_traffic_goes_out_and_back_in_through_the_sidecar() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let capture = capture::install()?;
    let mesh = start("captured_traffic_goes_out_and_back_in_through_the_sidecar").await?;
    let log_dir = mesh.env.log_dir.clone();
    let before = capture.redirected()?;

    // HTTP: the port's listener routes by Host to reviews' cluster.
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let reply = wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    ensure!(reply.service == "reviews", "{reply:?}");
    ensure!(
        reply.peer.starts_with("127.0.0.6:"),
        "the app was not reached through the inbound listener: {reply:?}"
    );
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "no Envoy on the way: {reply:?}"
    );

    // TCP: db's address and port, straight to its cluster, bytes untouched.
    let db = SocketAddr::from((service_ip(20), 5432));
    let reply = call(db, "anything").await?;
    ensure!(reply.service == "db", "{reply:?}");
    ensure!(reply.peer.starts_with("127.0.0.6:"), "{reply:?}");
    ensure!(
        !reply.headers.contains_key("x-request-id"),
        "a TCP port went through an HTTP connection manager: {reply:?}"
    );

    let moved = capture.redirected()?.since(before);
    ensure!(
        moved.outbound >= 2 && moved.inbound >= 2,
        "connections not captured both ways: {moved:?}"
    );
    let stats = mesh
        .envoy
        .stats("inbound|")
        .await?
        .into_iter()
        .filter(|(k, v)| k.ends_with("upstream_cx_total") && *v > 0)
        .map(|(k, _)| k)
        .collect::<Vec<_>>();
    ensure!(
        stats.iter().any(|k| k.contains("inbound|9080||"))
            && stats.iter().any(|k| k.contains("inbound|5432||")),
        "inbound clusters unused: {stats:?}"
    );

    // A service added while running: a listener for its port and a chain for the workload.
    let ratings = SocketAddr::from((service_ip(30), 9090));
    ensure!(
        call(ratings, "ratings").await.is_err(),
        "ratings answered before it was configured"
    );
    mesh.env.write_config(
        "ratings.yaml",
        &service_entry("ratings", 30, 9090, "HTTP", &pod_ip(263).to_string()),
    )?;
    let reply = wait_until("ratings after it was added", CONFIG_TIMEOUT, async || {
        call(ratings, "ratings").await
    })
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;
    ensure!(
        reply.service == "ratings" && reply.peer.starts_with("127.0.0.6:"),
        "{reply:?}"
    );
    ensure!(
        mesh.upstreams.count("ratings", "v1").await? >= 1,
        "ratings counted nothing"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A ServiceEntry for an HTTPS host on 443 whose one endpoint is the workload on `target`.
fn https_entry(host: &str, target: u16, workload: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {}, namespace: bookinfo}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: {workload}, ports: {{https: {target}}}}}]
",
        host.replace('.', "-")
    )
}

/// A VirtualService `tcp` route sends db's connections to db2, for the sidecars of the
/// namespace its `sourceNamespace` and `exportTo` name; two HTTPS hosts share port 443 and one
/// address, told apart by SNI and never decrypted by the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_and_tls_by_sni_on_sidecars() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    capture::install()?;
    let name = "tcp_routes_and_tls_by_sni_on_sidecars";
    let env = TestEnv::new(name)?;
    let workload = pod_ip(263);
    let at = |port: u16| SocketAddr::from((workload, port));
    let ca = TestCa::new(&env.log_dir, "external")?;
    let server = ca.server(
        "external-server",
        &["secure.example.com", "other.example.com"],
    )?;
    let tls = UpstreamTls {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: None,
    };
    let upstreams = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[("db", "v1", at(5432)), ("db2", "v1", at(5433))],
        &[("secure", "v1", at(8443)), ("other", "v1", at(8444))],
        Some(&tls),
        &env.log_dir,
        "apps",
    )
    .await?;
    let address = workload.to_string();
    env.write_config("db.yaml", &service_entry("db", 20, 5432, "TCP", &address))?;
    env.write_config("db2.yaml", &service_entry("db2", 21, 5433, "TCP", &address))?;
    env.write_config(
        "secure.yaml",
        &https_entry("secure.example.com", 8443, &address),
    )?;
    env.write_config(
        "other.yaml",
        &https_entry("other.example.com", 8444, &address),
    )?;
    let (_capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Delta, &address).await?;
    let log_dir = env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());

    // Both HTTPS hosts on one address and port: the SNI picks the workload port.
    let connector = connector(&ca.cert_pem, None)?;
    let vip = SocketAddr::from((service_ip(40), 443));
    for (host, service) in [
        ("secure.example.com", "secure"),
        ("other.example.com", "other"),
    ] {
        let response = wait_until(&format!("{host} by SNI"), CONFIG_TIMEOUT, async || {
            https_get(&connector, vip, host, "/").await
        })
        .await
        .with_context(logs)?;
        let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
        ensure!(reply.service == service, "{host}: {reply:?}");
        ensure!(
            !reply.headers.contains_key("x-request-id"),
            "the sidecar decrypted {host}: {reply:?}"
        );
    }

    // db straight to db, then a tcp route sends db's connections to db2.
    let db = SocketAddr::from((service_ip(20), 5432));
    let reply = wait_until("db through the capture", CONFIG_TIMEOUT, async || {
        call(db, "db").await
    })
    .await
    .with_context(logs)?;
    ensure!(reply.service == "db", "{reply:?}");
    env.write_config(
        "db-vs.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db2.bookinfo.svc.cluster.local, port: {number: 5433}}}]
",
    )?;
    wait_until("db's connections at db2", CONFIG_TIMEOUT, async || {
        let reply = call(db, "db").await?;
        ensure!(reply.service == "db2", "{reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    ensure!(upstreams.count("db2", "v1").await? >= 1);

    // The route read by the caller's namespace (this sidecar's is bookinfo): a match for
    // another namespace's sidecars leaves it on db, one for bookinfo's sends it to db2, and
    // the VirtualService exported elsewhere only leaves it on db again.
    let db_routes = |source: &str, export_to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  exportTo: {export_to}
  tcp:
  - match: [{{port: 5432, sourceNamespace: {source}}}]
    route: [{{destination: {{host: db2.bookinfo.svc.cluster.local, port: {{number: 5433}}}}}}]
"
        )
    };
    for (source, export_to, expected) in [
        ("elsewhere", "[\"*\"]", "db"),
        ("bookinfo", "[\"*\"]", "db2"),
        ("bookinfo", "[elsewhere]", "db"),
    ] {
        env.write_config("db-vs.yaml", &db_routes(source, export_to))?;
        let step = format!("sourceNamespace {source}, exportTo {export_to}: {expected}");
        wait_until(&step, CONFIG_TIMEOUT, async || {
            let reply = call(db, "db").await?;
            ensure!(reply.service == expected, "{reply:?}");
            Ok(())
        })
        .await
        .with_context(logs)?;
    }
    envoy.ensure_no_rejected_updates().await
}

/// Istio's `outboundTrafficPolicy`, with real traffic to a host outside the mesh. Under the
/// mesh's default `ALLOW_ANY`, a request for a Host no service has on a service's port, and a
/// connection to a port no service uses, go on to where they were headed; a `Sidecar` in the
/// namespace with `REGISTRY_ONLY` (and no egress listeners: it still sees every service) makes
/// the first a 502 and closes the second, while the mesh's services still answer; removing
/// it lets both through again; one naming an `egressProxy` sends both there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_traffic_policy_decides_where_unknown_destinations_go() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("the_outbound_traffic_policy_decides_where_unknown_destinations_go").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    // The outside host serves HTTP on reviews' port (9080) and on one no service uses.
    let server = |port: u16| SocketAddr::from((capture::EXTERNAL_SERVER, port));
    let _outside = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[
            ("outside", "v1", server(9080)),
            ("outside-tcp", "v1", server(7070)),
        ],
        &log_dir,
        "outside",
    )
    .await?;
    let unknown_host = async || {
        HttpClient::new(SocketAddr::from((capture::EXTERNAL_HOST, 9080)))
            .get("unknown.example.org", "/whoami", &[])
            .await
    };
    let unknown_port = SocketAddr::from((capture::EXTERNAL_HOST, 7070));
    let reviews = SocketAddr::from((service_ip(10), 9080));

    wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;
    let response = unknown_host().await?;
    let reply: UpstreamReply = serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "{} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })?;
    ensure!(reply.service == "outside", "allow_any: {reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "not through the port's HTTP listener: {reply:?}"
    );
    let reply = call(unknown_port, "anything").await?;
    ensure!(reply.service == "outside-tcp", "passthrough: {reply:?}");
    ensure!(
        !reply.headers.contains_key("x-request-id"),
        "a port no service uses went through an HTTP listener: {reply:?}"
    );

    mesh.env
        .write_config("registry-only.yaml", REGISTRY_ONLY_SIDECAR)?;
    wait_until("a 502 for the unknown Host", CONFIG_TIMEOUT, async || {
        let response = unknown_host().await?;
        ensure!(response.status == 502, "{}", response.status);
        Ok(())
    })
    .await
    .with_context(logs)?;
    wait_until("the unknown port refused", CONFIG_TIMEOUT, async || {
        let outcome = call(unknown_port, "anything").await;
        ensure!(outcome.is_err(), "still passed through: {outcome:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    let reply = call(reviews, "reviews").await?;
    ensure!(
        reply.service == "reviews",
        "a service of the mesh: {reply:?}"
    );
    let db = call(SocketAddr::from((service_ip(20), 5432)), "db").await?;
    ensure!(db.service == "db", "a TCP service of the mesh: {db:?}");

    std::fs::remove_file(mesh.env.config_dir.join("registry-only.yaml"))?;
    wait_until(
        "the unknown Host passed again",
        CONFIG_TIMEOUT,
        async || {
            let response = unknown_host().await?;
            ensure!(response.status.is_success(), "{}", response.status);
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    let reply = call(unknown_port, "anything").await?;
    ensure!(
        reply.service == "outside-tcp",
        "passthrough again: {reply:?}"
    );

    // An egress proxy (here an app of the workload on 3128, a service of the mesh) takes
    // what no service has: the request for the unknown Host and the connection to the
    // unknown port both land there instead of outside.
    let workload = pod_ip(263);
    let _squid = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("squid", "v1", SocketAddr::from((workload, 3128)))],
        &log_dir,
        "squid",
    )
    .await?;
    let squid = service_entry("squid", 30, 3128, "TCP", &workload.to_string());
    mesh.env.write_config("squid.yaml", &squid)?;
    mesh.env.write_config(
        "egress-proxy.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: squid.bookinfo.svc.cluster.local, port: {number: 3128}}
",
    )?;
    wait_until(
        "the unknown Host at the egress proxy",
        CONFIG_TIMEOUT,
        async || {
            let response = unknown_host().await?;
            let reply: UpstreamReply = serde_json::from_slice(&response.body)
                .with_context(|| format!("{}", response.status))?;
            ensure!(reply.service == "squid", "{reply:?}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    let reply = call(unknown_port, "anything").await?;
    ensure!(reply.service == "squid", "the unknown port: {reply:?}");
    let reply = call(reviews, "reviews").await?;
    ensure!(
        reply.service == "reviews",
        "a service of the mesh: {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A `Sidecar` with an ingress listener: connections to the workload's port 9080 go to its
/// `defaultEndpoint`, an app listening on 127.0.0.1 only, instead of the port its
/// ServiceEntry names; without the Sidecar they reach the port again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_listener_sends_inbound_traffic_to_its_default_endpoint()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh =
        start("a_sidecar_ingress_listener_sends_inbound_traffic_to_its_default_endpoint").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let local = SocketAddr::from(([127, 0, 0, 1], 18080));
    let _local_app = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[("reviews-on-loopback", "v1", local)],
        &log_dir,
        "loopback-app",
    )
    .await?;
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let reply = wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");

    mesh.env.write_config(
        "ingress.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:18080
",
    )?;
    let reply = wait_until("the app on loopback", CONFIG_TIMEOUT, async || {
        let reply = call(reviews, "reviews").await?;
        ensure!(reply.service == "reviews-on-loopback", "{reply:?}");
        Ok(reply)
    })
    .await
    .with_context(logs)?;
    ensure!(
        reply.headers.contains_key("x-request-id") && reply.peer.starts_with("127.0.0.1:"),
        "not through the sidecar's inbound HTTP chain: {reply:?}"
    );
    // Ports the Sidecar does not list pass through to the workload: db on 5432.
    let db = call(SocketAddr::from((service_ip(20), 5432)), "db").await?;
    ensure!(db.service == "db", "{db:?}");

    std::fs::remove_file(mesh.env.config_dir.join("ingress.yaml"))?;
    wait_until("the workload's port again", CONFIG_TIMEOUT, async || {
        let reply = call(reviews, "reviews").await?;
        ensure!(reply.service == "reviews", "{reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A TLS port's names no service has follow the sidecar's outbound traffic policy, as Istio's
/// fallthrough chain: with a service's HTTPS port 443 in the mesh, a connection on 443 to a
/// host outside the mesh, with a name no service has, passes through under `ALLOW_ANY`
/// (reaching the outside server) and is closed under a `Sidecar`'s `REGISTRY_ONLY`, while the
/// mesh's own name still reaches its workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_names_no_service_has_follow_the_outbound_policy() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    capture::install()?;
    let env = TestEnv::new("tls_names_no_service_has_follow_the_outbound_policy")?;
    let workload = pod_ip(263);
    let ca = TestCa::new(&env.log_dir, "external")?;
    let server = ca.server("tls-server", &["secure.example.com", "unknown.example.org"])?;
    let tls = UpstreamTls {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: None,
    };
    let _upstreams = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[],
        &[
            ("secure", "v1", SocketAddr::from((workload, 8443))),
            (
                "outside-tls",
                "v1",
                SocketAddr::from((capture::EXTERNAL_SERVER, 443)),
            ),
        ],
        Some(&tls),
        &env.log_dir,
        "apps",
    )
    .await?;
    let address = workload.to_string();
    env.write_config(
        "secure.yaml",
        &https_entry("secure.example.com", 8443, &address),
    )?;
    let (_capstan, envoy) = capstan_and_captured_sidecar(&env, AdsMode::Sotw, &address).await?;
    let log_dir = env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let connector = connector(&ca.cert_pem, None)?;
    let outside = SocketAddr::from((capture::EXTERNAL_HOST, 443));
    let reached = async |name: &str| -> anyhow::Result<String> {
        let response = https_get(&connector, outside, name, "/").await?;
        let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
        Ok(reply.service)
    };

    let service = wait_until("the mesh's name by SNI", CONFIG_TIMEOUT, async || {
        reached("secure.example.com").await
    })
    .await
    .with_context(logs)?;
    ensure!(service == "secure", "secure.example.com reached {service}");
    let service = reached("unknown.example.org").await?;
    ensure!(service == "outside-tls", "allow_any: reached {service}");

    env.write_config("registry-only.yaml", REGISTRY_ONLY_SIDECAR)?;
    wait_until("the unknown name refused", CONFIG_TIMEOUT, async || {
        let outcome = reached("unknown.example.org").await;
        ensure!(outcome.is_err(), "still passed through: {outcome:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    let service = reached("secure.example.com").await?;
    ensure!(
        service == "secure",
        "registry_only, the mesh's name: {service}"
    );

    std::fs::remove_file(env.config_dir.join("registry-only.yaml"))?;
    wait_until(
        "the unknown name passed again",
        CONFIG_TIMEOUT,
        async || {
            let service = reached("unknown.example.org").await?;
            ensure!(service == "outside-tls", "{service}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    envoy.ensure_no_rejected_updates().await
}

/// `concurrency` requests at once to reviews through the capture, each held `delay_ms` by
/// the app: how many were answered OK and how many shed by a sidecar (503 with
/// `x-envoy-overloaded`), and how many reached the app.
async fn send_burst(
    mesh: &CaptureMesh,
    concurrency: usize,
    delay_ms: u64,
) -> anyhow::Result<Burst> {
    let reviews = SocketAddr::from((service_ip(10), 9080));
    let before = mesh.upstreams.count("reviews", "v1").await?;
    let delay = delay_ms.to_string();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let delay = delay.clone();
            tokio::spawn(async move {
                HttpClient::new(reviews)
                    .get("reviews", "/slow", &[("x-upstream-delay-ms", &delay)])
                    .await
            })
        })
        .collect();
    let mut burst = Burst::default();
    for task in tasks {
        let response = task.await??;
        let shed = response
            .headers
            .get("x-envoy-overloaded")
            .is_some_and(|v| v == "true");
        match response.status.as_u16() {
            200 => burst.ok += 1,
            503 if shed => burst.shed += 1,
            status => burst.other.push(format!("{status} {}", response.text())),
        }
    }
    burst.reached = mesh.upstreams.count("reviews", "v1").await? - before;
    Ok(burst)
}

/// Fails unless the sidecar's `inbound|9080||` allows `expected` connections.
async fn max_inbound_connections(mesh: &CaptureMesh, expected: u64) -> anyhow::Result<()> {
    let cluster = mesh.envoy.active_cluster("inbound|9080||").await?;
    let limit = cluster
        .as_ref()
        .and_then(|c| c["circuit_breakers"]["thresholds"][0]["max_connections"].as_u64());
    ensure!(limit == Some(expected), "max_connections {limit:?}");
    Ok(())
}

#[derive(Debug, Default)]
struct Burst {
    ok: u64,
    shed: u64,
    other: Vec<String>,
    reached: u64,
}

/// A `Sidecar`'s `inboundConnectionPool` limits what its sidecar passes on to the workload:
/// with one connection and one pending request allowed, a burst of slow requests is partly
/// shed by the sidecar's inbound side and never reaches the app; without the Sidecar, the
/// same burst all gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_connection_pool_sheds_what_the_workload_is_not_to_take() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("an_inbound_connection_pool_sheds_what_the_workload_is_not_to_take").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let reviews = SocketAddr::from((service_ip(10), 9080));
    wait_until("reviews through the capture", CONFIG_TIMEOUT, async || {
        call(reviews, "reviews").await
    })
    .await
    .with_context(logs)?;

    mesh.env.write_config(
        "limits.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  inboundConnectionPool:
    tcp: {maxConnections: 1}
    http: {http1MaxPendingRequests: 1}
",
    )?;
    wait_until("the inbound limit in Envoy", CONFIG_TIMEOUT, async || {
        max_inbound_connections(&mesh, 1).await
    })
    .await
    .with_context(logs)?;
    let burst = send_burst(&mesh, 8, 1500).await?;
    ensure!(burst.other.is_empty(), "unexpected answers: {burst:?}");
    ensure!(
        burst.ok >= 1 && burst.shed >= 1,
        "expected some OK and some shed: {burst:?}"
    );
    ensure!(
        burst.reached == burst.ok,
        "the app saw {} requests, {} were answered OK: shed ones reached it ({burst:?})",
        burst.reached,
        burst.ok
    );

    std::fs::remove_file(mesh.env.config_dir.join("limits.yaml"))?;
    wait_until("no inbound limit", CONFIG_TIMEOUT, async || {
        max_inbound_connections(&mesh, u32::MAX.into()).await
    })
    .await
    .with_context(logs)?;
    let burst = send_burst(&mesh, 8, 300).await?;
    ensure!(
        burst.ok == 8 && burst.reached == 8,
        "without the Sidecar every request gets through: {burst:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A `Sidecar` ingress listener with `tls` terminates it, as in Istio's "ingress sidecar TLS
/// termination" task: HTTPS to the workload's port 9443 is decrypted by its sidecar (a
/// SIMPLE server certificate the client verifies) and reaches the app's plain HTTP port 9080;
/// with MUTUAL, a client without a certificate is refused and one with a certificate of the
/// named CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ingress_listener_terminates_tls() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_sidecar_ingress_listener_terminates_tls").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    // Files the sidecar (uid 1337) reads: outside root's private home.
    let certs = tempfile::Builder::new()
        .prefix("capstan-e2e-ingress-tls-")
        .tempdir()?;
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755))?;
    let ca = TestCa::new(certs.path(), "ingress")?;
    let host = "secure-reviews.bookinfo.svc.cluster.local";
    let server = ca.server("secure-reviews", &[host])?;
    let client = ca.client("client", "spiffe://example.org/outside")?;
    let workload = pod_ip(263).to_string();
    mesh.env.write_config(
        "secure-reviews.yaml",
        &entry(
            "secure-reviews",
            50,
            "{number: 9443, name: https, protocol: HTTPS}",
            &workload,
        ),
    )?;
    let sidecar = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: bookinfo}}
spec:
  ingress:
  - port: {{number: 9443, protocol: HTTPS, name: external}}
    defaultEndpoint: 0.0.0.0:9080
    tls: {tls}
"
        )
    };
    let files = format!(
        "serverCertificate: {}, privateKey: {}",
        server.cert.display(),
        server.key.display()
    );
    mesh.env.write_config(
        "ingress.yaml",
        &sidecar(&format!("{{mode: SIMPLE, {files}}}")),
    )?;
    let secure = SocketAddr::from((service_ip(50), 9443));
    let anonymous = connector(&ca.cert_pem, None)?;
    let reply = wait_until(
        "HTTPS terminated by the sidecar",
        CONFIG_TIMEOUT,
        async || {
            let response = https_get(&anonymous, secure, host, "/whoami").await?;
            let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
            Ok(reply)
        },
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id"),
        "not decrypted into the sidecar's inbound HTTP chain: {reply:?}"
    );

    mesh.env.write_config(
        "ingress.yaml",
        &sidecar(&format!(
            "{{mode: MUTUAL, {files}, caCertificates: {}}}",
            ca.cert_path.display()
        )),
    )?;
    wait_until(
        "a client without a certificate refused",
        CONFIG_TIMEOUT,
        async || {
            let outcome = https_get(&anonymous, secure, host, "/whoami").await;
            ensure!(outcome.is_err(), "still served: {outcome:?}");
            Ok(())
        },
    )
    .await
    .with_context(logs)?;
    let identified = connector(&ca.cert_pem, Some(&client))?;
    let response = https_get(&identified, secure, host, "/whoami").await?;
    let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
    ensure!(
        reply.service == "reviews",
        "with a client certificate: {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A ServiceEntry whose address is a CIDR range (an external network, say a VPC's): a
/// connection to any address in it on the entry's port goes to the entry's endpoints, by a
/// filter chain on the port's listener; without the entry it passes through to where it was
/// headed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cidr_address_takes_connections_to_its_whole_range() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_cidr_address_takes_connections_to_its_whole_range").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let _outside = Upstreams::start(
        Path::new(UPSTREAM_BIN),
        &[(
            "outside-tcp",
            "v1",
            SocketAddr::from((capture::EXTERNAL_SERVER, 7070)),
        )],
        &log_dir,
        "outside",
    )
    .await?;
    let in_range = SocketAddr::from((capture::EXTERNAL_HOST, 7070));
    let reply = wait_until(
        "the outside server, passed through",
        CONFIG_TIMEOUT,
        async || call(in_range, "anything").await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "outside-tcp", "{reply:?}");

    let range = format!("{}/24", capture::EXTERNAL_HOST);
    mesh.env.write_config(
        "vpc.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: vpc-db, namespace: bookinfo}}
spec:
  hosts: [vpc-db.bookinfo.svc.cluster.local]
  addresses: [{range}]
  location: MESH_EXTERNAL
  ports: [{{number: 7070, name: tcp, protocol: TCP, targetPort: 5432}}]
  resolution: STATIC
  endpoints: [{{address: {}}}]
",
            pod_ip(263)
        ),
    )?;
    wait_until("the range's endpoint", CONFIG_TIMEOUT, async || {
        let reply = call(in_range, "anything").await?;
        ensure!(reply.service == "db", "{reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;

    std::fs::remove_file(mesh.env.config_dir.join("vpc.yaml"))?;
    wait_until("passed through again", CONFIG_TIMEOUT, async || {
        let reply = call(in_range, "anything").await?;
        ensure!(reply.service == "outside-tcp", "{reply:?}");
        Ok(())
    })
    .await
    .with_context(logs)?;
    mesh.envoy.ensure_no_rejected_updates().await
}

/// A ServiceEntry port without a protocol, on its own address.
fn undeclared_entry(name: &str, address: u16, port: u16, target: u16, workload: &str) -> String {
    let port = format!("{{number: {port}, name: {name}, targetPort: {target}}}");
    entry(name, address, &port, workload)
}

/// Ports without a declared protocol, as many Kubernetes Services have: the sidecar reads the
/// first bytes of each connection, out and in. HTTP is routed (an HTTP connection manager on
/// both sides); TLS, which is not HTTP, passes through untouched to the workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_without_a_protocol_carry_http_and_anything_else() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("ports_without_a_protocol_carry_http_and_anything_else").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    let workload = pod_ip(263);
    let ca = TestCa::new(&log_dir, "undeclared")?;
    let server = ca.server("legacy-tls", &["legacy-tls.bookinfo.svc.cluster.local"])?;
    let tls = UpstreamTls {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: None,
    };
    let _tls_app = Upstreams::start_with_tls(
        Path::new(UPSTREAM_BIN),
        &[],
        &[("legacy-tls", "v1", SocketAddr::from((workload, 8443)))],
        Some(&tls),
        &log_dir,
        "tls-app",
    )
    .await?;
    let address = workload.to_string();
    // HTTP on 7070 to ratings' app (9090); TLS on 7443 to the TLS app (8443).
    mesh.env.write_config(
        "legacy-http.yaml",
        &undeclared_entry("legacy-http", 60, 7070, 9090, &address),
    )?;
    mesh.env.write_config(
        "legacy-tls.yaml",
        &undeclared_entry("legacy-tls", 61, 7443, 8443, &address),
    )?;

    let http = SocketAddr::from((service_ip(60), 7070));
    let reply = wait_until(
        "HTTP on a port without a protocol",
        CONFIG_TIMEOUT,
        async || call(http, "legacy-http").await,
    )
    .await
    .with_context(logs)?;
    ensure!(reply.service == "ratings", "{reply:?}");
    ensure!(
        reply.headers.contains_key("x-request-id") && reply.peer.starts_with("127.0.0.6:"),
        "not routed as HTTP out and in: {reply:?}"
    );

    let connector = connector(&ca.cert_pem, None)?;
    let vip = SocketAddr::from((service_ip(61), 7443));
    let response = https_get(
        &connector,
        vip,
        "legacy-tls.bookinfo.svc.cluster.local",
        "/",
    )
    .await
    .with_context(logs)?;
    let reply: UpstreamReply = serde_json::from_slice(&response.body)?;
    ensure!(reply.service == "legacy-tls", "{reply:?}");
    ensure!(
        !reply.headers.contains_key("x-request-id"),
        "TLS went through an HTTP connection manager: {reply:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}
