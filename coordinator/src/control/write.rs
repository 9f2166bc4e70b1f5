//! The one write path, and the only caller of [`Store::commit`]: command batch -> reconcile on
//! the result -> ids for new records -> generations for touched nodes -> queue -> one store
//! commit for every write queued -> apply in memory -> publish the touched nodes' desired sets.
//!
//! Group commit: a write plans on `Inner::ahead` (the state with every queued write applied),
//! queues its batch and waits. The first waiter that finds no commit running commits the whole
//! queue as one store transaction, with the state lock let go meanwhile, so reads, reports and
//! other writers' planning never wait on the disk, and one fsync serves many writes. Only then
//! does `Inner::state` change and do agents hear of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use uuid::Uuid;

use crate::core::quota;
use crate::core::reconcile::{self, Plan, Snapshot};
use crate::limits;
use crate::model::{Batch, InstanceObserved, InstanceRecord, InstanceState, NodeRecord, Persisted};

use super::moved::{self, MovedEvent};
use super::sets::{self, Growth, publish};
use super::{Control, ControlError, Guard, Inner, Leaving, Result, is_quarantined, node_views};
use crate::clock::Clock;
use crate::model::EventKind;
use crate::store::{Store, StoreError};

/// Placements of one app in one write that still get an event each; more get one event.
pub(super) const EVENTS_PER_WRITE: usize = 20;

/// A planned write waiting for the store, with what it does once committed.
pub(super) struct Queued {
    seq: u64,
    /// Shared with the committer, which writes it with the lock let go.
    pub(super) batch: Arc<Batch>,
    /// What it adds to the sets it touches.
    pub(super) growth: Growth,
    /// Nodes whose desired set the batch changes.
    touched: BTreeSet<String>,
    /// The events of the instances the plan moves.
    moved: Vec<MovedEvent>,
    /// (app, index, node) of each placement.
    placed: Vec<(String, u32, Option<String>)>,
    followup_at: Option<i64>,
    /// Planned for its own apps only (see `write_scope`).
    scoped: bool,
}

/// Commits `batch` and only then applies it to `state`, without a plan or the queue. For the two
/// writes that must not reconcile: the cluster id of a new store (there is no `Control` yet),
/// and a registering node's record and rename (the node has no session yet, so a reconcile would
/// take its records for lost; attach reconciles through [`Control::write`] once the session is
/// in place, and commits here only after [`Control::quiesce`]).
pub(super) fn commit(store: &dyn Store, state: &mut Persisted, batch: &Batch) -> Result<()> {
    store.commit(batch)?;
    state.apply(batch);
    Ok(())
}

