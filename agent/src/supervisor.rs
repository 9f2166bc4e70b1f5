//! Supervision: one tokio task per instance that starts its process, watches it, restarts it when
//! it exits, stops it (SIGTERM to its process group, SIGKILL after the kill timeout) and keeps its
//! status in [`State`](crate::state::State) current. Also carries out desired-set plans: spawning
//! these tasks and steering them through a `watch` channel each.
//!
//! A supervisor never blocks the runtime on a child and never holds the state lock across an
//! `.await`. Decisions about *what* to run come from [`crate::desired`]; *when* to restart comes
//! from [`crate::restart`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::instance::{instance_argv, instance_env};
use pmcluster_spec::{AppSpec, PortSpec};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::Agent;
use crate::desired::{self, Action, Current, Plan};
use crate::logs::log_path;
use crate::model::{Assignment, DesiredSet, InstanceId, InstanceState, Status};
use crate::restart;
use crate::state::{Entry, Inner};

/// How often a launching instance's port is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How long one probe connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a stopping group is checked for members left after its leader exited.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// What a supervisor must make its instance be. The latest value is all that matters, which is
/// why it travels in a `watch` channel.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The assignment last applied; `run` says whether the process should run.
    pub assignment: Assignment,
    /// The instance left the desired set: stop it and forget it.
    pub remove: bool,
    /// Bumped by every Start and Restart action. A supervisor that sees a new value (re)starts
    /// its process at once, even if it was waiting out a backoff or had given up.
    pub start_seq: u64,
}

/// Applies a desired set: diffs it against what runs, then starts, steers and stops supervisors.
/// Stale sets are ignored. Synchronous and quick: stopping happens in the supervisors.
pub(crate) fn apply(agent: &Arc<Agent>, set: DesiredSet) {
    {
        let mut inner = agent.state.lock();
        let current: BTreeMap<InstanceId, Current> = inner
            .instances
            .iter()
            .map(|(id, e)| {
                let t = e.target.borrow();
                let current = Current {
                    assignment: t.assignment.clone(),
                    removing: t.remove,
                };
                (id.clone(), current)
            })
            .collect();
        match desired::plan(&current, inner.generation, &set) {
            Plan::Stale {
                generation,
                highest,
            } => {
                tracing::debug!("ignoring stale desired set {generation} (applied {highest})");
                return;
            }
            Plan::Apply {
                generation,
                actions,
            } => {
                tracing::debug!(
                    generation,
                    n_actions = actions.len(),
                    "applying desired set"
                );
                for action in actions {
                    tracing::info!(generation, "{action}");
                    match action {
                        Action::Start(a) | Action::Restart(a) => upsert(agent, &mut inner, a, true),
                        Action::Stop(a) => upsert(agent, &mut inner, a, false),
                        Action::Remove(id) => {
                            if let Some(entry) = inner.instances.get(&id) {
                                entry.target.send_modify(|t| t.remove = true);
                            }
                        }
                    }
                }
                inner.generation = inner.generation.max(generation);
            }
        }
    }
    // The coordinator learns the applied generation with the next (prompt) report.
    agent.state.changed.notify_one();
}

/// Steers an existing instance to `assignment`, or creates it with a new supervisor.
fn upsert(agent: &Arc<Agent>, inner: &mut Inner, assignment: Assignment, start: bool) {
    let id = assignment.instance_id.clone();
    if let Some(entry) = inner.instances.get_mut(&id) {
        entry.app = assignment.app.clone();
        entry.index = assignment.index;
        entry.target.send_modify(|t| {
            t.assignment = assignment;
            t.remove = false;
            if start {
                t.start_seq += 1;
            }
        });
        return;
    }
    let state = if assignment.run {
        InstanceState::Launching
    } else {
        InstanceState::Stopped
    };
    let status = Status::new(state, assignment.restart_epoch);
    let (app, index) = (assignment.app.clone(), assignment.index);
    let (tx, rx) = watch::channel(Target {
        assignment,
        remove: false,
        start_seq: u64::from(start),
    });
    inner.instances.insert(
        id.clone(),
        Entry {
            app,
            index,
            status,
            target: tx,
        },
    );
    let supervisor = Supervisor {
        agent: Arc::clone(agent),
        id,
        target: rx,
        auto_port: None,
        streak: 0,
        started_once: false,
    };
    agent.supervisors.spawn(supervisor.run());
}

