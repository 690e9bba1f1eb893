//! What a load run measured, as JSON (serde) and as a human-readable table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::proxy::Protocol;
use crate::stats::{Percentiles, fmt_bytes, fmt_ms};

/// A kind of config change whose propagation is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One endpoint of `svc-0` changes port: an EDS update for every proxy.
    Endpoint,
    /// A cluster is added: a CDS update for every proxy.
    All,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Endpoint => "endpoint",
            Scenario::All => "all",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "endpoint" => Ok(Scenario::Endpoint),
            "all" => Ok(Scenario::All),
            other => Err(format!("unknown scenario {other:?} (endpoint or all)")),
        }
    }
}

/// The initial sync of every proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// From the first connect until the last proxy synced.
    pub wall_ms: f64,
    /// Per proxy, from its connect until it had CDS, EDS, LDS and RDS.
    pub per_proxy: Percentiles,
    pub synced: usize,
    /// Payload bytes of all responses received during the sync.
    pub bytes: u64,
    pub responses: u64,
}

/// Server memory before the proxies connected and after they synced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RssReport {
    pub before_kib: u64,
    pub after_kib: u64,
    /// (after - before) / proxies.
    pub per_proxy_kib: f64,
}

/// One change and how it reached the proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: usize,
    /// What changed, e.g. `svc-0 endpoint 0 port 20001` or `cluster marker-7`.
    pub change: String,
    /// Per proxy, from just before the control call until it had the change (and ACKed it).
    pub latency: Percentiles,
    /// How long the control call took (the change is in the server's cache when it returns).
    pub control_ms: f64,
    /// Payload bytes received by all proxies during the round.
    pub bytes: u64,
}

/// All rounds of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub rounds: Vec<RoundReport>,
    /// Over every proxy of every round.
    pub overall: Percentiles,
    pub bytes: u64,
    /// CPU milliseconds the server used per change, from the first change to the end of the
    /// last round's pause (follow-up requests included); needs the server's pid.
    #[serde(default)]
    pub server_cpu_ms: Option<f64>,
    /// The same for the load generator itself.
    #[serde(default)]
    pub load_cpu_ms: Option<f64>,
}

/// Everything one load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub protocol: Protocol,
    pub proxies: usize,
    pub streams_per_connection: usize,
    pub connect_concurrency: usize,
    pub sync: SyncReport,
    pub server_rss: Option<RssReport>,
    /// The load generator's own memory after the sync.
    pub load_rss_kib: Option<u64>,
    pub scenarios: Vec<ScenarioReport>,
    /// Proxies whose stream ended (they are counted as not converged).
    pub failures: usize,
    /// The first few failure messages.
    pub errors: Vec<String>,
}

