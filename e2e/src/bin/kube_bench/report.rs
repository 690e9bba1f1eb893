//! `capstan-kube-bench`'s report: a line per server on stderr as it is measured, and the
//! markdown table on stdout at the end.

use capstan_e2e::bench::report::kib;
use capstan_load::stats::fmt_ms;

use crate::{Change, Results, Row};

pub fn print_row(row: &Row) {
    eprintln!(
        "{}: ready {:.0} ms, peak RSS at ready {} MiB, sync {:.0} ms ({} proxies), change p50/p99/max {}/{}/{} ms, server CPU {:.1} ms per change",
        row.server,
        row.ready_ms,
        kib(row.hwm_ready_kib),
        row.sync_ms,
        row.synced,
        fmt_ms(row.endpoint.p50_ms),
        fmt_ms(row.endpoint.p99_ms),
        fmt_ms(row.endpoint.max_ms),
        row.cpu_ms_per_change.unwrap_or(f64::NAN)
    );
}

pub fn print_table(results: &Results) {
    let changes = match results.change {
        Change::Endpoint => "EndpointSlice changes",
        Change::Policy => "AuthorizationPolicy edits (ns-3, namespace-wide)",
    };
    println!(
        "{} services × {} endpoints, {} DestinationRules, {} VirtualServices; {} Delta proxies; {} {changes} per server; objects created in {:.1} s",
        results.services,
        results.endpoints_per_service,
        results.services,
        results.services,
        results.proxies,
        results.rounds,
        results.create_objects_ms / 1e3
    );
    println!();
    println!(
        "| server | start → ready ms | start → ADS listening ms | peak RSS at ready MiB | RSS idle MiB | proxies synced | sync s | change → ACKed p50/p99/max ms | missed | others pushed | PATCH ms (median) | server CPU ms per change | load generator CPU ms per change | received per proxy per change | peak RSS at end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &results.rows {
        let mut patch = row.patch_ms.clone();
        patch.sort_by(f64::total_cmp);
        let median = patch.get(patch.len() / 2).copied();
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.2} | {} / {} / {} | {} | {} | {} | {} | {} | {:.1} responses, {} | {} |",
            row.server,
            row.ready_ms,
            row.ads_listening_ms
                .map_or("–".into(), |v| format!("{v:.0}")),
            kib(row.hwm_ready_kib),
            kib(row.rss_idle_kib),
            row.synced,
            row.sync_ms / 1e3,
            fmt_ms(row.endpoint.p50_ms),
            fmt_ms(row.endpoint.p99_ms),
            fmt_ms(row.endpoint.max_ms),
            row.endpoint.missing(),
            row.outside_pushed.map_or("–".into(), |n| n.to_string()),
            median.map_or("–".into(), |v| format!("{v:.1}")),
            row.cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.load_cpu_ms_per_change
                .map_or("–".into(), |v| format!("{v:.0}")),
            row.responses_per_proxy_per_change,
            capstan_load::stats::fmt_bytes(row.bytes_per_proxy_per_change),
            kib(row.hwm_end_kib),
        );
    }
}
