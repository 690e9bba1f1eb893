//! capstan's capture-mode sidecar listeners (`--sidecar-listeners capture`) with real traffic:
//! a real Envoy running as uid 1337 behind istio-init's iptables rules (the `capture`
//! harness), in this binary's own network namespace. An application's connection to a
//! service address is captured into `virtualOutbound`, handed to the port's listener, sent to
//! the workload's address, captured again into `virtualInbound` and delivered to the
//! application from 127.0.0.6 — the path every request takes between two pods with Istio.
//! Here both pods are one: the sidecar of workload 10.244.1.7 calls its own services. The
//! inbound side's own settings (a `Sidecar`'s ingress listeners and limits) are in
//! `sidecar_inbound.rs`. Logs: `<target>/debug/e2e-logs/<test name>/`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use capstan_e2e::capture::{self, service_ip};
use capstan_e2e::capture_mesh::{
    CaptureMesh, SniApps, StreamApps, call, capstan_and_captured_sidecar, entry, https_entry,
    service_entry, sidecar_bootstrap, start_capstan, start_captured_sidecar,
};
use capstan_e2e::envoy::{AdsMode, dynamic_route_config_names};
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

async fn start(name: &str) -> anyhow::Result<CaptureMesh> {
    capstan_e2e::capture_mesh::start(name, Path::new(UPSTREAM_BIN)).await
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
    // By its address as Host (a client using REVIEWS_SERVICE_HOST): routed as by name, as
    // istiod routes it, not passed through to an address nothing listens on.
    let reply = call(reviews, &reviews.to_string()).await?;
    ensure!(reply.service == "reviews", "by address: {reply:?}");

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

/// A VirtualService `tcp` route sends db's connections to db2, for the sidecars of the
/// namespace its `sourceNamespace` and `exportTo` name, and `tcp` and `tls` routes for the
/// workloads their `sourceLabels` name; two HTTPS hosts share port 443 and one address, told
/// apart by SNI and never decrypted by the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_and_tls_by_sni_on_sidecars() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    capture::install()?;
    let name = "tcp_routes_and_tls_by_sni_on_sidecars";
    let env = TestEnv::new(name)?;
    let workload = pod_ip(263);
    let apps = StreamApps::start(&env, Path::new(UPSTREAM_BIN), workload).await?;
    let address = workload.to_string();
    env.write_config("db.yaml", &service_entry("db", 20, 5432, "TCP", &address))?;
    // The workload is labelled `app: productpage`, which `sourceLabels` matches below.
    let capstan = start_capstan(&env).await?;
    let mut bootstrap = sidecar_bootstrap(AdsMode::Delta, capstan.xds_port, &address);
    bootstrap.labels = [("app", "productpage"), ("version", "v1")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    let envoy = start_captured_sidecar(&env, &bootstrap.to_json()).await?;
    let log_dir = env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());

    // Both HTTPS hosts on one address and port: the SNI picks the workload port.
    let vip = SocketAddr::from((service_ip(40), 443));
    for (host, service) in [
        ("secure.example.com", "secure"),
        ("other.example.com", "other"),
    ] {
        let reply = wait_until(&format!("{host} by SNI"), CONFIG_TIMEOUT, async || {
            apps.https_reply(vip, host).await
        })
        .await
        .with_context(logs)?;
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
    ensure!(apps.upstreams.count("db2", "v1").await? >= 1);

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

    // Read by the caller's labels: a `tcp` and a `tls` route for another app's workloads
    // leave this sidecar's connections where they were headed; for its own app they move
    // db's to db2 and secure.example.com's to other.example.com.
    let by_labels = |app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: bookinfo}}
spec:
  hosts: [db.bookinfo.svc.cluster.local]
  tcp:
  - match: [{{sourceLabels: {{app: {app}}}}}]
    route: [{{destination: {{host: db2.bookinfo.svc.cluster.local, port: {{number: 5433}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: bookinfo}}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{{sniHosts: [secure.example.com], sourceLabels: {{app: {app}}}}}]
    route: [{{destination: {{host: other.example.com}}}}]
"
        )
    };
    for (app, db_service, secure_service) in
        [("reports", "db", "secure"), ("productpage", "db2", "other")]
    {
        env.write_config("db-vs.yaml", &by_labels(app))?;
        let step = format!("sourceLabels app={app}: {db_service}, {secure_service}");
        wait_until(&step, CONFIG_TIMEOUT, async || {
            let reply = call(db, "db").await?;
            ensure!(reply.service == db_service, "db: {reply:?}");
            let reply = apps.https_reply(vip, "secure.example.com").await?;
            ensure!(reply.service == secure_service, "secure: {reply:?}");
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
    let apps = SniApps::start(
        &env,
        Path::new(UPSTREAM_BIN),
        &["secure.example.com", "unknown.example.org"],
        &[
            ("secure", SocketAddr::from((workload, 8443))),
            (
                "outside-tls",
                SocketAddr::from((capture::EXTERNAL_SERVER, 443)),
            ),
        ],
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
    let reached = async |name: &str| apps.reached(name).await;

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
/// both sides), to the service whose address was dialled whatever the Host; TLS, which is not
/// HTTP, passes through untouched to the workload.
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
    // The address is the service's, whatever the Host says (istiod's `<host>:<port>` route
    // configuration, any Host): a name no service has still reaches it as HTTP.
    let reply = call(http, "legacy.example.net").await.with_context(logs)?;
    ensure!(
        reply.service == "ratings" && reply.headers.contains_key("x-request-id"),
        "a Host the service does not have was not routed to it: {reply:?}"
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

/// A service with two HTTP ports: each port has a route configuration of its own (istiod's,
/// named by the port), so a Host without a port — what clients send for the default port,
/// or set by hand — reaches the port the connection was made to, not the service's first
/// port; and as with istiod, the port a Host names is ignored on a port's listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_port_reaches_the_port_the_connection_was_made_to() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start("a_host_without_a_port_reaches_the_port_the_connection_was_made_to").await?;
    let log_dir = mesh.env.log_dir.clone();
    let logs = || format!("logs in {}", log_dir.display());
    // `multi` on 9080 is reviews' app, on 9090 ratings' app.
    let ports = "{number: 9080, name: http, protocol: HTTP}, \
                 {number: 9090, name: http-alt, protocol: HTTP}";
    mesh.env.write_config(
        "multi.yaml",
        &entry("multi", 40, ports, &pod_ip(263).to_string()),
    )?;
    let first = SocketAddr::from((service_ip(40), 9080));
    let second = SocketAddr::from((service_ip(40), 9090));
    let reply = wait_until("multi's second port", CONFIG_TIMEOUT, async || {
        call(second, "multi").await
    })
    .await
    .with_context(logs)?;
    ensure!(
        reply.service == "ratings",
        "a bare Host on 9090 reached {}: {reply:?}",
        reply.service
    );
    let reply = call(first, "multi").await.with_context(logs)?;
    ensure!(reply.service == "reviews", "{reply:?}");
    let reply = call(second, "multi.bookinfo.svc.cluster.local:9080")
        .await
        .with_context(logs)?;
    ensure!(
        reply.service == "ratings",
        "the Host's port decided on 9090's listener: {reply:?}"
    );
    let routes = dynamic_route_config_names(&mesh.envoy.config_dump(false).await?);
    ensure!(
        routes.contains(&"9080".to_string()) && routes.contains(&"9090".to_string()),
        "{routes:?}"
    );
    mesh.envoy.ensure_no_rejected_updates().await
}
