//! Supervision: one tokio task per instance that starts its process, watches it (exit, readiness,
//! health checks, cron schedule, memory pokes from the metrics pass), restarts it as the
//! [`crate::restart`] policy says, stops it (stop signal to its process group, SIGKILL after the
//! kill timeout, then every descendant left) and keeps its status in
//! [`State`](crate::state::State) and its record on disk ([`crate::persist`]) current. Also
//! carries out desired-set plans: spawning these tasks and steering them through a `watch`
//! channel each, and adopting the processes a previous agent left running.
//!
//! Parts: this file is the registry (applying a desired set) and each task's main loop;
//! [`launch`] spawns a process; [`wait`] turns what a running process does (exit, readiness,
//! health, cron, pokes) into the next step; [`stop`] ends one; [`adopt`] takes over processes a
//! previous agent left, recorded or not.
//!
//! A supervisor never blocks the runtime on a child and never holds the state lock across an
//! `.await`. Decisions about *what* to run come from [`crate::desired`]; *when* to restart comes
//! from [`crate::restart`].
mod adopt;
mod launch;
mod stop;
mod wait;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pmcluster_spec::supervise::{HealthCheck, RETRYING};
use pmcluster_spec::{AppSpec, PortSpec};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

pub(crate) use adopt::{adopt_local, start_local_after};
use launch::StartError;
pub(crate) use wait::sleep_until_opt;
use wait::{next_cron, next_event};

use crate::desired::{self, Action, Current, Plan};
use crate::health::{self, Tracker};
use crate::logs::pump::PumpPipe;
use crate::model::{Assignment, DesiredSet, Health, InstanceId, InstanceState, Status};
use crate::persist::{Saved, SavedEnd, SavedProcess, SavedPump};
use crate::process::{Exit, ExitWatch, ProcId};
use crate::restart::{self, Crashes};
use crate::state::{Agent, Entry, Inner, Poke, Target};

/// How often a launching instance's port is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// Requests from the metrics pass waiting for a supervisor.
const POKE_QUEUE: usize = 2;

