//! Where things are: the repository, the cargo target dir, binaries, log directories.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The repository root (parent of the e2e crate).
pub fn repo_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), Path::to_path_buf)
}

/// `$CAPSTAN_TOOLS_DIR`, default `<repo>/.tools` (where scripts/tools.sh installs Envoy).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("CAPSTAN_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_dir().join(".tools"),
    }
}

/// The cargo profile directory of the running executable, e.g. `target/debug`
/// (tests run from `target/debug/deps`, binaries from `target/debug`).
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe
        .parent()
        .context("current executable has no parent directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The capstan binary: `$CAPSTAN_BIN`, else `capstan` in the cargo profile directory.
pub fn capstan_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSTAN_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("CAPSTAN_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let p = profile_dir()?.join("capstan");
    if !p.is_file() {
        bail!(
            "capstan binary not found at {}: run `cargo build -p capstan` first \
             (`make test` does), or set CAPSTAN_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// The capstan-upstream binary: `$CAPSTAN_UPSTREAM_BIN`, else next to the running executable's
/// profile dir. Tests should rather pass `env!("CARGO_BIN_EXE_capstan-upstream")`.
pub fn upstream_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSTAN_UPSTREAM_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let p = profile_dir()?.join("capstan-upstream");
    if !p.is_file() {
        bail!(
            "capstan-upstream not found at {}: run `cargo build -p capstan-e2e --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// Envoy: `$ENVOY_BIN` (must exist if set), else the path in `$CAPSTAN_TOOLS_DIR/envoy-path`
/// written by scripts/tools.sh; an error telling how to install it when neither is set up.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ENVOY_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let record = tools_dir().join("envoy-path");
    let Ok(text) = std::fs::read_to_string(&record) else {
        bail!(
            "Envoy not installed: ENVOY_BIN is unset and {} does not exist; \
             run `make tools` (scripts/tools.sh) or set ENVOY_BIN",
            record.display()
        );
    };
    let p = PathBuf::from(text.trim());
    if !p.is_file() {
        bail!(
            "{} names {}, which is not a file; rerun `make tools`",
            record.display(),
            p.display()
        );
    }
    Ok(p)
}

/// A fresh (emptied) directory for the logs of one test or demo run:
/// `<profile dir>/e2e-logs/<name>`. Kept after the run for inspection.
pub fn fresh_log_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?.join("e2e-logs").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
