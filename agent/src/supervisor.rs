//! Supervision: one tokio task per instance that starts its process, watches it (exit, readiness,
//! health checks, cron schedule, memory pokes from the metrics pass), restarts it as the
//! [`crate::restart`] policy says, stops it (stop signal to its process group, SIGKILL after the
//! kill timeout, then every descendant left) and keeps its status in
//! [`State`](crate::state::State) and its record on disk ([`crate::persist`]) current. Also
//! carries out desired-set plans: spawning these tasks and steering them through a `watch`
//! channel each, and adopting the processes a previous agent left running.
//!
//! A supervisor never blocks the runtime on a child and never holds the state lock across an
//! `.await`. Decisions about *what* to run come from [`crate::desired`]; *when* to restart comes
//! from [`crate::restart`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::Resource;
use nix::sys::signal::Signal;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::instance::{instance_argv, instance_env};
use pmcluster_spec::supervise::{HealthCheck, StopSignal};
use pmcluster_spec::{AppSpec, PortSpec};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::cgroup;
use crate::desired::{self, Action, Current, Plan};
use crate::health::{self, Change, Outcome, Tracker};
use crate::logs::{self, PumpTarget, log_path, log_streams};
use crate::model::{Assignment, DesiredSet, Health, InstanceId, InstanceState, Status};
use crate::persist::{self, Saved, SavedProcess, SavedPump};
use crate::process::{self, Exit, ExitWatch, ProcId, describe, signal_group, unix_ms};
use crate::restart::{self, Crashes, Decision, Named, Policy};
use crate::state::Agent;
use crate::state::{Entry, Inner, Poke, Target};

/// How often a launching instance's port is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How long one probe connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a launching instance's health check runs until it first passes (then: its
/// interval).
const READINESS_CHECK: Duration = Duration::from_millis(100);
/// How often a stopping group is checked for members left after its leader exited.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long a restart waits for what is left of the previous process's group to go (it was just
/// sent SIGKILL) before it checks the port.
const GROUP_GONE_WAIT: Duration = Duration::from_secs(1);
/// How long a stop waits for a process after SIGKILL before it gives up on it (a process stuck
/// in the kernel cannot be killed; the agent must not hang on it).
const AFTER_KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an exit or stop waits for the instance's log pump to drain its pipes.
const PUMP_DRAIN_WAIT: Duration = Duration::from_millis(500);
/// Requests from the metrics pass waiting for a supervisor.
const POKE_QUEUE: usize = 2;

