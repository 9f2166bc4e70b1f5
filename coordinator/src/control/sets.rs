//! Desired sets: what each node must run, built from the committed records for its agent, and
//! weighed before a write is queued so that no set grows past what one message carries.
//!
//! Both happen on every write. Neither may cost a clone or an encoding of every spec on the node
//! per write, or creating apps slows down as the cluster grows (at 10,000 apps, weighing the
//! touched node's set was 39% of a create and building it another 16%). So:
//! - each app version's spec is shared (`Arc`) and weighed once, until a commit changes the app;
//! - each node's set is kept as commits change its records, so a publish copies it rather than
//!   passing every record of the cluster (rebuilt from the records when a commit changes an app,
//!   or something other than a commit changed the node);
//! - a write that changes no stored app is weighed by an upper bound, its node's kept set plus
//!   what the queued writes and it add there, and weighed in full over the node's records only
//!   when that bound is over the budget or no kept set stands for the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pmcluster_spec::AppSpec;
use uuid::Uuid;

use super::{ControlError, Inner, Result, is_quarantined, new_node_live};
use crate::limits;
use crate::model::{AppRecord, Assignment, Batch, DesiredSet, InstanceRecord, Persisted};

/// What the sets are built from besides the records, kept across writes.
#[derive(Default)]
pub(super) struct Sets {
    specs: Specs,
    /// Per node: its set as `state` has it, when it stands for the node's generation.
    nodes: BTreeMap<String, NodeSet>,
}

/// One node's assignments, with what each weighs, as of its node record's `generation`.
struct NodeSet {
    generation: u64,
    weight: usize,
    assignments: BTreeMap<Uuid, (Assignment, usize)>,
}

impl NodeSet {
    /// From every record of `state` on `node`.
    fn build(state: &Persisted, specs: &mut Specs, node: &str) -> NodeSet {
        let mut set = NodeSet {
            generation: state.nodes.get(node).map_or(0, |n| n.generation),
            weight: 0,
            assignments: BTreeMap::new(),
        };
        for i in state.instances.values() {
            if i.node.as_deref() == Some(node) {
                set.put(state, specs, i);
            }
        }
        set
    }

    fn put(&mut self, state: &Persisted, specs: &mut Specs, i: &InstanceRecord) {
        self.remove(&i.id);
        let shared = match specs.cached(&i.app, i.app_version) {
            Some(shared) => shared,
            None => match state.apps.get(&i.app) {
                Some(app) => specs.get(app, i.app_version),
                None => return,
            },
        };
        let assignment = Assignment {
            id: i.id,
            index: i.index,
            app_version: i.app_version,
            // An instance runs the spec of its own version: during a rollout the old ones
            // must keep their process (the agent restarts an instance whose spec differs).
            spec: Arc::clone(&shared.spec),
            port: i.port.map(u32::from).unwrap_or(0),
            run: !i.stopped,
            restart_epoch: i.restart_epoch,
        };
        self.weight += shared.weight;
        self.assignments.insert(i.id, (assignment, shared.weight));
    }

    fn remove(&mut self, id: &Uuid) {
        if let Some((_, weight)) = self.assignments.remove(id) {
            self.weight -= weight;
        }
    }
}

/// The specs of `state`'s apps by version, shared by every assignment that runs them, with the
/// bytes one such assignment weighs. Only `state` fills it, and a committed batch that puts or
/// deletes an app drops that app's entries (`forget`), so an entry is never an uncommitted spec.
#[derive(Default)]
struct Specs {
    by_app: BTreeMap<String, BTreeMap<u64, Shared>>,
}

#[derive(Clone)]
struct Shared {
    spec: Arc<AppSpec>,
    weight: usize,
}

impl Shared {
    fn of(spec: &AppSpec) -> Shared {
        Shared {
            weight: limits::assignment_bytes(limits::spec_bytes(spec)),
            spec: Arc::new(spec.clone()),
        }
    }
}

