//! A bench server (capstan's or a peer's) as a child process on free loopback ports: started,
//! waited for until its control API says it is ready, and stopped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::control::ControlClient;

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("finding a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("starting {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("{0} exited before it was ready: {1}")]
    Exited(PathBuf, ExitStatus),
    #[error("{0} was not ready within {1:?}")]
    NotReady(PathBuf, Duration),
    #[error("waiting for {0}: {1}")]
    Wait(PathBuf, std::io::Error),
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> Result<SocketAddr, ProcessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ProcessError::Port)?;
    listener.local_addr().map_err(ProcessError::Port)
}

/// A running bench server.
#[derive(Debug)]
pub struct ServerProcess {
    program: PathBuf,
    child: Child,
    pid: u32,
    pub ads: SocketAddr,
    pub control: SocketAddr,
}

impl ServerProcess {
    /// Runs `program` with `leading_args`, then the contract's `--ads`, `--control`,
    /// `--services`, `--endpoints` (free loopback ports), then `trailing_args`, and waits up to
    /// `ready_timeout` for `GET /ready`. Its stdout and stderr go to ours.
    pub async fn start(
        program: &Path,
        leading_args: &[String],
        services: usize,
        endpoints: usize,
        trailing_args: &[String],
        ready_timeout: Duration,
    ) -> Result<Self, ProcessError> {
        let (ads, control) = (free_port()?, free_port()?);
        let mut child = Command::new(program)
            .args(leading_args)
            .arg("--ads")
            .arg(ads.to_string())
            .arg("--control")
            .arg(control.to_string())
            .arg("--services")
            .arg(services.to_string())
            .arg("--endpoints")
            .arg(endpoints.to_string())
            .args(trailing_args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProcessError::Spawn(program.to_path_buf(), e))?;
        let pid = child.id().unwrap_or(0);
        let client = ControlClient::new(control);
        let deadline = tokio::time::Instant::now() + ready_timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| ProcessError::Wait(program.to_path_buf(), e))?
            {
                return Err(ProcessError::Exited(program.to_path_buf(), status));
            }
            if client.ready().await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady(program.to_path_buf(), ready_timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            program: program.to_path_buf(),
            child,
            pid,
            ads,
            control,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the server to exit (SIGTERM), and kills it if it has not within a few seconds.
    pub async fn stop(mut self) -> Result<(), ProcessError> {
        if let Ok(pid) = libc::pid_t::try_from(self.pid)
            && pid > 0
        {
            // SAFETY: kill(2) with a pid of our own child and a valid signal number.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(result) => result
                .map(|_| ())
                .map_err(|e| ProcessError::Wait(self.program.clone(), e)),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child
                    .wait()
                    .await
                    .map(|_| ())
                    .map_err(|e| ProcessError::Wait(self.program.clone(), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_loopback() {
        let addr = free_port().expect("a free port");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
    }

    #[tokio::test]
    async fn a_program_that_exits_is_reported() {
        let err = ServerProcess::start(Path::new("false"), &[], 1, 1, &[], Duration::from_secs(30))
            .await
            .expect_err("`false` never becomes ready");
        assert!(matches!(err, ProcessError::Exited(..)), "{err}");
    }
}
