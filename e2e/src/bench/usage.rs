//! What a server process uses, read from `/proc`: its memory now and at peak, and whether it
//! has gone quiet (so that a measurement does not count its start-up work).

use std::time::{Duration, Instant};

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, …) in KiB; `None` once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits until `pid` used less than 2 % of a core over a second (at most `limit`); how long
/// that took.
pub async fn wait_idle(pid: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut before = capstan_load::cpu::cpu_time(pid);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = capstan_load::cpu::cpu_time(pid);
        match (before, now) {
            (Some(b), Some(n)) if n.saturating_sub(b) < Duration::from_millis(20) => break,
            (_, None) => break,
            _ => {}
        }
        before = now;
    }
    start.elapsed()
}