/// The task that owns one instance.
struct Supervisor {
    agent: Arc<Agent>,
    id: InstanceId,
    target: watch::Receiver<Target>,
    /// Port of an `auto:` range held by this instance, kept across restarts while it stays free.
    auto_port: Option<u16>,
    /// Quick crashes in a row, for the restart backoff.
    streak: u32,
    /// Whether a process was ever spawned, so later spawns count as restarts.
    started_once: bool,
}

/// A spawned process.
struct Running {
    child: Child,
    /// Its process group (the process leads it), which is what stop signals go to.
    pgid: Pid,
    started: Instant,
    /// The spec it was started with: its kill timeout and restart policy apply to this process.
    spec: Arc<AppSpec>,
    port: Option<u16>,
    online: bool,
    probe: Interval,
}

/// Why a start did not happen.
enum StartError {
    /// Retrying cannot help until the assignment changes (invalid spec).
    Fatal(String),
    /// Retry with backoff (the program may be installed, the port freed, the dir created).
    Retry(String),
}

enum Event {
    Online,
    Exited(io::Result<ExitStatus>),
}

impl Supervisor {
    async fn run(mut self) {
        let mut running: Option<Running> = None;
        // When to (re)start the process; `None` while it runs or must not be started.
        let mut next_start: Option<Instant> = None;
        let mut seen_seq = 0u64;
        loop {
            let target = self.target.borrow_and_update().clone();
            let shutting_down = self.agent.stop_instances.is_cancelled();
            if target.remove || shutting_down || !target.assignment.run {
                if let Some(r) = running.take() {
                    self.stop(r).await;
                }
                next_start = None;
                if shutting_down {
                    self.set_state(InstanceState::Stopped, "agent stopped");
                    return;
                }
                if target.remove {
                    if self.agent.state.forget_if_removed(&self.id) {
                        self.agent.ports.release(&self.id);
                        tracing::info!(instance = %self.id, "removed");
                        return;
                    }
                    // Brought back while it was stopping: decide again.
                    continue;
                }
                self.set_state(InstanceState::Stopped, "");
                seen_seq = target.start_seq;
            } else if target.start_seq != seen_seq {
                seen_seq = target.start_seq;
                if let Some(r) = running.take() {
                    self.stop(r).await;
                }
                self.streak = 0;
                next_start = Some(Instant::now());
            }

            if running.is_none() && next_start.is_some_and(|at| at <= Instant::now()) {
                next_start = None;
                match self.start(&target) {
                    Ok(r) => running = Some(r),
                    Err(StartError::Fatal(message)) => {
                        tracing::warn!(instance = %self.id, "cannot start: {message}");
                        self.set_state(InstanceState::Errored, &message);
                    }
                    Err(StartError::Retry(message)) => {
                        let restart_delay = target
                            .assignment
                            .spec
                            .as_ref()
                            .map_or(Duration::ZERO, |s| s.restart_delay);
                        let (streak, delay) =
                            restart::after_exit(self.streak, Duration::ZERO, restart_delay);
                        self.streak = streak;
                        tracing::warn!(instance = %self.id, "cannot start: {message}; retrying in {delay:?}");
                        self.set_state(InstanceState::Errored, &message);
                        next_start = Some(Instant::now() + delay);
                    }
                }
            }

            tokio::select! {
                () = self.agent.stop_instances.cancelled(), if !shutting_down => {}
                changed = self.target.changed() => {
                    if changed.is_err() {
                        // Nothing can steer this instance any more (its entry is gone): end it.
                        if let Some(r) = running.take() {
                            self.stop(r).await;
                        }
                        self.agent.ports.release(&self.id);
                        return;
                    }
                }
                event = next_event(running.as_mut()) => match event {
                    Event::Online => {
                        if let Some(r) = running.as_mut() {
                            r.online = true;
                        }
                        tracing::info!(instance = %self.id, "online");
                        self.set_state(InstanceState::Online, "");
                    }
                    Event::Exited(result) => {
                        if let Some(r) = running.take() {
                            next_start = self.exited(r, result);
                        }
                    }
                },
                () = sleep_until_opt(next_start), if running.is_none() => {}
            }
        }
    }