/// Applies a desired set from the coordinator: diffs it against what runs, then starts, steers
/// and stops supervisors. Stale sets are ignored. Synchronous and quick: stopping happens in the
/// supervisors.
pub(crate) fn apply(agent: &Arc<Agent>, set: DesiredSet) {
    // The first set that will be applied settles the orphans found at startup, before its own
    // actions (an adopted orphan must not be started again).
    if set.generation >= agent.state.generation() {
        let orphans = agent
            .orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(orphans) = orphans {
            crate::orphans::settle(agent, &set, orphans);
        }
    }
    if apply_set(agent, set, false) {
        forget_unclaimed(agent);
    }
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
    for id in unclaimed {
        if !inner.instances.contains_key(&id) {
            tracing::info!(instance = %id, "not in the coordinator's desired set; forgetting it");
            if let Err(e) = persist::remove(&agent.instances_dir, id.as_str()) {
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
    let status = Status::new(state, assignment.restart_epoch);
    spawn_supervisor(agent, inner, assignment, status, u64::from(start), None);
}

/// Takes over a process a previous agent started and left running (same pid, same start time).
pub(crate) fn adopt(
    agent: &Arc<Agent>,
    saved: &Saved,
    assignment: Assignment,
    process: &SavedProcess,
    id: ProcId,
) {
    let spec = match &assignment.spec {
        Ok(spec) => Arc::clone(spec),
        Err(_) => return,
    };
    let now_ms = unix_ms();
    let uptime = Duration::from_millis(u64::try_from(now_ms - process.started_at_ms).unwrap_or(0));
    let started = Instant::now()
        .checked_sub(uptime)
        .unwrap_or_else(Instant::now);
    let (probe_env, uid, gid) = match run_as(&spec) {
        Ok(r) => (r.env, r.credentials.uid, r.credentials.gid),
        Err(_) => (Vec::new(), None, None),
    };
    let health_target = health::Target {
        index: saved.index,
        port: process.port,
        env: probe_env
            .into_iter()
            .chain(instance_env(&spec, saved.index, process.port))
            .collect(),
        cwd: spec.cwd.clone(),
        uid,
        gid,
    };
    let mut running = Running::new(
        id,
        ExitWatch::adopt(id),
        started,
        Arc::clone(&spec),
        saved.index,
        process.port,
        &health_target,
    );
    // Found again by its record, or by its instance id (records of older agents).
    running.cgroup = process
        .cgroup
        .clone()
        .or_else(|| agent.cgroups.path_for(&assignment.instance_id))
        .filter(|path| cgroup::contains(path, id.pid));
    running.pumps = keep_pumping(
        agent,
        &assignment.instance_id,
        id.pid,
        &saved.app,
        saved.index,
        &spec,
        &process.pumps,
    );
    let mut status = Status::new(
        if running.ready {
            InstanceState::Online
        } else {
            InstanceState::Launching
        },
        saved.restart_epoch,
    );
    status.pid = Some(id.pid);
    status.port = process.port;
    status.started_at_ms = process.started_at_ms;
    status.restarts = saved.restarts;
    status.last_exit_code = saved.last_exit_code;
    status.health = running.health_state();
    status.message = "adopted after an agent restart".to_string();
    tracing::info!(instance = %assignment.instance_id, app = %saved.app, index = saved.index, pid = id.pid, "adopted");
    let mut inner = agent.state.lock();
    // A Start action would restart it; the adopted process *is* the started one.
    spawn_supervisor(agent, &mut inner, assignment, status, 0, Some(running));
}

fn spawn_supervisor(
    agent: &Arc<Agent>,
    inner: &mut Inner,
    assignment: Assignment,
    status: Status,
    start_seq: u64,
    running: Option<Running>,
) {
    let id = assignment.instance_id.clone();
    let (app, index) = (assignment.app.clone(), assignment.index);
    let restarts = status.restarts;
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
        started_once: running.is_some() || restarts > 0,
        reason: None,
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
}

/// A running process.
struct Running {
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
    health: Option<HealthRun>,
    cron_at: Option<Instant>,
    /// The log pump processes reading its output pipes (`log_timestamps`).
    pumps: Vec<SavedPump>,
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
        spec: Arc<AppSpec>,
        index: u32,
        port: Option<u16>,
        health_target: &health::Target,
    ) -> Running {
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
        let cron_at = spec
            .supervision
            .cron_restart
            .as_deref()
            .and_then(next_cron)
            .map(|d| Instant::now() + d);
        Running {
            proc,
            exit,
            started,
            listen_by: Instant::now() + spec.supervision.listen_timeout,
            spec,
            index,
            port,
            ready,
            port_probe,
            health,
            cron_at,
            pumps: Vec::new(),
            cgroup: None,
        }
    }

    fn health_state(&self) -> Health {
        self.health
            .as_ref()
            .map_or(Health::None, |h| h.tracker.health)
    }
}

/// Why a start did not happen.
enum StartError {
    /// Retrying cannot help until the assignment changes (invalid spec, unknown user).
    Fatal(String),
    /// Retry with backoff (the program may be installed, the port freed, the dir created).
    Retry(String),
}

enum Event {
    Exited(Exit),
    /// The port accepts connections (no health check).
    Ready,
    ListenTimeout,
    Health(Outcome),
    Cron,
}

impl Supervisor {
    async fn run(mut self, mut running: Option<Running>) {
        // When to (re)start the process; `None` while it runs or must not be started.
        let mut next_start: Option<Instant> = None;
        let mut seen_seq = if running.is_some() {
            self.target.borrow().start_seq
        } else {
            0
        };
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
                    let exit = self.stop(r).await;
                    self.stopped(exit);
                }
                next_start = None;
                if shutting_down {
                    self.set_state(InstanceState::Stopped, "agent stopped");
                    self.persist(None);
                    return;
                }
                if target.remove {
                    if self.agent.state.forget_if_removed(&self.id) {
                        self.agent.ports.release(&self.id);
                        if let Err(e) = persist::remove(&self.agent.instances_dir, self.id.as_str())
                        {
                            tracing::warn!(instance = %self.id, "cannot remove its record: {e}");
                        }
                        tracing::info!(instance = %self.id, "removed");
                        return;
                    }
                    // Brought back while it was stopping: decide again.
                    continue;
                }
                self.set_state(InstanceState::Stopped, "");
                self.persist(None);
                seen_seq = target.start_seq;
            } else if target.start_seq != seen_seq {
                seen_seq = target.start_seq;
                if let Some(r) = running.take() {
                    let exit = self.stop(r).await;
                    self.stopped(exit);
                }
                self.crashes = Crashes::default();
                self.start_failures = 0;
                self.reason = None;
                next_start = Some(Instant::now());
            }

            let cleared = *self.cleared.borrow_and_update();
            if running.is_none() && cleared && next_start.is_some_and(|at| at <= Instant::now()) {
                next_start = None;
                match self.start(&target) {
                    Ok(r) => {
                        self.start_failures = 0;
                        self.persist(Some(&r));
                        running = Some(r);
                    }
                    Err(StartError::Fatal(message)) => {
                        tracing::warn!(instance = %self.id, "cannot start: {message}");
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
                        tracing::warn!(instance = %self.id, "cannot start: {message}; retrying in {delay:?}");
                        // A first miss is usually a handoff (the predecessor still releasing its
                        // port): still launching. Repeated misses are an error a user must see.
                        let state = if self.start_failures <= 2 {
                            InstanceState::Launching
                        } else {
                            InstanceState::Errored
                        };
                        self.set_state(
                            state,
                            &format!("{message}; retrying in {}", restart::human(delay)),
                        );
                        next_start = Some(Instant::now() + delay);
                    }
                }
            }

            let detaching = self.agent.detach.is_cancelled();
            tokio::select! {
                () = self.agent.detach.cancelled(), if !detaching => {}
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
            }
        }
    }

    /// Handles one event of a running process. `Ok` hands the process back; `Err` says it is
    /// gone and when to start the next one (if at all).
    async fn event(&mut self, mut r: Running, event: Event) -> Result<Running, Option<Instant>> {
        match event {
            Event::Exited(exit) => Err(self.exited(r, exit).await),
            Event::Ready => {
                r.ready = true;
                tracing::info!(instance = %self.id, "online");
                self.set_state(InstanceState::Online, "");
                Ok(r)
            }
            Event::ListenTimeout => {
                let timeout = restart::human(r.spec.supervision.listen_timeout);
                let why = match (&r.health, r.port) {
                    (Some(h), _) if !h.last_failure.is_empty() => format!(
                        "its health check did not pass within {timeout} (last: {})",
                        h.last_failure
                    ),
                    (Some(_), _) => format!("its health check did not pass within {timeout}"),
                    (None, Some(port)) => format!("not listening on port {port} within {timeout}"),
                    (None, None) => format!("not ready within {timeout}"),
                };
                tracing::warn!(instance = %self.id, "{why}; restarting it");
                let policy = Policy::of(&r.spec);
                let index = r.index;
                let exit = self.stop(r).await;
                self.stopped(exit);
                // It never came up: an unstable start, counted as such.
                let decision = self.decide(&policy, Duration::ZERO, &why, index);
                let next = self.after(decision, &why, None);
                self.reason = Some(format!("restarted: {why}"));
                Err(next)
            }
            Event::Health(outcome) => self.health_result(r, outcome).await,
            Event::Cron => {
                let expr = r.spec.supervision.cron_restart.clone().unwrap_or_default();
                let why = format!("restarted by cron_restart {expr:?}");
                tracing::info!(instance = %self.id, "{why}");
                Err(Some(self.restart_now(r, &why).await))
            }
        }
    }

    async fn health_result(
        &mut self,
        mut r: Running,
        outcome: Outcome,
    ) -> Result<Running, Option<Instant>> {
        let ready = r.ready;
        let Some(h) = r.health.as_mut() else {
            return Ok(r);
        };
        if let Outcome::Fail(why) = &outcome {
            h.last_failure.clone_from(why);
            if !ready {
                // Failures while it starts are expected; listen_timeout bounds them.
                return Ok(r);
            }
        }
        let change = h.tracker.record(&outcome);
        let failures = h.tracker.failures();
        let last = h.tracker.last_failure.clone();
        let restart_unhealthy = h.check.restart_unhealthy;
        let health = h.tracker.health;
        match change {
            Change::Same => Ok(r),
            Change::Healthy if !ready => {
                r.ready = true;
                tracing::info!(instance = %self.id, "online (health check passed)");
                self.agent.state.update(&self.id, |s| {
                    s.state = InstanceState::Online;
                    s.health = health;
                });
                Ok(r)
            }
            Change::Healthy => {
                tracing::info!(instance = %self.id, "healthy again");
                self.agent.state.update(&self.id, |s| {
                    s.health = health;
                    if s.message.starts_with("unhealthy") {
                        s.message.clear();
                    }
                });
                Ok(r)
            }
            Change::Unhealthy => {
                let why =
                    format!("unhealthy: {failures} health checks failed in a row (last: {last})");
                if restart_unhealthy {
                    tracing::warn!(instance = %self.id, "{why}; restarting it");
                    self.agent
                        .state
                        .update(&self.id, |s| s.health = Health::Unhealthy);
                    Err(Some(
                        self.restart_now(r, &format!("restarted: {why}")).await,
                    ))
                } else {
                    tracing::warn!(instance = %self.id, "{why}");
                    self.agent.state.update(&self.id, |s| {
                        s.health = Health::Unhealthy;
                        s.message.clone_from(&why);
                    });
                    self.agent.state.changed.notify_one();
                    Ok(r)
                }
            }
        }
    }

    async fn poked(&mut self, r: Running, poke: Poke) -> Result<Running, Instant> {
        match poke {
            Poke::Memory { pid, rss, limit } if pid == r.proc.pid => {
                let why = format!(
                    "restarted: memory {} over max_memory_restart {}",
                    bytes(rss),
                    bytes(limit)
                );
                tracing::warn!(instance = %self.id, "{why}");
                Err(self.restart_now(r, &why).await)
            }
            // About a process that is gone already.
            Poke::Memory { .. } => Ok(r),
        }
    }

    /// Stops the process and asks for a start at once, with `why` as the instance's message.
    async fn restart_now(&mut self, r: Running, why: &str) -> Instant {
        let exit = self.stop(r).await;
        self.stopped(exit);
        self.set_state(InstanceState::Launching, why);
        self.reason = Some(why.to_string());
        Instant::now()
    }

    /// Spawns the instance's process.
    fn start(&mut self, target: &Target) -> Result<Running, StartError> {
        let a = &target.assignment;
        let spec = a.spec.clone().map_err(StartError::Fatal)?;
        let port = match spec.port {
            PortSpec::Auto(lo, hi) => {
                let picked = self.agent.ports.pick(&self.id, lo, hi, self.auto_port);
                self.auto_port = picked;
                Some(picked.ok_or_else(|| {
                    StartError::Retry(format!("no free port in {} on this host", spec.port))
                })?)
            }
            fixed => {
                let port = a.port.or_else(|| fixed.port_for(a.index));
                if let Some(p) = port
                    && !crate::ports::is_free(p)
                {
                    // Checked before spawning: a program that cannot bind would crash-loop with
                    // nothing but its own log to say why.
                    return Err(StartError::Retry(format!(
                        "port {p} is already in use on this host"
                    )));
                }
                port
            }
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
        let run_as = run_as(&spec).map_err(StartError::Fatal)?;
        let affinity = affinity(&spec.supervision.cpu_affinity).map_err(StartError::Fatal)?;
        let limits = limits(&spec.supervision.limits).map_err(StartError::Fatal)?;
        let (stdout, stderr, pumps) = output(&self.agent.logs_dir, &a.app, a.index, &spec)?;
        let env = instance_env(&spec, a.index, port);
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            // The user's HOME, USER and LOGNAME first, so that the spec's env overrides them.
            .envs(run_as.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Last, so the spec cannot override them: how a later agent tells its instances.
            .envs(crate::orphans::instance_markers(
                &self.agent.marker,
                &self.id,
            ))
            .stdin(Stdio::null())
            // Pipes to its pump (see `crate::logs`).
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a stop reaches everything it started.
            .process_group(0);
        // With another user, the directory is entered after the switch (in the child): the
        // instance must be able to enter it itself.
        let switches_user = run_as.credentials.uid.is_some() || run_as.credentials.gid.is_some();
        let mut cwd_as_user = None;
        if let Some(cwd) = &spec.cwd {
            if switches_user {
                let c = std::ffi::CString::new(cwd.as_str())
                    .map_err(|_| StartError::Fatal(format!("cwd {cwd:?} contains a NUL byte")))?;
                cwd_as_user = Some(c);
            } else {
                cmd.current_dir(cwd);
            }
        }
        let probe_env: Vec<(String, String)> = run_as
            .env
            .iter()
            .cloned()
            .chain(env.iter().cloned())
            .collect();
        let (probe_uid, probe_gid) = (run_as.credentials.uid, run_as.credentials.gid);
        // Not `cmd.uid`/`cmd.gid`: see `process::set_in_child` for why it switches them itself.
        let special = !run_as.credentials.is_empty() || affinity.is_some() || !limits.is_empty();
        // Made last: nothing below can fail before the spawn but the spawn itself.
        let (cgroup_path, cgroup_procs) = match self.agent.cgroups.create(&self.id) {
            Some((path, fd)) => (Some(path), Some(fd)),
            None => (None, None),
        };
        process::set_in_child(
            &mut cmd,
            cgroup_procs,
            affinity,
            limits,
            run_as.credentials,
            cwd_as_user,
        );
        let entering_cwd = switches_user && spec.cwd.is_some();
        let spawned = self.agent.reaper.spawn(&mut cmd).map_err(|e| {
            if let Some(path) = &cgroup_path {
                cgroup::discard(path);
            }
            let cwd_refused = matches!(e.raw_os_error(), Some(code)
                if code == nix::errno::Errno::EACCES as i32);
            if entering_cwd && cwd_refused {
                // The program itself is checked by exec as the same user; a refused directory is
                // the likelier cause, and the one a user can act on.
                return StartError::Retry(format!(
                    "cannot run {program:?} in cwd {:?} as its user: {}",
                    spec.cwd.as_deref().unwrap_or_default(),
                    describe(&e)
                ));
            }
            let message = format!("cannot run {program:?}: {}", describe(&e));
            // A NUL byte in the argv or environment (std refuses it before exec), or an argument
            // too long for the kernel: the spec itself is at fault, and retrying cannot help.
            // Validation refuses both; this covers a spec stored before it did.
            let too_long = e.raw_os_error() == Some(nix::errno::Errno::E2BIG as i32);
            let nul = e.raw_os_error().is_none() && e.kind() == io::ErrorKind::InvalidInput;
            if nul || too_long {
                return StartError::Fatal(format!(
                    "{message} (the spec's command line or env holds a NUL byte or an over-long \
                     value; fix the spec and apply it again)"
                ));
            }
            // Not being allowed to switch user or raise a limit does not get better by retrying.
            let denied = matches!(e.raw_os_error(), Some(code)
                if code == nix::errno::Errno::EPERM as i32 || code == nix::errno::Errno::EINVAL as i32);
            if special && denied {
                StartError::Fatal(format!(
                    "{message} (user, group, cpu_affinity or limits need privileges this agent \
                     lacks)"
                ))
            } else {
                StartError::Retry(message)
            }
        })?;
        // The parent's copies of the pipes' write ends go with the command (a pipe must end
        // when the instance's processes are gone), and so does `cgroup.procs`.
        drop(cmd);
        let pid = spawned.pid;
        let pumps = spawn_pump(&self.agent, &self.id, pumps);
        let proc = ProcId::of(pid).unwrap_or(ProcId {
            pid,
            start_ticks: 0,
        });
        let restarted = self.started_once;
        self.started_once = true;
        let mut running = Running::new(
            proc,
            ExitWatch::Child(spawned.exit),
            Instant::now(),
            Arc::clone(&spec),
            a.index,
            port,
            &health::Target {
                index: a.index,
                port,
                env: probe_env,
                cwd: spec.cwd.clone(),
                uid: probe_uid,
                gid: probe_gid,
            },
        );
        running.pumps = pumps;
        running.cgroup = cgroup_path;
        let state = if running.ready {
            InstanceState::Online
        } else {
            InstanceState::Launching
        };
        let health = running.health_state();
        let message = self.reason.take().unwrap_or_default();
        tracing::info!(instance = %self.id, app = %a.app, index = a.index, pid, ?port, "started");
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            s.pid = Some(pid);
            s.port = port;
            s.started_at_ms = unix_ms();
            s.restart_epoch = a.restart_epoch;
            s.health = health;
            s.message = message;
            if restarted {
                s.restarts = s.restarts.saturating_add(1);
            }
        });
        Ok(running)
    }

    /// Records an exit the instance did on its own; returns when to start it again, if at all.
    async fn exited(&mut self, r: Running, exit: Exit) -> Option<Instant> {
        // Whatever the leader left behind would collide with the next start (a port still bound,
        // a worker still writing): it goes with the leader.
        let family = self.agent.state.family(&self.id);
        process::kill_all(r.proc.pid, &family);
        // And whatever escaped both (a double fork into a session of its own). The cgroup stays
        // for a restart (see `cgroup::empty`) and goes when none follows.
        if let Some(path) = &r.cgroup {
            cgroup::empty(path).await;
        }
        drained(&r.pumps).await;
        let how = exit.describe();
        let policy = Policy::of(&r.spec);
        let decision = self.decide(&policy, r.started.elapsed(), &how, r.index);
        let next = self.after(decision, &how, exit.code());
        if next.is_none()
            && let Some(path) = &r.cgroup
        {
            cgroup::end(path).await;
        }
        if next.is_some() {
            self.reason = Some(format!("restarted after: {how}"));
            wait_group_gone(r.proc.pid).await;
        }
        self.persist(None);
        next
    }

    fn decide(&mut self, policy: &Policy, uptime: Duration, how: &str, index: u32) -> Decision {
        let app = self.target.borrow().assignment.app.clone();
        restart::on_exit(
            policy,
            &mut self.crashes,
            self.agent.started.elapsed(),
            uptime,
            how,
            Named { app: &app, index },
        )
    }

    /// Reports a decision; returns when to start again.
    fn after(&mut self, decision: Decision, how: &str, code: Option<i32>) -> Option<Instant> {
        let (state, message, next) = match decision {
            Decision::Restart { delay } => {
                tracing::info!(instance = %self.id, "{how}; restarting in {delay:?}");
                let message = if delay.is_zero() {
                    how.to_string()
                } else {
                    format!("{how}; restarting in {}", restart::human(delay))
                };
                (InstanceState::Exited, message, Some(Instant::now() + delay))
            }
            Decision::GiveUp { message } => {
                tracing::warn!(instance = %self.id, "{message}");
                (InstanceState::Errored, message, None)
            }
            Decision::Exited { message } => {
                tracing::info!(instance = %self.id, "{message}");
                (InstanceState::Exited, message, None)
            }
        };
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            s.pid = None;
            s.started_at_ms = 0;
            if code.is_some() || s.last_exit_code.is_none() {
                s.last_exit_code = code;
            }
            s.health = Health::None;
            s.message = message;
        });
        next
    }

    /// Records a stop the agent did.
    fn stopped(&self, exit: Exit) {
        let how = exit.describe();
        tracing::info!(instance = %self.id, "stopped: {how}");
        self.agent.state.update(&self.id, |s| {
            s.pid = None;
            s.started_at_ms = 0;
            s.last_exit_code = exit.code();
            s.health = Health::None;
        });
        self.persist(None);
    }

    /// Stops the process: the stop signal to its group (and to descendants that left it),
    /// SIGKILL to all of them after the kill timeout. Returns once the leader has ended and
    /// nothing of its family is left.
    async fn stop(&self, mut r: Running) -> Exit {
        self.set_state(InstanceState::Stopping, "");
        let pgid = r.proc.pid;
        let grace = r.spec.kill_timeout;
        let deadline = Instant::now() + grace;
        let signal = stop_signal(r.spec.supervision.stop_signal);
        // Who is in the family now: descendants that called setsid are not in the group, and
        // once the leader is gone nothing else links them to it.
        let mut family = self.agent.state.family(&self.id);
        family.extend(family_now(pgid));
        signal_group(pgid, signal);
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
                while (process::group_alive(pgid) || cgroup_busy(&r)) && Instant::now() < deadline {
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
        family.extend(family_now(pgid));
        process::kill_all(pgid, &family);
        if let Some(path) = &r.cgroup {
            cgroup::end(path).await;
        }
        drained(&r.pumps).await;
        exit
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

    /// Writes this instance's record (see [`crate::persist`]).
    fn persist(&self, running: Option<&Running>) {
        let saved = {
            let target = self.target.borrow();
            Saved::of(&target.assignment)
        };
        let Some(mut saved) = saved else {
            let _ = persist::remove(&self.agent.instances_dir, self.id.as_str());
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
        if let Err(e) = persist::write(&self.agent.instances_dir, &saved) {
            tracing::warn!(instance = %self.id, "cannot write its record: {e}");
        }
    }
}

/// Processes of the family of `pgid`'s leader right now, from a `/proc` scan.
fn family_now(pgid: u32) -> Vec<ProcId> {
    process::family_now(pgid, pgid)
}

/// Waits (briefly) until the pumps of a process that ended have written what was left in its
/// pipes and ended, so that its last lines are in its files once its exit is reported (and
/// before a restart writes more). A pump whose pipe some escaped process still holds open is
/// not waited for longer than [`PUMP_DRAIN_WAIT`].
async fn drained(pumps: &[SavedPump]) {
    let deadline = Instant::now() + PUMP_DRAIN_WAIT;
    let alive = || {
        pumps.iter().any(|p| {
            ProcId {
                pid: p.pid,
                start_ticks: p.start_ticks,
            }
            .alive()
        })
    };
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (briefly) until nothing of a process group runs any more.
async fn wait_group_gone(pgid: u32) {
    let deadline = Instant::now() + GROUP_GONE_WAIT;
    while process::group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next thing a running process does. Pending forever when nothing runs. Cancel-safe: all
/// state lives in `Running`.
async fn next_event(running: Option<&mut Running>, reaper: &Arc<process::Reaper>) -> Event {
    let Some(r) = running else {
        return std::future::pending().await;
    };
    let Running {
        exit,
        ready,
        listen_by,
        port,
        port_probe,
        health,
        cron_at,
        ..
    } = r;
    let probing_port = !*ready && health.is_none() && port.is_some();
    let port = port.unwrap_or(0);
    let ready = *ready;
    tokio::select! {
        exit = exit.wait() => Event::Exited(exit),
        () = probe(port_probe, port), if probing_port => Event::Ready,
        () = tokio::time::sleep_until(*listen_by), if !ready => Event::ListenTimeout,
        outcome = health_step(health, ready, reaper) => Event::Health(outcome),
        () = sleep_until_opt(*cron_at) => Event::Cron,
    }
}

/// Runs the next health check when it is due; pending forever without a health check.
async fn health_step(
    health: &mut Option<HealthRun>,
    ready: bool,
    reaper: &Arc<process::Reaper>,
) -> Outcome {
    let Some(h) = health else {
        return std::future::pending().await;
    };
    if h.in_flight.is_none() {
        tokio::time::sleep_until(h.next).await;
        h.in_flight = Some(health::probe(&h.check, &h.target, reaper));
    }
    let Some(check) = h.in_flight.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = check.await;
    h.in_flight = None;
    // Until it first passes, check often: that is how fast it goes online.
    let every = if ready || outcome == Outcome::Pass {
        h.check.interval
    } else {
        READINESS_CHECK.min(h.check.interval)
    };
    h.next = Instant::now() + every;
    outcome
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

/// Time until the next run of a cron expression, in the agent's local time.
fn next_cron(expr: &str) -> Option<Duration> {
    let cron = pmcluster_spec::supervise::cron_parser().parse(expr).ok()?;
    let now = chrono::Local::now();
    let next = cron.find_next_occurrence(&now, false).ok()?;
    (next - now).to_std().ok()
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

/// Who an instance runs as: its credentials and, with a `user`, what a login as that user would
/// put in its environment.
#[derive(Debug)]
struct RunAs {
    credentials: process::Credentials,
    /// `HOME`, `USER` and `LOGNAME` of the user. Set before the instance's own environment, so
    /// the spec's `env` overrides them.
    env: Vec<(String, String)>,
}

/// The user and group to run as (names or numbers; a user without a group runs with its primary
/// group) and, for a user, its supplementary groups. Reads the user and group databases, so it
/// runs before the fork, never in the child.
fn run_as(spec: &AppSpec) -> Result<RunAs, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let s = &spec.supervision;
    let user = match &s.user {
        None => None,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(uid.into()),
                Err(_) => User::from_name(name),
            };
            match found {
                Ok(Some(u)) => Some(u),
                Ok(None) => return Err(format!("user {name:?} does not exist on this host")),
                Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
            }
        }
    };
    let gid = match &s.group {
        None => user.as_ref().map(|u| u.gid.as_raw()),
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(gid.into()),
                Err(_) => Group::from_name(name),
            };
            match found {
                Ok(Some(g)) => Some(g.gid.as_raw()),
                Ok(None) => return Err(format!("group {name:?} does not exist on this host")),
                Err(e) => return Err(format!("cannot look up group {name:?}: {e}")),
            }
        }
    };
    let Some(user) = user else {
        // A group alone: the agent's user and supplementary groups, another primary group.
        return Ok(RunAs {
            credentials: process::Credentials {
                uid: None,
                gid,
                groups: None,
            },
            env: Vec::new(),
        });
    };
    // As initgroups(3) (and systemd's User=/Group=) do: every group the user is a member of, plus
    // the group it runs with. Only a privileged agent can set them; an unprivileged one can only
    // run instances as itself, with its own groups.
    let groups = if Uid::effective().is_root() {
        let name = std::ffi::CString::new(user.name.as_str())
            .map_err(|_| format!("user {:?}: the name holds a NUL byte", user.name))?;
        let primary = Gid::from_raw(gid.unwrap_or(user.gid.as_raw()));
        let list = nix::unistd::getgrouplist(&name, primary)
            .map_err(|e| format!("cannot look up the groups of user {:?}: {e}", user.name))?;
        Some(list.into_iter().map(Gid::as_raw).collect())
    } else {
        None
    };
    let env = vec![
        ("HOME".to_string(), user.dir.to_string_lossy().into_owned()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
    ];
    Ok(RunAs {
        credentials: process::Credentials {
            uid: Some(user.uid.as_raw()),
            gid,
            groups,
        },
        env,
    })
}

fn affinity(cpus: &[u32]) -> Result<Option<nix::sched::CpuSet>, String> {
    if cpus.is_empty() {
        return Ok(None);
    }
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(*cpu as usize).map_err(|_| {
            format!(
                "cpu_affinity: no CPU {cpu} (at most {})",
                nix::sched::CpuSet::count() - 1
            )
        })?;
    }
    Ok(Some(set))
}

/// The spec's limits as `setrlimit` resources (names were validated with the spec).
pub(crate) fn limits(by_name: &BTreeMap<String, u64>) -> Result<Vec<(Resource, u64)>, String> {
    by_name
        .iter()
        .map(|(name, value)| {
            let resource = match name.as_str() {
                "nofile" => Resource::RLIMIT_NOFILE,
                "nproc" => Resource::RLIMIT_NPROC,
                "core" => Resource::RLIMIT_CORE,
                "memlock" => Resource::RLIMIT_MEMLOCK,
                "stack" => Resource::RLIMIT_STACK,
                "as" => Resource::RLIMIT_AS,
                "fsize" => Resource::RLIMIT_FSIZE,
                "cpu" => Resource::RLIMIT_CPU,
                other => return Err(format!("limits: unknown limit {other:?}")),
            };
            Ok((resource, *value))
        })
        .collect()
}

/// The read end of one of an instance's output pipes, for its pump.
struct PumpPipe {
    reader: OwnedFd,
    target: PumpTarget,
    /// The instance's file descriptor it is on (1, or 2).
    fd: u32,
}

/// An instance's stdout and stderr: the write ends of its pipes (one for both with
/// `merge_logs`), and the read ends for its pump.
type Output = (Stdio, Stdio, Vec<PumpPipe>);

fn output(logs_dir: &Path, app: &str, index: u32, spec: &AppSpec) -> Result<Output, StartError> {
    std::fs::create_dir_all(logs_dir).map_err(|e| {
        StartError::Retry(format!(
            "cannot create {}: {}",
            logs_dir.display(),
            describe(&e)
        ))
    })?;
    let pipe_error =
        |e: io::Error| StartError::Retry(format!("cannot make a pipe: {}", describe(&e)));
    let mut pumps = Vec::new();
    let mut ends = Vec::new();
    for (&stream, fd) in log_streams(spec.merge_logs).iter().zip([1, 2]) {
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| pipe_error(e.into()))?;
        // Best effort: the default (64 KiB) works, only with less room for bursts.
        let _ = rustix::pipe::fcntl_setpipe_size(&reader, logs::PIPE_BUFFER);
        pumps.push(PumpPipe {
            reader,
            target: pump_target(logs_dir, app, index, stream, spec),
            fd,
        });
        ends.push(writer);
    }
    let (stdout, stderr) = match (ends.pop(), ends.pop()) {
        // Two pipes: the last made is stderr's.
        (Some(err), Some(out)) => (out, err),
        (Some(both), None) => (both.try_clone().map_err(pipe_error)?, both),
        _ => return Err(StartError::Retry("cannot make a pipe".to_string())),
    };
    Ok((stdout.into(), stderr.into(), pumps))
}

