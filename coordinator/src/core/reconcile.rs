//! The reconciler: compares desired apps with the instance records and the nodes, and says what
//! must change. Pure, deterministic and idempotent: a converged state gives an empty plan.
//!
//! Records of each app index fall in one bucket:
//! - *excess*: index at or above the desired count, or app deleted: removed;
//! - *missing*: no record for an index below the count: created and placed;
//! - *pending*: no node yet: placed when a node fits, else the app gets a pending reason;
//! - *lost*: on a node down for longer than the app's `reschedule_after`: replaced elsewhere
//!   (the old record is removed, so the returning node is told to stop it);
//! - *migrating*: on a draining node: a replacement is created on another node (one per draining
//!   node at a time; an instance no other node takes stays, with the placer's reason in
//!   [`Plan::unmovable`], and the next one moves instead), and the old record is removed once
//!   the replacement is online, or once the
//!   app's `update.healthy_deadline` has passed since the replacement was placed without it
//!   coming online (a crash-looping replacement does not hold a drain up for ever; Nomad's
//!   migrate deadline does the same). A replacement whose own node is lost goes, and the
//!   handoff starts again. A stopped instance, or one that exited with autorestart
//!   off (a finished job), has nothing to hand over: it moves at once, stopped, and is not run
//!   again;
//! - *outdated*: older app version or a port that no longer matches the range: refreshed;
//! - *conflicting*: more than one record for an index outside a migration: the best is kept.
//! - *unstartable*: its agent has failed to start its process, without a break, for the app's
//!   `reschedule_after` (a port held by a program outside pmcluster, a program or directory
//!   missing on that host): moved to another node where it has not failed yet, keeping what it
//!   replaces. Where no such node fits it stays and its agent keeps retrying.
//!
//! Excess records and a finished migration's old record *retire*: one that serves (online on an
//! up node) is first marked draining, so load balancers drop it, and removed once the app's
//! `update.shutdown_delay` has passed; anything else is removed at once.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_spec::app::Reschedule;
use uuid::Uuid;

use crate::core::placement::{Ask, NO_PORTS, NodeSlot, Placer, saturating_i64};
use crate::model::{AppRecord, InstanceRecord, RecordIndex};

mod plan;
use plan::PENDING;
pub use plan::{Create, Moved, Plan, Why, pending_reason};

/// Connection state of a node, as the reconciler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Down since this unix time (ms).
    Down(i64),
    /// Connected, but quarantined (its agent serves another cluster, or is ahead of the store):
    /// nothing new goes there, and its records are neither lost nor moved until it is adopted.
    Quarantined,
}

/// One registered node.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub link: Link,
    /// A drain was requested: no new instances, existing ones move off.
    pub drain: bool,
}

/// What the reconciler looks at.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub apps: &'a BTreeMap<String, AppRecord>,
    pub instances: &'a BTreeMap<Uuid, InstanceRecord>,
    /// Every registered node, sorted by name.
    pub nodes: &'a [NodeView<'a>],
    /// Instances their agents report online.
    pub online: &'a BTreeSet<Uuid>,
    /// Instances their agents report exited (for good when the app's autorestart is off).
    pub exited: &'a BTreeSet<Uuid>,
    pub now_ms: i64,
    /// Records whose agent reports that it cannot start their process, each since when (ms).
    pub unstartable: &'a BTreeMap<Uuid, i64>,
    /// `--max-instances-per-app`: holds a count that follows the nodes (`instances: max`).
    pub max_instances_per_app: u32,
    /// Plan only these apps (the ones a write changed); `None` plans every app. Every record
    /// still counts against its node's capacity and ports, so a scoped plan places as the full
    /// one would; it just leaves the other apps' needs for the next full pass.
    pub scope: Option<&'a BTreeSet<String>>,
    /// Sums over `instances` (each app's records, each node's use), when the caller keeps them:
    /// a scoped plan then reads its apps' records and the nodes' use without passing every
    /// record. `None` plans from the records alone, to the same plan.
    pub index: Option<&'a RecordIndex>,
}

