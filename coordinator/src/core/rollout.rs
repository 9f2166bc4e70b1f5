//! The deployment engine: one step of a rolling update or rolling restart, as a pure function
//! (deployment, app, instance records, observed health, now) -> actions and the next state.
//!
//! Per index: an *outdated* record (older version, or an older restart epoch in a rolling
//! restart) gets a replacement of the target version (`replaces` = its id), at most
//! `max_surge + max_unavailable` indices at once (`canary` first, then wait for promotion). Once
//! the replacement has been healthy for `min_healthy_time`, the old record is marked draining,
//! and removed `shutdown_delay` later. Indices beyond `max_surge` drain their old record at once
//! (stop-then-start). A replacement not healthy within `healthy_deadline`, or no index finished
//! within `progress_deadline`, fails the deployment; with `auto_rollback` the shell then rolls
//! back to the previous version.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_spec::update::UpdatePolicy;
use uuid::Uuid;

use crate::core::versions;
use crate::model::{AppRecord, Batch, Deployment, InstanceRecord, Kind, State};

/// What the engine knows of one record beyond the record itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// Online (and healthy, when it has a health check) continuously since this time.
    pub healthy_since: Option<i64>,
    /// Its node is connected.
    pub node_up: bool,
    /// It has a node. A replacement still without one after a step could not be placed next to
    /// the instance it replaces (a fixed port on the only node that fits): the old one then
    /// goes first (stop-then-start) rather than the rollout stalling.
    pub placed: bool,
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
        messages.push(format!(
            "{name}: rollout to version {} {} ({}/{})",
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
        );
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

pub fn step(
    d: &Deployment,
    policy: &UpdatePolicy,
    count: u32,
    records: &[&InstanceRecord],
    facts: &BTreeMap<Uuid, Facts>,
    now_ms: i64,
) -> Step {
    let mut out = Step {
        replace: Vec::new(),
        drain: Vec::new(),
        remove: Vec::new(),
        deployment: d.clone(),
        rollback: false,
    };
    if !d.state.active() {
        return out;
    }
    let fact = |id: &Uuid| facts.get(id).copied().unwrap_or_default();
    let min_healthy = policy.min_healthy_time.as_millis() as i64;
    let shutdown_delay = policy.shutdown_delay.as_millis() as i64;
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
                if n.replaces.is_none() || healthy_long {
                    done += 1;
                } else {
                    in_flight += 1;
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
                        None if healthy_long || !fact(&o.id).node_up || !f.placed => {
                            out.drain.push(o.id)
                        }
                        None => {}
                    }
                }
                let deadline = n.created_ms + policy.healthy_deadline.as_millis() as i64;
                if f.healthy_since.is_none() && now_ms > deadline && failure.is_none() {
                    failure = Some(format!(
                        "instance {index} of version {} not healthy within {}s",
                        d.to_version,
                        policy.healthy_deadline.as_secs()
                    ));
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
        out.rollback = policy.auto_rollback && d.kind != Kind::Rollback;
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
    // Canaries: replace `canary` indices, then wait for a promotion.
    let canary_cap = (policy.canary > 0 && !d.promoted).then_some(policy.canary);
    let started = replaced_before.max(done + in_flight);
    if let Some(cap) = canary_cap
        && done >= cap.min(total)
        && in_flight == 0
        && next.state == State::Running
    {
        next.state = State::AwaitingPromotion;
        next.message =
            format!("{done} canaries healthy; promote with: pmcluster rollout promote APP");
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
            // Past the surge budget, the old one goes first (counts as unavailable).
            if in_flight + starts >= policy.max_surge && old.draining_since.is_none() {
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
mod tests {
    use super::*;
    use std::time::Duration;

    /// Records as `index:version[e=epoch][*since][~draining_since][c=created]` separated by
    /// spaces; ids are 1, 2, ... in order. `*T` means healthy since T.
    fn records(text: &str) -> (Vec<InstanceRecord>, BTreeMap<Uuid, Facts>) {
        let mut recs = Vec::new();
        let mut facts = BTreeMap::new();
        for (n, word) in text.split_whitespace().enumerate() {
            let id = Uuid::from_u128(n as u128 + 1);
            let mut parts = word.split(['*', '~', '@', '!']);
            let head = parts.next().unwrap_or_default();
            let (index, version) = head.split_once(':').unwrap();
            let (version, epoch) = version.split_once('e').unwrap_or((version, "0"));
            let mut rec = InstanceRecord {
                id,
                app: "web".into(),
                index: index.parse().unwrap(),
                node: Some("a".into()),
                port: None,
                app_version: version.parse().unwrap(),
                restart_epoch: epoch.parse().unwrap(),
                stopped: false,
                replaces: None,
                draining_since: None,
                created_ms: 0,
                avoid: Vec::new(),
                disabled: false,
            };
            let mut f = Facts {
                healthy_since: None,
                node_up: true,
                placed: true,
            };
            // Markers in order of appearance.
            let mut rest = &word[head.len()..];
            while !rest.is_empty() {
                let marker = rest.chars().next().unwrap_or(' ');
                let tail = &rest[1..];
                let end = tail.find(['*', '~', '@', '!']).unwrap_or(tail.len());
                let value: i64 = tail[..end].parse().unwrap_or(0);
                match marker {
                    '*' => f.healthy_since = Some(value),
                    '~' => rec.draining_since = Some(value),
                    '@' => rec.created_ms = value,
                    '!' => f.placed = false,
                    _ => {}
                }
                rest = &tail[end..];
            }
            if rec.app_version == 2 || rec.restart_epoch > 0 {
                rec.replaces = Some(Uuid::from_u128(1));
            }
            facts.insert(id, f);
            recs.push(rec);
        }
        (recs, facts)
    }

    fn deployment(kind: Kind) -> Deployment {
        Deployment {
            id: 1,
            kind,
            from_version: 1,
            to_version: if kind == Kind::Restart { 1 } else { 2 },
            restart_epoch: if kind == Kind::Restart { 1 } else { 0 },
            state: State::Running,
            started_ms: 0,
            updated_ms: 0,
            progress_ms: 0,
            promoted: false,
            message: String::new(),
            done: 0,
            total: 0,
        }
    }

    fn policy() -> UpdatePolicy {
        UpdatePolicy {
            min_healthy_time: Duration::from_millis(100),
            healthy_deadline: Duration::from_millis(1000),
            progress_deadline: Duration::from_millis(5000),
            shutdown_delay: Duration::from_millis(50),
            ..UpdatePolicy::default()
        }
    }

    fn render(s: &Step) -> String {
        let ids = |v: &[Uuid]| {
            v.iter()
                .map(|u| u.as_u128().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = Vec::new();
        if !s.replace.is_empty() {
            out.push(format!("replace {}", ids(&s.replace)));
        }
        if !s.drain.is_empty() {
            out.push(format!("drain {}", ids(&s.drain)));
        }
        if !s.remove.is_empty() {
            out.push(format!("remove {}", ids(&s.remove)));
        }
        out.push(format!(
            "{} {}/{}",
            s.deployment.state.name(),
            s.deployment.done,
            s.deployment.total
        ));
        if s.rollback {
            out.push("rollback".into());
        }
        out.join("; ")
    }

    fn check(d: &Deployment, p: &UpdatePolicy, count: u32, recs: &str, now: i64, want: &str) {
        let (rs, facts) = records(recs);
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        let got = step(d, p, count, &refs, &facts, now);
        assert_eq!(render(&got), want, "records {recs:?} at {now}");
    }

    #[test]
    fn rolling_update_one_at_a_time() {
        let d = deployment(Kind::Update);
        let p = policy();
        let base = "0:1*0 1:1*0 2:1*0";
        // Start: one replacement (max_surge 1), old ones keep serving.
        check(&d, &p, 3, base, 10, "replace 1; running 0/3");
        // Replacement not healthy long enough yet: wait.
        let wave = "0:1*0 1:1*0 2:1*0 0:2*50@20";
        check(&d, &p, 3, wave, 100, "running 0/3");
        // Healthy for min_healthy_time: the old one drains, and the next wave starts.
        check(&d, &p, 3, wave, 200, "replace 2; drain 1; running 0/3");
        // After shutdown_delay the drained one is removed.
        let draining = "0:1*0~200 1:1*0 2:1*0 0:2*50@20";
        check(&d, &p, 3, draining, 230, "replace 2; running 0/3");
        check(&d, &p, 3, draining, 260, "replace 2; remove 1; running 0/3");
        // Index 0 done.
        check(
            &d,
            &p,
            3,
            "1:1*0 2:1*0 0:2*50",
            300,
            "replace 1; running 1/3",
        );
        // All done.
        check(&d, &p, 3, "0:2*0 1:2*0 2:2*0", 900, "succeeded 3/3");
    }

    #[test]
    fn surge_and_unavailable_budgets() {
        let d = deployment(Kind::Update);
        let p = UpdatePolicy {
            max_surge: 2,
            ..policy()
        };
        check(
            &d,
            &p,
            4,
            "0:1*0 1:1*0 2:1*0 3:1*0",
            10,
            "replace 1,2; running 0/4",
        );
        let p = UpdatePolicy {
            max_surge: 1,
            max_unavailable: 1,
            ..policy()
        };
        // The second one beyond the surge budget drains its old instance at once.
        check(
            &d,
            &p,
            4,
            "0:1*0 1:1*0 2:1*0 3:1*0",
            10,
            "replace 1,2; drain 2; running 0/4",
        );
    }

    #[test]
    fn failure_and_rollback() {
        let d = deployment(Kind::Update);
        let p = policy();
        // The replacement never becomes healthy: fail after healthy_deadline, roll back.
        check(&d, &p, 2, "0:1*0 1:1*0 0:2@0", 999, "running 0/2");
        check(&d, &p, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2; rollback");
        let no_rollback = UpdatePolicy {
            auto_rollback: false,
            ..policy()
        };
        check(&d, &no_rollback, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2");
        // A rollback that fails does not roll back again.
        let rb = Deployment {
            kind: Kind::Rollback,
            ..deployment(Kind::Update)
        };
        check(&rb, &p, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2");
        // No progress at all for progress_deadline.
        let stuck = Deployment {
            progress_ms: 0,
            ..deployment(Kind::Update)
        };
        check(
            &stuck,
            &p,
            2,
            "0:1*0 1:1*0 0:2*4000@3000",
            5001,
            "failed 0/2; rollback",
        );
    }

    #[test]
    fn pause_canary_and_restart() {
        let paused = Deployment {
            state: State::Paused,
            ..deployment(Kind::Update)
        };
        // Paused: no new replacement, but the one in flight finishes.
        check(&paused, &policy(), 2, "0:1*0 1:1*0", 10, "paused 0/2");
        // Paused for longer than progress_deadline (5 s here): still paused, not failed.
        check(&paused, &policy(), 2, "0:1*0 1:1*0", 60_000, "paused 0/2");
        let waiting = Deployment {
            state: State::AwaitingPromotion,
            ..deployment(Kind::Update)
        };
        let canary = UpdatePolicy {
            canary: 1,
            ..policy()
        };
        check(
            &waiting,
            &canary,
            3,
            "1:1*0 2:1*0 0:2*0",
            60_000,
            "awaiting promotion 1/3",
        );
        check(
            &paused,
            &policy(),
            2,
            "0:1*0 1:1*0 0:2*0",
            200,
            "drain 1; paused 0/2",
        );
        let p = UpdatePolicy {
            canary: 1,
            ..policy()
        };
        let d = deployment(Kind::Update);
        check(&d, &p, 3, "0:1*0 1:1*0 2:1*0", 10, "replace 1; running 0/3");
        check(
            &d,
            &p,
            3,
            "1:1*0 2:1*0 0:2*0",
            300,
            "awaiting promotion 1/3",
        );
        let promoted = Deployment {
            promoted: true,
            ..d.clone()
        };
        check(
            &promoted,
            &p,
            3,
            "1:1*0 2:1*0 0:2*0",
            300,
            "replace 1; running 1/3",
        );
        // Rolling restart: same version, older epoch is outdated.
        let r = deployment(Kind::Restart);
        check(
            &r,
            &policy(),
            2,
            "0:1*0 1:1*0",
            10,
            "replace 1; running 0/2",
        );
        // The old copies are gone: done once the replacements have been healthy for
        // min_healthy_time (100 ms), not before.
        check(&r, &policy(), 2, "0:1e1*0 1:1e1*0", 10, "running 0/2");
        check(&r, &policy(), 2, "0:1e1*0 1:1e1*0", 200, "succeeded 2/2");
    }

    /// Stop-then-start past the surge (max_surge 0, max_unavailable 1): an index whose old copy
    /// drained, or is already gone, holds the budget until its replacement is healthy, so at
    /// most one index is unavailable at a time (the property tests found two).
    #[test]
    fn an_unavailable_index_holds_the_budget_until_healthy() {
        let p = UpdatePolicy {
            max_surge: 0,
            max_unavailable: 1,
            ..policy()
        };
        let d = deployment(Kind::Update);
        // Index 0 replaced, its old copy draining, the replacement not healthy: nothing more.
        check(&d, &p, 3, "0:1~0 1:1*0 2:1*0 0:2", 10, "running 0/3");
        // Its old copy removed, the replacement still not healthy: still nothing more.
        check(&d, &p, 3, "1:1*0 2:1*0 0:2", 100, "running 0/3");
        // Healthy long enough: the next index goes.
        check(
            &d,
            &p,
            3,
            "1:1*0 2:1*0 0:2*0",
            200,
            "replace 1; drain 1; running 1/3",
        );
    }

    #[test]
    fn unplaceable_replacement_goes_stop_then_start() {
        // The replacement found no node (its port is held by the old one on the only node):
        // the old one drains now instead of the rollout stalling until its deadline.
        check(
            &deployment(Kind::Update),
            &policy(),
            1,
            "0:1*0 0:2@0!",
            10,
            "drain 1; running 0/1",
        );
    }

    #[test]
    fn node_loss_during_rollout() {
        let d = deployment(Kind::Update);
        // The old instance's node is down: drain (and so remove) it without waiting.
        let (mut rs, mut facts) = records("0:1*0 1:1*0 0:2@0");
        rs[0].draining_since = None;
        facts.insert(
            Uuid::from_u128(1),
            Facts {
                healthy_since: None,
                node_up: false,
                placed: true,
            },
        );
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        let got = step(&d, &policy(), 2, &refs, &facts, 10);
        assert_eq!(render(&got), "drain 1; running 0/2");
        // Finished or failed deployments do nothing.
        let done = Deployment {
            state: State::Succeeded,
            ..deployment(Kind::Update)
        };
        check(&done, &policy(), 2, "0:1*0", 10, "succeeded 0/0");
    }

    #[test]
    fn zero_unavailable_through_a_whole_update() {
        // Drive a 4-instance update step by step with instant health, checking that every
        // index always has a healthy, non-draining instance.
        let d0 = deployment(Kind::Update);
        let p = policy();
        let mut recs: Vec<InstanceRecord> = records("0:1*0 1:1*0 2:1*0 3:1*0").0;
        let mut facts: BTreeMap<Uuid, Facts> = recs
            .iter()
            .map(|r| {
                (
                    r.id,
                    Facts {
                        healthy_since: Some(0),
                        node_up: true,
                        placed: true,
                    },
                )
            })
            .collect();
        let mut d = d0;
        let mut next_id = 100u128;
        for tick in 1..200 {
            let now = tick * 50;
            let refs: Vec<&InstanceRecord> = recs.iter().collect();
            assert!(
                unavailable(&refs, &facts, 4).is_empty(),
                "tick {tick}: {recs:?}"
            );
            let s = step(&d, &p, 4, &refs, &facts, now);
            for old in &s.replace {
                let o = recs.iter().find(|r| r.id == *old).cloned().unwrap();
                next_id += 1;
                let id = Uuid::from_u128(next_id);
                recs.push(InstanceRecord {
                    id,
                    app_version: 2,
                    replaces: Some(o.id),
                    draining_since: None,
                    created_ms: now,
                    avoid: Vec::new(),
                    disabled: false,
                    ..o
                });
                // Healthy right away (the step after next sees it past min_healthy_time).
                facts.insert(
                    id,
                    Facts {
                        healthy_since: Some(now),
                        node_up: true,
                        placed: true,
                    },
                );
            }
            for id in &s.drain {
                if let Some(r) = recs.iter_mut().find(|r| r.id == *id) {
                    r.draining_since = Some(now);
                }
            }
            recs.retain(|r| !s.remove.contains(&r.id));
            d = s.deployment;
            if d.state == State::Succeeded {
                assert!(recs.iter().all(|r| r.app_version == 2) && recs.len() == 4);
                return;
            }
        }
        panic!("the update did not finish: {d:?}");
    }

    /// `apply_step` over a hand-made step: the batch rendered as text.
    fn check_apply(text: &str, step: Step, want: &str) {
        let (recs, _) = records(text);
        let d = deployment(Kind::Update);
        let mut spec = pmcluster_spec::AppSpec::new("web", "v2", &[]);
        spec.instances = 2;
        let mut app = AppRecord::new(spec, 0);
        app.version = 2;
        app.versions
            .insert(1, pmcluster_spec::AppSpec::new("web", "v1", &[]));
        app.deployment = Some(d.clone());
        let mut next_id = 100u128;
        let (batch, messages) = apply_step(&app, &d, &recs, &step, 7, &mut || {
            next_id += 1;
            Uuid::from_u128(next_id)
        });
        let puts: Vec<String> = batch
            .put_instances
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:v{}{}{}",
                    r.id.as_u128(),
                    r.index,
                    r.app_version,
                    r.replaces
                        .map(|o| format!("<{}", o.as_u128()))
                        .unwrap_or_default(),
                    r.draining_since
                        .map(|t| format!("~{t}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let dels: Vec<String> = batch
            .del_instances
            .iter()
            .map(|id| id.as_u128().to_string())
            .collect();
        let apps: Vec<String> = batch
            .put_apps
            .iter()
            .map(|a| {
                let d = a.deployment.as_ref().map(|d| d.state.name()).unwrap_or("-");
                format!("v{} {d}", a.version)
            })
            .collect();
        let got = format!(
            "put [{}] del [{}] apps [{}] msgs {}",
            puts.join(" "),
            dels.join(" "),
            apps.join(" "),
            messages.len()
        );
        assert_eq!(got, want, "{text}");
    }

    #[test]
    fn applying_a_step() {
        let d = deployment(Kind::Update);
        let step = |replace: &[u128], drain: &[u128], remove: &[u128], next: Deployment| Step {
            replace: replace.iter().map(|n| Uuid::from_u128(*n)).collect(),
            drain: drain.iter().map(|n| Uuid::from_u128(*n)).collect(),
            remove: remove.iter().map(|n| Uuid::from_u128(*n)).collect(),
            deployment: next,
            rollback: false,
        };
        // Nothing to do: an empty batch.
        check_apply(
            "0:1 1:1",
            step(&[], &[], &[], d.clone()),
            "put [] del [] apps [] msgs 0",
        );
        // Only the time of the step moved: still nothing to commit.
        let later = Deployment {
            updated_ms: 99,
            ..d.clone()
        };
        check_apply(
            "0:1 1:1",
            step(&[], &[], &[], later),
            "put [] del [] apps [] msgs 0",
        );
        // A replacement of the target version, linked to the old record.
        check_apply(
            "0:1 1:1",
            step(&[1], &[], &[], d.clone()),
            "put [101:0:v2<1] del [] apps [v2 running] msgs 0",
        );
        // Draining from now, and removal.
        check_apply(
            "0:1 0:2 1:1",
            step(
                &[],
                &[1],
                &[3],
                Deployment {
                    done: 1,
                    ..d.clone()
                },
            ),
            "put [1:0:v1~7] del [3] apps [v2 running] msgs 1",
        );
        // A failed step that asks for a rollback: a new version (3) rolling back.
        let failed = Deployment {
            state: State::Failed,
            ..d.clone()
        };
        check_apply(
            "0:1 0:2",
            Step {
                rollback: true,
                ..step(&[], &[], &[], failed)
            },
            "put [] del [] apps [v3 running] msgs 2",
        );
    }
}
