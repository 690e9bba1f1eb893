//! The benchmark matrix: which servers, which loads, and what each run produced.

use capstan_load::{LoadReport, Protocol, Scenario};
use serde::Serialize;

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    /// capstan's bench server.
    Capstan,
    /// go-control-plane with its SnapshotCache.
    GcpSnapshot,
    /// go-control-plane with LinearCaches.
    GcpLinear,
}

impl Server {
    pub const ALL: [Server; 3] = [Server::Capstan, Server::GcpSnapshot, Server::GcpLinear];

    pub fn name(self) -> &'static str {
        match self {
            Server::Capstan => "capstan",
            Server::GcpSnapshot => "go-control-plane snapshot",
            Server::GcpLinear => "go-control-plane linear",
        }
    }

    /// The peer's `--cache` argument.
    pub fn peer_cache(self) -> Option<&'static str> {
        match self {
            Server::Capstan => None,
            Server::GcpSnapshot => Some("snapshot"),
            Server::GcpLinear => Some("linear"),
        }
    }
}

/// One load: a protocol and a number of proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Case {
    pub protocol: Protocol,
    pub proxies: usize,
}

/// The mesh and loads of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub services: usize,
    pub endpoints: usize,
    pub rounds: usize,
    pub cases: Vec<Case>,
}

impl Matrix {
    /// The matrix: 1,000 and 10,000 Delta proxies, 1,000 SotW proxies; 1,000 services
    /// of 10 endpoints.
    pub fn full() -> Self {
        Self {
            services: 1000,
            endpoints: 10,
            rounds: 5,
            cases: vec![
                Case {
                    protocol: Protocol::Delta,
                    proxies: 1000,
                },
                Case {
                    protocol: Protocol::Delta,
                    proxies: 10_000,
                },
                Case {
                    protocol: Protocol::Sotw,
                    proxies: 1000,
                },
            ],
        }
    }

    /// A smoke test of the whole pipeline: 100 proxies of each protocol, 100 services.
    pub fn quick() -> Self {
        Self {
            services: 100,
            endpoints: 10,
            rounds: 2,
            cases: vec![
                Case {
                    protocol: Protocol::Delta,
                    proxies: 100,
                },
                Case {
                    protocol: Protocol::Sotw,
                    proxies: 100,
                },
            ],
        }
    }
}

/// One server under one load.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub server: Server,
    pub case: Case,
    /// What the load measured, unless the run failed or was skipped.
    pub report: Option<LoadReport>,
    /// Why there is no report.
    pub error: Option<String>,
}

impl Row {
    /// p50/p99/max (ms) over every proxy and round of `scenario`.
    pub fn latency(&self, scenario: Scenario) -> Option<capstan_load::stats::Percentiles> {
        Some(self.report.as_ref()?.scenario(scenario)?.overall)
    }

    pub fn p99(&self, scenario: Scenario) -> Option<f64> {
        self.latency(scenario)?.p99_ms
    }

    pub fn rss_per_proxy_kib(&self) -> Option<f64> {
        Some(self.report.as_ref()?.server_rss?.per_proxy_kib)
    }

    /// Proxy-changes that never arrived, over every round of every scenario.
    pub fn missed(&self) -> Option<usize> {
        let report = self.report.as_ref()?;
        Some(
            report
                .scenarios
                .iter()
                .map(|s| s.overall.missing())
                .sum::<usize>()
                + report.proxies.saturating_sub(report.sync.synced),
        )
    }

    /// Payload KiB per proxy: received during the sync, and per change of `scenario`.
    pub fn kib_per_proxy(&self, scenario: Option<Scenario>) -> Option<f64> {
        let report = self.report.as_ref()?;
        let proxies = report.proxies.max(1) as f64;
        let bytes = match scenario {
            None => report.sync.bytes as f64,
            Some(s) => {
                let s = report.scenario(s)?;
                s.bytes as f64 / s.rounds.len().max(1) as f64
            }
        };
        Some(bytes / proxies / 1024.0)
    }

    /// CPU milliseconds per change of `scenario`: (server, load generator).
    pub fn cpu_ms(&self, scenario: Scenario) -> (Option<f64>, Option<f64>) {
        self.report
            .as_ref()
            .and_then(|r| r.scenario(scenario))
            .map_or((None, None), |s| (s.server_cpu_ms, s.load_cpu_ms))
    }

    /// `capstan / self` for `metric`, when this is a peer row and both have the value.
    pub fn ratio(&self, rows: &[Row], metric: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
        if self.server == Server::Capstan {
            return None;
        }
        let capstan = rows
            .iter()
            .find(|r| r.server == Server::Capstan && r.case == self.case)?;
        let (ours, theirs) = (metric(capstan)?, metric(self)?);
        (theirs > 0.0).then(|| ours / theirs)
    }
}