/// Instance count of an app: its spec's, or with `instances: "max"` one per core of the nodes it
/// may use (down nodes included, drained ones not), capped by its port range.
pub fn desired_count(app: &AppRecord, nodes: &[NodeView<'_>]) -> u32 {
    if !app.spec.instances_max {
        return app.spec.instances;
    }
    let cores: u32 = nodes
        .iter()
        .filter(|n| !n.drain)
        .filter(|n| {
            app.spec
                .placement
                .constraints
                .iter()
                .all(|c| c.matches(n.labels))
        })
        .map(|n| n.cores)
        .sum();
    app.spec.port.capacity().map_or(cores, |cap| cores.min(cap))
}

/// The scheduler's view of every node, and its index by node name. With the state's index the
/// records' use is taken off here; without it, by [`Slots::count`] for each record.
fn slots<'a>(snap: &Snapshot<'a>) -> Slots<'a> {
    let slots: Vec<NodeSlot<'a>> = snap
        .nodes
        .iter()
        .map(|n| {
            let mut slot = NodeSlot {
                name: n.name,
                labels: n.labels,
                eligible: n.link == Link::Up && !n.drain,
                cpu_capacity: i64::from(n.cores) * 1000,
                memory_capacity: saturating_i64(i128::from(n.memory_bytes)),
                cpu_free: i64::from(n.cores) * 1000,
                memory_free: saturating_i64(i128::from(n.memory_bytes)),
                ports_held: &NO_PORTS,
                ports_used: BTreeSet::new(),
                total: 0,
            };
            if let Some(used) = snap.index.and_then(|ix| ix.node(n.name)) {
                slot.total = used.records;
                slot.reserve(used.cpu_millis, used.memory_bytes);
                slot.ports_held = &used.ports;
            }
            slot
        })
        .collect();
    let index: BTreeMap<&'a str, usize> =
        slots.iter().enumerate().map(|(i, s)| (s.name, i)).collect();
    // Only apps that reserve something are looked up per record: most reserve nothing, and
    // with thousands of apps the name lookups were most of a write's plan.
    let reserving: BTreeMap<&'a str, (i128, i128)> = match snap.index {
        Some(_) => BTreeMap::new(),
        None => snap
            .apps
            .iter()
            .map(|(name, app)| {
                let r = &app.spec.resources;
                (
                    name.as_str(),
                    (i128::from(r.cpu_millis), i128::from(r.memory_bytes)),
                )
            })
            .filter(|(_, r)| *r != (0, 0))
            .collect(),
    };
    Slots {
        slots,
        index,
        reserving,
    }
}

struct Slots<'a> {
    slots: Vec<NodeSlot<'a>>,
    index: BTreeMap<&'a str, usize>,
    reserving: BTreeMap<&'a str, (i128, i128)>,
}

impl Slots<'_> {
    /// Takes what `inst` holds off its node's free capacity.
    fn count(&mut self, inst: &InstanceRecord) {
        let Some(&i) = inst.node.as_deref().and_then(|n| self.index.get(n)) else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.total += 1;
        if !self.reserving.is_empty()
            && let Some((cpu, memory)) = self.reserving.get(inst.app.as_str())
        {
            slot.reserve(*cpu, *memory);
        }
        if let Some(p) = inst.port {
            slot.ports_used.insert(p);
        }
    }
}

fn ask(app: &AppRecord) -> Ask<'_> {
    let spec = &app.spec;
    Ask {
        strategy: spec.placement.strategy,
        constraints: &spec.placement.constraints,
        affinities: &spec.placement.affinities,
        max_per_node: spec.placement.max_per_node,
        cpu: spec.resources.cpu_millis,
        memory: spec.resources.memory_bytes,
        overcommit: spec.resources.overcommit,
    }
}

