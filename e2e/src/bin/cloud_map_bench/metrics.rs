//! What capstan's Cloud Map source reports on `/metrics` (calls by operation, polls and
//! their seconds), waiting for its polls, and moto's own call counts per poll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::ensure;
use capstan_e2e::http::HttpClient;
use capstan_e2e::process::ChildProcess;

use crate::POLL_TIMEOUT;

/// capstan's Cloud Map metrics at one scrape.
#[derive(Debug, Clone, Default)]
pub struct CloudMapMetrics {
    /// `capstan_cloud_map_calls_total` by operation.
    pub calls: BTreeMap<String, f64>,
    /// `capstan_cloud_map_poll_seconds` sum and count.
    pub poll_sum: f64,
    pub poll_count: f64,
}

impl CloudMapMetrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(rest) = name.strip_prefix("capstan_cloud_map_calls_total{operation=\"") {
                let op = rest.trim_end_matches("\"}");
                m.calls.insert(op.to_string(), value);
            } else if name == "capstan_cloud_map_poll_seconds_sum" {
                m.poll_sum = value;
            } else if name == "capstan_cloud_map_poll_seconds_count" {
                m.poll_count = value;
            }
        }
        m
    }

    /// Calls of `op` so far.
    pub fn calls_of(&self, op: &str) -> f64 {
        self.calls.get(op).copied().unwrap_or(0.0)
    }

    /// Calls by operation since `before`, per `per` (polls); the operations that had any.
    pub fn calls_since(&self, before: &Self, per: f64) -> BTreeMap<String, f64> {
        self.calls
            .iter()
            .map(|(op, n)| (op.clone(), (n - before.calls_of(op)) / per.max(1.0)))
            .filter(|(_, n)| *n > 0.0)
            .collect()
    }
}

/// Reads capstan's `/metrics` at its monitoring address.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<CloudMapMetrics> {
    let response = HttpClient::new(addr)
        .get("127.0.0.1", "/metrics", &[])
        .await?;
    ensure!(
        response.status.is_success(),
        "/metrics: {}",
        response.status
    );
    Ok(CloudMapMetrics::parse(&response.text()))
}

/// Waits until capstan has completed at least `polls` polls; the metrics then.
pub async fn wait_polls(
    process: &mut ChildProcess,
    monitoring: SocketAddr,
    polls: f64,
    every: Duration,
) -> anyhow::Result<CloudMapMetrics> {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Ok(m) = scrape(monitoring).await
            && m.poll_count >= polls
        {
            return Ok(m);
        }
        process.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "{} polls not done after {POLL_TIMEOUT:?}: {}",
            polls,
            process.log_tail(20)
        );
        tokio::time::sleep(every).await;
    }
}

/// moto's calls by operation between two of its counts, per poll.
pub fn moto_per_poll(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
    polls: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(op, n)| {
            let d = n.saturating_sub(before.get(op).copied().unwrap_or(0));
            (op.clone(), d as f64 / polls.max(1.0))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}