fn pump_target(
    logs_dir: &Path,
    app: &str,
    index: u32,
    stream: pb::LogStream,
    spec: &AppSpec,
) -> PumpTarget {
    let path = log_path(logs_dir, app, index, stream);
    PumpTarget {
        // The pump runs in `/`, so that it holds no directory busy.
        path: std::path::absolute(&path).unwrap_or(path),
        max_bytes: spec.supervision.log_max_bytes.filter(|m| *m > 0),
        keep: spec.supervision.log_keep,
        timestamps: spec.supervision.log_timestamps,
    }
}

/// Starts the pump of an instance's output pipes (see [`crate::logs`] for why it is a
/// process): the agent's `log-pump` helper in a process group of its own, with the first pipe
/// as its stdin and the second (if any) as its fd [`logs::PUMP_ERR_FD`]; returns it for the
/// instance's record, once per pipe. Without a helper program, or when it cannot be started,
/// threads of the agent pump instead (which the agent's exit ends).
fn spawn_pump(agent: &Agent, id: &InstanceId, pipes: Vec<PumpPipe>) -> Vec<SavedPump> {
    if pipes.is_empty() {
        return Vec::new();
    }
    if let Some(program) = &agent.log_pump {
        match spawn_pump_process(agent, program, id, &pipes) {
            Ok(pump) => {
                return pipes
                    .iter()
                    .map(|p| SavedPump {
                        fd: p.fd,
                        ..pump.clone()
                    })
                    .collect();
            }
            Err(e) => tracing::warn!(
                instance = %id,
                "cannot start the log pump {}: {}; pumping in the agent, which its exit ends",
                program.display(),
                describe(&e),
            ),
        }
    }
    for p in pipes {
        let path = p.target.path.clone();
        let target = p.target;
        let reader = p.reader;
        let thread = std::thread::Builder::new()
            .name("log-pump".to_string())
            .spawn(move || {
                if let Err(e) = logs::pump(std::fs::File::from(reader), target) {
                    tracing::warn!("pumping into {}: {e}", path.display());
                }
            });
        if let Err(e) = thread {
            tracing::error!(instance = %id, "cannot start a log pump thread: {e}; its output is lost");
        }
    }
    Vec::new()
}

