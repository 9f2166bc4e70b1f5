//! Stopping an instance's process: the stop signal to its group and to descendants that left
//! it, SIGKILL to all of them after the kill timeout, the cgroup emptied and removed.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_spec::supervise::StopSignal;
use tokio::time::Instant;

use super::{Running, Supervisor};
use crate::cgroup;
use crate::logs::pump::drained;
use crate::model::InstanceState;
use crate::process::{self, Exit, ProcId, signal_group};

/// How often a stopping group is checked for members left after its leader exited.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long a restart waits for what is left of the previous process's group to go (it was just
/// sent SIGKILL) before it checks the port.
const GROUP_GONE_WAIT: Duration = Duration::from_secs(1);
/// How long a stop waits for a process after SIGKILL before it gives up on it (a process stuck
/// in the kernel cannot be killed; the agent must not hang on it).
pub(super) const AFTER_KILL_WAIT: Duration = Duration::from_secs(10);

impl Supervisor {
    /// Stops the process: the stop signal to its group (and to descendants that left it),
    /// SIGKILL to all of them after the kill timeout. Returns once the leader has ended and
    /// nothing of its family is left.
    pub(super) async fn stop(&self, mut r: Running) -> Exit {
        // A restart the agent makes said why just before (`stopping_for`); any other stop (a
        // user's stop, restart or delete) clears the reason the last restart left.
        self.agent.state.update(&self.id, |s| {
            if s.state != InstanceState::Stopping {
                s.message.clear();
            }
            s.state = InstanceState::Stopping;
        });
        let pgid = r.proc.pid;
        let grace = r.spec.kill_timeout;
        let signal = stop_signal(r.spec.supervision.stop_signal);
        // Who is in the family now: descendants that called setsid are not in the group, and
        // once the leader is gone nothing else links them to it.
        let mut family = self.agent.state.family(&self.id);
        family.extend(family_off_runtime(pgid, r.cgroup.as_deref()).await);
        signal_group(pgid, signal);
        // The grace counts from the signal, not from before the family scan (a blocking
        // thread's, which may queue in a mass stop).
        let deadline = Instant::now() + grace;
        let mut signalled = std::collections::BTreeSet::new();
        for p in &family {
            if process::read_stat(p.pid).is_some_and(|s| s.pgrp != pgid) {
                p.signal(signal);
                signalled.insert(p.pid);
            }
        }
        // The cgroup holds whatever escaped the group and the family as well.
        if let Some(path) = &r.cgroup {
            for pid in cgroup::procs(path).unwrap_or_default() {
                if signalled.contains(&pid)
                    || process::read_stat(pid).is_none_or(|s| s.pgrp == pgid)
                {
                    continue;
                }
                let _ = nix::sys::signal::kill(process::to_pid(pid), signal);
            }
        }
        let cgroup_busy = |r: &Running| r.cgroup.as_deref().is_some_and(cgroup::populated);
        let exit = match tokio::time::timeout_at(deadline, r.exit.wait()).await {
            Ok(exit) => {
                // Give the rest of the group (and cgroup) what is left of the grace period.
                while (group_alive(pgid).await || cgroup_busy(&r)) && Instant::now() < deadline {
                    tokio::time::sleep(GROUP_POLL).await;
                }
                exit
            }
            Err(_elapsed) => {
                tracing::warn!(instance = %self.id, "still running {grace:?} after {}; sending SIGKILL", signal.as_str());
                process::kill_all(pgid, &family);
                match tokio::time::timeout(AFTER_KILL_WAIT, r.exit.wait()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        tracing::error!(instance = %self.id, pid = pgid, "does not die even after SIGKILL; giving up on it");
                        Exit::Unknown
                    }
                }
            }
        };
        family.extend(family_off_runtime(pgid, r.cgroup.as_deref()).await);
        process::kill_all(pgid, &family);
        if let Some(path) = &r.cgroup {
            cgroup::end(path).await;
        }
        drained(&r.pumps, r.pump_exit.take()).await;
        exit
    }

    /// Removes the instance's cgroup when no process of it runs and none is to start: the one
    /// an exit kept for its restart (see `exited`) is otherwise left until the agent exits, so
    /// a long-lived agent would gather one for every instance stopped or removed during its
    /// restart delay. One still populated (a process stuck in the kernel, an orphan not yet
    /// settled) refuses and stays.
    pub(super) fn discard_cgroup(&self) {
        if let Some(path) = self.agent.cgroups.path_for(&self.id) {
            cgroup::discard(&path);
        }
    }
}

/// Processes of the family of `pgid`'s leader right now. With a cgroup, its members: nothing
/// leaves it by `setsid` or a double fork, and reading its one file costs far less than the scan
/// of every `/proc/PID/stat` on the host, which each stop made twice (half of the agent's CPU
/// while 50 instances were deleted, bench/RESULTS.md). Else from that scan.
fn family_now(pgid: u32, cgroup: Option<&Path>) -> Vec<ProcId> {
    if let Some(path) = cgroup
        && let Ok(pids) = cgroup::procs(path)
    {
        return pids
            .into_iter()
            .filter_map(|pid| {
                let stat = process::read_stat(pid).filter(process::Stat::running)?;
                Some(ProcId {
                    pid,
                    start_ticks: stat.start_ticks,
                })
            })
            .collect();
    }
    process::family_now(pgid, pgid)
}
/// [`family_now`] on a blocking thread. Without a cgroup it reads every `/proc/PID/stat` of the
/// host, milliseconds each time; a mass stop (`delete` of an app of hundreds, an agent stopping
/// them all) made those scans side by side on the runtime's few worker threads, and held up
/// what else they run: the coordinator link's heartbeats and reports, log streams.
async fn family_off_runtime(pgid: u32, cgroup: Option<&Path>) -> Vec<ProcId> {
    let cgroup = cgroup.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || family_now(pgid, cgroup.as_deref()))
        .await
        .unwrap_or_default()
}
/// [`process::group_alive`], with its `/proc` scan on a blocking thread (see
/// [`family_off_runtime`]). A group already gone, the common case right after a crash, is known
/// by the signal probe alone, with no hop to another thread on the restart's path.
async fn group_alive(pgid: u32) -> bool {
    if !process::group_exists(pgid) {
        return false;
    }
    tokio::task::spawn_blocking(move || process::group_alive(pgid))
        .await
        .unwrap_or(true)
}
/// Waits (briefly) until nothing of a process group runs any more.
pub(super) async fn wait_group_gone(pgid: u32) {
    let deadline = Instant::now() + GROUP_GONE_WAIT;
    while group_alive(pgid).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
pub(crate) fn stop_signal(s: StopSignal) -> Signal {
    match s {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
    }
}
