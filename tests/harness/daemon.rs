//! One daemon the harness started (the coordinator or an agent): its files, and its process,
//! which only the harness waits for, so its pid stays ours until reaped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use pmcluster_agent::process::to_pid;

use std::net::SocketAddr;

use crate::cluster::STARTUP_TIMEOUT;
use crate::error::{Error, io_err, unexpected};
use crate::wait::poll_until;

/// The last `n` lines of a file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

pub(crate) fn log_file(path: &Path) -> Result<File, Error> {
    File::create(path).map_err(io_err(format!("creating {}", path.display())))
}

/// A daemon the harness started: the coordinator or an agent.
#[derive(Debug)]
pub struct Daemon {
    /// "coordinator", or the agent's node name.
    pub name: String,
    pub data_dir: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pid: u32,
    /// Behind a lock so that a test can poll it from a closure that also borrows the cluster.
    child: Mutex<Child>,
    exited: Mutex<Option<ExitStatus>>,
}

impl Daemon {
    pub(crate) fn new(
        name: &str,
        data_dir: PathBuf,
        stdout_path: PathBuf,
        stderr_path: PathBuf,
        child: Child,
    ) -> Daemon {
        Daemon {
            name: name.to_string(),
            data_dir,
            stdout_path,
            stderr_path,
            pid: child.id(),
            child: Mutex::new(child),
            exited: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once it has exited (reaps it); `None` while it runs.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if exited.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            *exited = child.try_wait().ok().flatten();
        }
        *exited
    }

    pub fn running(&self) -> bool {
        self.try_exit().is_none()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr_path, n)
    }

    /// Sends `sig` if it still runs (and so is not yet reaped: the pid is still ours).
    pub fn signal(&self, sig: Signal) {
        if self.running() {
            let _ = signal::kill(to_pid(self.pid), sig);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&self) {
        if self.running() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let status = child.wait().ok();
            *self.exited.lock().unwrap_or_else(|e| e.into_inner()) = status;
        }
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, "exit", || self.try_exit().ok_or_else(String::new)).ok()
    }
}

/// Waits for the line a coordinator prints once it listens, and returns that address.
pub(crate) fn wait_listening(daemon: &Daemon, what: &str) -> Result<SocketAddr, Error> {
    const PREFIX: &str = "pmcluster-coordinator listening on ";
    poll_until(STARTUP_TIMEOUT, "the coordinator's listening line", || {
        let out = fs::read_to_string(&daemon.stdout_path).unwrap_or_default();
        if let Some(line) = out.lines().find(|l| l.starts_with(PREFIX)) {
            let addr = &line[PREFIX.len()..];
            return match addr.trim().parse::<SocketAddr>() {
                Ok(a) => Ok(Ok(a)),
                Err(e) => Ok(Err(unexpected(
                    "the coordinator's listening line",
                    format!("{line:?}: {e}"),
                ))),
            };
        }
        if let Some(status) = daemon.try_exit() {
            return Ok(Err(Error::EarlyExit {
                what: what.to_string(),
                status: status.to_string(),
                tail: daemon.stderr_tail(30),
            }));
        }
        Err(format!("stdout so far: {out:?}"))
    })?
}
