//! What a benchmark report says about where it ran: the machine and the commit.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::locate;

/// `<cores> × <CPU model>`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} × {model}")
}

/// The checked-out commit, short; `unknown` outside a git checkout.
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(locate::repo_dir())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// Writes `results` as JSON to `out`, else to `<profile dir>/bench/<file>`, and says where
/// (with the logs) on stderr.
pub fn write_results(
    results: &impl Serialize,
    out: Option<&Path>,
    file: &str,
    log_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let out = match out {
        Some(p) => p.to_path_buf(),
        None => locate::profile_dir()?.join("bench").join(file),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "results in {}; logs in {}",
        out.display(),
        log_dir.display()
    );
    Ok(out)
}
