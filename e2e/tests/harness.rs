//! Checks of the harness itself against real processes: the upstream server, and Envoy with
//! the generated bootstrap (validated, and running without a control plane). No capstan needed.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::ensure;
use capstan_e2e::envoy::{AdsMode, Bootstrap, Envoy, validate_bootstrap};
use capstan_e2e::http::HttpClient;
use capstan_e2e::locate::envoy_bin;
use capstan_e2e::mesh::TestEnv;
use capstan_e2e::ports::free_port;
use capstan_e2e::upstreams::Upstreams;
use serde_json::Value;

const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_capstan-upstream");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_with_its_identity() -> anyhow::Result<()> {
    let env = TestEnv::new("upstream_answers_with_its_identity")?;
    let ups = Upstreams::start_on_free_ports(
        Path::new(UPSTREAM_BIN),
        &[("reviews", "v2"), ("ratings", "v1")],
        &env.log_dir,
    )
    .await?;
    let mut client = HttpClient::new(ups.addr("reviews", "v2")?);
    // Two requests on one kept-alive connection.
    for path in ["/reviews/1?x=y", "/"] {
        let resp = client
            .get("reviews:9080", path, &[("end-user", "jason")])
            .await?;
        ensure!(resp.status == 200, "status {}", resp.status);
        ensure!(
            resp.body.ends_with(b"}\n"),
            "body lacks a trailing newline: {:?}",
            resp.text()
        );
        let body: Value = resp.json()?;
        let peer = body["peer"].as_str().unwrap_or_default();
        ensure!(
            peer.starts_with("127.0.0.1:"),
            "the peer is the client's address: {body}"
        );
        let mut expected = serde_json::json!({
            "service": "reviews", "version": "v2", "path": path, "host": "reviews:9080",
            "method": "GET", "headers": {"end-user": "jason", "host": "reviews:9080"},
        });
        expected["peer"] = peer.into();
        ensure!(body == expected, "unexpected body {body}");
    }
    let reply = HttpClient::new(ups.addr("ratings", "v1")?)
        .upstream("ratings", "/ratings/0", &[])
        .await?;
    ensure!(
        (reply.service.as_str(), reply.version.as_str()) == ("ratings", "v1"),
        "{reply:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_bootstrap_and_runs_without_control_plane() -> anyhow::Result<()> {
    let name = "envoy_accepts_bootstrap_and_runs_without_control_plane";
    let envoy_bin = envoy_bin()?;
    let env = TestEnv::new(name)?;
    // Nothing listens on this port: Envoy must still start and serve its admin API.
    let closed_xds_port = free_port()?;

    let mut envoys = Vec::new();
    for (mode, label) in [(AdsMode::Sotw, "sotw"), (AdsMode::Delta, "delta")] {
        let bootstrap = Bootstrap::new(mode, closed_xds_port);
        let path = env.log_dir.join(format!("validate-{label}.json"));
        bootstrap.write(&path)?;
        validate_bootstrap(&envoy_bin, &path)?;
        // Both run side by side.
        envoys.push((
            Envoy::start(
                &envoy_bin,
                &bootstrap,
                &env.log_dir,
                &format!("envoy-{label}"),
            )
            .await?,
            bootstrap,
        ));
    }
    for (envoy, bootstrap) in &mut envoys {
        let info: Value = envoy.admin_get("/server_info").await?.json()?;
        ensure!(
            info["node"]["id"] == bootstrap.node_id().as_str(),
            "node id in /server_info: {}",
            info["node"]["id"]
        );
        ensure!(
            info["node"]["metadata"]["NAMESPACE"] == "bookinfo",
            "{}",
            info["node"]
        );
        let accepted = envoy.accepted_updates().await?;
        ensure!(
            accepted.values().all(|n| *n == 0),
            "expected no control plane, yet updates were accepted: {accepted:?}"
        );
        let dump = envoy.config_dump(false).await?;
        let api_type =
            dump["configs"][0]["bootstrap"]["dynamic_resources"]["ads_config"]["api_type"].clone();
        ensure!(
            api_type == bootstrap.mode.api_type(),
            "bootstrap api_type in config_dump: {api_type}"
        );
        envoy.process().ensure_running()?;
    }
    let admins: Vec<SocketAddr> = envoys.iter().map(|(e, _)| e.admin_addr()).collect();
    ensure!(
        admins[0] != admins[1],
        "both Envoys report admin {admins:?}"
    );
    drop(envoys);
    // Stopped on drop: the admin ports no longer answer.
    for admin in admins {
        let gone = HttpClient::new(admin)
            .get("x", "/ready", &[])
            .await
            .is_err();
        ensure!(gone, "Envoy admin {admin} still answers after drop");
    }
    Ok(())
}
