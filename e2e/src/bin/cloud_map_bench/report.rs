//! `capstan-cloud-map-bench`'s report: lines on stderr as each part is measured, and the
//! markdown tables (poll cost, then a row per server) on stdout at the end.

use std::collections::BTreeMap;

use capstan_e2e::bench::report::kib;
use capstan_load::stats::fmt_ms;

use crate::{ChangeRow, PollCost, Results};

/// p50 / max of per-round values, and how many rounds had none.
fn rounds_summary(values: &[Option<f64>]) -> String {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let missing = values.len() - v.len();
    let mut s = format!("{:.0} / {:.0}", v[(v.len() - 1) / 2], v[v.len() - 1]);
    if missing > 0 {
        s.push_str(&format!(" ({missing} missing)"));
    }
    s
}

fn calls(map: &BTreeMap<String, f64>) -> String {
    map.iter()
        .map(|(op, n)| format!("{op} {n:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_poll(cost: &PollCost) {
    eprintln!(
        "poll cost: first poll {:.2} s ({}); quiet: {:.2} s wall per poll, {} per poll (moto: {}), CPU {} ms per poll, RSS {} MiB",
        cost.first_poll_s,
        calls(&cost.first_poll_calls),
        cost.poll_wall_s,
        calls(&cost.calls_per_poll),
        calls(&cost.moto_calls_per_poll),
        cost.cpu_ms_per_poll
            .map_or("–".into(), |v| format!("{v:.0}")),
        kib(cost.rss_kib),
    );
}

pub fn print_row(row: &ChangeRow) {
    eprintln!(
        "{}: {} proxies synced in {:.1} s; register → all ACKed p50/max {} ms; first → last ACK p50/max {} ms; poll noticed → all ACKed p50/max {} ms",
        row.server,
        row.synced,
        row.sync_ms / 1e3,
        rounds_summary(&row.all_acked_ms),
        rounds_summary(&row.first_to_last_ms),
        rounds_summary(&row.noticed_to_all_ms),
    );
}

pub fn print_tables(results: &Results) {
    println!(
        "{} Cloud Map services × {} instances (moto), interval {}; {} Delta proxies; {} registrations per row; set-up {:.1} s ({} calls)",
        results.services,
        results.instances_per_service,
        results.interval,
        results.proxies,
        results.rounds,
        results.setup_ms / 1e3,
        results.setup_calls,
    );
    if let Some(p) = &results.poll {
        println!();
        println!(
            "| poll | wall s | calls (capstan's metric) | calls (moto) | capstan CPU ms | capstan RSS MiB |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| first (full), {:.1} s after start | {:.2} | {} | – | – | – |",
            p.start_to_first_poll_ms / 1e3,
            p.first_poll_s,
            calls(&p.first_poll_calls),
        );
        println!(
            "| quiet, per poll (mean of {:.0} over {:.1} s) | {:.2} | {} | {} | {} ({:.2} cores) | {} (peak {}) |",
            p.quiet_polls,
            p.quiet_period_s,
            p.poll_wall_s,
            calls(&p.calls_per_poll),
            calls(&p.moto_calls_per_poll),
            p.cpu_ms_per_poll.map_or("–".into(), |v| format!("{v:.0}")),
            p.cpu_cores.unwrap_or(f64::NAN),
            kib(p.rss_kib),
            kib(p.hwm_kib),
        );
    }
    println!();
    println!(
        "| server | proxies synced | sync s | register → all ACKed p50 / max ms | register → poll done p50 / max ms | register → first ACK p50 / max ms | first → last ACK p50 / max ms | poll seen done → all ACKed p50 / max ms (a lower bound) | per proxy p50/p99/max ms | missed | RegisterInstance ms (median) | server CPU ms per change | writer CPU ms per change | received per proxy per change | RSS end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &results.rows {
        let mut register = row.register_call_ms.clone();
        register.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {:.1} responses, {} | {} |",
            row.server,
            row.synced,
            row.sync_ms / 1e3,
            rounds_summary(&row.all_acked_ms),
            rounds_summary(&row.noticed_ms),
            rounds_summary(&row.first_acked_ms),
            rounds_summary(&row.first_to_last_ms),
            rounds_summary(&row.noticed_to_all_ms),
            fmt_ms(row.per_proxy.p50_ms),
            fmt_ms(row.per_proxy.p99_ms),
            fmt_ms(row.per_proxy.max_ms),
            row.per_proxy.missing(),
            register
                .get(register.len() / 2)
                .map_or("–".into(), |v| format!("{v:.1}")),
            row.cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.writer_cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.responses_per_proxy_per_change,
            capstan_load::stats::fmt_bytes(row.bytes_per_proxy_per_change),
            kib(row.rss_end_kib),
        );
    }
}