impl Specs {
    fn cached(&self, app: &str, version: u64) -> Option<&Shared> {
        self.by_app.get(app)?.get(&version)
    }

    fn get(&mut self, app: &AppRecord, version: u64) -> &Shared {
        self.by_app
            .entry(app.spec.name.clone())
            .or_default()
            .entry(version)
            .or_insert_with(|| Shared::of(app.spec_of(version)))
    }
}

impl Sets {
    /// Applies a committed `batch` to `state` and keeps the node sets with it.
    pub(super) fn apply(&mut self, state: &mut Persisted, batch: &Batch) {
        let changes_apps = !batch.del_apps.is_empty()
            || (batch.put_apps.iter()).any(|a| state.apps.contains_key(&a.spec.name));
        let apps = batch.put_apps.iter().map(|a| &a.spec.name);
        for name in apps.chain(&batch.del_apps) {
            self.specs.by_app.remove(name);
        }
        if changes_apps {
            // A changed spec reaches every record of its app: the sets are built afresh as
            // they are published.
            self.nodes.clear();
            state.apply(batch);
            return;
        }
        // Only a set that stands for its node's generation is kept up to date; only the nodes
        // this batch touches are looked at (it names each of them in `put_nodes`), not all.
        for node in &batch.put_nodes {
            let current = state.nodes.get(&node.name).map(|n| n.generation);
            if self
                .nodes
                .get(&node.name)
                .is_some_and(|s| Some(s.generation) != current)
            {
                self.nodes.remove(&node.name);
            }
        }
        let old_home = |id: &Uuid| state.instances.get(id).and_then(|r| r.node.clone());
        let gone: Vec<(String, Uuid)> = (batch.put_instances.iter().map(|r| &r.id))
            .chain(&batch.del_instances)
            .filter_map(|id| old_home(id).map(|n| (n, *id)))
            .collect();
        state.apply(batch);
        for (node, id) in gone {
            if let Some(set) = self.nodes.get_mut(&node) {
                set.remove(&id);
            }
        }
        // As `state` has each put record now: a batch may put a record it also deletes (a
        // refresh of one the plan retires), or put one twice.
        for id in batch.put_instances.iter().map(|r| r.id) {
            let Some(rec) = state.instances.get(&id) else {
                continue;
            };
            if let Some(set) = rec.node.as_deref().and_then(|n| self.nodes.get_mut(n)) {
                set.put(state, &mut self.specs, rec);
            }
        }
        // Every record change of this batch is in the sets now: they stand for the nodes'
        // new generations.
        for node in &batch.put_nodes {
            if let Some(set) = self.nodes.get_mut(&node.name) {
                set.generation = node.generation;
            }
        }
    }

    /// Forgets every node set: `state` changed without [`Sets::apply`].
    pub(super) fn forget(&mut self) {
        self.nodes.clear();
    }

    /// The set of `node` as `state` has it, built when none stands for its generation.
    fn of(&mut self, state: &Persisted, node: &str) -> &NodeSet {
        let generation = state.nodes.get(node).map_or(0, |n| n.generation);
        let stale = self
            .nodes
            .get(node)
            .is_none_or(|s| s.generation != generation);
        if stale {
            let set = NodeSet::build(state, &mut self.specs, node);
            self.nodes.insert(node.to_string(), set);
        } else if cfg!(debug_assertions) {
            // The kept set must be the one the records make: every test and the simulation
            // check it at each publish (a batch that refreshed and retired one record once
            // left it in its set).
            let built = NodeSet::build(state, &mut self.specs, node);
            let kept = &self.nodes[node];
            let entries = |s: &NodeSet| -> Vec<(Assignment, usize)> {
                s.assignments.values().cloned().collect()
            };
            debug_assert!(
                entries(kept) == entries(&built) && kept.weight == built.weight,
                "the kept desired set of {node} differs from its records"
            );
        }
        &self.nodes[node]
    }
}

