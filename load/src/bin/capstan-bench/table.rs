//! The benchmark's results as one table: aligned text for the terminal and markdown for
//! BENCHMARKS.md, with the ratio capstan/peer on each peer row.

use std::fmt::Write as _;

use capstan_load::Scenario;
use capstan_load::stats::{Percentiles, fmt_ms};

use crate::machine::Machine;
use crate::matrix::{Matrix, Row, Server};

const HEADER: [&str; 11] = [
    "server",
    "xDS",
    "proxies",
    "sync s",
    "endpoint p50/p99/max ms",
    "all p50/p99/max ms",
    "missed",
    "server RSS KiB/proxy",
    "KiB/proxy sync·endpoint·all",
    "CPU ms per change, server·load generator: endpoint / all",
    "capstan/peer p99 endpoint·all, RSS",
];

fn triple(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "{} / {} / {}",
            fmt_ms(p.p50_ms),
            fmt_ms(p.p99_ms),
            fmt_ms(p.max_ms)
        ),
        None => "–".into(),
    }
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn cells(row: &Row, rows: &[Row]) -> Vec<String> {
    let head = vec![
        row.server.name().to_string(),
        row.case.protocol.to_string(),
        row.case.proxies.to_string(),
    ];
    let Some(report) = &row.report else {
        let why = row.error.clone().unwrap_or_else(|| "no report".into());
        return head
            .into_iter()
            .chain([format!("not run: {why}")])
            .collect();
    };
    let ratios = if row.ratio(rows, |_| Some(1.0)).is_some() {
        format!(
            "{} · {}, {}",
            num(row.ratio(rows, |r| r.p99(Scenario::Endpoint)), 3),
            num(row.ratio(rows, |r| r.p99(Scenario::All)), 3),
            num(row.ratio(rows, Row::rss_per_proxy_kib), 2),
        )
    } else {
        "–".into()
    };
    head.into_iter()
        .chain([
            format!("{:.2}", report.sync.wall_ms / 1e3),
            triple(row.latency(Scenario::Endpoint)),
            triple(row.latency(Scenario::All)),
            row.missed().map_or_else(|| "–".into(), |m| m.to_string()),
            num(row.rss_per_proxy_kib(), 1),
            format!(
                "{} · {} · {}",
                num(row.kib_per_proxy(None), 0),
                num(row.kib_per_proxy(Some(Scenario::Endpoint)), 2),
                num(row.kib_per_proxy(Some(Scenario::All)), 2),
            ),
            cpu(row),
            ratios,
        ])
        .collect()
}

/// CPU per change of the server and the load generator, endpoint then all.
fn cpu(row: &Row) -> String {
    let pair = |scenario| {
        let (server, load) = row.cpu_ms(scenario);
        format!("{}·{}", num(server, 0), num(load, 0))
    };
    format!("{} / {}", pair(Scenario::Endpoint), pair(Scenario::All))
}

