//! One server's row of `capstan-kube-bench`: start → ready, memory, the proxies' sync, then
//! the rounds of changes (an EndpointSlice's port, or an AuthorizationPolicy edit), each
//! timed per proxy from the PATCH to its ACK, and the CPU they cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_e2e::bench::proxies::{Fleet, Scenario, carries_port};
use capstan_e2e::bench::report::ms;
use capstan_e2e::bench::server::ServerSpec;
use capstan_e2e::bench::usage::{status_kib, wait_idle};
use capstan_load::stats::{Percentiles, fmt_ms};
use capstan_load::tracker::{Target, Tracker};
use tracing::info;

use crate::kubectl_proxy::KubectlProxy;
use crate::objects::{address, namespace};
use crate::{CHANGED_NS, Change, Row, WATCHED, policy};

/// How long the proxies that should receive a change may take to.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// The proxies of `--change endpoint` (plain sidecars, waiting for [`WATCHED`] with the
/// round's port) or of `--change policy` (workloads, waiting for their `virtualInbound` with
/// the round's edit; every listener response counted).
struct Proxies {
    change: Change,
    listeners: Arc<policy::ListenerCounts>,
}

impl Scenario for Proxies {
    /// As a workload (`--change policy`), proxy `k` claims endpoint 0 of service `k` as its
    /// address.
    fn node(&self, k: usize) -> Bytes {
        let workload = (self.change == Change::Policy).then(|| (address(k, 0), namespace(k)));
        capstan_e2e::bench::proxies::node(k, workload)
    }

    fn converged(&self, k: usize, message: &[u8], target: Target) -> anyhow::Result<bool> {
        if policy::is_listener(message) {
            self.listeners.received(k);
        }
        Ok(match (self.change, target.endpoint_port, target.marker) {
            (Change::Endpoint, Some(port), _) => carries_port(message, WATCHED, port)?,
            (Change::Policy, _, Some(edit)) => policy::carries_edit(message, edit)?,
            _ => false,
        })
    }
}

/// Measures the server `spec` with `proxies` proxies and `rounds` changes of `mode`
/// (`scoped`: under the root Sidecar); `change` numbers the changes across servers.
pub async fn measure(
    spec: &mut ServerSpec,
    kube_proxy: &KubectlProxy,
    proxies: usize,
    rounds: usize,
    scoped: bool,
    mode: Change,
    change: &mut u32,
) -> anyhow::Result<Row> {
    // The proxies that see the changed service: all, or its namespace's under the root
    // Sidecar (proxy k is in namespace ns-(k % 10), as `node` says); the policy's namespace's.
    let sees_change = |index: usize| match mode {
        Change::Endpoint => !scoped || namespace(index) == CHANGED_NS,
        Change::Policy => namespace(index) == policy::POLICY_NS,
    };
    let started = spec.start().await?;
    let (mut process, ready, ads_listening) =
        (started.process, started.ready, started.ads_listening);
    let pid = process.pid();
    let hwm_ready_kib = status_kib(pid, "VmHWM:");
    info!(server = spec.name, ready = ?ready, ads_listening = ?ads_listening, hwm_ready_kib, "ready");
    let idle = wait_idle(pid, Duration::from_secs(60)).await;
    let rss_idle_kib = status_kib(pid, "VmRSS:");
    info!(server = spec.name, after = ?idle, rss_idle_kib, "idle");

    // Connect the proxies.
    let listeners = Arc::new(policy::ListenerCounts::new(proxies));
    let fleet = Fleet::connect(
        proxies,
        spec.ads,
        Proxies {
            change: mode,
            listeners: listeners.clone(),
        },
    );
    let tracker = fleet.tracker.clone();
    let (synced, sync_ms) = fleet.wait_synced(spec.name, &mut process).await?;
    wait_idle(pid, Duration::from_secs(30)).await;

    // The changes.
    let mut samples = Vec::new();
    let mut patch_ms = Vec::new();
    let sync_times = tracker.sync_times();
    let expected = sync_times
        .iter()
        .enumerate()
        .filter(|(index, synced)| synced.is_some() && sees_change(*index))
        .count();
    let (bytes_before, responses_before) = tracker.traffic();
    let listeners_before = listeners.snapshot();
    let cpu_before = capstan_load::cpu::CpuClock::read(Some(pid));
    for round in 0..rounds {
        *change += 1;
        let (generation, start, took) = match mode {
            Change::Endpoint => {
                let port = 9000 + *change;
                let generation = tracker.expect_endpoint_port(port);
                let start = tracker.now();
                (generation, start, kube_proxy.set_slice_port(port).await?)
            }
            Change::Policy => {
                let edit = u64::from(*change);
                let generation = tracker.expect_marker(edit);
                let start = tracker.now();
                (generation, start, kube_proxy.edit_policy(edit).await?)
            }
        };
        patch_ms.push(ms(took));
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while tracker.converged_count(generation) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let times = tracker.convergence(generation);
        let arrived = times.iter().flatten().count();
        // Over the proxies that synced (a proxy the server turned away is not counted).
        let mut round_samples: Vec<Option<Duration>> = times
            .iter()
            .zip(&sync_times)
            .enumerate()
            .filter(|(index, (_, synced))| synced.is_some() && sees_change(*index))
            .map(|(_, (t, _))| t.map(|t| Tracker::offset(t.saturating_sub(start))))
            .collect();
        let round_stats = Percentiles::of(&round_samples);
        info!(
            server = spec.name,
            round,
            arrived,
            p50 = fmt_ms(round_stats.p50_ms),
            p99 = fmt_ms(round_stats.p99_ms),
            max = fmt_ms(round_stats.max_ms),
            patch_ms = ms(took),
            change = ?mode,
            "change"
        );
        samples.append(&mut round_samples);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_after = capstan_load::cpu::CpuClock::read(Some(pid));
    let (cpu, load_cpu) = cpu_after.ms_per_change_since(&cpu_before, rounds);
    let (bytes_after, responses_after) = tracker.traffic();
    let per_change = (rounds.max(1) * synced.max(1)) as f64;
    let row = Row {
        server: spec.name.to_string(),
        ready_ms: ms(ready),
        ads_listening_ms: ads_listening.map(ms),
        hwm_ready_kib,
        rss_idle_kib,
        sync_ms,
        synced,
        hwm_end_kib: status_kib(pid, "VmHWM:"),
        rss_end_kib: status_kib(pid, "VmRSS:"),
        endpoint: Percentiles::of(&samples),
        outside_pushed: (mode == Change::Policy).then(|| {
            policy::pushed_outside(&listeners_before, &listeners.snapshot(), |k| {
                !sees_change(k)
            })
        }),
        patch_ms,
        cpu_ms_per_change: cpu,
        load_cpu_ms_per_change: load_cpu,
        bytes_per_proxy_per_change: (bytes_after - bytes_before) as f64 / per_change,
        responses_per_proxy_per_change: (responses_after - responses_before) as f64 / per_change,
        errors: tracker.errors(),
    };
    fleet.shutdown().await;
    process.stop();
    Ok(row)
}