impl Control {
    /// Applies a command's batch plus whatever the reconciler then wants, as one commit (shared
    /// with the writes queued beside it). Returns once the store has it and `inner.state` shows
    /// it; the lock is let go while waiting, so the caller re-reads what it needs afterwards.
    pub(super) fn write(&self, inner: &mut Guard<'_>, mut batch: Batch) -> Result<()> {
        // A panic below (a bug in planning) must not leave `ahead` holding a write that was
        // never queued: every later plan would build on it.
        let guard = RewindOnPanic(inner);
        let inner: &mut Guard<'_> = guard.0;
        let now = self.now();
        quota::check_caps(&self.config.caps, &inner.ahead.apps, &batch)
            .map_err(ControlError::ResourceExhausted)?;
        for app in &batch.put_apps {
            let stored = inner.ahead.apps.get(&app.spec.name).map(|a| &a.spec);
            if stored != Some(&app.spec) {
                limits::check_spec(&app.spec).map_err(ControlError::InvalidArgument)?;
            }
        }
        if batch.is_empty() && !inner.reconcile_due && inner.followup_at.is_none_or(|at| now < at) {
            return self.after_queued(inner);
        }
        // Nodes whose desired set changes: old and new homes of every touched record. The old
        // homes of the command's records are read before `ahead` takes the command.
        let mut touched = BTreeSet::new();
        old_homes(
            &inner.ahead,
            &batch.put_instances,
            &batch.del_instances,
            &mut touched,
        );
        let (command_puts, command_dels) = (batch.put_instances.len(), batch.del_instances.len());
        // The plan sees the command applied: `ahead` takes it in place (a failure below rewinds).
        let applied = !batch.is_empty();
        // A write that changes apps plans those apps only: the other apps' needs are as the last
        // plan left them, and the confirming pass after the commit plans everything. Node changes
        // (a drain, a rename, an adoption) and the tick's pass plan everything.
        let scope = applied.then(|| write_scope(&inner.ahead, &batch)).flatten();
        if applied {
            inner.ahead.apply(&batch);
        }
        let plan = plan_for(inner, &inner.ahead, &self.config, now, scope.as_ref());
        let followup_at = match scope {
            Some(_) => min_time(inner.followup_at, plan.followup_at),
            None => plan.followup_at,
        };
        // A scoped plan speaks for its apps only: the others keep what the last plan said.
        let (pending, unmovable) = match &scope {
            Some(apps) => {
                let mut pending = inner.pending.clone();
                pending.retain(|app, _| !apps.contains(app));
                pending.extend(plan.pending.clone());
                let mut unmovable = inner.unmovable.clone();
                unmovable.retain(|app, _| !apps.contains(app));
                unmovable.extend(plan.unmovable.clone());
                (pending, unmovable)
            }
            None => (plan.pending.clone(), plan.unmovable.clone()),
        };
        let mut placed = materialize(&inner.ahead, &plan, &mut batch, now, self.clock.as_ref());
        // One line per move: where it went is in the move's event.
        let said = moved::said_by_moves(&plan);
        if !said.is_empty() {
            placed.retain(|(app, index, _)| !said.contains(&(app.as_str(), *index)));
        }
        let moved = moved::moved_events(inner, &plan, now);
        if batch.is_empty() {
            inner.pending = pending;
            inner.unmovable = unmovable;
            inner.reconcile_due = false;
            inner.followup_at = followup_at;
            return self.after_queued(inner);
        }
        // The plan's own records: `ahead` does not have them yet, so it still holds their homes.
        old_homes(
            &inner.ahead,
            &batch.put_instances[command_puts..],
            &batch.del_instances[command_dels..],
            &mut touched,
        );
        for inst in &batch.put_instances {
            if let Some(n) = &inst.node {
                touched.insert(n.clone());
            }
        }
        // App spec changes reach agents through refreshed records, already counted above.
        // An adoption raises the generation above what its agent applied.
        let mut generation = inner.ahead.generation.max(batch.generation.unwrap_or(0));
        for name in &touched {
            if let Some(node) = inner.ahead.nodes.get(name) {
                generation += 1;
                // Whether the set goes out: an agent is attached and not quarantined, or it is
                // being adopted (this write is the adoption, or lands with or after it).
                let sent = inner.nodes.get(name).is_some_and(|l| {
                    l.session.is_some()
                        && (!is_quarantined(l) || inner.being_adopted.contains(name))
                });
                batch.put_nodes.retain(|n| &n.name != name);
                batch.put_nodes.push(NodeRecord {
                    generation,
                    sent_generation: Some(if sent { generation } else { node.sent_up_to() }),
                    ..node.clone()
                });
            }
        }
        if generation != inner.ahead.generation {
            batch.generation = Some(generation);
        }
        // Before anything is queued: a set its agent cannot decode would take the node, and
        // every app on it, offline. A refused write changes nothing.
        let growth = match sets::check(inner, &batch, &touched) {
            Ok(growth) => growth,
            Err(e) => {
                if applied {
                    rewind(inner);
                }
                return Err(e);
            }
        };
        inner.ahead.apply(&batch);
        inner.pending = pending;
        inner.unmovable = unmovable;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.queue.push_back(Queued {
            seq,
            batch: Arc::new(batch),
            growth,
            touched,
            moved,
            placed,
            followup_at,
            scoped: scope.is_some(),
        });
        self.settle(inner, seq)
    }

