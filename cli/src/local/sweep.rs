//! What `down` stops once the agent is gone: the processes its instances left running. An agent
//! that had to be killed (hung, stopped) or had died before never stopped its instances, and
//! `down` means everything stops.
//!
//! They are found as the agent finds its own (see the agent's `orphans`): every instance process,
//! and every child it forks, carries the agent's key in its environment
//! ([`AGENT_KEY_VAR`](pmcluster_spec::instance::AGENT_KEY_VAR), a hash of the agent's data dir
//! path). Only processes carrying this exact key are touched, each by pid together with its
//! start time, so a recycled pid is never hit. Log pumps carry the key too: they end by
//! themselves once their instance's pipes close, and are signalled only if they outlive that.
//!
//! The stat line and the markers are read with `pmcluster_spec::proc`, the agent's own reading.

use std::fs::File;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_spec::proc::{Stat, markers, parse_stat, read_environ};

/// How long processes get to end after SIGKILL before `down` gives up on them, and log pumps
/// after their instances ended before they get SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Rounds of scan and stop: a process forked while the others were being stopped is found by
/// the next scan. Bounded, as something could keep forking; what the scan after the last round
/// finds is reported as left.
const ROUNDS: usize = 3;
const POLL: Duration = Duration::from_millis(100);

/// What a process carrying the key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A process of an instance (its main process or anything it started).
    Instance,
    /// A log pump, or the pump host.
    Pump,
}

/// What a `/proc/PID/environ` text (NUL-separated `NAME=value`) says of a process: one of the
/// agent with `key`'s, or not (`None`). Only the exact key counts; unlike the agent's `orphans`,
/// any process carrying it is one, the pump host included: `down` stops all.
pub fn kind_of(environ: &[u8], key: &str) -> Option<Kind> {
    let found = markers(environ);
    if found.key? != key.as_bytes() {
        return None;
    }
    // An empty instance id names no instance.
    if found.instance.is_some_and(|id| !id.is_empty()) {
        Some(Kind::Instance)
    } else {
        Some(Kind::Pump)
    }
}

/// The stat line of whatever process has this pid now.
fn stat_of(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// One process carrying the key, as first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marked {
    pid: i32,
    start: u64,
    kind: Kind,
}

impl Marked {
    /// Still the same process, and not a zombie (which is gone but for its parent's wait).
    fn alive(&self) -> bool {
        u32::try_from(self.pid)
            .ok()
            .and_then(stat_of)
            .is_some_and(|s| s.start_ticks == self.start && s.running())
    }

    /// Signals it if it is still the process first seen. Whether that worked shows in
    /// [`Marked::alive`] afterwards, which is what counts.
    fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }
}

/// Every live process carrying `key` but this one (a `down` run from an instance's shell must
/// finish its work). Processes whose environment cannot be read (another user's) are not seen.
fn scan(key: &str) -> Vec<Marked> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|p| *p != me)
        else {
            continue;
        };
        let Some(kind) = environ_of(pid).and_then(|e| kind_of(&e, key)) else {
            continue;
        };
        let Some(stat) = stat_of(pid) else {
            continue;
        };
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        if stat.running() {
            found.push(Marked {
                pid,
                start: stat.start_ticks,
                kind,
            });
        }
    }
    found
}

fn environ_of(pid: u32) -> Option<Vec<u8>> {
    read_environ(File::open(format!("/proc/{pid}/environ")).ok()?).ok()
}

/// What [`stop_left`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Instance processes that ended.
    pub stopped: usize,
    /// Of them, those that needed SIGKILL.
    pub killed: usize,
    /// Log pumps that outlived their instances and needed SIGKILL.
    pub pumps_killed: usize,
    /// Pids of processes still running at the end.
    pub left: Vec<i32>,
}

