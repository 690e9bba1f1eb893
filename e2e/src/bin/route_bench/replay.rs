//! `--replay-peer`: the same edits served by the go-control-plane peer replaying, byte for
//! byte, the two configurations capstan served (captured from capstan over ADS as the
//! bench's Envoy's node), to a fresh Envoy in the first one's place. The peer watches and
//! translates nothing — an edit is one switch between two prepared snapshots, which
//! go-control-plane encodes and sends — so its figure is what a control plane that only
//! hands over the same bytes gets, with the same Envoy, in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use capstan_e2e::envoy::loopback;
use capstan_e2e::wait_until;
use capstan_load::control::ControlClient;
use capstan_load::server_process::ServerProcess;

use super::{Bench, Run, start_envoy};

/// How long the peer gets to start.
const PEER_READY: Duration = Duration::from_secs(30);

/// The peer binary: `$CAPSTAN_GCP_PEER`, else `gcp-peer` in `$CAPSTAN_TOOLS_DIR` (where
/// `make peer` builds it).
pub(crate) fn peer_bin(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = flag
        .or_else(|| {
            std::env::var_os("CAPSTAN_TOOLS_DIR").map(|dir| PathBuf::from(dir).join("gcp-peer"))
        })
        .context("no peer: set CAPSTAN_GCP_PEER or CAPSTAN_TOOLS_DIR (make peer builds it)")?;
    ensure!(
        bin.is_file(),
        "{}: no such file (make peer builds it)",
        bin.display()
    );
    Ok(bin)
}

/// Captures what capstan serves now and after one more edit, moves the bench to an Envoy on
/// the peer, and times `edits` switches between the two, each `prepare` after the last.
pub(crate) async fn run(
    bench: &mut Bench,
    peer_bin: &std::path::Path,
    edits: usize,
    prepare: Duration,
) -> anyhow::Result<Run> {
    let peer = ServerProcess::start(peer_bin, &[], 0, 0, &[], PEER_READY).await?;
    let control = ControlClient::new(peer.control);
    let capstan_xds = loopback(bench.capstan.xds_port);
    let node = bench.bootstrap["node"].clone();
    let first = bench.current_target();
    control.replay_capture(capstan_xds, &first, &node).await?;
    let (served, _) = bench.edit(Some(prepare)).await?;
    ensure!(
        served.is_some(),
        "the edit to capture was not served in time"
    );
    let second = bench.current_target();
    control.replay_capture(capstan_xds, &second, &node).await?;
    control.replay_serve(&second).await?;

    // A fresh Envoy, as the same node, on the peer: capstan's Envoy goes first, as the new
    // one binds the same listeners.
    bench.envoy.process().stop();
    let mut bootstrap = bench.bootstrap.clone();
    bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        [0]["endpoint"]["address"]["socket_address"]["port_value"] =
        serde_json::json!(peer.ads.port());
    let (envoy, proxy) = start_envoy(
        bench.capture,
        &bench.envoy_bin,
        &bootstrap,
        &bench.log_dir,
        "envoy-replay",
    )
    .await?;
    bench.envoy = envoy;
    bench.proxy = proxy;
    let log_dir = bench.log_dir.clone();
    wait_until(
        "the replayed configuration to be served",
        Duration::from_secs(60),
        async || {
            ensure!(bench.served(&second).await?, "not served yet");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("logs in {}", log_dir.display()))?;

    let mut samples = Vec::with_capacity(edits);
    let mut polls = Vec::with_capacity(edits);
    for i in 0..edits {
        let target = bench.next_target();
        tokio::time::sleep(prepare).await;
        let switched = Instant::now();
        control.replay_serve(target).await?;
        let (took, n) = bench.await_served(target, switched).await?;
        samples.push(took);
        polls.push(n);
        if (i + 1) % 10 == 0 {
            eprintln!("replayed by the peer: {} of {edits} edits", i + 1);
        }
    }
    bench.envoy.ensure_no_rejected_updates().await?;
    peer.stop().await?;
    Ok(Run::timed("go-control-plane replay", &samples, polls))
}
