//! The rows of `capstan-cloud-map-bench`: capstan in-memory (with the poll cost first), then
//! capstan in `mode: materialize` and istiod on the ServiceEntries it writes. Each row's
//! instance-change rounds are [`Bench::changes`] (`rounds.rs`).

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use anyhow::ensure;
use capstan_e2e::bench::report::ms;
use capstan_e2e::bench::server::{ServerSpec, Started};
use capstan_e2e::bench::usage::{status_kib, wait_idle};
use capstan_e2e::cloudmap::CloudMap;
use capstan_e2e::kube::KubeCluster;
use capstan_e2e::moto::Moto;
use tracing::info;

use crate::metrics::{CloudMapMetrics, moto_per_poll, wait_polls};
use crate::{CLOUD_MAP_NAMESPACE, ChangeRow, Cli, MESH_NAMESPACE, POLL_TIMEOUT, PollCost};

/// What every row runs against.
pub struct Bench<'a> {
    pub cli: &'a Cli,
    pub cluster: &'a KubeCluster,
    pub moto: &'a Moto,
    pub cloud_map: &'a CloudMap<'a>,
    /// The id of the service that gains an instance each round.
    pub changed_service: String,
    pub capstan_bin: PathBuf,
    /// Changes made so far, over all rows: each new instance's number.
    pub change: AtomicU32,
}

/// Starts `spec`'s server and waits until it is ready.
async fn start(spec: &mut ServerSpec) -> anyhow::Result<Started> {
    let started = spec.start().await?;
    info!(server = spec.name, ready = ?started.ready, "ready");
    Ok(started)
}