    /// The answer of a write with nothing to commit. It found nothing to do on `ahead`, so it
    /// holds only if the writes queued before it land: when any are queued or committing, it
    /// queues an empty write behind them and shares their outcome (a refused group refuses it
    /// too), rather than report success for a state that may never be stored.
    pub(super) fn after_queued(&self, inner: &mut Guard<'_>) -> Result<()> {
        if inner.queue.is_empty() && !inner.committing {
            return Ok(());
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.queue.push_back(Queued {
            seq,
            batch: Arc::new(Batch::default()),
            growth: Growth::none(),
            touched: BTreeSet::new(),
            moved: Vec::new(),
            placed: Vec::new(),
            followup_at: None,
            scoped: true,
        });
        self.settle(inner, seq)
    }

    /// Waits until the write `seq` is committed or refused, committing the queue itself when no
    /// other writer is.
    fn settle(&self, inner: &mut Guard<'_>, seq: u64) -> Result<()> {
        loop {
            if let Some(outcome) = inner.outcomes.remove(&seq) {
                return outcome.map_err(ControlError::from);
            }
            if inner.committing || inner.queue.is_empty() {
                self.settled.wait(inner);
            } else {
                self.commit_queue(inner);
            }
        }
    }

    /// Waits until no write is queued or committing. The lock is then held with `state` equal
    /// to `ahead`, for a write that must not interleave with queued ones (a node's registration
    /// commits its record directly).
    pub(super) fn quiesce(&self, inner: &mut Guard<'_>) {
        while inner.committing || !inner.queue.is_empty() {
            if inner.committing {
                self.settled.wait(inner);
            } else {
                self.commit_queue(inner);
            }
        }
    }

    /// Commits every queued write as one store transaction, with the lock let go, then applies
    /// the committed ones to `state` in order and wakes their writers.
    fn commit_queue(&self, inner: &mut Guard<'_>) {
        let group = inner.queue.len();
        let merged = match inner.queue.front() {
            Some(q) if group == 1 => Arc::clone(&q.batch),
            _ => {
                let batches: Vec<&Batch> = inner.queue.iter().map(|q| q.batch.as_ref()).collect();
                Arc::new(Batch::merged(&batches))
            }
        };
        inner.committing = true;
        // Only empty writes queued behind a group that landed: nothing to store.
        let stored = if merged.is_empty() {
            Ok(())
        } else {
            parking_lot::MutexGuard::unlocked(inner, || self.commit_caught(&merged))
        };
        let (committed, error) = match stored {
            Ok(()) => (group, None),
            // More than one etcd transaction holds: the writes go one by one instead. Only
            // this committer takes from the queue, so its head is still the group.
            Err(StoreError::TooLarge { .. }) if group > 1 => {
                let mut done = 0;
                let mut error = None;
                while done < group {
                    let Some(batch) = inner.queue.get(done).map(|q| Arc::clone(&q.batch)) else {
                        break;
                    };
                    match parking_lot::MutexGuard::unlocked(inner, || self.commit_caught(&batch)) {
                        Ok(()) => done += 1,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                (done, error)
            }
            Err(e) => (0, Some(e)),
        };
        inner.committing = false;
        // Each touched node's set is recomputed once for the group, after all of it is applied.
        let mut touched = BTreeSet::new();
        for _ in 0..committed {
            if let Some(q) = inner.queue.pop_front() {
                self.apply_committed(inner, q, &mut touched);
            }
        }
        for name in &touched {
            publish(inner, name);
        }
        if let Some(error) = error {
            // Every write still queued was planned on the refused one: refused too, each with
            // the same error.
            while let Some(q) = inner.queue.pop_front() {
                inner.outcomes.insert(q.seq, Err(copy_error(&error)));
            }
            inner.ahead = inner.state.clone();
        }
        self.settled.notify_all();
    }

    /// [`Store::commit`], with a panic turned into a refusal. A store that panics mid-commit
    /// would otherwise leave `committing` set, and every later writer waiting for a commit that
    /// never ends; refused, the group fails and the next write tries the store afresh.
    fn commit_caught(&self, batch: &Batch) -> std::result::Result<(), StoreError> {
        let commit = std::panic::AssertUnwindSafe(|| self.store.commit(batch));
        std::panic::catch_unwind(commit).unwrap_or_else(|_| {
            tracing::error!("the store panicked during a commit; the writes in it are refused");
            Err(StoreError::Io(
                "the store failed during this commit (see the coordinator's log); nothing in it \
                 is applied, retry the change"
                    .into(),
            ))
        })
    }

    /// What a committed write does in memory: the records, the agents' sets, the events.
    fn apply_committed(&self, inner: &mut Inner, q: Queued, publish_to: &mut BTreeSet<String>) {
        let Queued {
            seq,
            batch,
            growth: _,
            touched,
            moved,
            placed,
            followup_at,
            scoped,
        } = q;
        if batch.is_empty() {
            // An empty write queued behind others (`after_queued`): only its answer.
            inner.outcomes.insert(seq, Ok(()));
            return;
        }
        let leaving = leaving_processes(inner, &batch.del_instances);
        let Inner { state, sets, .. } = inner;
        sets.apply(state, &batch);
        if !batch.put_tokens.is_empty() || !batch.del_tokens.is_empty() {
            *self.tokens.write() = state.tokens.clone();
        }
        // A plan applied plans nothing more for its apps (a property test holds the reconciler
        // to it). A scoped write left the other apps as they were; what it frees matters to them
        // only where instances wait for room (pending, or a drain's handoff). So one full pass
        // confirms after a write planned on everything, one that removed records, or while
        // instances are pending or cannot leave a draining node.
        let freed = !batch.del_instances.is_empty() || !batch.del_apps.is_empty();
        if !scoped || freed || !inner.pending.is_empty() || !inner.unmovable.is_empty() {
            inner.reconcile_due = true;
        }
        inner.tick_due = true;
        self.changed.notify_one();
        inner.followup_at = followup_at;
        for (node, id, mut process) in leaving {
            process.until = inner.state.nodes.get(&node).map_or(0, |n| n.generation);
            inner.leaving.entry(node).or_default().insert(id, process);
        }
        for id in &batch.del_instances {
            inner.observed.remove(id);
            inner.online_since.remove(id);
            inner.unstartable_since.remove(id);
            inner.proven.remove(id);
        }
        // A changed record (stopped, refreshed, placed) may read its next status otherwise.
        for r in &batch.put_instances {
            inner.observed.unsettle(&r.id);
        }
        publish_to.extend(touched);
        for (app, from, index, text) in moved {
            self.emit(EventKind::InstanceMoved, &app, &from, index, text);
        }
        // One event per placement, unless a write places many of an app: then one for all of
        // them, so that a scale to 100,000 does not flood watchers and the event history.
        let mut per_app: BTreeMap<&str, Vec<(u32, Option<&str>)>> = BTreeMap::new();
        for (app, index, node) in &placed {
            per_app
                .entry(app.as_str())
                .or_default()
                .push((*index, node.as_deref()));
        }
        for (app, placements) in per_app {
            if placements.len() > EVENTS_PER_WRITE {
                let on_nodes = placements.iter().filter(|p| p.1.is_some()).count();
                let pending = placements.len() - on_nodes;
                self.emit(
                    EventKind::InstancePlaced,
                    app,
                    "",
                    None,
                    format!("{app}: {on_nodes} instances placed, {pending} pending"),
                );
                continue;
            }
            for (index, node) in placements {
                self.emit(
                    EventKind::InstancePlaced,
                    app,
                    node.unwrap_or(""),
                    Some(index),
                    match node {
                        Some(n) => format!("{app}[{index}] placed on {n}"),
                        None => format!("{app}[{index}] pending: no ready node"),
                    },
                );
            }
        }
        inner.outcomes.insert(seq, Ok(()));
    }
}

/// Of the records `removed` is about to remove, those whose process their node's agent, still
/// connected, may run: they stay listed (see [`Leaving`]) until it has ended. That includes one
/// its agent has not reported running yet (just started): its next reports may. Only a stopped
/// record that no report holds running is left out, as its agent starts nothing for it.
fn leaving_processes(inner: &Inner, removed: &[Uuid]) -> Vec<(String, Uuid, Leaving)> {
    removed
        .iter()
        .filter_map(|id| {
            let rec = inner.state.instances.get(id)?;
            let node = rec.node.as_ref()?;
            // Only a connected agent that takes desired sets stops the process and reports it.
            let live = inner.nodes.get(node)?;
            if live.session.is_none() || is_quarantined(live) {
                return None;
            }
            let running = inner.observed.get(id).filter(|o| Leaving::running(o));
            if running.is_none() && rec.stopped {
                return None;
            }
            let status = running.cloned().unwrap_or_else(|| InstanceObserved {
                id: *id,
                state: InstanceState::Stopping,
                ..InstanceObserved::default()
            });
            let process = Leaving {
                app: rec.app.clone(),
                index: rec.index,
                app_version: rec.app_version,
                seen_pid: status.pid,
                status,
                // Set once the write's generations are applied.
                until: 0,
            };
            Some((node.clone(), *id, process))
        })
        .collect()
}

/// The apps a command's batch changes, or `None` when it changes nodes (which every app's plan
/// reads).
pub(super) fn write_scope(state: &Persisted, batch: &Batch) -> Option<BTreeSet<String>> {
    // A node record that changes only in its restart notes (a restart while its agent is away)
    // changes no placement.
    let notes_only = |n: &NodeRecord| {
        state.nodes.get(&n.name).is_some_and(|old| {
            let bare = |r: &NodeRecord| NodeRecord {
                restarts_unseen: BTreeMap::new(),
                ..r.clone()
            };
            bare(old) == bare(n)
        })
    };
    if !batch.put_nodes.iter().all(notes_only)
        || !batch.del_nodes.is_empty()
        || batch.generation.is_some()
    {
        return None;
    }
    let apps = batch.put_apps.iter().map(|a| &a.spec.name);
    let put = batch.put_instances.iter().map(|i| &i.app);
    let deleted =
        (batch.del_instances.iter()).filter_map(|id| state.instances.get(id).map(|i| &i.app));
    Some(
        apps.chain(&batch.del_apps)
            .chain(put)
            .chain(deleted)
            .cloned()
            .collect(),
    )
}

/// The earlier of two optional times.
fn min_time(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Adds the nodes that `puts` and `dels` take instances from, as `state` has them.
fn old_homes(
    state: &Persisted,
    puts: &[InstanceRecord],
    dels: &[Uuid],
    touched: &mut BTreeSet<String>,
) {
    let ids = puts.iter().map(|r| &r.id).chain(dels);
    for id in ids {
        if let Some(old) = state.instances.get(id).and_then(|i| i.node.clone()) {
            touched.insert(old);
        }
    }
}

/// The same refusal again, for each writer of a refused group. The variants a client acts on
/// keep their kind (`NotLeader`, `Fenced` and `Unavailable` send it to the leader; `TooLarge`
/// says to write less); the rest keep their words.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotLeader => StoreError::NotLeader,
        StoreError::Fenced => StoreError::Fenced,
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::TooLarge {
            ops,
            bytes,
            max_ops,
            max_bytes,
        } => StoreError::TooLarge {
            ops: *ops,
            bytes: *bytes,
            max_ops: *max_ops,
            max_bytes: *max_bytes,
        },
        other => StoreError::Io(other.to_string().into()),
    }
}

/// Rewinds `ahead` when dropped during a panic. A rewind is always right: `ahead` is the state
/// with the queued writes applied.
struct RewindOnPanic<'a, 'b>(&'a mut Guard<'b>);

impl Drop for RewindOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "a write failed while planning; the coordinator's plan is rewound to the store's state"
            );
            rewind(self.0);
        }
    }
}

