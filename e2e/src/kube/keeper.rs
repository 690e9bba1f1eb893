//! One long-lived thread that spawns the cluster's processes, and clean-up at process exit.
//!
//! [`ChildProcess::spawn`] sets `PR_SET_PDEATHSIG`, which fires when the *spawning thread*
//! exits. Each cargo test runs on its own thread that ends with the test, so a cluster shared by
//! all tests of a binary would be killed when the first test finished. Spawning from this thread
//! instead ties the processes to the test binary: the keeper only ends when the process does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock, TryLockError};

use anyhow::Context;
use tempfile::TempDir;

use crate::process::ChildProcess;

type Job = Box<dyn FnOnce() + Send>;

static KEEPER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

fn keeper() -> anyhow::Result<Sender<Job>> {
    if let Some(tx) = KEEPER.get() {
        return Ok(tx.lock().unwrap_or_else(|e| e.into_inner()).clone());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    let started = std::thread::Builder::new()
        .name("capstan-kube-keeper".into())
        .spawn(move || {
            // The static sender never drops, so this loop (and the thread) lasts until exit.
            for job in rx {
                job();
            }
        });
    // Losing the race to another first caller is fine: its keeper is used, ours idles.
    started.context("starting the kube keeper thread")?;
    let tx = KEEPER.get_or_init(|| Mutex::new(tx));
    Ok(tx.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// [`ChildProcess::spawn`] on the keeper thread.
pub(crate) fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> anyhow::Result<ChildProcess> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let (name_owned, log_owned) = (name.to_string(), log_path.to_path_buf());
    keeper()?
        .send(Box::new(move || {
            let _ = reply_tx.send(ChildProcess::spawn(&name_owned, &mut cmd, &log_owned));
        }))
        .map_err(|_| anyhow::anyhow!("the kube keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the kube keeper thread dropped the spawn of {name}"))?
}

/// What the exit hook cleans up: process group ids to kill, then a directory to remove.
#[derive(Debug, Default)]
struct ExitCleanup {
    pgids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static AT_EXIT: Mutex<Option<ExitCleanup>> = Mutex::new(None);

/// Registers, once, a C `atexit` hook. Statics are never dropped, so without it the shared
/// cluster's state directory (etcd preallocates a 64 MB WAL) would stay behind on every run;
/// PDEATHSIG alone would kill the processes only after our exit, racing the removal.
fn ensure_hook() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn` with no arguments.
        unsafe { libc::atexit(run_exit_cleanup) };
    });
}

/// Adds a process group to kill at exit (the shared cluster's etcd and apiserver).
pub(crate) fn kill_at_exit(pgid: u32) {
    ensure_hook();
    let mut guard = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(Default::default).pgids.push(pgid);
}

/// Adds a directory to remove at exit, after the processes are dead.
pub(crate) fn remove_at_exit(dir: &Path) {
    ensure_hook();
    let mut guard = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(Default::default)
        .dirs
        .push(dir.to_path_buf());
}

extern "C" fn run_exit_cleanup() {
    // try_lock: a test thread still running (e.g. one that timed out) must not hang the exit.
    let mut guard = match AT_EXIT.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    let Some(cleanup) = guard.take() else {
        return;
    };
    for pgid in &cleanup.pgids {
        let pid = *pgid as libc::pid_t;
        // SAFETY: plain syscalls. waitpid(WNOHANG) answers 0 only for a child of ours that is
        // still running, so a process stopped (and reaped) earlier is skipped and its id,
        // possibly reused by now, is never signalled. SIGKILL because the data is thrown
        // away and a graceful apiserver shutdown takes a second.
        unsafe {
            if libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) != 0 {
                continue;
            }
            libc::kill(-pid, libc::SIGKILL);
            // Reaped before the directory goes, so no writer outlives the removal.
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    for dir in &cleanup.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Temp dirs of clusters are named `capstan-kube-*` and hold the owner's pid in this file.
const STATE_PREFIX: &str = "capstan-kube-";
const OWNER_FILE: &str = "owner.pid";

/// A new state directory for one cluster (PKI, kubeconfigs, etcd data). The shared cluster's
/// is removed at exit; a private cluster's when its `TempDir` drops. Stale ones from test
/// processes that died without either are removed first.
pub(crate) fn state_dir(shared: bool) -> anyhow::Result<TempDir> {
    sweep_stale_state();
    let state = tempfile::Builder::new()
        .prefix(STATE_PREFIX)
        .tempdir()
        .context("creating the cluster's state directory")?;
    std::fs::write(
        state.path().join(OWNER_FILE),
        std::process::id().to_string(),
    )
    .context("writing the state directory's owner file")?;
    if shared {
        remove_at_exit(state.path());
    }
    Ok(state)
}

/// Removes state directories of clusters whose test process died without cleaning up
/// (SIGKILL, a crash): each holds a 64 MB etcd WAL.
fn sweep_stale_state() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STATE_PREFIX)
        {
            continue;
        }
        // No owner file yet means a cluster being created right now: leave it.
        let Ok(owner) = std::fs::read_to_string(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        if let Ok(pid) = owner.trim().parse::<i32>()
            && !pid_alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
