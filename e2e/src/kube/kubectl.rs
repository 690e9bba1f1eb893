//! Running `kubectl` with a deadline.
//!
//! Async on purpose: a test may serve something the apiserver calls back (an admission
//! webhook) on the same runtime, and a blocking kubectl would then wait on itself.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

/// Upper bound on one kubectl run (a `kubectl wait` passes its own shorter `--timeout`).
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);

/// The kubectl to run: `$KUBECTL`, else `kubectl` on `PATH`.
pub fn kubectl_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBECTL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("KUBECTL={} is not a file", p.display());
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .context("kubectl not found on PATH (install kubectl, or set KUBECTL)")
}

/// What one kubectl run printed, and how it exited.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// The command line, for error messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout if kubectl exited 0, else an error with the command and both outputs.
    pub fn into_result(self) -> anyhow::Result<String> {
        if self.success() {
            return Ok(self.stdout);
        }
        bail!(
            "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `kubectl --kubeconfig <kubeconfig> --cache-dir <cache_dir> <args>`, feeding `stdin`,
/// and returns its output whatever the exit status; fails only if it cannot run or takes
/// longer than [`KUBECTL_TIMEOUT`] (it is killed then).
pub async fn run(
    kubeconfig: &Path,
    cache_dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<KubectlOutput> {
    let bin = kubectl_bin()?;
    let command = format!("kubectl {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(&bin);
    // A private discovery cache: the shared ~/.kube/cache is keyed by host:port, and a port
    // reused by a later cluster with other CRDs would be served stale discovery from it.
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} ({command})", bin.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_string();
        // Written concurrently with reading the output, so a large input cannot deadlock.
        tokio::spawn(async move {
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    let output = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("`{command}` took over {KUBECTL_TIMEOUT:?}; killed"))?
        .with_context(|| format!("waiting for `{command}`"))?;
    Ok(KubectlOutput {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Interprets `kubectl auth can-i` (which exits 1 for "no"): its first stdout word.
pub fn parse_can_i(out: &KubectlOutput) -> anyhow::Result<bool> {
    match out.stdout.split_whitespace().next() {
        Some("yes") if out.success() => Ok(true),
        Some("no") => Ok(false),
        _ => bail!(
            "`{}` answered neither yes nor no ({}):\nstdout:\n{}\nstderr:\n{}",
            out.command,
            out.status,
            out.stdout.trim_end(),
            out.stderr.trim_end()
        ),
    }
}
