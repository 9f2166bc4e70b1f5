//! Processes by pid, through the agent's own `/proc` code (`pmcluster_agent::process`), so the
//! tests judge "alive", "same process" and "child of" exactly as the agent does.

use nix::sys::signal::{self, Signal};
use pmcluster_agent::orphans::PUMP_VAR;
use pmcluster_agent::process::{self, read_stat, to_pid};

use crate::error::Error;

/// One process, identified by pid and start time so that a reused pid is never mistaken for it.
pub use pmcluster_agent::process::ProcId;

/// Whether a process with this pid runs (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    read_stat(pid).is_some_and(|s| s.running())
}

/// Every running process whose parent is `ppid`, sorted.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(table) = process::scan() else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = table
        .iter()
        .filter(|s| s.ppid == ppid && s.running())
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is an agent's log pump (see the agent's `logs` module), by its environment.
pub fn is_log_pump(pid: u32) -> bool {
    let marker = format!("{PUMP_VAR}=");
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|kv| kv.starts_with(marker.as_bytes()))
    })
}

/// Sends `sig` to `pid` (for tests that kill an instance on purpose).
pub fn kill_pid(pid: u32, sig: Signal) -> Result<(), Error> {
    signal::kill(to_pid(pid), sig).map_err(|e| Error::Io {
        what: format!("sending {sig} to pid {pid}"),
        source: std::io::Error::from(e),
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn sees_a_child_live_then_gone() {
        let me = std::process::id();
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let id = ProcId::of(pid).expect("the child runs");
        assert!(pid_alive(pid) && id.alive());
        assert!(children_of(me).contains(&pid), "{:?}", children_of(me));
        assert!(!is_log_pump(pid));
        kill_pid(pid, Signal::SIGKILL).expect("kill the child");
        let _ = child.wait();
        assert!(!pid_alive(pid) && !id.alive());
        assert!(!children_of(me).contains(&pid));
    }
}
