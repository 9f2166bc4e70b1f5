//! What `down` stops once the agent is gone: the processes its instances left running. An agent
//! that had to be killed (hung, stopped) or had died before never stopped its instances, and
//! `down` means everything stops.
//!
//! They are found as the agent finds its own (see the agent's `orphans`): every instance process,
//! and every child it forks, carries the agent's key in its environment
//! ([`AGENT_KEY_VAR`], a hash of the agent's data dir path). Only processes carrying this exact
//! key are touched, each by pid together with its start time, so a recycled pid is never hit.
//! Log pumps carry the key too: they end by themselves once their instance's pipes close, and
//! are signalled only if they outlive that.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_spec::instance::{AGENT_KEY_VAR, INSTANCE_UUID_VAR};

/// Most bytes of one process's environment read; the agent reads as much.
const MAX_ENVIRON: u64 = 8 << 20;
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
/// agent with `key`'s, or not (`None`). Only the exact key counts.
pub fn kind_of(environ: &[u8], key: &str) -> Option<Kind> {
    let mut ours = false;
    let mut instance = false;
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        if name == AGENT_KEY_VAR.as_bytes() {
            ours = value == key.as_bytes();
        } else if name == INSTANCE_UUID_VAR.as_bytes() {
            instance = !value.is_empty();
        }
    }
    match (ours, instance) {
        (false, _) => None,
        (true, true) => Some(Kind::Instance),
        (true, false) => Some(Kind::Pump),
    }
}

/// The state letter and start time (clock ticks after boot) of a `/proc/PID/stat` text.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name, in parentheses, may hold spaces and parentheses itself.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of the whole line; the state is field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
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
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(state, start)| start == self.start && state != 'Z' && state != 'X')
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
        let proc_dir = entry.path();
        let Some(kind) = read_environ(&proc_dir).and_then(|e| kind_of(&e, key)) else {
            continue;
        };
        let Some((state, start)) = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        if state != 'Z' && state != 'X' {
            found.push(Marked { pid, start, kind });
        }
    }
    found
}

fn read_environ(proc_dir: &Path) -> Option<Vec<u8>> {
    let mut environ = Vec::new();
    File::open(proc_dir.join("environ"))
        .ok()?
        .take(MAX_ENVIRON)
        .read_to_end(&mut environ)
        .ok()?;
    Some(environ)
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
    fn stat_lines() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("4242 (x) Z 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        let mine = std::fs::read_to_string("/proc/self/stat").map(|s| parse_stat(&s));
        assert!(
            matches!(mine, Ok(Some((_, start))) if start > 0),
            "{mine:?}"
        );
    }

    #[test]
    fn a_key_no_process_carries_stops_nothing() {
        assert_eq!(
            stop_left("not-a-key-any-process-has", Duration::from_millis(10)),
            Swept::default()
        );
    }
}
