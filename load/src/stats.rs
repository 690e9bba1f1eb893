//! Latency distributions: p50, p99 and max over all proxies, where a proxy that never got
//! there counts as slower than every one that did.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// p50/p99/max in milliseconds over `count` proxies. A percentile that falls on a proxy that
/// never arrived is `None` (shown as "timeout").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub arrived: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; `None` samples never arrived.
    pub fn of(samples: &[Option<Duration>]) -> Self {
        let mut arrived: Vec<Duration> = samples.iter().flatten().copied().collect();
        arrived.sort_unstable();
        let count = samples.len();
        let at = |p: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            // Nearest rank: the smallest value with at least p of all samples at or below it.
            let rank = ((p * count as f64).ceil() as usize).clamp(1, count);
            arrived.get(rank - 1).map(|d| d.as_secs_f64() * 1e3)
        };
        Self {
            count,
            arrived: arrived.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }

    pub fn missing(&self) -> usize {
        self.count - self.arrived
    }
}

/// A duration in milliseconds for tables: `12.3`, or `timeout`.
pub fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms >= 100.0 => format!("{ms:.0}"),
        Some(ms) => format!("{ms:.1}"),
        None => "timeout".into(),
    }
}

/// A byte count for tables: `1.2 MiB`.
pub fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Option<Duration>> = (1..=100).rev().map(ms).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.p50_ms, Some(50.0));
        assert_eq!(p.p99_ms, Some(99.0));
        assert_eq!(p.max_ms, Some(100.0));
        assert_eq!((p.count, p.arrived, p.missing()), (100, 100, 0));
        let one = Percentiles::of(&[ms(7)]);
        assert_eq!(
            (one.p50_ms, one.p99_ms, one.max_ms),
            (Some(7.0), Some(7.0), Some(7.0))
        );
    }

    #[test]
    fn missing_samples_rank_last() {
        let mut samples: Vec<Option<Duration>> = (1..=98).map(ms).collect();
        samples.extend([None, None]);
        let p = Percentiles::of(&samples);
        assert_eq!(p.p50_ms, Some(50.0));
        assert_eq!(p.p99_ms, None, "rank 99 is a proxy that never arrived");
        assert_eq!(p.max_ms, None);
        assert_eq!(p.missing(), 2);
        assert_eq!(Percentiles::of(&[]).p50_ms, None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ms(Some(1.234)), "1.2");
        assert_eq!(fmt_ms(Some(512.4)), "512");
        assert_eq!(fmt_ms(None), "timeout");
        assert_eq!(fmt_bytes(100.0), "100 B");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