pub fn reconcile(snap: Snapshot<'_>) -> Plan {
    let mut plan = Plan::default();
    let nodes: BTreeMap<&str, &NodeView<'_>> = snap.nodes.iter().map(|n| (n.name, n)).collect();
    let in_scope = |app: &str| snap.scope.is_none_or(|s| s.contains(app));
    let mut by_app: BTreeMap<&str, BTreeMap<u32, Vec<&InstanceRecord>>> = BTreeMap::new();
    // Migrations still under way (replacement not online yet), per draining node: one at a
    // time each.
    let mut migrating_from: BTreeMap<&str, u32> = BTreeMap::new();
    let mut slots = slots(&snap);
    let mut migrating = |inst: &InstanceRecord| {
        if inst.replaces.is_some()
            && !snap.online.contains(&inst.id)
            && let Some(old) = inst.replaces.and_then(|id| snap.instances.get(&id))
            && let Some(n) = old.node.as_deref()
        {
            *migrating_from.entry(n).or_default() += 1;
        }
    };
    match (snap.index, snap.scope) {
        // The index has the nodes' use and the replacements; the scoped apps' records are
        // looked up by id, and no other record is read.
        (Some(ix), Some(scope)) => {
            ix.replacing()
                .iter()
                .filter_map(|id| snap.instances.get(id))
                .for_each(&mut migrating);
            for app in scope {
                let ids = ix.of_app(app).into_iter().flatten();
                for (index, id) in ids {
                    if let Some(inst) = snap.instances.get(id) {
                        let of_app = by_app.entry(inst.app.as_str()).or_default();
                        of_app.entry(*index).or_default().push(inst);
                    }
                }
            }
        }
        // One pass over the records for all three.
        (ix, _) => {
            for inst in snap.instances.values() {
                if ix.is_none() {
                    slots.count(inst);
                }
                // Replacements first: few records have one, and the online lookup costs more.
                migrating(inst);
                if in_scope(&inst.app) {
                    by_app
                        .entry(inst.app.as_str())
                        .or_default()
                        .entry(inst.index)
                        .or_default()
                        .push(inst);
                }
            }
        }
    }
    let Slots {
        mut slots,
        index: slot_of,
        ..
    } = slots;
    for (app, indices) in &by_app {
        if !snap.apps.contains_key(*app) {
            plan.remove.extend(indices.values().flatten().map(|i| i.id));
        }
    }
    let link = |node: Option<&str>| link_of(&nodes, node);

    // A scoped plan looks its few apps up instead of passing every app by.
    let apps: Vec<(&String, &AppRecord)> = match snap.scope {
        Some(scope) => scope
            .iter()
            .filter_map(|name| snap.apps.get_key_value(name))
            .collect(),
        None => snap.apps.iter().collect(),
    };
    for (name, app) in apps {
        let want = desired_count(app, snap.nodes).min(snap.max_instances_per_app);
        // Once per app, not per record: what a failed rollout left serving, if one did.
        let held_version = app.held_version();
        let empty = BTreeMap::new();
        let indices = by_app.get(name.as_str()).unwrap_or(&empty);
        // Requests for the placer, gathered first so it is built at most once per app.
        enum Need<'r> {
            Assign(&'r InstanceRecord),
            /// Lost (or stopped or finished on a draining node): replaced at once, pending
            /// where nothing fits.
            Replace(&'r InstanceRecord),
            /// On a draining node (the second field): a handoff, when the node has none under
            /// way and another node fits it.
            Migrate(&'r InstanceRecord, &'r str),
            Create(u32),
            /// Unstartable where it is.
            Move(&'r InstanceRecord),
        }
        let mut needs: Vec<Need<'_>> = Vec::new();
        for (&index, records) in indices {
            if index >= want {
                for r in records {
                    retire(r, app, &snap, &nodes, &mut plan);
                }
                continue;
            }
            // Draining records are on their way out and never the index's copy: outside a
            // rollout they finish retiring (a scale-down, then a scale-up before they were gone,
            // or a drain handoff's old side); in a rollout the deployment engine removes them.
            // Kept out of the pair and conflict rules, which would otherwise weigh them against
            // the copy that serves.
            let (draining, active): (Vec<&InstanceRecord>, Vec<&InstanceRecord>) =
                records.iter().partition(|r| r.draining_since.is_some());
            if !app.rolling() {
                for r in draining {
                    retire(r, app, &snap, &nodes, &mut plan);
                }
            }
            let kept = settle_index(&active, &snap, &nodes, app, &mut plan);
            let mut kept_moves = false;
            for r in &active {
                // The map first: it is nearly always empty, and `plan.remove` can be long.
                if !snap.unstartable.contains_key(&r.id)
                    || plan.remove.contains(&r.id)
                    || !unstartable_due(r, app, &snap, &nodes, &mut plan)
                {
                    continue;
                }
                needs.push(Need::Move(r));
                kept_moves |= kept.is_some_and(|k| k.id == r.id);
            }
            let Some(inst) = kept else {
                continue;
            };
            if kept_moves {
                continue;
            }
            let port = app.spec.port.port_for(index);
            // During a rollout, older versions are replaced by the engine, not refreshed here;
            // after a failed one, they are what serves.
            let outdated =
                inst.app_version != app.version && !app.rolling() && !app.held_by_failure();
            // A stopped one on the failed version (the rollout moved it there, as it had nothing
            // to hand over, or it was stopped after its replacement came up) runs nothing: it
            // goes back to what serves, or a start would bring the failed version up.
            let held = held_version.filter(|_| inst.stopped && inst.app_version == app.version);
            if let Some(v) = held {
                plan.refresh
                    .push((inst.id, v, port_at(app, Some(v), index)));
            } else if outdated || (inst.port != port && inst.app_version == app.version) {
                plan.refresh.push((inst.id, app.version, port));
            }
            let has_replacement = records.iter().any(|r| r.replaces == Some(inst.id));
            match (inst.node.as_deref(), link(inst.node.as_deref())) {
                (None, _) => needs.push(Need::Assign(inst)),
                (Some(_), None) => needs.push(Need::Replace(inst)),
                (Some(_), Some((Link::Down(since), drain))) => match lost_at(app, since, drain) {
                    Some(at) if at <= snap.now_ms => needs.push(Need::Replace(inst)),
                    Some(at) => plan.follow_up(at),
                    None => {}
                },
                // A stopped or finished instance has nothing to hand over: it just moves. One
                // that finished while its handoff was under way is left to the handoff, and a
                // rollout's copies to the deployment engine.
                (Some(_), Some((Link::Up, true)))
                    if hands_nothing_over(app, inst, snap.exited)
                        && (inst.stopped || (!has_replacement && !app.rolling())) =>
                {
                    needs.push(Need::Replace(inst));
                }
                // An outdated copy on a draining node during a rollout is the rollout's to
                // replace, within its surge budget: a drain handoff beside it would add copies
                // the update policy does not allow (found by the simulation, seed 265).
                (Some(_), Some((Link::Up, true)))
                    if app.deployment.as_ref().is_some_and(|d| {
                        d.state.active() && crate::core::rollout::outdated(d, inst)
                    }) => {}
                // Every candidate is asked for, not only the first: one the placer cannot put
                // anywhere must not hold the node's handoff slot while the others could move.
                // The placing below starts at most one handoff per node.
                (Some(n), Some((Link::Up, true))) if !has_replacement => {
                    needs.push(Need::Migrate(inst, n));
                }
                _ => {}
            }
        }
        for index in 0..want {
            if !indices.contains_key(&index) {
                needs.push(Need::Create(index));
            }
        }
        if needs.is_empty() {
            continue;
        }
        let counts: Vec<u32> = {
            let mut c = vec![0; slots.len()];
            // A copy that another record of its index replaces (a rollout's old side, a move's)
            // is on its way out, so the spread is judged without it. Counted, it tied its node
            // with one whose copy had already gone, and a rolling update of a spread app ended
            // uneven (2/2/2 became 3/2/1).
            let leaving = |inst: &InstanceRecord| {
                indices
                    .get(&inst.index)
                    .is_some_and(|rs| rs.iter().any(|r| r.replaces == Some(inst.id)))
            };
            for inst in indices.values().flatten().filter(|r| !leaving(r)) {
                if let Some(&i) = inst.node.as_deref().and_then(|n| slot_of.get(n)) {
                    c[i] += 1;
                }
            }
            c
        };
        let mut placer = Placer::new(&mut slots, counts, ask(app));
        let mut unplaced = 0u32;
        let mut reason = String::new();
        for need in needs {
            let index = match &need {
                Need::Assign(r) | Need::Replace(r) | Need::Migrate(r, _) | Need::Move(r) => r.index,
                Need::Create(i) => *i,
            };
            // The version the new record runs, and so its port: a failed rollout left standing
            // keeps what serves on the version before, whose port may differ.
            let version = match &need {
                Need::Create(_) => held_version,
                Need::Replace(r) | Need::Migrate(r, _) | Need::Move(r) => kept_version(app, r),
                Need::Assign(_) => None,
            };
            let port = port_at(app, version, index);
            if let Need::Move(r) = need {
                let mut avoid = r.avoid.clone();
                let from = r.node.clone().unwrap_or_default();
                if !avoid.contains(&from) {
                    avoid.push(from.clone());
                }
                let left_out: Vec<&str> = avoid.iter().map(String::as_str).collect();
                // Where nothing else fits, it stays: its agent keeps retrying, and the record
                // must not turn pending for a cause that may pass.
                if let Ok(to) = placer.place_avoiding(port, &left_out) {
                    plan.remove.push(r.id);
                    plan.moved.push(Moved {
                        app: name.clone(),
                        index,
                        old: r.id,
                        from,
                        to: to.to_string(),
                        why: Why::Unstartable,
                    });
                    plan.create.push(Create {
                        app: name.clone(),
                        index,
                        node: Some(to.to_string()),
                        port,
                        replaces: r.replaces,
                        stopped: false,
                        avoid,
                        version,
                    });
                }
                continue;
            }
            if let Need::Migrate(r, from) = need {
                // One handoff at a time per draining node: once one is under way (or started
                // above), the others only learn whether they could go, so that the node can say
                // which cannot and why.
                let busy = migrating_from.entry(from).or_default();
                let tried = if !reason.is_empty() && placer.exhausted() {
                    Err(reason.clone())
                } else if *busy > 0 {
                    placer.fits(port).map(|()| None)
                } else {
                    placer.place(port).map(Some)
                };
                match tried {
                    Ok(Some(to)) => {
                        *busy += 1;
                        plan.create.push(Create {
                            app: name.clone(),
                            index,
                            node: Some(to.to_string()),
                            port,
                            replaces: Some(r.id),
                            stopped: false,
                            avoid: Vec::new(),
                            version,
                        });
                    }
                    Ok(None) => {}
                    // It stays, still serving; not pending, since it runs.
                    Err(why) => {
                        plan.unmovable
                            .entry(name.clone())
                            .or_default()
                            .insert(r.id, why.clone());
                        reason = why;
                    }
                }
                continue;
            }
            // Once no node is left for the app, the rest of its needs fail for the same reason:
            // skip the placer (and its explanation) so that a huge pending count stays cheap.
            let picked = if !reason.is_empty() && placer.exhausted() {
                None
            } else {
                match placer.place(port) {
                    Ok(n) => Some(n.to_string()),
                    Err(why) => {
                        reason = why;
                        None
                    }
                }
            };
            if picked.is_none() {
                unplaced += 1;
            }
            let node = picked;
            match need {
                // Placed above: with the nodes it failed on left out, or one at a time per node.
                Need::Move(_) | Need::Migrate(..) => {}
                Need::Assign(r) => {
                    if let Some(n) = node {
                        plan.assign.push((r.id, n));
                    }
                }
                // After a failed rollout left standing, a new index runs what serves, not the
                // version that failed.
                Need::Create(index) => plan.create.push(Create {
                    app: name.clone(),
                    index,
                    node,
                    port,
                    replaces: None,
                    stopped: false,
                    avoid: Vec::new(),
                    version,
                }),
                // A lost instance is replaced even when nothing fits (the new record waits as
                // pending): its node is gone either way.
                Need::Replace(r) => {
                    plan.remove.push(r.id);
                    // A finished one says so first: that it is not run again matters more than
                    // where it was. A stopped or finished one on a draining node that is up
                    // just moves, as the drain said it would.
                    let why = match link(r.node.as_deref()) {
                        _ if finished(app, r, snap.exited) => Some(Why::Finished),
                        Some((Link::Down(since), _)) => Some(Why::NodeLost { since: Some(since) }),
                        None => Some(Why::NodeLost { since: None }),
                        Some((Link::Up | Link::Quarantined, _)) => None,
                    };
                    if let Some(why) = why {
                        plan.moved.push(Moved {
                            app: name.clone(),
                            index,
                            old: r.id,
                            from: r.node.clone().unwrap_or_default(),
                            to: node.clone().unwrap_or_default(),
                            why,
                        });
                    }
                    plan.create.push(Create {
                        app: name.clone(),
                        index,
                        node,
                        port,
                        replaces: None,
                        stopped: hands_nothing_over(app, r, snap.exited),
                        avoid: Vec::new(),
                        version,
                    });
                }
            }
        }
        if unplaced > 0 {
            plan.pending
                .insert(name.clone(), format!("{unplaced}{PENDING}{reason}"));
        }
    }
    plan.remove.sort();
    plan.remove.dedup();
    plan.drain.sort();
    plan.drain.dedup();
    plan
}

/// The version a replacement of `r` keeps: its own, while a failed rollout left it there
/// and its spec is kept (see [`Create::version`]).
fn kept_version(app: &AppRecord, r: &InstanceRecord) -> Option<u64> {
    (app.held_by_failure()
        && r.app_version != app.version
        && app.versions.contains_key(&r.app_version))
    .then_some(r.app_version)
}

fn port_of(app: &AppRecord, index: u32) -> Option<u16> {
    app.spec.port.port_for(index)
}

/// The port of `index` at `version` (`None`: the app's).
fn port_at(app: &AppRecord, version: Option<u64>, index: u32) -> Option<u16> {
    match version {
        Some(v) => app.spec_of(v).port.port_for(index),
        None => port_of(app, index),
    }
}

/// Whether `rec` has failed to start on its (up, not draining) node for the app's
/// `reschedule_after`; until then, asks to be woken when it will have.
fn unstartable_due(
    rec: &InstanceRecord,
    app: &AppRecord,
    snap: &Snapshot<'_>,
    nodes: &BTreeMap<&str, &NodeView<'_>>,
    plan: &mut Plan,
) -> bool {
    let Some(&since) = snap.unstartable.get(&rec.id) else {
        return false;
    };
    // A rollout's copies are the deployment engine's (its healthy deadline judges them); an
    // outdated copy gets its new version first, which may well start.
    // One a failed rollout left on the version before it is current too: it keeps that one.
    let kept = kept_version(app, rec);
    let current = (rec.app_version == app.version || kept.is_some())
        && rec.port == port_at(app, kept, rec.index);
    let up = matches!(link_of(nodes, rec.node.as_deref()), Some((Link::Up, false)));
    if rec.stopped || app.rolling() || !current || !up {
        return false;
    }
    let Reschedule::After(after) = app.spec.reschedule else {
        return false;
    };
    let due = since.saturating_add(after.as_millis() as i64);
    if due <= snap.now_ms {
        return true;
    }
    plan.follow_up(due);
    false
}

/// Takes a record out of service: a serving one drains for the app's shutdown_delay first.
fn retire(
    rec: &InstanceRecord,
    app: &AppRecord,
    snap: &Snapshot<'_>,
    nodes: &BTreeMap<&str, &NodeView<'_>>,
    plan: &mut Plan,
) {
    let delay = app.spec.update.shutdown_delay.as_millis() as i64;
    let serving = snap.online.contains(&rec.id)
        && !rec.stopped
        && matches!(link_of(nodes, rec.node.as_deref()), Some((Link::Up, _)));
    match rec.draining_since {
        Some(since) if snap.now_ms - since >= delay || !serving => plan.remove.push(rec.id),
        Some(since) => plan.follow_up(since + delay),
        None if serving && delay > 0 => {
            plan.drain.push(rec.id);
            plan.follow_up(snap.now_ms + delay);
        }
        None => plan.remove.push(rec.id),
    }
}

/// When the records of a node down since `since` are lost: at once on a draining node, after
/// the app's `reschedule_after` otherwise; `None` for an app that waits for its node.
fn lost_at(app: &AppRecord, since: i64, drain: bool) -> Option<i64> {
    match app.spec.reschedule {
        _ if drain => Some(since),
        Reschedule::Never => None,
        Reschedule::After(d) => Some(since.saturating_add(d.as_millis() as i64)),
    }
}

/// Whether `rec` ran to its end and stays so (exited with autorestart off, not stopped): moving
/// it must not run it again.
pub fn finished(app: &AppRecord, rec: &InstanceRecord, exited: &BTreeSet<Uuid>) -> bool {
    !app.spec.autorestart && !rec.stopped && exited.contains(&rec.id)
}

/// Whether `rec` is stopped or [`finished`]: it serves nothing and would never come online, so
/// it has nothing to hand over and just moves (a drain's, and a scale-down's rebalance).
pub fn hands_nothing_over(app: &AppRecord, rec: &InstanceRecord, exited: &BTreeSet<Uuid>) -> bool {
    rec.stopped || finished(app, rec, exited)
}

/// The move that ends one side of a migration pair: `gone` is the record left behind, and the
/// index runs where `stays` is.
fn pair_moved(app: &AppRecord, gone: &InstanceRecord, stays: &InstanceRecord, why: Why) -> Moved {
    Moved {
        app: app.spec.name.clone(),
        index: gone.index,
        old: gone.id,
        from: gone.node.clone().unwrap_or_default(),
        to: stays.node.clone().unwrap_or_default(),
        why,
    }
}

/// Link state and drain flag of a record's node; `None` for no node or an unknown one.
fn link_of(nodes: &BTreeMap<&str, &NodeView<'_>>, node: Option<&str>) -> Option<(Link, bool)> {
    node.and_then(|n| nodes.get(n)).map(|n| (n.link, n.drain))
}

/// Resolves the records of one index to the one that counts, removing what must go:
/// a finished migration's old record, a migration whose old side is gone, and conflicts.
fn settle_index<'r>(
    records: &[&'r InstanceRecord],
    snap: &Snapshot<'_>,
    nodes: &BTreeMap<&str, &NodeView<'_>>,
    app: &AppRecord,
    plan: &mut Plan,
) -> Option<&'r InstanceRecord> {
    let link = |node: Option<&str>| link_of(nodes, node);
    if let [only] = records {
        return Some(only);
    }
    // A migration pair: the replacement takes over once online, or when the old side is lost.
    if let [a, b] = records {
        let pair = if b.replaces == Some(a.id) {
            Some((*a, *b))
        } else if a.replaces == Some(b.id) {
            Some((*b, *a))
        } else {
            None
        };
        if let Some((old, new)) = pair {
            // A rollout's pair belongs to the deployment engine, which drains and removes the
            // old side itself; the new side is what this index is placed by.
            if app.rolling() {
                return Some(new);
            }
            // Lost: its node is down, or gone. A node that a coordinator just loaded is down
            // only from a time ahead (it is given the heartbeat timeout to reconnect), and its
            // copy serves meanwhile.
            let old_lost = match link(old.node.as_deref()) {
                Some((Link::Up, _)) => false,
                Some((Link::Down(since), _)) => since <= snap.now_ms,
                _ => true,
            };
            if snap.online.contains(&new.id) || old_lost {
                retire(old, app, snap, nodes, plan);
                return Some(new);
            }
            // A replacement whose node is lost (down past the app's `reschedule_after`, or
            // gone) will not take over: it goes, as a lost copy would, and the handoff starts
            // anew on the next pass while the old copy serves. Kept, it held a drain for ever.
            let new_lost = match link(new.node.as_deref()) {
                Some((Link::Down(since), drain)) => lost_at(app, since, drain),
                // A quarantined node's records wait for its adoption.
                Some((Link::Up | Link::Quarantined, _)) => None,
                None if new.node.is_some() => Some(snap.now_ms),
                None => None,
            };
            // The replacement goes and the old copy stays, an event says why.
            let drop_new = |plan: &mut Plan, why: Why| {
                plan.remove.push(new.id);
                plan.moved.push(pair_moved(app, new, old, why));
                Some(old)
            };
            match new_lost {
                Some(at) if at <= snap.now_ms => return drop_new(plan, Why::ReplacementLost),
                Some(at) => plan.follow_up(at),
                None => {}
            }
            // Only a drain gives up waiting: an undrained node's copy keeps serving meanwhile.
            // And only on a replacement whose node is up, so that its reports count: one whose
            // node is down (or not back yet after a coordinator restart, when `online` is
            // empty) may be online for all this coordinator knows.
            let replacement_up = matches!(link(new.node.as_deref()), Some((Link::Up, _)));
            let deadline = app.spec.update.healthy_deadline.as_millis() as i64;
            let due = new.created_ms.saturating_add(deadline);
            // A move off a node that does not drain (a scale-down's rebalance, a drain undone)
            // has a copy that serves where it is: one whose new copy does not come online in
            // time is given up instead, wherever that copy is (dropping it takes nothing that
            // serves).
            if let Some((Link::Up, false)) = link(old.node.as_deref()) {
                if due <= snap.now_ms {
                    return drop_new(plan, Why::Abandoned);
                }
                plan.follow_up(due);
                return Some(old);
            }
            if let (Some((Link::Up, true)), true) = (link(old.node.as_deref()), replacement_up) {
                if due > snap.now_ms {
                    plan.follow_up(due);
                } else {
                    let why = Why::Overdue {
                        replacement: new.id,
                    };
                    plan.moved.push(pair_moved(app, old, new, why));
                    retire(old, app, snap, nodes, plan);
                    return Some(new);
                }
            }
            return Some(old);
        }
    }
    // Conflicting records: keep one that runs on an up node, preferring an online one, then the
    // lowest id; remove the others.
    let score = |r: &InstanceRecord| {
        let up = matches!(link(r.node.as_deref()), Some((Link::Up, _)));
        (!snap.online.contains(&r.id), !up, r.node.is_none(), r.id)
    };
    let best = records.iter().min_by_key(|r| score(r))?;
    for r in records {
        if r.id != best.id {
            plan.remove.push(r.id);
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests;