/// Stops every process carrying `key`: SIGTERM to the instances' processes, `grace` for them to
/// end, then SIGKILL; their log pumps, which end by themselves once the pipes close (so that an
/// instance's last lines are written), get SIGKILL only if they outlive that.
pub fn stop_left(key: &str, grace: Duration) -> Swept {
    let mut swept = Swept::default();
    for round in 0..=ROUNDS {
        let found = scan(key);
        if found.is_empty() {
            break;
        }
        if round == ROUNDS {
            swept.left = found.iter().map(|m| m.pid).collect();
            break;
        }
        let (instances, pumps): (Vec<Marked>, Vec<Marked>) =
            found.iter().partition(|m| m.kind == Kind::Instance);
        for m in &instances {
            m.signal(Signal::SIGTERM);
        }
        let killed = end(&instances, grace);
        let pumps_killed = end(&pumps, KILL_WAIT);
        let ended = |m: &&Marked| !m.alive();
        swept.stopped += instances.iter().filter(ended).count();
        swept.killed += killed.iter().filter(ended).count();
        swept.pumps_killed += pumps_killed.iter().filter(ended).count();
        let left: Vec<i32> = found.iter().filter(|m| m.alive()).map(|m| m.pid).collect();
        if !left.is_empty() {
            // Another round would only signal them again.
            swept.left = left;
            break;
        }
    }
    swept
}

/// Waits up to `limit` for `these` to end, then SIGKILLs what is left and waits for that; returns
/// what it SIGKILLed.
fn end(these: &[Marked], limit: Duration) -> Vec<Marked> {
    if gone_within(these, limit) {
        return Vec::new();
    }
    let killed: Vec<Marked> = these.iter().filter(|m| m.alive()).copied().collect();
    for m in &killed {
        m.signal(Signal::SIGKILL);
    }
    gone_within(&killed, KILL_WAIT);
    killed
}

fn gone_within(found: &[Marked], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while found.iter().any(Marked::alive) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_marks_a_process() {
        let key = "00aa00aa00aa00aa";
        let cases: &[(&str, Option<Kind>)] = &[
            (
                "A=b\0PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa\0PMCLUSTER_INSTANCE_UUID=i1\0",
                Some(Kind::Instance),
            ),
            (
                "PMCLUSTER_INSTANCE_UUID=i1\0PMCLUSTER_NODE=n\0PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa",
                Some(Kind::Instance),
            ),
            // A log pump, and the pump host.
            (
                "PMCLUSTER_PUMP_FOR=i1\0PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa\0",
                Some(Kind::Pump),
            ),
            (
                "PMCLUSTER_INSTANCE_UUID=\0PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa\0",
                Some(Kind::Pump),
            ),
            // Another agent's, a key that only begins or ends alike, none.
            (
                "PMCLUSTER_AGENT_KEY=00bb00bb00bb00bb\0PMCLUSTER_INSTANCE_UUID=i1\0",
                None,
            ),
            (
                "PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa0\0PMCLUSTER_INSTANCE_UUID=i1\0",
                None,
            ),
            (
                "PMCLUSTER_AGENT_KEY=00aa\0PMCLUSTER_INSTANCE_UUID=i1\0",
                None,
            ),
            (
                "X_PMCLUSTER_AGENT_KEY=00aa00aa00aa00aa\0PMCLUSTER_INSTANCE_UUID=i1\0",
                None,
            ),
            ("PMCLUSTER_INSTANCE_UUID=i1\0", None),
            ("", None),
        ];
        for (environ, want) in cases {
            assert_eq!(kind_of(environ.as_bytes(), key), *want, "{environ:?}");
        }
    }

    #[test]
    fn own_stat() {
        // The stat lines themselves are `pmcluster_spec::proc`'s tests.
        let mine = stat_of(std::process::id());
        assert!(mine.is_some_and(|s| s.start_ticks > 0), "{mine:?}");
        assert_eq!(stat_of(u32::MAX), None);
    }

    #[test]
    fn a_key_no_process_carries_stops_nothing() {
        assert_eq!(
            stop_left("not-a-key-any-process-has", Duration::from_millis(10)),
            Swept::default()
        );
    }
}
