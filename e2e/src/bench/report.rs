//! How the benchmarks report: logs on stderr (stdout is the tables'), the units they use,
//! the machine a run was on (the JSON's `machine`) and where the JSON goes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// Logs to stderr, at `RUST_LOG`'s levels (default `info`): stdout carries the report.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Where the JSON results go: `out` if given, else `<target dir>/bench/<file>` (that
/// directory created), beside the other benchmarks' results.
pub fn results_path(out: Option<PathBuf>, file: &str) -> anyhow::Result<PathBuf> {
    Ok(match out {
        Some(p) => p,
        None => {
            let dir = crate::locate::profile_dir()?
                .parent()
                .context("target dir")?
                .join("bench");
            std::fs::create_dir_all(&dir)?;
            dir.join(file)
        }
    })
}

/// Milliseconds, as the reports give every time.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// KiB (as [`crate::bench::usage::status_kib`] reads them) as MiB with one decimal, `–` when
/// unknown: a table cell.
pub fn kib(v: Option<u64>) -> String {
    v.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Where a run was: cores, CPU model, memory, kernel, date, load average and commit, by
/// name. (More than [`crate::bench_info::machine`]'s one line: these benchmarks compare
/// servers on a shared machine, so its load is part of the result.)
pub fn machine() -> BTreeMap<String, String> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    BTreeMap::from([
        ("nproc".into(), run("nproc", &[])),
        ("cpu".into(), cpu),
        ("memory".into(), run("free", &["-h"])),
        ("kernel".into(), run("uname", &["-r"])),
        (
            "date".into(),
            run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        ),
        (
            "loadavg".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (
            "commit".into(),
            run(
                "git",
                &[
                    "-C",
                    &crate::locate::repo_dir().display().to_string(),
                    "rev-parse",
                    "--short=12",
                    "HEAD",
                ],
            ),
        ),
    ])
}