/// Applies a desired set from the coordinator: diffs it against what runs, then starts, steers
/// and stops supervisors. Stale sets are ignored. Synchronous and quick: stopping happens in the
/// supervisors. Returns whether the set was applied: not when stale, nor once the agent is
/// shutting down (then the orphans found at startup are not settled either, since settling
/// may stop some).
pub(crate) fn apply(agent: &Arc<Agent>, set: DesiredSet) -> bool {
    if agent.leaving() {
        tracing::debug!(
            generation = set.generation,
            "the agent is shutting down; not applying the desired set"
        );
        return false;
    }
    // The first set that will be applied settles the orphans found at startup, before its own
    // actions (an adopted orphan must not be started again).
    if set.generation >= agent.state.generation() {
        let orphans = agent
            .orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(orphans) = orphans {
            adopt::settle(agent, &set, orphans);
        }
    }
    let applied = apply_set(agent, set, false);
    if applied {
        forget_unclaimed(agent);
    }
    applied
}
/// Applies the last desired set kept on disk, unless the coordinator's has been applied since.
pub(crate) fn apply_local(agent: &Arc<Agent>, set: DesiredSet) {
    apply_set(agent, set, true);
}
/// Returns whether the set was applied.
fn apply_set(agent: &Arc<Agent>, set: DesiredSet, local: bool) -> bool {
    {
        let mut inner = agent.state.lock();
        if local && inner.cleared {
            return false;
        }
        // Again under the lock the shutdown cancels under: a set is applied wholly before the
        // supervisors learn of the shutdown, or not at all.
        if agent.leaving() {
            return false;
        }
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
                return false;
            }
            Plan::Apply {
                generation,
                actions,
            } => {
                tracing::debug!(
                    generation,
                    n_actions = actions.len(),
                    local,
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
                inner.cleared = true;
            }
        }
    }
    agent.cleared.send_replace(true);
    // The coordinator learns the applied generation with the next (prompt) report.
    agent.state.changed.notify_one();
    true
}
/// After the coordinator's first set: the records of instances that were not running at the
/// agent's start and that the set did not bring back are gone for good.
fn forget_unclaimed(agent: &Agent) {
    let unclaimed = std::mem::take(
        &mut *agent
            .unclaimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if unclaimed.is_empty() {
        return;
    }
    let inner = agent.state.lock();
    for id in unclaimed.into_keys() {
        if !inner.instances.contains_key(&id) {
            tracing::info!(instance = %id, "not in the coordinator's desired set; forgetting it");
            if let Err(e) = agent.records.remove(id.as_str()) {
                tracing::warn!(instance = %id, "cannot remove its record: {e}");
            }
        }
    }
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
    let mut status = Status::new(state, assignment.restart_epoch);
    // One whose process ended while no agent ran goes on counting from its record: its next
    // start is a restart.
    let carried = agent
        .unclaimed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&id)
        .copied();
    if let Some(c) = carried {
        status.restarts = c.restarts;
        status.last_exit_code = c.last_exit_code;
    }
    spawn_supervisor(
        agent,
        inner,
        assignment,
        status,
        u64::from(start),
        None,
        None,
    );
}
fn spawn_supervisor(
    agent: &Arc<Agent>,
    inner: &mut Inner,
    assignment: Assignment,
    status: Status,
    start_seq: u64,
    running: Option<Running>,
    ended: Option<SavedEnd>,
) {
    let id = assignment.instance_id.clone();
    let (app, index) = (assignment.app.clone(), assignment.index);
    // A process ran before: the next spawn counts as a restart.
    let started_once = running.is_some() || status.restarts > 0 || ended.is_some();
    let auto_port = match (&assignment.spec, running.as_ref()) {
        (Ok(spec), Some(r)) if matches!(spec.port, PortSpec::Auto(..)) => r.port,
        _ => None,
    };
    let (tx, rx) = watch::channel(Target {
        assignment,
        remove: false,
        start_seq,
    });
    let (pokes_tx, pokes_rx) = mpsc::channel(POKE_QUEUE);
    inner.instances.insert(
        id.clone(),
        Entry {
            app,
            index,
            status,
            target: tx,
            pokes: pokes_tx,
            family: Vec::new(),
        },
    );
    if let Some(port) = auto_port {
        // Held by the adopted process: no other instance of this agent may get it.
        agent.ports.claim(&id, port);
    }
    let supervisor = Supervisor {
        agent: Arc::clone(agent),
        id,
        target: rx,
        pokes: pokes_rx,
        cleared: agent.cleared.subscribe(),
        auto_port,
        crashes: Crashes::default(),
        start_failures: 0,
        started_once,
        reason: None,
        ended,
        // No start acted on yet: a target asking for one (`start_seq` 1) is a start to do.
        // `run` takes the target's for a process it is handed (adopted, it *is* the start).
        seen_seq: 0,
    };
    agent.supervisors.spawn(supervisor.run(running));
}
/// The task that owns one instance.
struct Supervisor {
    agent: Arc<Agent>,
    id: InstanceId,
    target: watch::Receiver<Target>,
    pokes: mpsc::Receiver<Poke>,
    cleared: watch::Receiver<bool>,
    /// Port of an `auto:` range held by this instance, kept across restarts while it stays free.
    auto_port: Option<u16>,
    crashes: Crashes,
    /// Starts in a row that failed before a process ran (program missing, port taken).
    start_failures: u32,
    /// Whether a process was ever spawned, so later spawns count as restarts.
    started_once: bool,
    /// Why the next start is a restart ("restarted after: killed by SIGKILL"): the new process
    /// carries it as its message, so the reason stays visible once it runs again.
    reason: Option<String>,
    /// Set while its process ended for good (see [`Saved::ended`]): every record written until
    /// the next start says so, or a restarted agent would start it again. Not while a start is
    /// pending (see [`Supervisor::start_pending`]).
    ended: Option<SavedEnd>,
    /// The last start asked by the target (`Target::start_seq`) that this supervisor acted on.
    seen_seq: u64,
}
/// A running process.
struct Running {
    /// The assignment it was started (or adopted) under. Its record names this one while the
    /// target still runs it: a target that changed just before the agent detached (a restart
    /// asked, a new version) is work the next agent must still do.
    assignment: Assignment,
    proc: ProcId,
    exit: ExitWatch,
    started: Instant,
    /// The spec it was started with: its kill timeout and restart policy apply to this process.
    spec: Arc<AppSpec>,
    index: u32,
    port: Option<u16>,
    /// Accepting connections (or passing its health check): ONLINE.
    ready: bool,
    /// Past this without being ready, it is restarted.
    listen_by: Instant,
    port_probe: Interval,
    /// The node's address (`${HOST}`), when an IP other than loopback: an instance that binds
    /// only it is reached there, not on 127.0.0.1.
    probe_host: Option<IpAddr>,
    health: Option<HealthRun>,
    cron_at: Option<Instant>,
    /// The log pump processes reading its output pipes (`log_timestamps`).
    pumps: Vec<SavedPump>,
    /// The exit of its pump when this agent started it (see [`crate::logs::pump::drained`]).
    pump_exit: Option<oneshot::Receiver<Exit>>,
    /// Its output pipes until its pump starts (see [`Supervisor::start_pump`]).
    unpumped: Vec<PumpPipe>,
    /// Its cgroup (see [`crate::cgroup`]), when it runs in one.
    cgroup: Option<PathBuf>,
}
/// The health check of one process.
struct HealthRun {
    check: HealthCheck,
    target: health::Target,
    tracker: Tracker,
    next: Instant,
    in_flight: Option<health::Check>,
    /// Why the last check failed, also before the process was ready.
    last_failure: String,
}
impl Running {
    fn new(
        proc: ProcId,
        exit: ExitWatch,
        started: Instant,
        assignment: Assignment,
        spec: Arc<AppSpec>,
        port: Option<u16>,
        health_target: &health::Target,
    ) -> Running {
        let index = assignment.index;
        let mut port_probe = tokio::time::interval(PROBE_INTERVAL);
        port_probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let health = spec
            .supervision
            .health_check
            .clone()
            .map(|check| HealthRun {
                tracker: Tracker::new(check.retries),
                check,
                target: health_target.clone(),
                next: Instant::now(),
                in_flight: None,
                last_failure: String::new(),
            });
        let ready = health.is_none() && port.is_none();
        let probe_host = health_target
            .host
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| !ip.is_loopback());
        let cron_at = spec
            .supervision
            .cron_restart
            .as_deref()
            .and_then(next_cron)
            .map(|d| Instant::now() + d);
        Running {
            assignment,
            proc,
            exit,
            started,
            listen_by: Instant::now() + spec.supervision.listen_timeout,
            spec,
            index,
            port,
            ready,
            port_probe,
            probe_host,
            health,
            cron_at,
            pumps: Vec::new(),
            pump_exit: None,
            unpumped: Vec::new(),
            cgroup: None,
        }
    }

    fn health_state(&self) -> Health {
        self.health
            .as_ref()
            .map_or(Health::None, |h| h.tracker.health)
    }
}
impl Supervisor {
    async fn run(mut self, mut running: Option<Running>) {
        // When to (re)start the process; `None` while it runs or must not be started.
        let mut next_start: Option<Instant> = None;
        if running.is_some() {
            self.seen_seq = self.target.borrow().start_seq;
        }
        if let Some(r) = &running {
            self.persist(Some(r));
        }
        loop {
            let target = self.target.borrow_and_update().clone();
            if self.agent.detach.is_cancelled() {
                // The agent exits and leaves the process running for the next agent to adopt.
                self.persist(running.as_ref());
                return;
            }
            let shutting_down = self.agent.stop_instances.is_cancelled();
            if target.remove || shutting_down || !target.assignment.run {
                if let Some(r) = running.take() {
                    if !target.remove && !shutting_down {
                        // A user's stop, recorded before the stop (which may take the whole
                        // kill timeout, beyond the agent's shutdown slack): an agent that
                        // restarts meanwhile then stops the process it adopts, rather than
                        // keep it running as wanted. Not for a delete (see below).
                        self.persist(Some(&r));
                    }
                    let exit = self.stop(r).await;
                    if target.remove {
                        // Its record goes below; written first as well, it was about a
                        // third of what a `delete` cost the agent.
                        self.note_stop(exit);
                    } else {
                        self.stopped(exit);
                    }
                } else {
                    self.discard_cgroup();
                }
                next_start = None;
                if shutting_down {
                    // One that ended for good was not stopped by this shutdown: it keeps its
                    // state and record, so that the next agent does not start it either. Unless
                    // a start was asked since: then it is stopped, and its record (without the
                    // end) has the next agent start it.
                    if self.ended.is_none() || self.start_pending(&target) {
                        self.set_state(InstanceState::Stopped, "agent stopped");
                    }
                    self.persist(None);
                    return;
                }
                // Stopped or removed by the user: no longer what its restart policy left.
                self.ended = None;
                if target.remove {
                    if self.agent.state.forget_if_removed(&self.id) {
                        self.agent.ports.release(&self.id);
                        if let Err(e) = self.agent.records.remove(self.id.as_str()) {
                            tracing::warn!(instance = %self.id, "cannot remove its record: {e}");
                        }
                        tracing::info!(instance = %self.id, "removed");
                        return;
                    }
                    // Brought back while it was stopping: decide again, with a record that
                    // names no process.
                    self.persist(None);
                    continue;
                }
                self.set_state(InstanceState::Stopped, "");
                self.persist(None);
                self.seen_seq = target.start_seq;
            } else if self.start_pending(&target) {
                self.seen_seq = target.start_seq;
                let waited = running.is_some();
                if let Some(r) = running.take() {
                    let exit = self.stop(r).await;
                    self.stopped(exit);
                }
                self.crashes = Crashes::default();
                self.start_failures = 0;
                self.reason = None;
                self.ended = None;
                next_start = Some(Instant::now());
                // The stop may have taken the whole kill timeout: a stop, delete, newer spec or
                // shutdown that came meanwhile is read at the top before anything starts, not
                // after a process of the old target. (A detach still starts the new process: the
                // next agent adopts it, and the restart is not lost.)
                let changed = self.target.has_changed().unwrap_or(true);
                if waited && (changed || self.agent.stop_instances.is_cancelled()) {
                    continue;
                }
            }

            let cleared = *self.cleared.borrow_and_update();
            if running.is_none() && cleared && next_start.is_some_and(|at| at <= Instant::now()) {
                next_start = None;
                match self.start(&target) {
                    Ok(mut r) => {
                        // The other instances of the same desired set get their processes
                        // before this one gets its pump: a pump is a process as well, and the
                        // instances are what a start waits for. The pipes hold the output
                        // meanwhile.
                        tokio::task::yield_now().await;
                        self.start_pump(&mut r);
                        self.start_failures = 0;
                        self.ended = None;
                        self.agent.state.update(&self.id, |s| s.start_failures = 0);
                        self.persist(Some(&r));
                        running = Some(r);
                    }
                    Err(StartError::Fatal(message)) => {
                        tracing::warn!(instance = %self.id, "cannot start: {message}");
                        self.start_failures = self.start_failures.saturating_add(1);
                        let failures = self.start_failures;
                        self.agent
                            .state
                            .update(&self.id, |s| s.start_failures = failures);
                        self.set_state(InstanceState::Errored, &message);
                        self.persist(None);
                    }
                    Err(StartError::Retry(message)) => {
                        let (restart_delay, cap) = target
                            .assignment
                            .spec
                            .as_ref()
                            .map_or((Duration::ZERO, restart::CRASH_BACKOFF_BASE), |s| {
                                (s.restart_delay, s.supervision.restart_backoff_max)
                            });
                        let delay = restart::retry_delay(self.start_failures, restart_delay, cap);
                        self.start_failures = self.start_failures.saturating_add(1);
                        let failures = self.start_failures;
                        self.agent
                            .state
                            .update(&self.id, |s| s.start_failures = failures);
                        tracing::warn!(instance = %self.id, "cannot start: {message}; retrying in {delay:?}");
                        self.persist(None);
                        // A first miss is usually a handoff (the predecessor still releasing its
                        // port): still launching. Repeated misses are an error a user must see.
                        let state = if self.start_failures <= 2 {
                            InstanceState::Launching
                        } else {
                            InstanceState::Errored
                        };
                        self.set_state(
                            state,
                            &format!("{message}{RETRYING} {}", restart::human(delay)),
                        );
                        next_start = Some(Instant::now() + delay);
                    }
                }
            }

            let cron_run = match (&running, next_start) {
                (None, None) => self.cron_run_at(&target),
                _ => None,
            };
            tokio::select! {
                // Also when the detach came during this turn's awaits (a restart's stop and
                // start): the loop's top then records the instance and ends. Left out once
                // cancelled, the supervisor waited for another event, and the agent's exit for
                // its shutdown slack (5 s).
                () = self.agent.detach.cancelled() => {}
                () = self.agent.stop_instances.cancelled(), if !shutting_down => {}
                changed = self.cleared.changed(), if !cleared => {
                    if changed.is_err() {
                        // The agent is going away.
                        return;
                    }
                }
                changed = self.target.changed() => {
                    if changed.is_err() {
                        // Nothing can steer this instance any more (its entry is gone): end it.
                        if let Some(r) = running.take() {
                            self.stop(r).await;
                        } else {
                            self.discard_cgroup();
                        }
                        self.agent.ports.release(&self.id);
                        return;
                    }
                }
                Some(poke) = self.pokes.recv() => {
                    if let Some(r) = running.take() {
                        match self.poked(r, poke).await {
                            Ok(r) => running = Some(r),
                            Err(at) => next_start = Some(at),
                        }
                    }
                }
                event = next_event(running.as_mut(), &self.agent.reaper) => {
                    if let Some(r) = running.take() {
                        match self.event(r, event).await {
                            Ok(r) => running = Some(r),
                            Err(at) => next_start = at,
                        }
                    }
                }
                () = sleep_until_opt(next_start), if running.is_none() => {}
                () = sleep_until_opt(cron_run), if cron_run.is_some() => {
                    let expr = target.assignment.spec.as_ref().ok()
                        .and_then(|s| s.supervision.cron_restart.clone())
                        .unwrap_or_default();
                    self.crashes = Crashes::default();
                    self.reason = Some(format!("started by cron_restart {expr:?}"));
                    next_start = Some(Instant::now());
                }
            }
        }
    }