impl Bench<'_> {
    /// Writes the Cloud Map config of capstan `name` (`mode`: in-memory or materialize) into
    /// the log directory; its path.
    fn config(&self, mode: &str, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.cluster.log_dir().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "namespaces: [{{name: {CLOUD_MAP_NAMESPACE}}}]
mode: {mode}
meshNamespace: {MESH_NAMESPACE}
interval: {}
jitter: 0
endpoint: {}
region: {}
",
                self.cli.interval,
                self.moto.endpoint_url(),
                capstan_e2e::moto::REGION
            ),
        )?;
        Ok(path)
    }

    /// capstan (kube mode, as in capstan-kube-bench) with the Cloud Map source in `mode`.
    fn capstan_spec(&self, mode: &str, name: &'static str) -> anyhow::Result<ServerSpec> {
        let config = self.config(mode, name)?;
        let mut spec = ServerSpec::capstan(&self.capstan_bin, self.cluster, false)?;
        spec.name = name;
        // This benchmark reports start → ready only: no wait for the ADS log line.
        spec.listening = None;
        spec.log = self.cluster.log_dir().join(format!("{name}.log"));
        spec.command
            .arg("--cloud-map-config")
            .arg(&config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", capstan_e2e::moto::REGION);
        Ok(spec)
    }

    /// Row 1: capstan in-memory; the poll cost, then the instance changes.
    pub async fn in_memory(&self) -> anyhow::Result<(PollCost, ChangeRow)> {
        self.cloud_map.reset_counts().await?;
        let mut spec = self.capstan_spec("in-memory", "capstan-in-memory")?;
        let mut server = start(&mut spec).await?;
        let pid = server.process.pid();
        let first = wait_polls(
            &mut server.process,
            server.monitoring,
            1.0,
            Duration::from_millis(10),
        )
        .await?;
        let start_to_first_poll_ms = ms(server.t0.elapsed());
        info!(
            seconds = first.poll_sum,
            calls = ?first.calls,
            "first poll"
        );

        // The quiet period, from one poll's end to K polls later.
        let every = Duration::from_millis(200);
        let at = wait_polls(&mut server.process, server.monitoring, 2.0, every).await?;
        let before = wait_polls(
            &mut server.process,
            server.monitoring,
            at.poll_count + 1.0,
            every,
        )
        .await?;
        let t_before = Instant::now();
        let cpu_before = capstan_load::cpu::cpu_time(pid);
        let moto_before = self.cloud_map.counts().await?;
        let after = wait_polls(
            &mut server.process,
            server.monitoring,
            before.poll_count + self.cli.quiet_polls as f64,
            every,
        )
        .await?;
        let cpu_after = capstan_load::cpu::cpu_time(pid);
        let period = t_before.elapsed();
        let moto_after = self.cloud_map.counts().await?;
        let polls = after.poll_count - before.poll_count;
        let cpu = cpu_after
            .zip(cpu_before)
            .and_then(|(a, b)| a.checked_sub(b));
        let cost = PollCost {
            ready_ms: ms(server.ready),
            start_to_first_poll_ms,
            first_poll_s: first.poll_sum,
            first_poll_calls: first.calls_since(&CloudMapMetrics::default(), 1.0),
            quiet_polls: polls,
            quiet_period_s: period.as_secs_f64(),
            poll_wall_s: (after.poll_sum - before.poll_sum) / polls.max(1.0),
            calls_per_poll: after.calls_since(&before, polls),
            moto_calls_per_poll: moto_per_poll(&moto_after, &moto_before, polls),
            cpu_ms_per_poll: cpu.map(|c| ms(c) / polls.max(1.0)),
            cpu_cores: cpu.map(|c| c.as_secs_f64() / period.as_secs_f64()),
            rss_kib: status_kib(pid, "VmRSS:"),
            hwm_kib: status_kib(pid, "VmHWM:"),
        };
        info!(?cost, "quiet polls");
        let monitoring = server.monitoring;
        let row = self
            .changes("capstan, in-memory", &mut server, None, monitoring, None)
            .await?;
        server.process.stop();
        Ok((cost, row))
    }

    /// Rows 2 and 3: capstan in `mode: materialize` writes the ServiceEntries; proxies on
    /// capstan, then on istiod.
    pub async fn materialized(
        &self,
        capstan_row: bool,
        istiod: Option<&PathBuf>,
    ) -> anyhow::Result<Vec<ChangeRow>> {
        let mut spec = self.capstan_spec("materialize", "capstan-materialize")?;
        let mut writer = start(&mut spec).await?;
        wait_polls(
            &mut writer.process,
            writer.monitoring,
            1.0,
            Duration::from_millis(10),
        )
        .await?;
        let polled = Instant::now();
        let deadline = polled + POLL_TIMEOUT;
        loop {
            let listed = self
                .cluster
                .kubectl(&["get", "serviceentries", "-n", MESH_NAMESPACE, "-o", "name"])
                .await?;
            let n = listed.lines().filter(|l| !l.trim().is_empty()).count();
            if n >= self.cli.services {
                break;
            }
            writer.process.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "{n} of {} ServiceEntries after {POLL_TIMEOUT:?}",
                self.cli.services
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let materialized_ms = ms(polled.elapsed());
        info!(
            seconds = materialized_ms / 1e3,
            "ServiceEntries written (first poll done → all listed)"
        );
        let mut rows = Vec::new();
        let monitoring = writer.monitoring;
        if capstan_row {
            let mut row = self
                .changes(
                    "capstan, materialize (its own ServiceEntries)",
                    &mut writer,
                    None,
                    monitoring,
                    None,
                )
                .await?;
            row.materialized_ms = Some(materialized_ms);
            rows.push(row);
        }
        if let Some(bin) = istiod {
            let mut spec = ServerSpec::istiod(bin, self.cluster, &[])?;
            let mut server = start(&mut spec).await?;
            wait_idle(server.process.pid(), Duration::from_secs(60)).await;
            let writer_pid = writer.process.pid();
            let mut row = self
                .changes(
                    "istiod, ServiceEntries written by capstan (materialize)",
                    &mut server,
                    Some(&mut writer.process),
                    monitoring,
                    Some(writer_pid),
                )
                .await;
            if let Ok(row) = &mut row {
                row.materialized_ms = Some(materialized_ms);
            }
            server.process.stop();
            rows.push(row?);
        }
        writer.process.stop();
        Ok(rows)
    }
}
