//! Processes: spawning instance processes, reaping them (this module is the agent's only caller of
//! `waitpid`, but for `into_cgroup`, which waits for a child whose exec failed), watching
//! processes the agent did not spawn (adopted after an agent restart), signalling a process
//! group and every descendant, and reading `/proc`.
//!
//! Why one reaper: the agent is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so the orphans of
//! its instances (a daemonising worker, a grandchild whose parent died) become its children and
//! must be reaped or they stay zombies for as long as the agent runs. Reaping "any child" would
//! steal the exit status of an instance leader from whoever waits for it, so nothing else may
//! wait: every spawn goes through [`Reaper::spawn`], which registers the pid under the same lock
//! the reaper holds while it reaps, or [`Reaper::spawn_with`], which keeps an exit reaped while
//! its spawn was under way until the pid is registered; the reaper hands each registered exit to
//! its waiter.
//!
//! What this module must not do: decide anything about restarts (see `restart`), or block the
//! runtime for longer than one short syscall burst.
//!
//! Its parts: `reaper` (spawning and reaping), `watch` (how a supervisor learns of an exit),
//! `stat` (`/proc`); here, what they share: exits, process ids and signals.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

mod reaper;
mod stat;
mod watch;

pub use reaper::{Credentials, Reaper, Spawned, set_in_child};
pub use stat::{
    Stat, children_index, family, family_now, parse_stat, read_pseudo_file, read_stat, scan,
    started_at_ms,
};
pub use watch::ExitWatch;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The agent could not learn it: the process was adopted (not the agent's child), or the
    /// agent is shutting down.
    Unknown,
}

impl Exit {
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            _ => None,
        }
    }

    /// "exited with code 3", "killed by SIGKILL", "exited".
    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Signal(sig) => format!("killed by {}", signal_name(sig)),
            Exit::Unknown => "exited (status unknown: the agent did not start it)".to_string(),
        }
    }
}

/// `SIGKILL` for 9, `signal 77` for what nix does not know.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// A process, identified by pid and start time (clock ticks after boot, `/proc/PID/stat` field
/// 22) so that a reused pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The process running now under `pid`.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = read_stat(pid)?;
        Some(ProcId {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// A process this agent just started, by its pid. Its start time is read from `/proc`; a
    /// process that has already gone (its stat unreadable) gets start time 0, which only a
    /// process of the first clock tick after boot has, so it is never signalled and counts as gone.
    pub fn started(pid: u32) -> ProcId {
        ProcId::of(pid).unwrap_or(ProcId {
            pid,
            start_ticks: 0,
        })
    }

    /// Whether this very process still runs (zombies count as gone).
    pub fn alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && s.running())
    }

    /// Sends `signal` if this very process still runs.
    pub fn signal(&self, signal: Signal) {
        if self.alive() {
            let _ = kill(to_pid(self.pid), signal);
        }
    }
}

pub fn to_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Sends `signal` to a process group; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    match killpg(to_pid(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {signal} to process group {pgid}: {e}"),
    }
}

/// Whether a process group has any member, zombies included: the signal probe alone.
pub fn group_exists(pgid: u32) -> bool {
    killpg(to_pid(pgid), None).is_ok()
}

/// Whether any process of the group runs (zombies do not count: an orphaned member that exited
/// may wait a while for its reaper, and a stop must not wait for that).
pub fn group_alive(pgid: u32) -> bool {
    if !group_exists(pgid) {
        return false;
    }
    match scan() {
        Ok(table) => table.iter().any(|s| s.pgrp == pgid && s.running()),
        // Without /proc, trust the signal probe.
        Err(_) => true,
    }
}

/// SIGKILL for a process group and every process of `known` that still runs.
pub fn kill_all(pgid: u32, known: &[ProcId]) {
    signal_group(pgid, Signal::SIGKILL);
    for p in known {
        p.signal(Signal::SIGKILL);
    }
}

/// Writes `n` in decimal into `buf` and returns the digits. Used between fork and exec, so it
/// must not allocate.
pub fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// An I/O error's text without the "(os error N)" suffix, e.g. "No such file or directory".
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Now, in Unix milliseconds (the wall clock: what a user reads as "started at").
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(7, &mut buf), b"7");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn error_descriptions() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(describe(&e), "No such file or directory");
    }

    #[test]
    fn exits() {
        assert_eq!(Exit::Code(3).describe(), "exited with code 3");
        // The restart policy tells a clean exit by these words.
        assert_eq!(Exit::Code(0).describe(), crate::restart::CLEAN_EXIT);
        assert_eq!(Exit::Signal(9).describe(), "killed by SIGKILL");
        assert_eq!(Exit::Signal(15).code(), None);
        assert_eq!(signal_name(200), "signal 200");
    }

    #[test]
    fn a_started_process_that_is_gone_counts_as_gone() -> std::io::Result<()> {
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        child.wait()?;
        // Reaped: its stat is gone (or, if the pid was taken again, another start time).
        let id = ProcId::started(pid);
        assert_eq!(id.pid, pid);
        assert!(
            id.start_ticks == 0 || read_stat(pid).is_some_and(|s| s.start_ticks == id.start_ticks)
        );
        if id.start_ticks == 0 {
            assert!(!id.alive());
        }
        Ok(())
    }
}