/// `ahead` as the queue leaves it, after a write refused once it had applied its command.
fn rewind(inner: &mut Inner) {
    let mut ahead = inner.state.clone();
    for q in &inner.queue {
        ahead.apply(&q.batch);
    }
    inner.ahead = ahead;
}

/// Turns a plan into records in `batch` (minting ids). Returns (app, index, node) of placements.
pub(super) fn materialize(
    state: &Persisted,
    plan: &Plan,
    batch: &mut Batch,
    now_ms: i64,
    clock: &dyn Clock,
) -> Vec<(String, u32, Option<String>)> {
    let mut placed = Vec::new();
    let put: BTreeMap<Uuid, usize> = batch
        .put_instances
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    let edit = |batch: &mut Batch, id: Uuid, f: &dyn Fn(&mut InstanceRecord)| {
        if let Some(&i) = put.get(&id) {
            if let Some(rec) = batch.put_instances.get_mut(i) {
                f(rec);
            }
        } else if let Some(rec) = state.instances.get(&id) {
            let mut rec = rec.clone();
            f(&mut rec);
            batch.put_instances.push(rec);
        }
    };
    for (id, node) in &plan.assign {
        // Placed now: a rollout's healthy deadline counts from here, not from when it was pending.
        edit(batch, *id, &|r| {
            r.node = Some(node.clone());
            r.created_ms = now_ms;
        });
        if let Some(r) = state.instances.get(id) {
            placed.push((r.app.clone(), r.index, Some(node.clone())));
        }
    }
    for (id, version, port) in &plan.refresh {
        edit(batch, *id, &|r| {
            r.app_version = *version;
            r.port = *port;
        });
    }
    for c in &plan.create {
        let version = c
            .version
            .or_else(|| state.apps.get(&c.app).map(|a| a.version))
            .unwrap_or(1);
        batch.put_instances.push(InstanceRecord {
            id: clock.new_id(),
            app: c.app.clone(),
            index: c.index,
            node: c.node.clone(),
            port: c.port,
            app_version: version,
            restart_epoch: 0,
            stopped: c.stopped,
            replaces: c.replaces,
            draining_since: None,
            created_ms: now_ms,
            avoid: c.avoid.clone(),
            disabled: false,
        });
        placed.push((c.app.clone(), c.index, c.node.clone()));
    }
    for id in &plan.drain {
        edit(batch, *id, &|r| r.draining_since = Some(now_ms));
    }
    batch.del_instances.extend(plan.remove.iter().copied());
    placed
}

/// The reconciler's plan for `view` (the stored state, or it with a batch applied), with what
/// the agents report online and the nodes' link state as `inner` sees them now.
pub(super) fn plan_for(
    inner: &Inner,
    view: &Persisted,
    config: &super::ControlConfig,
    now: i64,
    scope: Option<&BTreeSet<String>>,
) -> Plan {
    let nodes = node_views(inner, view, config);
    reconcile::reconcile(Snapshot {
        apps: &view.apps,
        instances: &view.instances,
        nodes: &nodes,
        online: &inner.observed.online,
        exited: &inner.observed.exited,
        now_ms: now,
        unstartable: &inner.unstartable_since,
        max_instances_per_app: config.caps.max_instances_per_app,
        scope,
        index: view.index(),
    })
}