/// What a queued write adds to the sets of the nodes it touches (an upper bound: a record it
/// replaces counts twice), for the writes queued behind it to weigh themselves against.
pub(super) struct Growth {
    /// False when the write changes a stored app, which reweighs records it does not name: the
    /// writes behind it are then weighed in full.
    additive: bool,
    per_node: BTreeMap<String, usize>,
}

/// Hands a node's desired set, as the committed records make it, to its session.
pub(super) fn publish(inner: &mut Inner, node: &str) {
    let Inner {
        state, sets, nodes, ..
    } = inner;
    let set = sets.of(state, node);
    let generation = set.generation;
    // By id, the order the wire always had.
    let assignments: Vec<Assignment> = set.assignments.values().map(|(a, _)| a.clone()).collect();
    let cluster_id = state.cluster_id.clone();
    let now = inner.now;
    let live = nodes
        .entry(node.to_string())
        .or_insert_with(|| new_node_live(now));
    if is_quarantined(live) {
        return;
    }
    // The quarantine check rests on this: no agent is sent a generation its record does not
    // count as sent.
    debug_assert!(
        live.session.is_none()
            || state
                .nodes
                .get(node)
                .is_none_or(|n| generation <= n.sent_up_to()),
        "node {node}: set generation {generation} above the generation recorded as sent"
    );
    let set = DesiredSet {
        generation,
        assignments,
        cluster_id,
        adopt: live.adopting,
    };
    live.desired.send_replace(Some(Arc::new(set)));
}

/// Refuses `batch` when it would make the desired set of a node in `touched` weigh more than
/// [`limits::DESIRED_SET_BUDGET`], on `inner.ahead` (which already holds the batch's command),
/// behind the queued writes. Returns what the batch adds, for the writes behind it.
pub(super) fn check(inner: &Inner, batch: &Batch, touched: &BTreeSet<String>) -> Result<Growth> {
    let growth = growth(inner, batch, touched);
    let queued = || inner.queue.iter().map(|q| &q.growth);
    let bounded = growth.additive
        && queued().all(|q| q.additive)
        && touched.iter().all(|node| {
            let Some(p) = inner.sets.nodes.get(node) else {
                return false;
            };
            let current = inner.state.nodes.get(node).map(|n| n.generation);
            let ahead = queued().map(|q| q.on(node)).sum::<usize>();
            current == Some(p.generation)
                && p.weight + ahead + growth.on(node) <= limits::DESIRED_SET_BUDGET
        });
    if !bounded {
        weigh(&inner.ahead, batch, touched)?;
    }
    Ok(growth)
}

impl Growth {
    /// A write that adds nothing (one queued only for its answer).
    pub(super) fn none() -> Growth {
        Growth {
            additive: true,
            per_node: BTreeMap::new(),
        }
    }

    fn on(&self, node: &str) -> usize {
        self.per_node.get(node).copied().unwrap_or(0)
    }
}

/// What `batch` adds to each touched node; `additive` only when it changes no app that `state`
/// or a queued write holds.
fn growth(inner: &Inner, batch: &Batch, touched: &BTreeSet<String>) -> Growth {
    let queued_apps: BTreeSet<&str> = inner
        .queue
        .iter()
        .flat_map(|q| q.batch.put_apps.iter().map(|a| a.spec.name.as_str()))
        .collect();
    let additive = batch.put_apps.iter().all(|a| {
        !inner.state.apps.contains_key(&a.spec.name) && !queued_apps.contains(a.spec.name.as_str())
    });
    let mut out = Growth {
        additive,
        per_node: BTreeMap::new(),
    };
    if !additive {
        return out;
    }
    let mut fresh: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for rec in &batch.put_instances {
        let Some(node) = rec.node.as_deref().filter(|n| touched.contains(*n)) else {
            continue;
        };
        // The batch's own apps are new (else it is not additive): weighed here. Any other app is
        // as `state` has it, whose weights the spec cache holds.
        let new_app = batch.put_apps.iter().rev().find(|a| a.spec.name == rec.app);
        let cached = || inner.sets.specs.cached(&rec.app, rec.app_version);
        let weight = match new_app.is_none().then(cached).flatten() {
            Some(shared) => shared.weight,
            None => *fresh
                .entry((rec.app.as_str(), rec.app_version))
                .or_insert_with(|| {
                    new_app
                        .or_else(|| inner.ahead.apps.get(&rec.app))
                        .map_or(0, |a| {
                            limits::assignment_bytes(limits::spec_bytes(a.spec_of(rec.app_version)))
                        })
                }),
        };
        *out.per_node.entry(node.to_string()).or_default() += weight;
    }
    out
}