    /// When an instance that exited with autorestart off runs again: at the next time of its
    /// `cron_restart`, as PM2 runs a job given `--cron` and `--no-autorestart`. A trial's job
    /// ran once and stayed `exited`. One that errored stays so until a user restarts it.
    fn cron_run_at(&self, target: &Target) -> Option<Instant> {
        let exited = self
            .ended
            .as_ref()
            .is_some_and(|e| e.state == crate::persist::EndState::Exited);
        if !exited || !target.assignment.run {
            return None;
        }
        let spec = target.assignment.spec.as_ref().ok()?;
        let expr = spec.supervision.cron_restart.as_deref()?;
        next_cron(expr).map(|wait| Instant::now() + wait)
    }
    /// Whether the target asks for a start this supervisor has not acted on yet.
    fn start_pending(&self, target: &Target) -> bool {
        target.start_seq != self.seen_seq
    }
    fn set_state(&self, state: InstanceState, message: &str) {
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            if !message.is_empty() {
                s.message = message.to_string();
            }
            if state == InstanceState::Stopped && message.is_empty() {
                s.message.clear();
            }
        });
    }
    /// Writes this instance's record (see [`crate::persist`]). With a process whose target
    /// still runs it, the assignment the process runs under (see [`Running::assignment`]): a
    /// newer target can only be a restart not done yet. Otherwise the target's, so a stop asked
    /// but not done yet is recorded as one, and the next agent stops the process it adopts.
    /// Without a process, how it ended for good, unless a start is pending: the target's
    /// assignment is then the one that asked for it (a new epoch, or the same assignment
    /// brought back after a removal), and paired with the end the next agent would keep it
    /// ended under it and never start it.
    fn persist(&self, running: Option<&Running>) {
        let (saved, start_pending) = {
            let target = self.target.borrow();
            let saved = match running {
                Some(r) if target.assignment.run => Saved::of(&r.assignment),
                _ => Saved::of(&target.assignment),
            };
            (saved, self.start_pending(&target))
        };
        let Some(mut saved) = saved else {
            if let Err(e) = self.agent.records.remove(self.id.as_str()) {
                tracing::warn!(instance = %self.id, "cannot remove its record: {e}");
            }
            return;
        };
        if let Some(status) = self.agent.state.status(&self.id) {
            saved.restarts = status.restarts;
            saved.last_exit_code = status.last_exit_code;
            saved.process = running.map(|r| SavedProcess {
                pid: r.proc.pid,
                start_ticks: r.proc.start_ticks,
                port: r.port,
                started_at_ms: status.started_at_ms,
                pumps: r.pumps.clone(),
                cgroup: r.cgroup.clone(),
            });
        }
        if running.is_none() && !start_pending {
            saved.ended.clone_from(&self.ended);
        }
        if let Err(e) = self.agent.records.write(&saved) {
            tracing::warn!(instance = %self.id, "cannot write its record: {e}");
        }
    }
}

/// "612 MiB", "1.6 MiB", "100 B" for messages: a limit reads as configured (a trial's
/// `max_memory_restart: 100` read "0 KiB"), whole where it is a whole unit, else one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return match n.is_multiple_of(size) {
                true => format!("{} {unit}", n / size),
                false => format!("{:.1} {unit}", n as f64 / size as f64),
            };
        }
    }
    format!("{n} B")
}
#[cfg(test)]
mod tests;
