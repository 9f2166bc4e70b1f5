//! The deployment engine: one step of a rolling update or rolling restart, as a pure function
//! (deployment, app, instance records, observed health, now) -> actions and the next state.
//!
//! Per index: an *outdated* record (older version, or an older restart epoch in a rolling
//! restart) gets a replacement of the target version (`replaces` = its id), at most
//! `max_surge + max_unavailable` indices at once (`canary` first, then wait for promotion). Once
//! the replacement has been healthy for `min_healthy_time`, the old record is marked draining,
//! and removed `shutdown_delay` later. Indices beyond `max_surge` drain their old record at once
//! (stop-then-start). A replacement not healthy within `healthy_deadline` of its placement
//! (whether its old copy still serves or went first), or no index finished within
//! `progress_deadline`, fails the deployment; with `auto_rollback` the shell then rolls back to
//! the previous version.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_spec::update::UpdatePolicy;
use uuid::Uuid;

use crate::core::versions;
use crate::model::{AppRecord, Batch, Deployment, InstanceRecord, Kind, State};

/// What the engine knows of one record beyond the record itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Online (and healthy, when it has a health check) continuously since this time.
    pub healthy_since: Option<i64>,
    /// Its node is connected.
    pub node_up: bool,
    /// It has a node. A replacement still without one after a step could not be placed next to
    /// the instance it replaces (a fixed port on the only node that fits): the old one then
    /// goes first (stop-then-start) rather than the rollout stalling.
    pub placed: bool,
    /// Its node is draining: nothing new is placed there, so stopping this copy for an
    /// unplaced replacement frees no room for it and only takes the index down (a drain of the
    /// only node during a rolling update). The rollout then waits, and its progress deadline
    /// ends it, as a Kubernetes rollout waits on a cordoned node.
    pub node_draining: bool,
    /// It was healthy for `min_healthy_time` at an earlier step (the shell keeps
    /// [`Step::proven`]; in memory, so a new leader starts afresh). The healthy deadline is then
    /// behind it: a crash later is its restart policy's to handle, not a replacement that never
    /// came up.
    pub proven: bool,
    /// Its agent gave up restarting it (errored), and why (the crashes and the last exit).
    /// Not coming back on its own: a replacement in this state fails the rollout at once
    /// rather than at its healthy deadline.
    pub errored: Option<&'a str>,
}

/// What the shell must do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Create a replacement of the target version for these records (old ids).
    pub replace: Vec<Uuid>,
    /// Mark these records draining (no longer endpoints) from now.
    pub drain: Vec<Uuid>,
    pub remove: Vec<Uuid>,
    /// The deployment after this step.
    pub deployment: Deployment,
    /// The deployment failed and the policy asks for a rollback.
    pub rollback: bool,
    /// Replacements healthy for `min_healthy_time` now, not yet [`Facts::proven`]: for the shell
    /// to remember.
    pub proven: Vec<Uuid>,
}