fn spawn_pump_process(
    agent: &Agent,
    program: &Path,
    id: &InstanceId,
    pipes: &[PumpPipe],
) -> io::Result<SavedPump> {
    let (first, second) = match pipes {
        [first] => (first, None),
        [first, second] => (first, Some(second)),
        _ => return Err(io::Error::other("a pump reads one or two pipes")),
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg0("pmcluster-agent")
        .arg(logs::PUMP_COMMAND)
        .args(first.target.args(second.map(|p| p.target.path.as_path())))
        .envs(crate::orphans::pump_markers(&agent.marker, id))
        .stdin(Stdio::from(first.reader.try_clone()?))
        .stdout(Stdio::null())
        // Its rare messages go where the agent's go.
        .stderr(Stdio::inherit())
        .current_dir("/")
        .process_group(0);
    if let Some(second) = second {
        process::pass_fd(&mut cmd, second.reader.try_clone()?, logs::PUMP_ERR_FD);
    }
    let spawned = agent.reaper.spawn(&mut cmd)?;
    // The reaper reaps it; nobody waits for its exit: it ends with its pipes.
    let pid = ProcId::of(spawned.pid).unwrap_or(ProcId {
        pid: spawned.pid,
        start_ticks: 0,
    });
    Ok(SavedPump {
        pid: pid.pid,
        start_ticks: pid.start_ticks,
        fd: first.fd,
    })
}

/// The pumps of an adopted instance: those recorded that still run, and a new one for the
/// pipes nobody reads any more (a pump died while no agent ran, or the instance was started by
/// an agent that pumped in-process). A new pump opens the pipe through `/proc/PID/fd/N`, which
/// gives a new read end of the same pipe. An instance that writes its files directly (started
/// by an older agent) has no pipe and gets no pump.
fn keep_pumping(
    agent: &Agent,
    id: &InstanceId,
    pid: u32,
    app: &str,
    index: u32,
    spec: &AppSpec,
    recorded: &[SavedPump],
) -> Vec<SavedPump> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut pumps = Vec::new();
    let mut orphaned = Vec::new();
    for (&stream, fd) in log_streams(spec.merge_logs).iter().zip([1u32, 2]) {
        let running = recorded.iter().find(|p| {
            p.fd == fd
                && ProcId {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                }
                .alive()
        });
        if let Some(p) = running {
            pumps.push(p.clone());
            continue;
        }
        let path = format!("/proc/{pid}/fd/{fd}");
        // Non-blocking: opening a pipe for reading waits for a writer, and the instance may be
        // just exiting. The pump reads it blocking again.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path);
        match opened {
            Ok(f) if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) => {
                let fd_owned = OwnedFd::from(f);
                if let Err(e) = rustix::fs::fcntl_setfl(&fd_owned, rustix::fs::OFlags::empty()) {
                    tracing::warn!(pid, "cannot make {path} blocking: {e}");
                    continue;
                }
                tracing::info!(pid, "its log pump for fd {fd} is gone; starting another");
                orphaned.push(PumpPipe {
                    reader: fd_owned,
                    target: pump_target(&agent.logs_dir, app, index, stream, spec),
                    fd,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pid, "cannot reopen {path} for its logs: {e}"),
        }
    }
    pumps.extend(spawn_pump(agent, id, orphaned));
    pumps
}

/// "612 MiB" for messages.
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_descriptions() {
        assert_eq!(bytes(612 << 20), "612 MiB");
        assert_eq!(bytes(5000), "4 KiB");
    }

    #[test]
    fn limits_and_affinity() {
        let by_name: BTreeMap<String, u64> =
            [("nofile".to_string(), 4096), ("core".to_string(), 0)].into();
        assert_eq!(
            limits(&by_name),
            Ok(vec![
                (Resource::RLIMIT_CORE, 0),
                (Resource::RLIMIT_NOFILE, 4096)
            ])
        );
        let bad: BTreeMap<String, u64> = [("nofiles".to_string(), 1)].into();
        assert!(limits(&bad).is_err());
        assert!(matches!(affinity(&[]), Ok(None)));
        assert!(matches!(affinity(&[0]), Ok(Some(_))));
        assert!(affinity(&[1 << 20]).is_err_and(|e| e.contains("no CPU")));
    }

    #[test]
    fn cron_schedule() {
        let next = next_cron("* * * * *");
        assert!(
            next.is_some_and(|d| d <= Duration::from_secs(60)),
            "{next:?}"
        );
        assert_eq!(next_cron("not cron"), None);
    }
}
