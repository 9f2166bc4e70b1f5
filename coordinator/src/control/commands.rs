//! User commands (apply, scale, act, rollouts, autoscale policy; adopt, forget and drain in
//! `nodes`): each validates, builds a `Batch` and hands it to the write path, then emits its
//! event.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use pmcluster_spec::AppSpec;
use pmcluster_spec::autoscale::AutoscalePolicy;

use crate::core::versions::{
    kept_records, new_version, start_deployment, with_current_policies, with_deployment,
};
use crate::core::{reconcile, scheduler};
use crate::model::{AppRecord, Batch, InstanceRecord, NodeRecord};
use crate::model::{AppView, AutoscaleView, Deployment, EventKind, Kind, State};

use super::{Action, Control, ControlError, Inner, Result, find_app, ready_nodes};

mod nodes;

/// `apply`: a spec, and whether to keep the app's current count instead of the spec's.
#[derive(Debug, Clone)]
pub struct ApplyCmd {
    pub spec: AppSpec,
    pub keep_instances: bool,
}

/// What an apply did: the app's name, whether it was created or changed, and the rollout a
/// process change started.
#[derive(Debug, Clone)]
pub struct Applied {
    pub app: String,
    pub created: bool,
    pub changed: bool,
    pub deployment: Option<Deployment>,
}

/// `scale`: a count already known to be a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleCmd {
    pub app: String,
    pub count: Count,
}

/// The count a scale asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    To(u32),
    /// Added to the count at the time of the write (`scale web +2`, as `pm2 scale` takes it):
    /// under the state lock, so two at once both count.
    By(i64),
}

impl ScaleCmd {
    /// A count as users give it (the wire carries a signed number): refused, naming the field,
    /// when negative or too large.
    pub fn new(app: &str, count: i64) -> Result<ScaleCmd> {
        if count < 0 {
            return Err(ControlError::InvalidArgument(format!(
                "instances: {count} is negative; give a count of 0 or more (or set relative to \
                 remove instances)"
            )));
        }
        let count = u32::try_from(count).map_err(|_| too_large(count))?;
        Ok(ScaleCmd {
            app: app.to_string(),
            count: Count::To(count),
        })
    }

    /// A change to the current count (`scale web +2`, `-1`).
    pub fn by(app: &str, change: i64) -> Result<ScaleCmd> {
        if change.unsigned_abs() > u64::from(u32::MAX) {
            return Err(too_large(change));
        }
        Ok(ScaleCmd {
            app: app.to_string(),
            count: Count::By(change),
        })
    }
}

fn too_large(count: i64) -> ControlError {
    ControlError::InvalidArgument(format!("instances: {count} is too large"))
}

/// What a scale did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaled {
    pub previous: u32,
    pub instances: u32,
}

/// What an operator can do to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Promote,
}

