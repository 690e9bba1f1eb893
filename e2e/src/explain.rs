//! `capstan explain` as the tests ask it: for the same call a test just made through real
//! Envoys, whether capstan's explanation allows it, to compare with what the Envoys did.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `capstan explain -f <config_dir> <args>` and fails unless it decides `allowed` (exit
/// 0 allows, 1 denies), with the explanation in the error.
pub fn agrees(config_dir: &Path, args: &[&str], allowed: bool) -> anyhow::Result<()> {
    let output = Command::new(crate::locate::capstan_bin()?)
        .arg("explain")
        .arg("-f")
        .arg(config_dir)
        .args(args)
        .output()
        .context("running capstan explain")?;
    let said = match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => bail!(
            "capstan explain {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    if said != allowed {
        bail!(
            "capstan explain {args:?} says {}, the Envoys did the opposite:\n{}",
            if said { "ALLOW" } else { "DENY" },
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(())
}
