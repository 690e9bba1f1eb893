//! Child processes with their output in a log file, stopped (with their process group) on drop.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running child process; its stdout and stderr go to `log_path`.
/// Dropping it sends SIGTERM to its process group, then SIGKILL if it has not exited after 5 s.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl ChildProcess {
    /// Spawns `cmd` in its own process group with stdin closed and stdout+stderr appended to
    /// `log_path` (which starts with the command line). On Linux the child also gets SIGKILL
    /// if the spawning thread dies, so a killed test run leaves no strays behind.
    pub fn spawn(name: &str, cmd: &mut Command, log_path: &Path) -> anyhow::Result<Self> {
        let mut log = File::create(log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        writeln!(log, "$ {cmd:?}")?;
        let stderr = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {:?}", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status() {
            bail!(
                "{} (pid {}) exited with {status}; log {}:\n{}",
                self.name,
                self.pid(),
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The whole log so far, with ANSI escape sequences removed.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines for which `pred` holds.
    pub fn log_lines(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| pred(l))
            .map(str::to_string)
            .collect()
    }

    /// Waits until a log line satisfies `pred` and returns it; fails early if the process
    /// exits, and after `timeout` otherwise (both errors include the log's tail).
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| pred(l)) {
                return Ok(line.to_string());
            }
            self.ensure_running()
                .with_context(|| format!("while waiting for {what}"))?;
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} in the log of {} ({}); tail:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process group at once (SIGKILL), as a crash or a lost node would: nothing
    /// gets to clean up.
    pub fn kill(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; the group is the one this child leads (process_group(0)).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Stops the process group: SIGTERM, then SIGKILL after 5 s. Idempotent.
    pub fn stop(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; the group is the one this child leads (process_group(0)).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the leader is not yet reaped, so the group id is still ours.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes ANSI escape sequences (colours) from `s`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2025\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2025  WARN x"
        );
    }

    #[tokio::test]
    async fn captures_output_and_stops_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut p = ChildProcess::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo hello; sleep 600"]),
            &log,
        )
        .unwrap();
        let line = p
            .wait_for_log("hello", Duration::from_secs(10), |l| l == "hello")
            .await
            .unwrap();
        assert_eq!(line, "hello");
        assert!(p.is_running());
        p.stop();
        assert!(!p.is_running());
        assert!(p.log().starts_with("$ "));
    }
}