/// What one step of `app`'s deployment `d` changes: the records to write (an empty batch: nothing
/// but the time of the step, which is not worth a commit), and a line for watchers per state
/// change. `new_id` mints the ids of replacements.
pub fn apply_step(
    app: &AppRecord,
    d: &Deployment,
    records: &[InstanceRecord],
    step: &Step,
    now_ms: i64,
    new_id: &mut dyn FnMut() -> Uuid,
) -> (Batch, Vec<String>) {
    let name = &app.spec.name;
    let mut batch = Batch::default();
    let mut messages = Vec::new();
    for old_id in &step.replace {
        let Some(old) = records.iter().find(|r| r.id == *old_id) else {
            continue;
        };
        let epoch = if d.kind == Kind::Restart {
            d.restart_epoch
        } else {
            old.restart_epoch
        };
        batch.put_instances.push(InstanceRecord {
            id: new_id(),
            app: name.clone(),
            index: old.index,
            node: None,
            port: app.spec.port.port_for(old.index),
            app_version: d.to_version,
            restart_epoch: epoch,
            stopped: old.stopped,
            replaces: Some(old.id),
            draining_since: None,
            created_ms: now_ms,
            avoid: Vec::new(),
            disabled: false,
        });
        // A stopped instance has nothing to hand over: its replacement takes the index now.
        if old.stopped {
            batch.del_instances.push(old.id);
        }
    }
    for id in &step.drain {
        if let Some(r) = records.iter().find(|r| r.id == *id) {
            batch.put_instances.push(InstanceRecord {
                draining_since: Some(now_ms),
                ..r.clone()
            });
        }
    }
    batch.del_instances.extend(step.remove.iter().copied());
    let next = step.deployment.clone();
    let mut record = versions::with_deployment(app.clone(), next.clone());
    if next.state != d.state || next.done != d.done {
        // An end that is not a success says why, as `rollout status` does (a trial found the
        // event of a failure bare); a rollback's own message below says it then.
        let why = match next.state {
            State::Failed | State::RolledBack if !next.message.is_empty() && !step.rollback => {
                format!(": {}", next.message)
            }
            _ => String::new(),
        };
        messages.push(format!(
            "{name}: rollout to version {} {} ({}/{}){why}",
            next.to_version,
            next.state.name(),
            next.done,
            next.total
        ));
    }
    if step.rollback {
        let spec = versions::with_current_policies(app, app.spec_of(d.from_version).clone());
        let failed = Deployment {
            state: State::RolledBack,
            ..next
        };
        record = versions::new_version(
            versions::with_deployment(app.clone(), failed),
            spec,
            now_ms,
            Kind::Rollback,
            true,
            &records.iter().map(|r| r.app_version).collect(),
        );
        // The indices the failed rollout had not reached go on as they are.
        let refs: Vec<&InstanceRecord> = records.iter().collect();
        batch
            .put_instances
            .extend(versions::kept_records(&record, &refs));
        messages.push(format!(
            "{name}: rolling back to version {}: {}",
            d.from_version, step.deployment.message
        ));
    }
    // A step that only moved `updated_ms` changed nothing worth a commit: the loop steps whenever
    // something changes, and a store write per wake-up would follow every report.
    let unchanged = || {
        record.deployment.as_ref().map(|n| Deployment {
            updated_ms: d.updated_ms,
            ..n.clone()
        }) == app.deployment
            && AppRecord {
                deployment: None,
                ..record.clone()
            } == AppRecord {
                deployment: None,
                ..app.clone()
            }
    };
    if !batch.is_empty() || !unchanged() {
        batch.put_apps.push(record);
    }
    (batch, messages)
}

/// A record is outdated for this deployment when it runs another version, or, in a rolling
/// restart, an older process.
pub fn outdated(d: &Deployment, r: &InstanceRecord) -> bool {
    r.app_version != d.to_version || (d.kind == Kind::Restart && r.restart_epoch < d.restart_epoch)
}

