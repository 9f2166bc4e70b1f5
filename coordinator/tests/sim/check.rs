//! The invariants, checked after every step. Each returns a message naming what broke.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_coordinator::core::rollout;
use pmcluster_coordinator::model::{Assignment, DesiredSet, InstanceRecord, Persisted};
use uuid::Uuid;

use crate::world::{Link, World};

/// Everything the store held before a coordinator restart is what the new one loaded: every
/// acknowledged write (it returned only after its commit) survived.
pub fn acknowledged(before: &Persisted, after: &Persisted) -> Result<(), String> {
    for (name, app) in &before.apps {
        let Some(now) = after.apps.get(name) else {
            return Err(format!("after a coordinator restart app {name} is gone"));
        };
        if now != app {
            return Err(format!(
                "after a coordinator restart app {name} differs: {} instances v{} before, {} v{} \
                 after",
                app.spec.instances, app.version, now.spec.instances, now.version
            ));
        }
    }
    if before != after {
        return Err("after a coordinator restart the records differ from before".into());
    }
    Ok(())
}

/// A node's desired sets only move forward: never a lower generation, and never other processes
/// under the same generation (an agent that applied it would miss the change). The specs inside
/// may carry an older count or policy (a scale touches no record), which changes no process.
pub fn published(world: &mut World, node: &str, set: &DesiredSet) -> Result<(), String> {
    if let Some((generation, assignments)) = world.published.get(node) {
        if set.generation < *generation {
            return Err(format!(
                "{node} was sent generation {} after generation {generation}",
                set.generation
            ));
        }
        if set.generation == *generation && !crate::agent::same_sets(assignments, &set.assignments)
        {
            let show = |a: &[Assignment]| {
                a.iter()
                    .map(|a| {
                        let spec = (a.spec.name.clone(), a.spec.instances);
                        format!(
                            "{}:{spec:?}[{}] v{} e{} run={}",
                            crate::faults::short(&a.id.to_string()),
                            a.index,
                            a.app_version,
                            a.restart_epoch,
                            a.run
                        )
                    })
                    .collect::<Vec<_>>()
            };
            return Err(format!(
                "{node} was sent other assignments under the same generation {generation}: {:?} \
                 then {:?}",
                show(assignments),
                show(&set.assignments)
            ));
        }
    }
    world
        .published
        .insert(node.to_string(), (set.generation, set.assignments.clone()));
    Ok(())
}

/// Whether the records of `index` show a handoff: a draining record, or a record replacing
/// another one of the same index (a rollout, a drain or a rebalance move).
fn handoff(records: &[&InstanceRecord]) -> bool {
    let ids: BTreeSet<Uuid> = records.iter().map(|r| r.id).collect();
    records
        .iter()
        .any(|r| r.draining_since.is_some() || r.replaces.is_some_and(|o| ids.contains(&o)))
}

/// The per-step invariants.
pub fn step(world: &World) -> Result<(), String> {
    let state = world.control.persisted();
    let stored = pmcluster_coordinator::store::Store::load(world.store.as_ref())
        .map_err(|e| format!("store load: {e}"))?;
    if stored != state {
        return Err(
            "the coordinator's memory differs from its store (a change skipped the \
                    write path)"
                .into(),
        );
    }
    let mut by_index: BTreeMap<(&str, u32), Vec<&InstanceRecord>> = BTreeMap::new();
    for r in state.instances.values() {
        by_index
            .entry((r.app.as_str(), r.index))
            .or_default()
            .push(r);
    }

    // Never two online copies of an index outside a handoff, counting the agents that run what
    // the coordinator last told them (the others run an older set it cannot see).
    let mut online: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
    for node in &world.nodes {
        let in_sync = matches!(node.link, Link::Up { .. })
            && state
                .nodes
                .get(&node.agent.name)
                .is_some_and(|n| n.generation == node.agent.highest_generation);
        if !in_sync {
            continue;
        }
        for (id, p) in node.agent.online() {
            let app = p.assignment.spec.name.clone();
            online
                .entry((app, p.assignment.index))
                .or_default()
                .push(format!("{}@{}", crate::faults::short(id), node.agent.name));
        }
    }
    for ((app, index), copies) in &online {
        if copies.len() < 2 {
            continue;
        }
        let records = by_index
            .get(&(app.as_str(), *index))
            .cloned()
            .unwrap_or_default();
        if !handoff(&records) {
            return Err(format!(
                "{app}[{index}] is online {} times outside a handoff: {copies:?}",
                copies.len()
            ));
        }
    }

    // The current rollout never has more replacements under way than its update policy allows
    // (plus drain moves). Copies a superseded rollout started are not counted: superseding
    // leaves them in place, and a restart command can lift one to the new target.
    for (name, app) in &state.apps {
        let Some(d) = app.deployment.as_ref().filter(|d| d.state.active()) else {
            continue;
        };
        // A node drain moves one instance per draining node at a time, at the app's current
        // version, on top of what the rollout started: that copy is the drain's, not a surge.
        let draining_nodes = state.nodes.values().filter(|n| n.drain).count() as u32;
        let budget = app.spec.update.max_surge + app.spec.update.max_unavailable + draining_nodes;
        let surging = (0..app.spec.instances)
            .filter(|i| {
                let recs = by_index
                    .get(&(name.as_str(), *i))
                    .cloned()
                    .unwrap_or_default();
                recs.iter().any(|old| {
                    rollout::outdated(d, old)
                        && old.draining_since.is_none()
                        && old.node.is_some()
                        && recs.iter().any(|new| {
                            new.replaces == Some(old.id)
                                && !rollout::outdated(d, new)
                                && new.created_ms >= d.started_ms
                        })
                })
            })
            .count() as u32;
        if surging > budget {
            let online: BTreeSet<String> = world
                .nodes
                .iter()
                .flat_map(|n| n.agent.online().map(|(id, _)| id.clone()))
                .collect();
            return Err(format!(
                "{name}: {surging} indices surge at once, over max_surge + max_unavailable = \
                 {budget} ({:?}): {}",
                d,
                dump(&state, name, &online)
            ));
        }
    }

    placements(world)
}

