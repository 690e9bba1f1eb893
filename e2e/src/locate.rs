//! Where things are: the repository, the cargo target dir, binaries, log directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The capstan binary: `$CAPSTAN_BIN`, else `capstan` in the cargo profile directory, first
/// brought up to date by [`build_capstan`] (once per process), so a test never runs a binary
/// older than the source it is meant to test.
pub fn capstan_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSTAN_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("CAPSTAN_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_capstan().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs `cargo build --workspace --bin capstan` into the target dir and profile of the running
/// executable (a no-op when the binary is fresh; cargo decides, from the sources). The e2e
/// crate cannot depend on a binary (artifact dependencies are unstable), so it builds it.
/// `--workspace`, as `make build` builds: with `-p capstan` alone cargo resolves the
/// dependencies' features for that one package, a unit set of its own, and rebuilt capstan
/// after every `make build` (a CI run's first e2e test paid ~40 s for it).
pub fn build_capstan() -> anyhow::Result<PathBuf> {
    let profile_dir = profile_dir()?;
    let build = BuildDirs::of(&profile_dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "--workspace", "--bin", "capstan"])
        .arg("--target-dir")
        .arg(&build.target_dir)
        .args(["--profile", &build.profile])
        .current_dir(repo_dir());
    // What cargo sets for the running test describes this crate, not the build; build scripts
    // (ring's) that read such a variable would see it change between this build and a plain
    // `cargo build`, and rebuild their crate and everything above it each time.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(describes_running_crate) {
            cmd.env_remove(&name);
        }
    }
    if let Some(triple) = &build.triple {
        cmd.args(["--target", triple]);
    }
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .with_context(|| format!("running {shown} to build the capstan binary"))?;
    if !output.status.success() {
        bail!(
            "building the capstan binary failed ({}): {shown}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let p = profile_dir.join("capstan");
    if !p.is_file() {
        bail!("{shown} succeeded but left no binary at {}", p.display());
    }
    Ok(p)
}

/// The variables cargo sets for the crate being built or tested (not its own settings).
fn describes_running_crate(name: &str) -> bool {
    const PREFIXES: [&str; 4] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"];
    const NAMES: [&str; 5] = [
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Where cargo put the running executable, as `cargo build` options.
#[derive(Debug, PartialEq, Eq)]
struct BuildDirs {
    target_dir: PathBuf,
    /// `--target`, when the profile dir is `<target dir>/<triple>/<profile>`.
    triple: Option<String>,
    /// `--profile`: `dev` builds into `debug`, every other profile into a dir of its name.
    profile: String,
}

impl BuildDirs {
    fn of(profile_dir: &Path) -> anyhow::Result<Self> {
        let unknown = || {
            anyhow::anyhow!(
                "{} is not a cargo profile directory: set CAPSTAN_BIN",
                profile_dir.display()
            )
        };
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(name) => name.to_string(),
            None => return Err(unknown()),
        };
        let parent = profile_dir.parent().ok_or_else(unknown)?;
        // cargo marks the root of every target dir with CACHEDIR.TAG; a `--target` build puts
        // profiles one level down, under the triple.
        let nested = !parent.join("CACHEDIR.TAG").is_file()
            && parent
                .parent()
                .is_some_and(|p| p.join("CACHEDIR.TAG").is_file());
        if nested {
            let triple = parent
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(unknown)?;
            let target_dir = parent.parent().ok_or_else(unknown)?;
            return Ok(Self {
                target_dir: target_dir.to_path_buf(),
                triple: Some(triple.to_string()),
                profile,
            });
        }
        Ok(Self {
            target_dir: parent.to_path_buf(),
            triple: None,
            profile,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_describes_the_running_crate_is_kept_from_the_capstan_build() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_capstan-upstream",
        ] {
            assert!(describes_running_crate(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!describes_running_crate(name), "{name}");
        }
    }

    #[test]
    fn build_options_follow_the_profile_dir() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::write(root.path().join("CACHEDIR.TAG"), "")?;
        let dirs = BuildDirs::of(&root.path().join("debug"))?;
        assert_eq!(
            dirs,
            BuildDirs {
                target_dir: root.path().to_path_buf(),
                triple: None,
                profile: "dev".into(),
            }
        );
        let dirs = BuildDirs::of(&root.path().join("x86_64-unknown-linux-gnu").join("release"))?;
        assert_eq!(
            dirs,
            BuildDirs {
                target_dir: root.path().to_path_buf(),
                triple: Some("x86_64-unknown-linux-gnu".into()),
                profile: "release".into(),
            }
        );
        Ok(())
    }
}
