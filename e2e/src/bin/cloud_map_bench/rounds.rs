//! The instance-change rounds of a `capstan-cloud-map-bench` row: the proxies connect and
//! sync, then each round registers one new instance in the changed service and times it to
//! every proxy's ACK, and to the poll of capstan's that read it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_e2e::bench::proxies::{Fleet, Scenario, carries_port, node};
use capstan_e2e::bench::report::ms;
use capstan_e2e::bench::server::Started;
use capstan_e2e::bench::usage::status_kib;
use capstan_e2e::process::ChildProcess;
use capstan_load::stats::{Percentiles, fmt_ms};
use capstan_load::tracker::{Target, Tracker};
use tracing::info;

use crate::metrics::scrape;
use crate::rows::Bench;
use crate::{ChangeRow, WATCHED};

/// How long every proxy may take to receive a round's instance.
const ROUND_TIMEOUT: Duration = Duration::from_secs(90);
/// How often capstan's metrics are read while a change is under way.
const SCRAPE_EVERY: Duration = Duration::from_millis(20);

/// The proxies: plain Istio sidecars, each waiting for [`WATCHED`] with the round's port.
struct Proxies;

impl Scenario for Proxies {
    fn node(&self, k: usize) -> Bytes {
        node(k, None)
    }

    fn converged(&self, _: usize, message: &[u8], target: Target) -> anyhow::Result<bool> {
        Ok(match target.endpoint_port {
            Some(port) => carries_port(message, WATCHED, port)?,
            None => false,
        })
    }
}

impl Bench<'_> {
    /// Connects the proxies to `server`, then registers one instance per round in the
    /// changed service and times it to every proxy's ACK. `monitoring`: the capstan that
    /// polls (the server itself, or the writer).
    pub async fn changes(
        &self,
        name: &str,
        server: &mut Started,
        mut writer: Option<&mut ChildProcess>,
        monitoring: SocketAddr,
        writer_pid: Option<u32>,
    ) -> anyhow::Result<ChangeRow> {
        let proxies = self.cli.proxies;
        let pid = server.process.pid();
        let rss_before_proxies_kib = status_kib(pid, "VmRSS:");
        let fleet = Fleet::connect(proxies, server.ads, Proxies);
        let tracker = fleet.tracker.clone();
        let (synced, sync_ms) = fleet.wait_synced(name, &mut server.process).await?;
        // capstan polls every interval, so it is never idle for long: let the sync settle.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let sync_times = tracker.sync_times();
        let expected = sync_times.iter().flatten().count();
        let mut samples = Vec::new();
        let mut all_acked_ms = Vec::new();
        let mut first_acked_ms = Vec::new();
        let mut first_to_last_ms = Vec::new();
        let mut noticed_ms = Vec::new();
        let mut noticed_to_all_ms = Vec::new();
        let mut register_call_ms = Vec::new();
        let (bytes_before, responses_before) = tracker.traffic();
        let cpu_before = capstan_load::cpu::cpu_time(pid);
        let writer_before = writer_pid.and_then(capstan_load::cpu::cpu_time);
        for round in 0..self.cli.rounds {
            let change = self.change.fetch_add(1, Ordering::Relaxed) + 1;
            let port = 9000 + change;
            let baseline = scrape(monitoring).await?.calls_of("DiscoverInstances");
            let generation = tracker.expect_endpoint_port(port);
            let t_register = Instant::now();
            self.cloud_map
                .register(
                    &self.changed_service,
                    &format!("new-{change}"),
                    &[
                        (
                            "AWS_INSTANCE_IPV4",
                            &format!("10.250.{}.{}", change / 250, change % 250 + 1),
                        ),
                        ("AWS_INSTANCE_PORT", &port.to_string()),
                        ("protocol", "HTTP"),
                    ],
                )
                .await?;
            let start = tracker.now();
            register_call_ms.push(ms(t_register.elapsed()));
            let deadline = Instant::now() + ROUND_TIMEOUT;
            let mut noticed = None;
            let mut last_scrape = Instant::now();
            loop {
                let done = tracker.converged_count(generation) >= expected;
                if noticed.is_none() && (done || last_scrape.elapsed() >= SCRAPE_EVERY) {
                    last_scrape = Instant::now();
                    if let Ok(m) = scrape(monitoring).await
                        && m.calls_of("DiscoverInstances") > baseline
                    {
                        noticed = Some(tracker.now());
                    }
                }
                if (done && noticed.is_some()) || Instant::now() > deadline {
                    break;
                }
                server.process.ensure_running()?;
                if let Some(writer) = writer.as_deref_mut() {
                    writer.ensure_running()?;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let times = tracker.convergence(generation);
            let mut round_samples: Vec<Option<Duration>> = times
                .iter()
                .zip(&sync_times)
                .filter(|(_, synced)| synced.is_some())
                .map(|(t, _)| t.map(|t| Tracker::offset(t.saturating_sub(start))))
                .collect();
            let arrived = round_samples.iter().flatten().count();
            let last = (arrived == expected)
                .then(|| round_samples.iter().flatten().max().copied())
                .flatten();
            let first = round_samples.iter().flatten().min().copied();
            let noticed_at = noticed.map(|n| Tracker::offset(n.saturating_sub(start)));
            all_acked_ms.push(last.map(ms));
            first_acked_ms.push(first.map(ms));
            first_to_last_ms.push(last.zip(first).map(|(l, f)| ms(l) - ms(f)));
            noticed_ms.push(noticed_at.map(ms));
            noticed_to_all_ms.push(last.zip(noticed_at).map(|(l, n)| ms(l) - ms(n)));
            info!(
                server = name,
                round,
                arrived,
                all_acked = fmt_ms(last.map(ms)),
                noticed = fmt_ms(noticed_at.map(ms)),
                register_ms = register_call_ms.last().copied().unwrap_or_default(),
                "instance registered"
            );
            samples.append(&mut round_samples);
            // Registrations land at different points of the poll cycle.
            tokio::time::sleep(Duration::from_millis(300 + (round as u64 * 373) % 1000)).await;
        }
        let rounds = self.cli.rounds.max(1);
        let cpu_after = capstan_load::cpu::cpu_time(pid);
        let writer_after = writer_pid.and_then(capstan_load::cpu::cpu_time);
        let per_change = |a: Option<Duration>, b: Option<Duration>| {
            a.zip(b)
                .and_then(|(a, b)| a.checked_sub(b))
                .map(|d| ms(d) / rounds as f64)
        };
        let (bytes_after, responses_after) = tracker.traffic();
        let per = (rounds * synced.max(1)) as f64;
        let row = ChangeRow {
            server: name.to_string(),
            ready_ms: ms(server.ready),
            materialized_ms: None,
            rss_before_proxies_kib,
            synced,
            sync_ms,
            per_proxy: Percentiles::of(&samples),
            all_acked_ms,
            first_acked_ms,
            first_to_last_ms,
            noticed_ms,
            noticed_to_all_ms,
            register_call_ms,
            cpu_ms_per_change: per_change(cpu_after, cpu_before),
            writer_cpu_ms_per_change: per_change(writer_after, writer_before),
            bytes_per_proxy_per_change: (bytes_after - bytes_before) as f64 / per,
            responses_per_proxy_per_change: (responses_after - responses_before) as f64 / per,
            rss_end_kib: status_kib(pid, "VmRSS:"),
            hwm_end_kib: status_kib(pid, "VmHWM:"),
            errors: tracker.errors(),
        };
        fleet.shutdown().await;
        Ok(row)
    }
}