/// Aligned columns for the terminal.
pub fn text(rows: &[Row]) -> String {
    let table: Vec<Vec<String>> = std::iter::once(HEADER.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| cells(r, rows)))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| {
            table
                .iter()
                .filter(|row| row.len() == HEADER.len())
                .filter_map(|row| row.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                format!(
                    "{cell:<width$}",
                    width = widths.get(i).copied().unwrap_or(0)
                )
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// A markdown section for BENCHMARKS.md.
pub fn markdown(rows: &[Row], machine: &Machine, matrix: &Matrix) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### ADS load: capstan vs go-control-plane\n");
    let _ = writeln!(out, "- Machine: {}", machine.summary());
    let _ = writeln!(
        out,
        "- Mesh: {} services × {} endpoints; {} rounds per change kind; server and load \
         generator on the same machine, one HTTP/2 connection per proxy",
        matrix.services, matrix.endpoints, matrix.rounds
    );
    let _ = writeln!(
        out,
        "- endpoint: one endpoint of `svc-0` changes port (EDS); all: a cluster is added (CDS). \
         Latency per proxy from the control call to the proxy's ACK of the change, over all rounds.\n"
    );
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
    for row in rows {
        let mut cells = cells(row, rows);
        cells.resize(HEADER.len(), String::new());
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The targets, checked against capstan's rows: 10,000 Delta proxies converge on an
/// endpoint change with p99 ≤ 0.5 s; p99 ≥ 10× better than each peer (ratio ≤ 0.1); ≤ 100 KiB
/// of server memory per proxy.
pub fn targets(rows: &[Row], matrix: &Matrix) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = String::new();
    let _ = writeln!(out, "Targets (services = {}):", matrix.services);
    for row in rows.iter().filter(|r| r.server == Server::Capstan) {
        let case = format!("{} {}", row.case.proxies, row.case.protocol);
        if row.case.proxies >= 10_000 && row.case.protocol == capstan_load::Protocol::Delta {
            let p99 = row.p99(Scenario::Endpoint);
            let _ = writeln!(
                out,
                "- {case}: endpoint p99 {} ms ≤ 500 ms: {}",
                fmt_ms(p99),
                verdict(p99.is_some_and(|p| p <= 500.0))
            );
        }
        if let Some(rss) = row.rss_per_proxy_kib() {
            let _ = writeln!(
                out,
                "- {case}: server memory {rss:.1} KiB/proxy ≤ 100 KiB: {}",
                verdict(rss <= 100.0)
            );
        }
    }
    for row in rows.iter().filter(|r| r.server != Server::Capstan) {
        for scenario in [Scenario::Endpoint, Scenario::All] {
            if let Some(ratio) = row.ratio(rows, |r| r.p99(scenario)) {
                let _ = writeln!(
                    out,
                    "- {} {}, {}: p99 capstan/{} = {ratio:.3} ≤ 0.1 (≥ 10× faster): {}",
                    row.case.proxies,
                    row.case.protocol,
                    scenario.as_str(),
                    row.server.name(),
                    verdict(ratio <= 0.1)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Case;
    use capstan_load::Protocol;
    use capstan_load::report::{LoadReport, RssReport, ScenarioReport, SyncReport};
    use std::time::Duration;

    fn report(p99_ms: u64, rss: f64) -> LoadReport {
        let latency = Percentiles::of(&[Some(Duration::from_millis(p99_ms))]);
        let scenario = |scenario| ScenarioReport {
            scenario,
            rounds: Vec::new(),
            overall: latency,
            bytes: 0,
            server_cpu_ms: Some(12.0),
            load_cpu_ms: Some(3.4),
        };
        LoadReport {
            protocol: Protocol::Delta,
            proxies: 1,
            streams_per_connection: 1,
            connect_concurrency: 1,
            sync: SyncReport {
                synced: 1,
                ..Default::default()
            },
            server_rss: Some(RssReport {
                per_proxy_kib: rss,
                ..Default::default()
            }),
            load_rss_kib: None,
            scenarios: vec![scenario(Scenario::Endpoint), scenario(Scenario::All)],
            failures: 0,
            errors: Vec::new(),
        }
    }

    #[test]
    fn peer_rows_carry_ratios() {
        let case = Case {
            protocol: Protocol::Delta,
            proxies: 1,
        };
        let rows = vec![
            Row {
                server: Server::Capstan,
                case,
                report: Some(report(10, 50.0)),
                error: None,
            },
            Row {
                server: Server::GcpSnapshot,
                case,
                report: Some(report(200, 100.0)),
                error: None,
            },
            Row {
                server: Server::GcpLinear,
                case,
                report: None,
                error: Some("peer not built".into()),
            },
        ];
        let text = text(&rows);
        assert!(text.contains("0.050 · 0.050, 0.50"), "{text}");
        assert!(text.contains("not run: peer not built"), "{text}");
        assert!(text.contains("12·3 / 12·3"), "{text}");
        let machine = Machine::describe(std::path::Path::new("."));
        let md = markdown(&rows, &machine, &Matrix::quick());
        assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 5, "{md}");
        let targets = targets(&rows, &Matrix::quick());
        assert!(
            targets.contains("50.0 KiB/proxy ≤ 100 KiB: met"),
            "{targets}"
        );
        assert!(
            targets.contains(
                "p99 capstan/go-control-plane snapshot = 0.050 ≤ 0.1 (≥ 10× faster): met"
            ),
            "{targets}"
        );
    }
}