    /// Spawns the instance's process.
    fn start(&mut self, target: &Target) -> Result<Running, StartError> {
        let a = &target.assignment;
        let spec = a.spec.clone().map_err(StartError::Fatal)?;
        let port =
            match spec.port {
                PortSpec::Auto(lo, hi) => {
                    let picked = self.agent.ports.pick(&self.id, lo, hi, self.auto_port);
                    self.auto_port = picked;
                    Some(picked.ok_or_else(|| {
                        StartError::Retry(format!("no free port in {}", spec.port))
                    })?)
                }
                fixed => a.port.or_else(|| fixed.port_for(a.index)),
            };
        let argv = instance_argv(&spec, a.index, port);
        let Some((program, args)) = argv.split_first() else {
            return Err(StartError::Fatal("the command is empty".to_string()));
        };
        if let Some(cwd) = &spec.cwd {
            match std::fs::metadata(cwd) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(StartError::Retry(format!("cwd {cwd:?} is not a directory")));
                }
                Err(e) => return Err(StartError::Retry(format!("cwd {cwd:?}: {}", describe(&e)))),
            }
        }
        let stdout = open_log(&self.agent.logs_dir, &a.app, a.index, pb::LogStream::Stdout)?;
        let stderr = open_log(&self.agent.logs_dir, &a.app, a.index, pb::LogStream::Stderr)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(instance_env(&spec, a.index, port))
            .stdin(Stdio::null())
            // The files themselves, not pipes: the instance writes straight to disk, so no reader
            // can slow it down and nothing is lost if the agent is busy.
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a stop reaches everything it started.
            .process_group(0)
            // Last resort if this task is dropped without a stop; a stop is the normal path.
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Retry(format!("cannot run {program:?}: {}", describe(&e))))?;
        let Some(pid) = child.id() else {
            return Err(StartError::Retry(format!("{program:?} vanished at start")));
        };
        let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let restarted = self.started_once;
        self.started_once = true;
        let state = if port.is_some() {
            InstanceState::Launching
        } else {
            InstanceState::Online
        };
        tracing::info!(instance = %self.id, app = %a.app, index = a.index, pid, ?port, "started");
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            s.pid = Some(pid);
            s.port = port;
            s.started_at_ms = unix_ms();
            s.message.clear();
            s.restart_epoch = a.restart_epoch;
            if restarted {
                s.restarts = s.restarts.saturating_add(1);
            }
        });
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Running {
            child,
            pgid,
            started: Instant::now(),
            spec,
            port,
            online: port.is_none(),
            probe,
        })
    }

    /// Records an exit the instance did on its own; returns when to start it again, if at all.
    fn exited(&mut self, r: Running, result: io::Result<ExitStatus>) -> Option<Instant> {
        // Whatever the leader left behind in its group would collide with the next start (a port
        // still bound, a worker still writing): it goes with the leader.
        signal_group(r.pgid, Signal::SIGKILL);
        let (code, how) = describe_exit(&result);
        let (streak, delay) =
            restart::after_exit(self.streak, r.started.elapsed(), r.spec.restart_delay);
        self.streak = streak;
        let (state, message, next) = if r.spec.autorestart {
            tracing::info!(instance = %self.id, "{how}; restarting in {delay:?}");
            (InstanceState::Exited, how, Some(Instant::now() + delay))
        } else {
            tracing::info!(instance = %self.id, "{how}; autorestart is off");
            (
                InstanceState::Stopped,
                format!("{how}; autorestart is off"),
                None,
            )
        };
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            s.pid = None;
            s.started_at_ms = 0;
            s.last_exit_code = code;
            s.message = message;
        });
        next
    }

    /// Stops the process: SIGTERM to its group, SIGKILL to the group after the kill timeout.
    /// Returns once the leader has been reaped and the group is gone (or killed).
    async fn stop(&self, mut r: Running) {
        self.set_state(InstanceState::Stopping, "");
        let grace = r.spec.kill_timeout;
        let deadline = Instant::now() + grace;
        signal_group(r.pgid, Signal::SIGTERM);
        let result = match tokio::time::timeout_at(deadline, r.child.wait()).await {
            Ok(result) => {
                // Give the rest of the group what is left of the grace period.
                while group_alive(r.pgid) && Instant::now() < deadline {
                    tokio::time::sleep(GROUP_POLL).await;
                }
                result
            }
            Err(_elapsed) => {
                tracing::warn!(instance = %self.id, "still running {grace:?} after SIGTERM; sending SIGKILL");
                signal_group(r.pgid, Signal::SIGKILL);
                r.child.wait().await
            }
        };
        signal_group(r.pgid, Signal::SIGKILL);
        let (code, how) = describe_exit(&result);
        tracing::info!(instance = %self.id, "stopped: {how}");
        self.agent.state.update(&self.id, |s| {
            s.pid = None;
            s.started_at_ms = 0;
            s.last_exit_code = code;
            s.message = how;
        });
    }

    fn set_state(&self, state: InstanceState, message: &str) {
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            if !message.is_empty() || state == InstanceState::Online {
                s.message = message.to_string();
            }
        });
    }
}

