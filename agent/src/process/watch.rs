//! Watching an exit: of the agent's own child (from the reaper), or of an adopted process.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::{Interval, MissedTickBehavior};

use super::{Exit, ProcId};

/// How often an adopted process is checked when pidfds are not available (kernels before 5.3).
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// How a supervisor learns that its process ended.
pub enum ExitWatch {
    /// Its own child: the reaper delivers the status.
    Child(oneshot::Receiver<Exit>),
    /// Adopted after an agent restart (not our child): its pidfd becomes readable at exit.
    Pidfd(AsyncFd<OwnedFd>),
    /// Adopted, and pidfds are not available: poll `/proc`.
    Poll(ProcId, Interval),
    /// Already known to have ended.
    Done(Exit),
}

impl ExitWatch {
    /// Watches a process this agent did not spawn.
    pub fn adopt(id: ProcId) -> ExitWatch {
        match pidfd(id) {
            Ok(fd) => ExitWatch::Pidfd(fd),
            Err(e) => {
                tracing::debug!(pid = id.pid, "no pidfd ({e}); polling /proc for its exit");
                let mut interval = tokio::time::interval(ADOPTED_POLL);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ExitWatch::Poll(id, interval)
            }
        }
    }

    /// Waits for the exit. Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&mut self) -> Exit {
        match self {
            ExitWatch::Child(rx) => {
                let exit = (&mut *rx).await.unwrap_or(Exit::Unknown);
                *self = ExitWatch::Done(exit);
                exit
            }
            ExitWatch::Pidfd(fd) => match fd.readable().await {
                Ok(_) => {
                    *self = ExitWatch::Done(Exit::Unknown);
                    Exit::Unknown
                }
                Err(e) => {
                    tracing::warn!("watching a pidfd failed ({e}); assuming the process ended");
                    *self = ExitWatch::Done(Exit::Unknown);
                    Exit::Unknown
                }
            },
            ExitWatch::Poll(id, interval) => {
                loop {
                    interval.tick().await;
                    if !id.alive() {
                        break;
                    }
                }
                *self = ExitWatch::Done(Exit::Unknown);
                Exit::Unknown
            }
            ExitWatch::Done(exit) => *exit,
        }
    }
}

fn pidfd(id: ProcId) -> io::Result<AsyncFd<OwnedFd>> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(id.pid).unwrap_or(i32::MAX))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    // The pid may have been reused between the caller's check and the open: the fd must name
    // the very process that was recorded.
    if !id.alive() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    register(fd)
}

/// Registers a pidfd with the runtime. tokio deprecated its safe constructors in favour of
/// `unsafe` ones whose contract is that the fd stays open and the same for the `AsyncFd`'s whole
/// life; an `OwnedFd` moved into the `AsyncFd` guarantees exactly that, so the safe (deprecated)
/// form is sound here and keeps the crate free of `unsafe` for it.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}
