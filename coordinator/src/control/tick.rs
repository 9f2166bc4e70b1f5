//! The periodic part: lapsed heartbeats, the reconciler's follow-ups, one step of every
//! running rollout and the autoscaler's samples.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::core::autoscale::{self, Decision, Sample};
use crate::core::quota;
use crate::core::rollout::{self, Facts};
use crate::model::{AppRecord, Batch, InstanceRecord, SCALE_DECISIONS_KEPT, ScaleDecision};

use super::views::healthy_since;
use super::{Control, Guard, Inner, is_ready};
use crate::model::{EventKind, InstanceState};

/// Most samples kept per app (one a second): an hour.
pub(super) const MAX_SAMPLES: usize = 3600;
/// How often the autoscaler samples.
const SAMPLE_EVERY_MS: i64 = 1000;
/// How often a running rollout steps: its deadlines and `min_healthy_time` count in time, not in
/// changes.
const ROLLOUT_STEP_MS: i64 = 250;
/// The longest the loop sleeps whatever the state says: a backstop (log readers that went away
/// are reaped on a tick), not what keeps deadlines.
pub const SAFETY_TICK_MS: i64 = 2000;

impl Control {
    /// When the next [`Control::tick`] has work (clock milliseconds): the reconciler's follow-up
    /// time, the first heartbeat that could lapse, the time a node loaded from the store and not
    /// back counts as down, the next autoscale sample, the next step of a running rollout, a log
    /// request's answer deadline, or now when a reconcile is due or a write committed since the
    /// last tick; at the latest [`SAFETY_TICK_MS`] from now.
    pub fn next_tick_at(&self) -> i64 {
        // Before the state lock: the routes' lock is never taken under it here.
        let log_deadline = self.next_log_deadline();
        let inner = self.lock();
        let now = inner.now;
        let mut at = now + SAFETY_TICK_MS;
        if let Some(by) = log_deadline {
            at = at.min(by);
        }
        if inner.reconcile_due || inner.tick_due {
            return now;
        }
        if let Some(f) = inner.followup_at {
            at = at.min(f);
        }
        let timeout = i64::try_from(self.config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
        for live in inner.nodes.values().filter(|l| l.session.is_some()) {
            at = at.min(
                live.last_heartbeat_ms
                    .saturating_add(timeout)
                    .saturating_add(1),
            );
        }
        // Its `node.down` is emitted on time, not up to a backstop tick late.
        for live in inner.nodes.values().filter(|l| l.down_unannounced) {
            if let Some(down_at) = live.down_since_ms {
                at = at.min(down_at);
            }
        }
        if inner
            .ahead
            .apps
            .values()
            .any(|a| a.spec.autoscale.is_some())
        {
            at = at.min(inner.last_sample_ms + SAMPLE_EVERY_MS);
        }
        if inner.ahead.apps.values().any(|a| a.rolling()) {
            at = at.min(now + ROLLOUT_STEP_MS);
        }
        at.max(now)
    }

    /// Resolves once something changed since the last call (see [`Control::next_tick_at`]): a
    /// change that comes while nobody waits is kept for the next waiter, so none is missed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// One step of every running rollout.
    pub(super) fn rollout_tick(&self, inner: &mut Guard<'_>, now: i64) -> Vec<(String, String)> {
        let rolling: Vec<AppRecord> = inner
            .ahead
            .apps
            .values()
            .filter(|a| a.rolling())
            .cloned()
            .collect();
        let mut events = Vec::new();
        for app in rolling {
            let Some(d) = app.deployment.clone() else {
                continue;
            };
            let name = app.spec.name.clone();
            let records: Vec<InstanceRecord> = inner
                .ahead
                .app_instances(&name)
                .into_iter()
                .cloned()
                .collect();
            let refs: Vec<&InstanceRecord> = records.iter().collect();
            let facts: BTreeMap<Uuid, Facts> = records
                .iter()
                .map(|r| {
                    let node_up = r
                        .node
                        .as_ref()
                        .and_then(|n| inner.nodes.get(n))
                        .is_some_and(|l| is_ready(l, &self.config, inner.now));
                    let f = Facts {
                        healthy_since: healthy_since(inner, r),
                        node_up,
                        placed: r.node.is_some(),
                        node_draining: (r.node.as_ref())
                            .and_then(|n| inner.ahead.nodes.get(n))
                            .is_some_and(|n| n.drain),
                        proven: inner.proven.contains(&r.id),
                        errored: errored(inner, r, node_up),
                    };
                    (r.id, f)
                })
                .collect();
            let step = rollout::step(
                &name,
                &d,
                &app.spec.update,
                app.spec.instances,
                &refs,
                &facts,
                now,
            );
            inner.proven.extend(step.proven.iter().copied());
            let (batch, messages) =
                rollout::apply_step(&app, &d, &records, &step, now, &mut || self.clock.new_id());
            events.extend(messages.into_iter().map(|m| (name.clone(), m)));
            if !batch.is_empty()
                && let Err(e) = self.write(inner, batch)
            {
                tracing::error!(app = %name, error = %e, "rollout step failed to commit");
            }
        }
        events
    }

    /// Periodic housekeeping: ends sessions that stopped heartbeating, and reconciles, which
    /// reschedules instances of nodes down for too long and advances drains.
    pub fn tick(&self) {
        // Before the lapses: a parked report is a heartbeat that came in time.
        self.take_parked(true);
        let mut lapsed = Vec::new();
        let mut never_returned = Vec::new();
        let mut scaled = Vec::new();
        let rolled;
        {
            let mut inner = self.lock();
            let now = self.now();
            inner.tick_due = false;
            for (name, live) in inner.nodes.iter_mut() {
                if live.session.is_some() && !is_ready(live, &self.config, now) {
                    live.session = None;
                    live.down_since_ms = Some(now);
                    lapsed.push(name.clone());
                } else if live.down_unannounced && live.down_since_ms.is_some_and(|at| at <= now) {
                    live.down_unannounced = false;
                    never_returned.push(name.clone());
                }
            }
            if !never_returned.is_empty() {
                // Its link reads down from now on (a drain's old copy on it is lost).
                inner.reconcile_due = true;
            }
            if !lapsed.is_empty() {
                inner.reconcile_due = true;
                // As at a disconnect: callers waiting on a lapsed session's answers hear that
                // it went away, and its log readers' streams end (below, after `inner`).
                self.command_routes
                    .lock()
                    .retain(|_, r| !lapsed.contains(&r.node));
                // No report will say when their removed processes end.
                for name in &lapsed {
                    inner.leaving.remove(name);
                }
            }
            if let Err(e) = self.write(&mut inner, Batch::default()) {
                tracing::error!(error = %e, "periodic reconcile failed");
            }
            rolled = self.rollout_tick(&mut inner, now);
            if now - inner.last_sample_ms >= SAMPLE_EVERY_MS {
                inner.last_sample_ms = now;
                scaled = self.autoscale_tick(&mut inner, now);
                // Trends of records that are gone (the agent no longer reports them).
                let Inner { memory, state, .. } = &mut *inner;
                memory.retain(|id, _| state.instances.contains_key(id));
            }
        }
        for (app, reason) in scaled {
            self.emit(
                EventKind::Autoscale,
                &app,
                "",
                None,
                format!("{app}: {reason}"),
            );
        }
        for (app, text) in rolled {
            self.emit(EventKind::RolloutStep, &app, "", None, text);
        }
        for name in lapsed {
            self.drop_log_routes(&name, "missed heartbeats");
            self.emit(
                EventKind::NodeDown,
                "",
                &name,
                None,
                format!("node {name} missed heartbeats"),
            );
        }
        // It had no session here, so no session's routes or leaving processes to drop.
        for name in never_returned {
            self.emit(
                EventKind::NodeDown,
                "",
                &name,
                None,
                format!(
                    "node {name} missed heartbeats: it has not reconnected since this \
                     coordinator started or took over"
                ),
            );
        }
        self.reap_log_routes();
    }

    /// Samples every autoscaled app and applies the decisions. Returns (app, reason) of changes.
    pub(super) fn autoscale_tick(&self, inner: &mut Guard<'_>, now: i64) -> Vec<(String, String)> {
        let apps: Vec<(String, AppRecord)> = inner
            .ahead
            .apps
            .iter()
            .filter(|(_, a)| a.spec.autoscale.is_some())
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        inner
            .scaling
            .retain(|name, _| apps.iter().any(|(n, _)| n == name));
        inner
            .autoscale_counts
            .retain(|(name, _, _), _| apps.iter().any(|(n, _)| n == name));
        let mut changes = Vec::new();
        for (name, app) in apps {
            let Some(policy) = app.spec.autoscale.clone() else {
                continue;
            };
            let sample = self.sample(inner, &name, now);
            let scaling = inner.scaling.entry(name.clone()).or_default();
            scaling.history.push_back(sample);
            let keep_ms = (policy
                .up_stabilization
                .max(policy.down_stabilization)
                .as_millis() as i64)
                + 60_000;
            while scaling.history.len() > MAX_SAMPLES
                || scaling
                    .history
                    .front()
                    .is_some_and(|s| s.at_ms < now - keep_ms)
            {
                scaling.history.pop_front();
            }
            let history: Vec<Sample> = scaling.history.iter().copied().collect();
            let memory_request = app
                .spec
                .supervision
                .max_memory_restart
                .unwrap_or(app.spec.resources.memory_bytes);
            let decision = autoscale::decide(autoscale::Input {
                policy: &policy,
                memory_request,
                current: app.spec.instances,
                history: &history,
                last_change_ms: scaling.last_change_ms,
                now_ms: now,
            });
            let direction = match &decision {
                Decision::Scale { to, .. } if *to < app.spec.instances => "down",
                _ => "up",
            };
            let outcome = match decision {
                Decision::Hold { reason } => {
                    scaling.last_reason = reason;
                    None
                }
                // A policy over a cap lowered since it was set grows only to the cap.
                Decision::Scale { to, .. }
                    if quota::autoscale_target(&self.config.caps, app.spec.instances, to)
                        .is_none() =>
                {
                    scaling.last_reason = format!(
                        "held at {} instances, the limit per app (--max-instances-per-app)",
                        app.spec.instances
                    );
                    Some("capped")
                }
                Decision::Scale { to, reason } => {
                    let to = quota::autoscale_target(&self.config.caps, app.spec.instances, to)
                        .unwrap_or(to);
                    scaling.last_reason = reason.clone();
                    scaling.last_change_ms = Some(now);
                    let spec = match app.spec.with_instances(to) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(app = %name, error = %e, "autoscale target refused");
                            count_autoscale(inner, &name, direction, "refused");
                            continue;
                        }
                    };
                    let mut scaled = app.scaled.clone();
                    scaled.push(ScaleDecision {
                        at_ms: now,
                        reason: format!("{name}: {reason}"),
                    });
                    let excess = scaled.len().saturating_sub(SCALE_DECISIONS_KEPT);
                    scaled.drain(..excess);
                    let batch = Batch {
                        put_apps: vec![AppRecord {
                            spec,
                            updated_at_ms: now,
                            scaled,
                            ..app.clone()
                        }],
                        ..Batch::default()
                    };
                    match self.write(inner, batch) {
                        Ok(()) => {
                            changes.push((name.clone(), reason));
                            Some("scaled")
                        }
                        Err(e) => {
                            tracing::error!(app = %name, error = %e, "autoscale write failed");
                            Some("failed")
                        }
                    }
                }
            };
            if let Some(outcome) = outcome {
                count_autoscale(inner, &name, direction, outcome);
            }
        }
        changes
    }

    /// Average metrics of an app's online instances whose node reported recently.
    pub(super) fn sample(&self, inner: &Inner, app: &str, now: i64) -> Sample {
        let fresh_ms = (self.config.heartbeat_interval.as_millis() as i64) * 3 + 500;
        let (mut n, mut cpu, mut mem) = (0u32, 0.0, 0.0);
        for rec in inner.state.app_instances(app) {
            let Some(node) = rec.node.as_ref().and_then(|n| inner.nodes.get(n)) else {
                continue;
            };
            if node.session.is_none() || now - node.last_heartbeat_ms > fresh_ms {
                continue;
            }
            if let Some(o) = inner.observed.get(&rec.id)
                && o.state == InstanceState::Online
            {
                n += 1;
                cpu += o.cpu_percent;
                mem += o.memory_bytes as f64;
            }
        }
        Sample {
            at_ms: now,
            online: n,
            cpu: (n > 0).then(|| cpu / f64::from(n)),
            memory: (n > 0).then(|| mem / f64::from(n)),
        }
    }
}

/// One more autoscale decision of `app` in `direction` that ended in `outcome` (see
/// `model::view::AutoscaleCount`).
fn count_autoscale(inner: &mut Inner, app: &str, direction: &'static str, outcome: &'static str) {
    *inner
        .autoscale_counts
        .entry((app.to_string(), direction, outcome))
        .or_default() += 1;
}

/// Why the agent gave up restarting `r`, if it did: the report of this very process (its
/// restart epoch) from a node that is up. An agent that cannot start it and says it will try
/// again (a port still held by the copy before it, a directory not there yet) has not given up,
/// whatever state it reports.
fn errored<'a>(inner: &'a Inner, r: &InstanceRecord, node_up: bool) -> Option<&'a str> {
    let o = inner.observed.get(&r.id)?;
    (node_up && o.gave_up(r.restart_epoch)).then(|| o.reason())
}