impl RolloutAction {
    /// The action a word names (`pause`, `resume`, `promote`).
    pub fn parse(text: &str) -> Result<RolloutAction> {
        match text {
            "pause" => Ok(RolloutAction::Pause),
            "resume" => Ok(RolloutAction::Resume),
            "promote" => Ok(RolloutAction::Promote),
            other => Err(ControlError::InvalidArgument(format!(
                "action: {other:?} is not pause, resume or promote"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
        }
    }
}

impl Control {
    /// Creates or updates an app: its spec, optionally keeping the current instance count (see
    /// `ApplyAppRequest.keep_instances`), decided under the same lock as the write so that a
    /// scale that landed after the caller read the spec stands.
    pub fn apply_app(&self, cmd: ApplyCmd) -> Result<Applied> {
        let ApplyCmd {
            spec,
            keep_instances,
        } = cmd;
        let mut inner = self.lock();
        let existing = inner.ahead.apps.get(&spec.name).cloned();
        // Bounds newer than some stored specs hold only where the value changes: a spec stored
        // before them goes back and forth as it is (`reload --set`, `export` then `apply -f`).
        let stored_keep = existing.as_ref().map(|r| r.spec.supervision.log_keep);
        if stored_keep != Some(spec.supervision.log_keep) {
            spec.supervision.validate_new()?;
        }
        let mut spec = spec;
        spec.keep_secrets_of(existing.as_ref().map(|r| &r.spec))?;
        let spec = match &existing {
            Some(old) if keep_instances => AppSpec {
                instances_max: old.spec.instances_max,
                ..spec.with_instances(old.spec.instances)?
            },
            _ => spec,
        };
        let now = self.now();
        let (record, created, changed) = match existing {
            None => (AppRecord::new(spec, now), true, true),
            Some(old) => {
                if old.spec == spec {
                    // Unchanged on `ahead`: true only once the writes queued before it land.
                    self.after_queued(&mut inner)?;
                    return Ok(Applied {
                        app: old.spec.name.clone(),
                        created: false,
                        changed: false,
                        deployment: None,
                    });
                }
                // The version counts what runs: a new count, placement or autoscaling policy
                // changes where instances run, not what they run, so nothing restarts.
                if old.spec.same_process(&spec) {
                    let rec = AppRecord {
                        spec,
                        updated_at_ms: now,
                        ..old
                    };
                    (rec, false, true)
                } else {
                    let in_use = versions_in_use(&inner.ahead.app_instances(&old.spec.name));
                    let has_instances = !in_use.is_empty();
                    (
                        new_version(old, spec, now, Kind::Update, has_instances, &in_use),
                        false,
                        true,
                    )
                }
            }
        };
        let deployment = record
            .deployment
            .clone()
            .filter(|d| d.state.active() && d.started_ms == now);
        let name = record.spec.name.clone();
        let version = record.version;
        // "max" is one per core of the nodes it may use: the count that means now.
        let count = match record.spec.instances_max {
            true => format!(
                "max instances ({} now)",
                super::views::resolved_count(&inner, &self.config, &record)
            ),
            false => super::instances_phrase(record.spec.instances),
        };
        let (batch, kept) = with_kept_records(&inner, record);
        self.write(&mut inner, batch)?;
        drop(inner);
        if let Some(d) = &deployment {
            self.emit(
                EventKind::RolloutStarted,
                &name,
                "",
                None,
                format!(
                    "{name}: rolling out version {} (from {}){}",
                    d.to_version,
                    d.from_version,
                    keeping_phrase(kept)
                ),
            );
        }
        let what = if created { "created" } else { "updated" };
        self.emit(
            EventKind::AppApplied,
            &name,
            "",
            None,
            format!("{name} {what}: version {version}, {count}"),
        );
        Ok(Applied {
            app: name,
            created,
            changed,
            deployment,
        })
    }

    /// Forgets an app; its instances are stopped by their agents. Returns how many there were.
    pub fn delete_app(&self, name: &str) -> Result<u32> {
        let mut inner = self.lock();
        find_app(&inner.ahead, name)?;
        let removed = crate::core::status::instance_count(&inner.ahead.app_instances(name));
        self.write(
            &mut inner,
            Batch {
                del_apps: vec![name.to_string()],
                ..Batch::default()
            },
        )?;
        drop(inner);
        self.end_log_routes_of(name);
        self.emit(
            EventKind::AppDeleted,
            name,
            "",
            None,
            format!("{name} deleted"),
        );
        Ok(removed)
    }

    /// Sets an app's desired count.
    pub fn scale_app(&self, cmd: ScaleCmd) -> Result<Scaled> {
        let name = cmd.app.as_str();
        let mut inner = self.lock();
        let app = find_app(&inner.ahead, name)?.clone();
        let previous = super::views::resolved_count(&inner, &self.config, &app);
        let count = match cmd.count {
            Count::To(n) => n,
            Count::By(change) => {
                let to = i64::from(previous).saturating_add(change);
                u32::try_from(to).map_err(|_| {
                    ControlError::InvalidArgument(if to < 0 {
                        format!(
                            "instances: {name} has {previous}; {change} would leave {to}; scale \
                             to 0 with: pmcluster scale {name} 0"
                        )
                    } else {
                        format!("instances: {previous} + {change} is too large")
                    })
                })?
            }
        };
        if let Some(p) = &app.spec.autoscale
            && !(p.min..=p.max).contains(&count)
        {
            return Err(ControlError::InvalidArgument(format!(
                "instances: {name} autoscales between {} and {}; scale within that range, or turn \
                 autoscaling off first with: pmcluster autoscale {name} --off",
                p.min, p.max
            )));
        }
        if count == previous && !app.spec.instances_max {
            // Nothing to write, and no event to say so; true once the writes queued before it
            // land.
            self.after_queued(&mut inner)?;
            return Ok(Scaled {
                previous,
                instances: count,
            });
        }
        // As `pm2 scale` does, a count given for an app at "max" (one per core) replaces it.
        let spec = AppSpec {
            instances_max: false,
            ..app.spec.with_instances(count)?
        };
        let mut batch = Batch {
            put_apps: vec![AppRecord {
                spec,
                updated_at_ms: self.now(),
                ..app
            }],
            ..Batch::default()
        };
        let moves = if count < previous {
            self.rebalance_moves(&inner, name, count, &mut batch)
        } else {
            Vec::new()
        };
        self.write(&mut inner, batch)?;
        // A manual scale inside the bounds holds until the metrics say otherwise.
        inner
            .scaling
            .entry(name.to_string())
            .or_default()
            .last_change_ms = Some(self.now());
        drop(inner);
        self.emit(
            EventKind::AppScaled,
            name,
            "",
            None,
            format!("{name} scaled from {previous} to {count}"),
        );
        let deadline = (app.spec.update.healthy_deadline.as_millis()) as i64;
        for (index, from, to) in moves {
            self.emit(
                EventKind::InstanceMoved,
                name,
                &from,
                Some(index),
                format!(
                    "{name}[{index}] moves from {from} to {to} to keep {name} spread after the \
                     scale-down: the copy on {from} stops once the one on {to} is online (the \
                     move is given up if that takes longer than update.healthy_deadline, {})",
                    super::seconds_phrase(deadline)
                ),
            );
        }
        Ok(Scaled {
            previous,
            instances: count,
        })
    }

    /// Moves that keep the app's spread even after a scale-down to `count`: (index, from, to).
    pub(super) fn rebalance_moves(
        &self,
        inner: &Inner,
        name: &str,
        count: u32,
        batch: &mut Batch,
    ) -> Vec<(u32, String, String)> {
        let mut moves = Vec::new();
        let Some(app) = inner.ahead.apps.get(name) else {
            return moves;
        };
        let spec = &app.spec;
        // Only plain spread apps: moving instances of apps with resources or limits could break
        // a rule the scheduler honoured when it placed them.
        // Nor during a rollout, whose engine counts an index's records against its surge.
        if spec.placement.strategy != pmcluster_spec::placement::Strategy::Spread
            || spec.placement.max_per_node.is_some()
            || spec.resources != pmcluster_spec::app::Resources::default()
            || app.rolling()
        {
            return moves;
        }
        let ready: Vec<String> = ready_nodes(inner, &self.config)
            .into_iter()
            .filter(|n| {
                inner.ahead.nodes.get(n).is_some_and(|rec| {
                    !rec.drain
                        && spec
                            .placement
                            .constraints
                            .iter()
                            .all(|c| c.matches(&rec.labels))
                })
            })
            .collect();
        let mut placed: BTreeMap<String, Vec<u32>> =
            ready.iter().map(|n| (n.clone(), Vec::new())).collect();
        // The index's records that count: not one that drains away. An index with a handoff
        // under way (an earlier scale-down's move, a drain's) is counted once, where its new
        // copy goes, and not moved again.
        let mut of_index: BTreeMap<u32, Vec<&InstanceRecord>> = BTreeMap::new();
        for inst in inner.ahead.app_instances(name) {
            if inst.index < count && inst.draining_since.is_none() {
                of_index.entry(inst.index).or_default().push(inst);
            }
        }
        let mut by_index = BTreeMap::new();
        for (index, records) in &of_index {
            let (at, movable) = match records.as_slice() {
                [only] => (*only, true),
                more => match more.iter().find(|r| r.replaces.is_some()) {
                    Some(new) => (*new, false),
                    None => continue,
                },
            };
            if let Some(v) = at.node.as_ref().and_then(|n| placed.get_mut(n)) {
                v.push(*index);
                if movable {
                    by_index.insert(*index, at.clone());
                }
            }
        }
        // A move is a handoff, as in a node drain: the new copy replaces the old one once
        // online (the old one then drains for the app's shutdown_delay), so a scale-down never
        // takes a serving copy away from an index it keeps ("a count change restarts nothing"
        // that serves). The reconciler gives a move up that is not online within the app's
        // healthy deadline (two agents on one host with a fixed port, say).
        // A stopped or finished instance serves nothing and would never come online: it just
        // moves, by the reconciler's own rule for a drain.
        let now = self.now();
        for (index, from, to) in scheduler::rebalance(&placed) {
            if let Some(old) = by_index.get(&index) {
                let plain = reconcile::hands_nothing_over(app, old, &inner.observed.exited);
                if plain {
                    batch.del_instances.push(old.id);
                }
                batch.put_instances.push(InstanceRecord {
                    id: self.clock.new_id(),
                    node: Some(to.clone()),
                    replaces: (!plain).then_some(old.id),
                    draining_since: None,
                    created_ms: now,
                    ..old.clone()
                });
                if !plain {
                    moves.push((index, from, to));
                }
            }
        }
        moves
    }

    /// Starts, stops or restarts the app's instances, or one of them: how many it applies to,
    /// and how many of those it changed (a stop of a stopped one changes nothing).
    pub fn act(&self, name: &str, index: Option<u32>, action: Action) -> Result<(u32, u32)> {
        let mut inner = self.lock();
        let app = find_app(&inner.ahead, name)?;
        if action == Action::Disable && index.is_none() {
            return Err(ControlError::InvalidArgument(
                "index: disable takes one instance (--instance N)".into(),
            ));
        }
        if let Some(i) = index
            && i >= app.spec.instances
        {
            return Err(ControlError::NotFound(format!(
                "app {name:?} has no instance {i}: it has {} (indices 0-{})",
                app.spec.instances,
                app.spec.instances.saturating_sub(1)
            )));
        }
        let mut batch = Batch::default();
        // Restarts of records whose node has no agent, noted on the node's record in the same
        // write: stored with the restart, or refused with it (see `NodeRecord::restarts_unseen`).
        let mut noted: BTreeMap<&str, NodeRecord> = BTreeMap::new();
        let mut held_epochs: HashMap<&str, HashMap<Uuid, u64>> = HashMap::new();
        for inst in inner.ahead.app_instances(name) {
            if index.is_some_and(|i| i != inst.index) {
                continue;
            }
            let mut next = inst.clone();
            match action {
                Action::Start => next.stopped = false,
                Action::Stop => next.stopped = true,
                Action::Restart => {
                    next.stopped = false;
                    // Above what its agent runs and holds too: after a restore from an older
                    // copy of the store the record's epoch is behind them, and one step would
                    // ask for the restart the agent already did (seen after `nodes adopt` as
                    // done).
                    let live = inst.node.as_ref().and_then(|n| inner.nodes.get(n));
                    // What each node holds, indexed once per node rather than searched once per
                    // instance.
                    let held = match (&inst.node, live) {
                        (Some(n), Some(l)) if !l.held.is_empty() => held_epochs
                            .entry(n.as_str())
                            .or_insert_with(|| {
                                l.held.iter().map(|a| (a.id, a.restart_epoch)).collect()
                            })
                            .get(&inst.id)
                            .copied()
                            .unwrap_or(0),
                        _ => 0,
                    };
                    let running = inner.observed.get(&inst.id).map_or(0, |o| o.restart_epoch);
                    next.restart_epoch = inst.restart_epoch.max(running).max(held) + 1;
                    // With no agent there, neither is known: an adoption checks the note.
                    if let Some(node) = &inst.node
                        && live.is_none_or(|l| l.session.is_none())
                        && let Some(record) = inner.ahead.nodes.get(node)
                    {
                        noted
                            .entry(node.as_str())
                            .or_insert_with(|| {
                                // Notes of records gone since (scaled away, deleted) go: the
                                // record stays as small as the node's instances.
                                let mut r = record.clone();
                                r.restarts_unseen
                                    .retain(|id, _| inner.ahead.instances.contains_key(id));
                                r
                            })
                            .restarts_unseen
                            .insert(inst.id, next.restart_epoch);
                    }
                }
                Action::Disable => next.disabled = true,
                Action::Enable => next.disabled = false,
            }
            if next != *inst {
                batch.put_instances.push(next);
            }
        }
        let affected = match action {
            // Starting what already runs is a no-op, but it still "applies" to those instances.
            Action::Start | Action::Stop | Action::Disable | Action::Enable => inner
                .ahead
                .app_instances(name)
                .iter()
                .filter(|i| index.is_none_or(|x| x == i.index))
                .count()
                as u32,
            Action::Restart => batch.put_instances.len() as u32,
        };
        let changed = batch.put_instances.len() as u32;
        batch.put_nodes.extend(noted.into_values());
        self.write(&mut inner, batch)?;
        drop(inner);
        let (verb, kind) = match action {
            Action::Start => ("start", EventKind::AppStart),
            Action::Stop => ("stop", EventKind::AppStop),
            Action::Restart => ("restart", EventKind::AppRestart),
            Action::Disable => ("disable", EventKind::InstanceDisabled),
            Action::Enable => ("enable", EventKind::InstanceEnabled),
        };
        let count = super::instances_phrase;
        let text = if changed == affected {
            format!("{verb} {name}: {}", count(affected))
        } else if changed == 0 {
            format!("{verb} {name}: {}, nothing changed", count(affected))
        } else {
            format!(
                "{verb} {name}: {} of {} changed, the others already were",
                changed,
                count(affected)
            )
        };
        self.emit(kind, name, "", index, text);
        Ok((affected, changed))
    }

    /// Replaces every instance of the app in waves (its update policy) with fresh processes.
    /// Refused while any instance is stopped: see [`stopped_refusal`].
    pub fn restart_rolling(&self, name: &str) -> Result<Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner.ahead, name)?.clone();
        let mut stopped: Vec<u32> = inner
            .ahead
            .app_instances(name)
            .iter()
            .filter(|i| i.stopped && i.index < app.spec.instances)
            .map(|i| i.index)
            .collect();
        if !stopped.is_empty() {
            stopped.sort_unstable();
            stopped.dedup();
            return Err(stopped_refusal(name, &stopped));
        }
        // After a failed rollout left standing, the instances it did not reach run the version
        // before it: a rolling restart replaces every instance at the app's version, so it
        // would roll the failed version out over them.
        if let Some(d) = app.deployment.as_ref().filter(|_| app.held_by_failure()) {
            return Err(ControlError::FailedPrecondition(format!(
                "{name}: the rollout of version {} failed and its instances not replaced still \
                 run version {}; a rolling restart would replace them with version {}: return \
                 to version {} with `pmcluster rollout undo {name}`, or apply a fixed spec",
                d.to_version, d.from_version, d.to_version, d.from_version
            )));
        }
        // A rollout of a new version under way (running, paused, or its canaries awaiting a
        // promotion) still has instances on the version before: a restart would replace them
        // with the new one past its gates, and if the restart then failed, nothing would hold
        // them on what serves. A restart under way is only superseded.
        if let Some(d) =
            (app.deployment.as_ref()).filter(|d| d.state.active() && d.kind != Kind::Restart)
        {
            return Err(ControlError::FailedPrecondition(format!(
                "{name}: the rollout to version {} is {}; a rolling restart now would take the \
                 instances still on version {} to it as well: wait for it (pmcluster rollout \
                 status {name} --wait), promote or resume it, or undo it (pmcluster rollout undo \
                 {name})",
                d.to_version,
                d.state.name(),
                d.from_version
            )));
        }
        let now = self.now();
        let epoch = inner
            .ahead
            .app_instances(name)
            .iter()
            .map(|i| i.restart_epoch)
            .max()
            .unwrap_or(0)
            + 1;
        let d = start_deployment(&app, Kind::Restart, app.version, app.version, epoch, now);
        let record = with_deployment(app, d.clone());
        self.write(&mut inner, Batch::app(record))?;
        drop(inner);
        self.emit(
            EventKind::RolloutStarted,
            name,
            "",
            None,
            format!("{name}: rolling restart"),
        );
        Ok(d)
    }

    /// Pauses, resumes or promotes the app's running rollout.
    pub fn steer_rollout(&self, name: &str, action: RolloutAction) -> Result<Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner.ahead, name)?.clone();
        // Not a bad argument: the same call succeeds once a rollout is under way.
        let Some(mut d) = app.deployment.clone().filter(|d| d.state.active()) else {
            return Err(ControlError::FailedPrecondition(format!(
                "app {name:?} has no rollout in progress; see: pmcluster rollout history {name}"
            )));
        };
        let kind = match action {
            RolloutAction::Pause => {
                d.state = State::Paused;
                EventKind::RolloutPause
            }
            RolloutAction::Resume => {
                d.state = State::Running;
                EventKind::RolloutResume
            }
            RolloutAction::Promote => {
                let to = d.to_version;
                // A promotion lifts the canary cap; without one pending it would report a
                // change that never happened.
                let nothing = if d.kind == Kind::Rollback {
                    Some("is a rollback, which has no canaries".to_string())
                } else if app.spec.update.canary == 0 {
                    Some("has no canaries (update.canary is 0)".to_string())
                } else if d.promoted {
                    Some("was promoted already".to_string())
                } else {
                    None
                };
                if let Some(why) = nothing {
                    return Err(ControlError::FailedPrecondition(format!(
                        "nothing to promote: the rollout of app {name:?} to version {to} {why}"
                    )));
                }
                let resumed = d.state == State::Paused;
                d.promoted = true;
                d.state = State::Running;
                // The canary step's message asked for this promotion; it would read as still
                // pending until the next step rewrote it.
                d.message = if resumed {
                    "promoted and resumed; the rollout goes on".to_string()
                } else {
                    "promoted; the rollout goes on".to_string()
                };
                EventKind::RolloutPromote
            }
        };
        d.updated_ms = self.now();
        let record = with_deployment(app, d.clone());
        self.write(&mut inner, Batch::app(record))?;
        drop(inner);
        let action = action.as_str();
        self.emit(kind, name, "", None, format!("{name}: rollout {action}"));
        Ok(d)
    }

    /// Rolls back to the previous version (or `to_version`) as a new rollout.
    pub fn roll_back(&self, name: &str, to_version: Option<u64>) -> Result<Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner.ahead, name)?.clone();
        // After a failed rollout left standing, "back" is to what still serves, which the
        // status names; the failed version may itself have followed another failed one.
        let target = match to_version.or(app.held_version()) {
            Some(v) => v,
            None => app
                .versions
                .keys()
                .copied()
                .filter(|v| *v < app.version)
                .max()
                .ok_or_else(|| {
                    ControlError::InvalidArgument(format!(
                        "app {name:?} has no earlier version to go back to"
                    ))
                })?,
        };
        let Some(spec) = app.versions.get(&target).cloned() else {
            let known: Vec<String> = app.versions.keys().map(|v| v.to_string()).collect();
            return Err(ControlError::InvalidArgument(format!(
                "to_version: app {name:?} has no version {target} to go back to (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        // The old process, with today's count and policies.
        let spec = with_current_policies(&app, spec);
        let now = self.now();
        let in_use = versions_in_use(&inner.ahead.app_instances(name));
        let has_instances = !in_use.is_empty();
        let from = app.held_version().unwrap_or(app.version);
        let record = new_version(app, spec, now, Kind::Rollback, has_instances, &in_use);
        let d = match has_instances {
            true => record.deployment.clone(),
            // Nothing to replace: the version is in place at once, and no rollout is kept (id
            // 0). The reply was the app's last rollout, which named a version long gone (a
            // trial's undo of an app with no instances said "as version 1" going 2 -> 3).
            false => Some(Deployment {
                id: 0,
                state: State::Succeeded,
                message: "no instance to replace".into(),
                ..start_deployment(&record, Kind::Rollback, from, record.version, 0, now)
            }),
        };
        let (batch, kept) = with_kept_records(&inner, record);
        self.write(&mut inner, batch)?;
        drop(inner);
        self.emit(
            EventKind::RolloutStarted,
            name,
            "",
            None,
            format!(
                "{name}: rolling back to version {target}{}",
                keeping_phrase(kept)
            ),
        );
        d.ok_or_else(|| ControlError::InvalidArgument("nothing to roll back".into()))
    }

    /// Turns autoscaling on or off (`None`), or changes the policy.
    pub fn set_autoscale(
        &self,
        name: &str,
        policy: Option<AutoscalePolicy>,
    ) -> Result<AutoscaleView> {
        {
            let mut inner = self.lock();
            let app = find_app(&inner.ahead, name)?.clone();
            let spec = AppSpec {
                autoscale: policy.clone(),
                ..app.spec.clone()
            }
            .validate()?;
            if spec != app.spec {
                let batch = Batch {
                    put_apps: vec![AppRecord {
                        spec,
                        updated_at_ms: self.now(),
                        ..app
                    }],
                    ..Batch::default()
                };
                self.write(&mut inner, batch)?;
            }
            // A new policy is judged on fresh evidence, without a cooldown from before.
            inner.scaling.remove(name);
        }
        let text = match &policy {
            Some(p) => format!("{name}: autoscaling between {} and {}", p.min, p.max),
            None => format!("{name}: autoscaling off"),
        };
        self.emit(EventKind::AutoscalePolicy, name, "", None, text);
        self.get_autoscale(name)
    }
}

/// The write of an app record, with the instances its version runs already relabelled to it
/// (see [`kept_records`]); and how many those are.
fn with_kept_records(inner: &Inner, record: AppRecord) -> (Batch, usize) {
    let records = inner.ahead.app_instances(&record.spec.name);
    let kept = kept_records(&record, &records);
    let count = kept.len();
    let mut batch = Batch::app(record);
    batch.put_instances = kept;
    (batch, count)
}

/// ", keeping the 3 instances that run it already", for a rollout's first event.
fn keeping_phrase(kept: usize) -> String {
    match kept {
        0 => String::new(),
        1 => ", keeping the instance that runs it already".to_string(),
        n => format!(", keeping the {n} instances that run it already"),
    }
}

/// Shorthands of the typed commands, for the tests and the simulation.
impl Control {
    /// Creates or updates an app. Returns the app as it is now, (created, changed), and the
    /// rollout a process change started.
    pub fn apply(&self, spec: AppSpec) -> Result<(AppView, bool, bool, Option<Deployment>)> {
        self.apply_keeping(spec, false)
    }

    /// [`Control::apply`], optionally keeping the app's current instance count (see
    /// [`Control::apply_app`]).
    pub fn apply_keeping(
        &self,
        spec: AppSpec,
        keep_instances: bool,
    ) -> Result<(AppView, bool, bool, Option<Deployment>)> {
        let applied = self.apply_app(ApplyCmd {
            spec,
            keep_instances,
        })?;
        let view = self.get_app(&applied.app)?;
        Ok((view, applied.created, applied.changed, applied.deployment))
    }

    /// Sets the desired count as users give it. Returns (previous, new).
    pub fn scale(&self, name: &str, count: i64) -> Result<(u32, u32)> {
        let scaled = self.scale_app(ScaleCmd::new(name, count)?)?;
        Ok((scaled.previous, scaled.instances))
    }
}

/// Why a rolling restart of an app with stopped instances is refused, and what to run instead.
/// Its waves hand each index from a serving process to a new one; a stopped index has nothing
/// serving. Carried along stopped (as a new version carries it), the restart would be done with
/// instances that still do not run, and `--wait` fails on them; started, it would run what the
/// user stopped. Whether a stopped instance should run is the user's call (`pm2 reload` starts
/// it, `kubectl rollout restart` starts nothing), so they are asked before anything changes.
fn stopped_refusal(name: &str, indices: &[u32]) -> ControlError {
    const NAMED: usize = 8;
    let mut list: Vec<String> = indices
        .iter()
        .take(NAMED)
        .map(|i| format!("{name}[{i}]"))
        .collect();
    if indices.len() > NAMED {
        list.push(format!("and {} more", indices.len() - NAMED));
    }
    let (them, are) = match indices.len() {
        1 => ("it", "is"),
        _ => ("them", "are"),
    };
    ControlError::FailedPrecondition(format!(
        "{} {are} stopped, and a rolling restart only replaces running instances: start \
         {them} first (pmcluster start {name}), then restart in waves, or restart every \
         instance at once, which starts stopped ones too (pmcluster restart {name})",
        list.join(", ")
    ))
}

/// The versions `records` run: their specs are kept however many versions come after.
fn versions_in_use(records: &[&InstanceRecord]) -> std::collections::BTreeSet<u64> {
    records.iter().map(|r| r.app_version).collect()
}