/// The exact weighing: every record that would be on a touched node once `batch` is applied to
/// `state`. The error names `instances` (the count is what a user can change on the spot), the
/// node, the app weighing most there and that app's largest field.
pub(super) fn weigh(state: &Persisted, batch: &Batch, touched: &BTreeSet<String>) -> Result<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let put: BTreeMap<Uuid, &InstanceRecord> =
        batch.put_instances.iter().map(|r| (r.id, r)).collect();
    let deleted: BTreeSet<Uuid> = batch.del_instances.iter().copied().collect();
    let app_of = |name: &str| -> Option<&AppRecord> {
        if batch.del_apps.iter().any(|d| d == name) {
            return None;
        }
        batch
            .put_apps
            .iter()
            .rev()
            .find(|a| a.spec.name == name)
            .or_else(|| state.apps.get(name))
    };
    // Bytes of one assignment per (app, version): the spec dominates and is weighed once.
    let mut weights: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    // Per node: total bytes, and (bytes, instances) per app.
    type Weighed<'a> = (usize, BTreeMap<&'a str, (usize, u32)>);
    let mut per_node: BTreeMap<&str, Weighed<'_>> = BTreeMap::new();
    let kept = state
        .instances
        .values()
        .filter(|r| !put.contains_key(&r.id))
        .chain(put.values().copied())
        .filter(|r| !deleted.contains(&r.id));
    for rec in kept {
        let Some(node) = rec.node.as_deref().filter(|n| touched.contains(*n)) else {
            continue;
        };
        let Some(app) = app_of(&rec.app) else {
            continue;
        };
        let bytes = *weights
            .entry((rec.app.as_str(), rec.app_version))
            .or_insert_with(|| {
                limits::assignment_bytes(limits::spec_bytes(app.spec_of(rec.app_version)))
            });
        let entry = per_node.entry(node).or_default();
        entry.0 += bytes;
        let by_app = entry.1.entry(rec.app.as_str()).or_default();
        by_app.0 += bytes;
        by_app.1 += 1;
    }
    let Some((node, (total, apps))) = per_node
        .into_iter()
        .filter(|(_, (total, _))| *total > limits::DESIRED_SET_BUDGET)
        .max_by_key(|(_, (total, _))| *total)
    else {
        return Ok(());
    };
    let (app, (app_bytes, count)) = apps
        .into_iter()
        .max_by_key(|(_, (bytes, _))| *bytes)
        .unwrap_or_default();
    let field = app_of(app)
        .map(|a| limits::largest_field(&a.spec))
        .map(|(name, size)| format!("; its largest field is {name} ({})", limits::human(size)))
        .unwrap_or_default();
    Err(ControlError::InvalidArgument(format!(
        "instances: this change would make node {node:?}'s desired set {}, over the {} limit of \
         one node's set; {count} instances of {app:?} weigh {} there{field}. Lower the count, \
         spread the app with placement.max_per_node, or make its spec smaller",
        limits::human(total),
        limits::human(limits::DESIRED_SET_BUDGET),
        limits::human(app_bytes),
    )))
}