/// Nothing newly placed on a drained or down node: records placed (or moved) since
/// `world.before` sit on nodes that are ready and not drained now. Checked after every tick and
/// command, so that a node lapsing later in a step does not count against an earlier placement.
pub fn placements(world: &World) -> Result<(), String> {
    let state = world.control.persisted();
    let ready: BTreeSet<String> = world.control.ready_node_names().into_iter().collect();
    for r in state.instances.values() {
        let Some(node) = r.node.as_deref() else {
            continue;
        };
        let was = world
            .before
            .instances
            .get(&r.id)
            .and_then(|b| b.node.as_deref());
        if was == Some(node) {
            continue;
        }
        let drained = state.nodes.get(node).is_none_or(|n| n.drain);
        if drained || !ready.contains(node) {
            return Err(format!(
                "{}[{}] ({}) newly placed on {node}, which is {}",
                r.app,
                r.index,
                crate::faults::short(&r.id.to_string()),
                if drained { "drained" } else { "not ready" }
            ));
        }
    }
    Ok(())
}

/// Whether the cluster has converged: the reconciler plans nothing, no rollout is under way,
/// every agent runs its latest set, and every index of every app has exactly one record, on a
/// ready node, online. Returns what is still missing.
pub fn converged(world: &World) -> Result<(), String> {
    let plan = world.control.dry_plan();
    if !plan.is_empty() {
        return Err(format!("plan not empty: {plan:?}"));
    }
    let state = world.control.persisted();
    let ready: BTreeSet<String> = world.control.ready_node_names().into_iter().collect();
    let mut agent_online: BTreeSet<String> = BTreeSet::new();
    for node in &world.nodes {
        let generation = state
            .nodes
            .get(&node.agent.name)
            .map_or(0, |n| n.generation);
        if !matches!(node.link, Link::Up { .. }) || node.agent.highest_generation != generation {
            return Err(format!(
                "{} has not applied its latest set ({} of {generation})",
                node.agent.name, node.agent.highest_generation
            ));
        }
        agent_online.extend(node.agent.online().map(|(id, _)| id.clone()));
    }
    for (name, app) in &state.apps {
        if app.deployment.as_ref().is_some_and(|d| d.state.active()) {
            return Err(format!(
                "{name}: a rollout is still under way: {:?}; records: {}",
                app.deployment,
                dump(&state, name, &agent_online)
            ));
        }
        let records = state.app_instances(name);
        if records.len() != app.spec.instances as usize {
            return Err(format!(
                "{name}: {} records for {} instances",
                records.len(),
                app.spec.instances
            ));
        }
        for r in records {
            let on_ready = r.node.as_ref().is_some_and(|n| ready.contains(n));
            if !on_ready || r.draining_since.is_some() || !agent_online.contains(&r.id.to_string())
            {
                return Err(format!(
                    "{name}[{}] is not online on a ready node (node {:?})",
                    r.index, r.node
                ));
            }
        }
    }
    Ok(())
}

/// The records of an app, one line each, for a failure message.
fn dump(state: &Persisted, app: &str, online: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for r in state.app_instances(app) {
        out.push_str(&format!(
            "\n  [{}] {} v{} e{} on {:?} online={} stopped={} draining={:?} replaces={:?}",
            r.index,
            crate::faults::short(&r.id.to_string()),
            r.app_version,
            r.restart_epoch,
            r.node,
            online.contains(&r.id.to_string()),
            r.stopped,
            r.draining_since,
            r.replaces
                .map(|x| crate::faults::short(&x.to_string()).to_string()),
        ));
    }
    out
}
