//! What a running process does next (it exits, its port answers, its listen timeout passes, a
//! health check ends, its cron time comes, the metrics pass pokes it) and what the supervisor
//! does about it: go online, restart it as the restart policy says, or record its exit.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use pmcluster_spec::supervise::Probe;
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval};

use super::stop::wait_group_gone;
use super::{HealthRun, Running, Supervisor, bytes};
use crate::cgroup;
use crate::health::{self, Change, Outcome};
use crate::logs::pump::drained;
use crate::model::{Health, InstanceState};
use crate::persist::{EndState, SavedEnd};
use crate::process::{self, Exit};
use crate::restart::{self, Decision, Named, Policy};
use crate::state::Poke;

/// How a starting instance's message begins while its health check fails (before it is online).
const NOT_PASSED_YET: &str = "its health check has not passed yet";

/// How long one probe connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a launching instance's health check runs until it first passes (then: its
/// interval).
const READINESS_CHECK: Duration = Duration::from_millis(100);

pub(super) enum Event {
    Exited(Exit),
    /// The port accepts connections (no health check).
    Ready,
    ListenTimeout,
    Health(Outcome),
    Cron,
}
impl Supervisor {
    /// Handles one event of a running process. `Ok` hands the process back; `Err` says it is
    /// gone and when to start the next one (if at all).
    pub(super) async fn event(
        &mut self,
        mut r: Running,
        event: Event,
    ) -> Result<Running, Option<Instant>> {
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
                let started = r.started;
                self.stopping_for(&format!("restarted: {why}"));
                let exit = self.stop(r).await;
                self.note_stop(exit);
                // It never came up: an unstable start, counted as such.
                restart::never_ready(&mut self.crashes, started.elapsed());
                let decision = self.decide(&policy, Duration::ZERO, &why, index);
                let next = self.after(decision, &why, None);
                self.reason = Some(format!("restarted: {why}"));
                // After the decision: a record of one that errored for good says so.
                self.persist(None);
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
    pub(super) async fn health_result(
        &mut self,
        mut r: Running,
        outcome: Outcome,
    ) -> Result<Running, Option<Instant>> {
        let ready = r.ready;
        let Some(h) = r.health.as_mut() else {
            return Ok(r);
        };
        if let Outcome::Fail(why) = &outcome {
            let new_reason = h.last_failure != *why;
            h.last_failure.clone_from(why);
            if !ready {
                // Failures while it starts are expected (listen_timeout bounds them), but they
                // are why it is not online yet: said once per new reason, for `list` and for a
                // `--wait` that would otherwise show only "launching". Not over why it was last
                // restarted, which says as much and more.
                if new_reason {
                    let said = format!("{NOT_PASSED_YET} (last: {why})");
                    self.agent.state.update(&self.id, |s| {
                        if s.message.is_empty() || s.message.starts_with(NOT_PASSED_YET) {
                            s.message = said;
                        }
                    });
                }
                return Ok(r);
            }
        }
        let change = h.tracker.record(&outcome);
        let failures = h.tracker.failures();
        let last = h.tracker.last_failure.clone();
        // An exec probe that could not run (its user unknown, see `launch::health_target`) says
        // nothing of the process, and a start would need the same user: said, not restarted.
        let not_run = matches!(h.check.probe, Probe::Exec { .. }) && h.target.credentials.is_err();
        let restart_unhealthy = h.check.restart_unhealthy && !not_run;
        let health = h.tracker.health;
        match change {
            Change::Same => Ok(r),
            Change::Healthy if !ready => {
                r.ready = true;
                tracing::info!(instance = %self.id, "online (health check passed)");
                self.agent.state.update(&self.id, |s| {
                    s.state = InstanceState::Online;
                    s.health = health;
                    if s.message.starts_with(NOT_PASSED_YET) {
                        s.message.clear();
                    }
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
                let why = match failures {
                    1 => format!("unhealthy: its health check failed (last: {last})"),
                    n => format!("unhealthy: {n} health checks failed in a row (last: {last})"),
                };
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
    pub(super) async fn poked(&mut self, r: Running, poke: Poke) -> Result<Running, Instant> {
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
    pub(super) async fn restart_now(&mut self, r: Running, why: &str) -> Instant {
        self.stopping_for(why);
        let exit = self.stop(r).await;
        // The start at once writes the record with the new process (or without one when it
        // fails), as after a crash.
        self.note_stop(exit);
        self.set_state(InstanceState::Launching, why);
        self.reason = Some(why.to_string());
        Instant::now()
    }
    /// Says why the stop that follows is made, for a restart whose message is `why`
    /// ("restarted: ..."): the stop's own state change keeps the message it finds, which was
    /// the previous restart's reason, so a memory restart's `stopping` event named the crash
    /// before it.
    fn stopping_for(&self, why: &str) {
        let why = why.replacen("restarted", "restarting", 1);
        self.set_state(InstanceState::Stopping, &why);
    }
    /// Records an exit the instance did on its own; returns when to start it again, if at all.
    pub(super) async fn exited(&mut self, mut r: Running, exit: Exit) -> Option<Instant> {
        // Whatever the leader left behind would collide with the next start (a port still bound,
        // a worker still writing): it goes with the leader.
        let family = self.agent.state.family(&self.id);
        process::kill_all(r.proc.pid, &family);
        // And whatever escaped both (a double fork into a session of its own). The cgroup stays
        // for a restart (see `cgroup::empty`) and goes when none follows.
        if let Some(path) = &r.cgroup {
            cgroup::empty(path).await;
        }
        drained(&r.pumps, r.pump_exit.take()).await;
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
        // A start at once writes the record with the new process: writing it without one first
        // would hold the restart up by a file write and rename (milliseconds on a busy disk). A
        // record that still names the dead process is what an agent that dies in between leaves
        // anyway, and the next agent knows it for dead (see `adopt`). A start that fails
        // writes it (see `Supervisor::run`).
        if next.is_none_or(|at| at > Instant::now()) {
            self.persist(None);
        }
        next
    }
    pub(super) fn decide(
        &mut self,
        policy: &Policy,
        uptime: Duration,
        how: &str,
        index: u32,
    ) -> Decision {
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
    pub(super) fn after(
        &mut self,
        decision: Decision,
        how: &str,
        code: Option<i32>,
    ) -> Option<Instant> {
        self.ended = match &decision {
            Decision::Restart { .. } => None,
            Decision::GiveUp { message } => Some(SavedEnd {
                state: EndState::Errored,
                message: message.clone(),
            }),
            Decision::Exited { message } => Some(SavedEnd {
                state: EndState::Exited,
                message: message.clone(),
            }),
        };
        let (state, message, next) = match decision {
            Decision::Restart { delay } => {
                tracing::info!(instance = %self.id, "{how}; restarting in {delay:?}");
                let message = if delay.is_zero() {
                    how.to_string()
                } else {
                    let when = restart::restart_when(delay, chrono::Utc::now());
                    format!("{how}; restarting {when}")
                };
                (
                    InstanceState::Restarting,
                    message,
                    Some(Instant::now() + delay),
                )
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
    /// Records a stop the agent did, in its state and its record.
    pub(super) fn stopped(&self, exit: Exit) {
        self.note_stop(exit);
        self.persist(None);
    }
    /// Records a stop the agent did in its state only: for a stop whose record is written
    /// (or removed) right after anyway, where a write now would be a file create and rename
    /// for nothing. A record that names the dead process meanwhile is safe: the next agent
    /// knows it for dead (see `adopt`).
    pub(super) fn note_stop(&self, exit: Exit) {
        let how = exit.describe();
        tracing::info!(instance = %self.id, "stopped: {how}");
        self.agent.state.update(&self.id, |s| {
            s.pid = None;
            s.started_at_ms = 0;
            s.last_exit_code = exit.code();
            s.health = Health::None;
        });
    }
}

/// The next thing a running process does. Pending forever when nothing runs. Cancel-safe: all
/// state lives in `Running`.
pub(super) async fn next_event(
    running: Option<&mut Running>,
    reaper: &Arc<process::Reaper>,
) -> Event {
    let Some(r) = running else {
        return std::future::pending().await;
    };
    let Running {
        exit,
        ready,
        listen_by,
        port,
        port_probe,
        probe_host,
        health,
        cron_at,
        ..
    } = r;
    let probing_port = !*ready && health.is_none() && port.is_some();
    let port = port.unwrap_or(0);
    let ready = *ready;
    tokio::select! {
        exit = exit.wait() => Event::Exited(exit),
        () = probe(port_probe, port, *probe_host), if probing_port => Event::Ready,
        () = tokio::time::sleep_until(*listen_by), if !ready => Event::ListenTimeout,
        outcome = health_step(health, ready, reaper) => Event::Health(outcome),
        () = sleep_until_opt(*cron_at) => Event::Cron,
    }
}
/// Runs the next health check when it is due; pending forever without a health check.
pub(super) async fn health_step(
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
/// Returns once something accepts TCP connections on 127.0.0.1:`port`, or on `host`:`port`
/// (an instance that binds only its node's address, `${HOST}`).
pub(super) async fn probe(interval: &mut Interval, port: u16, host: Option<IpAddr>) {
    loop {
        interval.tick().await;
        for ip in std::iter::once(IpAddr::V4(Ipv4Addr::LOCALHOST)).chain(host) {
            let connect = TcpStream::connect((ip, port));
            if let Ok(Ok(_stream)) = tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                return;
            }
        }
    }
}
/// Sleeps until `at`, or for ever without one: a `select!` arm with nothing scheduled. Also the
/// link's (which sits above the supervisors, see the crate's layering test).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
/// Time until the next run of a cron expression, in the agent's local time.
pub(super) fn next_cron(expr: &str) -> Option<Duration> {
    let cron = pmcluster_spec::supervise::cron_parser().parse(expr).ok()?;
    let now = chrono::Local::now();
    let next = cron.find_next_occurrence(&now, false).ok()?;
    (next - now).to_std().ok()
}
#[cfg(test)]
mod tests {
    use super::*;

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