/// The next thing a running process does: start listening on its port, or exit. Pending forever
/// when nothing runs.
async fn next_event(running: Option<&mut Running>) -> Event {
    let Some(r) = running else {
        return std::future::pending().await;
    };
    match r.port {
        Some(port) if !r.online => tokio::select! {
            result = r.child.wait() => Event::Exited(result),
            () = probe(&mut r.probe, port) => Event::Online,
        },
        _ => Event::Exited(r.child.wait().await),
    }
}

/// Returns once something accepts TCP connections on 127.0.0.1:`port`.
async fn probe(interval: &mut Interval, port: u16) {
    loop {
        interval.tick().await;
        let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        if let Ok(Ok(_stream)) = tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            return;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn open_log(
    logs_dir: &Path,
    app: &str,
    index: u32,
    stream: pb::LogStream,
) -> Result<std::fs::File, StartError> {
    let path = log_path(logs_dir, app, index, stream);
    // The directory may have been removed under a running agent; recreate it.
    let opened = std::fs::create_dir_all(logs_dir)
        .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
    opened.map_err(|e| {
        StartError::Retry(format!(
            "cannot open log file {}: {}",
            path.display(),
            describe(&e)
        ))
    })
}

/// An I/O error's text without the "(os error N)" suffix, e.g. "No such file or directory".
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// The exit code (when it exited normally) and a human description of how it ended.
fn describe_exit(result: &io::Result<ExitStatus>) -> (Option<i32>, String) {
    match result {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (Some(code), format!("exited with code {code}")),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                (None, format!("killed by {name}"))
            }
            (None, None) => (None, format!("ended: {status}")),
        },
        Err(e) => (None, format!("lost track of the process: {}", describe(e))),
    }
}

/// Sends `signal` to a process group; a group that is already gone is fine.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {signal} to process group {pgid}: {e}"),
    }
}

/// Whether any process of the group still runs. Zombies do not count: an orphaned member that
/// exited waits for init to reap it, which on some hosts (containers without an init) never
/// happens, and a stop must not wait for that.
fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    // Something is there, maybe only zombies: look closer. Without /proc, assume it runs.
    live_member(pgid.as_raw()).unwrap_or(true)
}

fn live_member(pgid: i32) -> io::Result<bool> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // The process may be gone by now; that is not an error.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == pgid
            && state != 'Z'
            && state != 'X'
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// State and process group from a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields() {
        let cases = [
            ("123 (sleep) S 1 123 123 0 -1", Some(('S', 123))),
            ("7 (a b) (c)) Z 1 99 7 0", Some(('Z', 99))),
            ("7 (x) R", None),
            ("garbage", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat(line), want, "{line}");
        }
    }

    #[test]
    fn error_descriptions() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(describe(&e), "No such file or directory");
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            describe_exit(&Ok(killed)),
            (None, "killed by SIGKILL".to_string())
        );
        let code = ExitStatus::from_raw(3 << 8);
        assert_eq!(
            describe_exit(&Ok(code)),
            (Some(3), "exited with code 3".to_string())
        );
    }
}