impl LoadReport {
    pub fn scenario(&self, scenario: Scenario) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.scenario == scenario)
    }

    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let n = self.proxies.max(1) as f64;
        let _ = writeln!(
            out,
            "{} proxies, {} ({} per connection, {} connecting at once)",
            self.proxies, self.protocol, self.streams_per_connection, self.connect_concurrency
        );
        let _ = writeln!(
            out,
            "sync: {}/{} synced in {:.2} s; per proxy p50 {} ms, p99 {} ms, max {} ms; {} received ({} per proxy)",
            self.sync.synced,
            self.proxies,
            self.sync.wall_ms / 1e3,
            fmt_ms(self.sync.per_proxy.p50_ms),
            fmt_ms(self.sync.per_proxy.p99_ms),
            fmt_ms(self.sync.per_proxy.max_ms),
            fmt_bytes(self.sync.bytes as f64),
            fmt_bytes(self.sync.bytes as f64 / n),
        );
        if let Some(rss) = &self.server_rss {
            let _ = writeln!(
                out,
                "server RSS: {} before, {} after sync: {} per proxy",
                fmt_bytes(rss.before_kib as f64 * 1024.0),
                fmt_bytes(rss.after_kib as f64 * 1024.0),
                fmt_bytes(rss.per_proxy_kib * 1024.0),
            );
        }
        if let Some(kib) = self.load_rss_kib {
            let _ = writeln!(
                out,
                "load generator RSS: {}",
                fmt_bytes(kib as f64 * 1024.0)
            );
        }
        let _ = writeln!(
            out,
            "\n{:<9} {:<32} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}",
            "scenario", "change", "p50 ms", "p99 ms", "max ms", "missing", "control ms", "bytes"
        );
        for scenario in &self.scenarios {
            for round in &scenario.rounds {
                let _ = writeln!(
                    out,
                    "{:<9} {:<32} {:>9} {:>9} {:>9} {:>9} {:>10.1} {:>11}",
                    scenario.scenario.as_str(),
                    round.change,
                    fmt_ms(round.latency.p50_ms),
                    fmt_ms(round.latency.p99_ms),
                    fmt_ms(round.latency.max_ms),
                    round.latency.missing(),
                    round.control_ms,
                    fmt_bytes(round.bytes as f64),
                );
            }
            let _ = writeln!(
                out,
                "{:<9} {:<32} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}",
                scenario.scenario.as_str(),
                format!("all {} rounds", scenario.rounds.len()),
                fmt_ms(scenario.overall.p50_ms),
                fmt_ms(scenario.overall.p99_ms),
                fmt_ms(scenario.overall.max_ms),
                scenario.overall.missing(),
                "",
                fmt_bytes(scenario.bytes as f64),
            );
            if scenario.server_cpu_ms.is_some() || scenario.load_cpu_ms.is_some() {
                let ms = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1} ms"));
                let _ = writeln!(
                    out,
                    "{:<9} CPU per change: server {}, load generator {}",
                    scenario.scenario.as_str(),
                    ms(scenario.server_cpu_ms),
                    ms(scenario.load_cpu_ms),
                );
            }
        }
        if self.failures > 0 {
            let _ = writeln!(out, "\n{} proxies failed:", self.failures);
            for error in &self.errors {
                let _ = writeln!(out, "  {error}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_and_json_carry_the_numbers() {
        let latency = Percentiles::of(&[Some(Duration::from_millis(3)), None]);
        let report = LoadReport {
            protocol: Protocol::Delta,
            proxies: 2,
            streams_per_connection: 1,
            connect_concurrency: 100,
            sync: SyncReport {
                wall_ms: 1500.0,
                synced: 2,
                bytes: 4096,
                ..Default::default()
            },
            server_rss: Some(RssReport {
                before_kib: 1000,
                after_kib: 1200,
                per_proxy_kib: 100.0,
            }),
            load_rss_kib: None,
            scenarios: vec![ScenarioReport {
                scenario: Scenario::Endpoint,
                rounds: vec![RoundReport {
                    round: 0,
                    change: "svc-0 endpoint 0 port 20000".into(),
                    latency,
                    control_ms: 1.0,
                    bytes: 10,
                }],
                overall: latency,
                bytes: 10,
                server_cpu_ms: Some(42.5),
                load_cpu_ms: None,
            }],
            failures: 1,
            errors: vec!["proxy 1: closed".into()],
        };
        let table = report.table();
        assert!(table.contains("2 proxies, delta"), "{table}");
        assert!(table.contains("100.0 KiB per proxy"), "{table}");
        assert!(table.contains("timeout"), "{table}");
        assert!(table.contains("proxy 1: closed"), "{table}");
        assert!(
            table.contains("CPU per change: server 42.5 ms, load generator –"),
            "{table}"
        );
        let json = serde_json::to_string(&report).expect("serialises");
        assert!(json.contains("\"scenario\":\"endpoint\""), "{json}");
        let back: LoadReport = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.scenario(Scenario::Endpoint).map(|s| s.bytes), Some(10));
        assert!(back.scenario(Scenario::All).is_none());
        let cpu = back
            .scenario(Scenario::Endpoint)
            .and_then(|s| s.server_cpu_ms);
        assert_eq!(cpu, Some(42.5));
        assert_eq!("all".parse::<Scenario>(), Ok(Scenario::All));
    }
}