/// One step of `app`'s deployment `d` (the name is for the messages a user reads).
pub fn step(
    app: &str,
    d: &Deployment,
    policy: &UpdatePolicy,
    count: u32,
    records: &[&InstanceRecord],
    facts: &BTreeMap<Uuid, Facts<'_>>,
    now_ms: i64,
) -> Step {
    let mut out = Step {
        replace: Vec::new(),
        drain: Vec::new(),
        remove: Vec::new(),
        deployment: d.clone(),
        rollback: false,
        proven: Vec::new(),
    };
    if !d.state.active() {
        return out;
    }
    let fact = |id: &Uuid| facts.get(id).copied().unwrap_or_default();
    let min_healthy = policy.min_healthy_time.as_millis() as i64;
    let shutdown_delay = policy.shutdown_delay.as_millis() as i64;
    // The healthy deadline counts from `created_ms`, which the shell sets again when the record
    // is placed (`write::materialize`): that is when its node is told to start it. A
    // stop-then-start replacement waits unplaced while its old copy drains and stops, and that
    // wait (`shutdown_delay`, the old process's stop) says nothing of the new process, so it
    // has no deadline until placed; the progress deadline bounds a wait for room. A stopped
    // record never runs, so it is never late; a proven one was in time. A record older than the
    // deployment is none of its replacements: one a rollback kept (`versions::kept_records`),
    // whose process was there before and is its restart policy's to look after.
    let overdue = |n: &InstanceRecord, f: Facts| {
        !f.proven
            && n.created_ms >= d.started_ms
            && f.placed
            && !n.stopped
            && f.healthy_since.is_none()
            && now_ms > n.created_ms + policy.healthy_deadline.as_millis() as i64
    };
    let late = |index: u32| {
        format!(
            "instance {index} of version {} not healthy within {}s",
            d.to_version,
            policy.healthy_deadline.as_secs()
        )
    };
    // A replacement of this deployment that its agent stopped restarting: it is down for good,
    // and waiting out its deadline would only hold the rollout.
    let given_up = |n: &InstanceRecord, f: Facts<'_>| {
        let why = f
            .errored
            .filter(|_| !f.proven && n.created_ms >= d.started_ms && !n.stopped);
        why.map(|why| {
            format!(
                "instance {} of version {} errored: {why}",
                n.index, d.to_version
            )
        })
    };
    let failed = |n: &InstanceRecord, f: Facts<'_>| {
        given_up(n, f).or_else(|| overdue(n, f).then(|| late(n.index)))
    };
    let mut by_index: BTreeMap<u32, Vec<&InstanceRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.index < count) {
        by_index.entry(r.index).or_default().push(r);
    }
    let mut done = 0u32;
    let mut in_flight = 0u32;
    // Indices whose old instance drains behind a healthy replacement.
    let mut draining = 0u32;
    let mut waiting = Vec::new();
    let mut failure = None;
    let replaced_before = records
        .iter()
        .filter(|r| r.replaces.is_some() && !outdated(d, r))
        .count() as u32;
    for index in 0..count {
        let recs = by_index.get(&index).map(Vec::as_slice).unwrap_or(&[]);
        let old: Vec<&&InstanceRecord> = recs.iter().filter(|r| outdated(d, r)).collect();
        let new: Option<&&InstanceRecord> = recs.iter().find(|r| !outdated(d, r));
        if old.is_empty() {
            if let Some(n) = new {
                // A replacement whose old copy is already gone (stop-then-start) holds the budget
                // until it has proven itself, like one whose old copy still serves.
                let healthy_long = fact(&n.id)
                    .healthy_since
                    .is_some_and(|t| now_ms - t >= min_healthy);
                if healthy_long && !fact(&n.id).proven {
                    out.proven.push(n.id);
                }
                // A stopped one (the replacement of a stopped instance) has nothing to prove:
                // it never runs, and holding the budget for it stalled every other index. Nor
                // has one older than the deployment (kept by a rollback).
                if n.replaces.is_none() || n.stopped || healthy_long || n.created_ms < d.started_ms
                {
                    done += 1;
                } else {
                    in_flight += 1;
                    // Its old copy gone (stop-then-start), its index is down until it comes up:
                    // the deadline of one started beside its old copy holds all the more.
                    if failure.is_none() {
                        failure = failed(n, fact(&n.id));
                    }
                }
            }
            continue;
        }
        // A stopped instance has nothing to hand over: it is replaced in place.
        if old.iter().all(|o| o.stopped) && new.is_none() {
            out.replace.extend(old.iter().map(|o| o.id));
            in_flight += 1;
            continue;
        }
        match new {
            None => {
                // Draining already (stop-then-start): its replacement comes with it below.
                waiting.push(index);
            }
            Some(n) => {
                let f = fact(&n.id);
                let healthy_long = f.healthy_since.is_some_and(|t| now_ms - t >= min_healthy);
                if healthy_long && !f.proven {
                    out.proven.push(n.id);
                }
                // Once its replacement has proven itself, an index no longer holds the budget:
                // the next wave starts while the old instance drains. An old copy that drains
                // before that (stop-then-start, past the surge) is an unavailable index, which
                // holds the budget until the replacement is healthy.
                if healthy_long {
                    draining += 1;
                } else {
                    in_flight += 1;
                }
                for o in &old {
                    match o.draining_since {
                        Some(since) if now_ms - since >= shutdown_delay => out.remove.push(o.id),
                        Some(_) => {}
                        None if healthy_long
                            || !fact(&o.id).node_up
                            || (!f.placed && !fact(&o.id).node_draining) =>
                        {
                            out.drain.push(o.id)
                        }
                        None => {}
                    }
                }
                if failure.is_none() {
                    failure = failed(n, f);
                }
            }
        }
    }
    let total = count;
    let mut next = d.clone();
    if done > d.done {
        next.progress_ms = now_ms;
    }
    next.done = done;
    next.total = total;
    next.updated_ms = now_ms;
    // Waiting for a person (paused, or canaries awaiting promotion) is not a lack of progress:
    // the progress clock restarts when the rollout moves on its own again.
    if matches!(d.state, State::Paused | State::AwaitingPromotion) {
        next.progress_ms = now_ms;
    }
    if failure.is_none() && now_ms - next.progress_ms > policy.progress_deadline.as_millis() as i64
    {
        failure = Some(format!(
            "no instance replaced within {}s",
            policy.progress_deadline.as_secs()
        ));
    }
    if let Some(why) = failure {
        next.state = State::Failed;
        next.message = why;
        // Only a new version has something to roll back to. A failed rollback is not rolled
        // back again, and a rolling restart's "previous version" is its own: rolling it back
        // is another restart, which would wait out the same deadline for the same reason.
        out.rollback = policy.auto_rollback && d.kind == Kind::Update;
        // Stop what was starting; the old instances still serve.
        out.replace.clear();
        out.drain.clear();
        out.remove.clear();
        out.deployment = next;
        return out;
    }
    if waiting.is_empty() && in_flight == 0 && draining == 0 {
        next.state = State::Succeeded;
        next.message = format!("{done} of {total} instances on version {}", d.to_version);
        out.deployment = next;
        return out;
    }
    // Canaries: replace `canary` indices, then wait for a promotion. Not for a rollback: it
    // returns to a version that ran, and the indices it keeps are no canaries.
    let canary_cap =
        (policy.canary > 0 && !d.promoted && d.kind != Kind::Rollback).then_some(policy.canary);
    let started = replaced_before.max(done + in_flight);
    if let Some(cap) = canary_cap
        && done >= cap.min(total)
        && in_flight == 0
        && next.state == State::Running
    {
        next.state = State::AwaitingPromotion;
        let canaries = if done == 1 { "canary" } else { "canaries" };
        next.message =
            format!("{done} {canaries} healthy; promote with: pmcluster rollout promote {app}");
    }
    let budget = policy.max_surge + policy.max_unavailable;
    let mut starts = 0u32;
    if next.state == State::Running {
        for index in waiting {
            if in_flight + starts >= budget {
                break;
            }
            if let Some(cap) = canary_cap
                && started + starts >= cap
            {
                break;
            }
            let recs = by_index.get(&index).map(Vec::as_slice).unwrap_or(&[]);
            // A draining record is on its way out: replacing it instead of the copy that serves
            // made a replacement the reconciler removed as a conflict, every tick, forever.
            let Some(old) = recs
                .iter()
                .filter(|r| outdated(d, r))
                .min_by_key(|r| r.draining_since.is_some())
            else {
                continue;
            };
            out.replace.push(old.id);
            // Past the surge budget, the old one goes first (counts as unavailable); not from a
            // draining node, where its going frees no room: its replacement goes to another
            // node beside it, or waits while it serves.
            if in_flight + starts >= policy.max_surge
                && old.draining_since.is_none()
                && !fact(&old.id).node_draining
            {
                out.drain.push(old.id);
            }
            starts += 1;
        }
        next.message = format!(
            "{done} of {total} on version {}, {} in progress",
            d.to_version,
            in_flight + draining + starts
        );
    }
    out.deployment = next;
    out
}

/// Indices with no healthy instance, for the zero-downtime invariant in tests.
pub fn unavailable(
    records: &[&InstanceRecord],
    facts: &BTreeMap<Uuid, Facts>,
    count: u32,
) -> BTreeSet<u32> {
    (0..count)
        .filter(|i| {
            !records.iter().any(|r| {
                r.index == *i
                    && r.draining_since.is_none()
                    && facts.get(&r.id).is_some_and(|f| f.healthy_since.is_some())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
