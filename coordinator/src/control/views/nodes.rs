//! The `nodes` view: each registered node's status, use and message (a quarantine's reason, or
//! what a drain waits on).

use std::collections::BTreeMap;

use crate::model::{InstanceRecord, NodeStatus, NodeView};

use pmcluster_spec::app::Reschedule;

use super::super::{
    ControlConfig, Inner, awaited, awaited_ms, instances_phrase, is_quarantined, is_ready,
    seconds_phrase,
};

/// Every registered node as `nodes` shows it.
pub(super) fn node_views(inner: &Inner, config: &ControlConfig) -> Vec<NodeView> {
    // (instances, cpu millis, memory bytes) reserved per node.
    let mut counts: BTreeMap<&str, (u32, u64, u64)> = BTreeMap::new();
    // Drain handoffs not done yet, by the node they move off: what a draining node waits on.
    let mut moving: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
    // By node: what the last plan found no other node for, with the placer's reason; and the
    // old copies of finished handoffs that still drain for their shutdown_delay.
    let mut stuck: BTreeMap<&str, Vec<(&str, u32, &str)>> = BTreeMap::new();
    let mut retiring: BTreeMap<&str, u32> = BTreeMap::new();
    for inst in inner.state.instances.values() {
        if let Some(n) = inst.node.as_deref() {
            if let Some(why) = inner
                .unmovable
                .get(&inst.app)
                .and_then(|ids| ids.get(&inst.id))
            {
                stuck
                    .entry(n)
                    .or_default()
                    .push((inst.app.as_str(), inst.index, why.as_str()));
            } else if inst.draining_since.is_some() {
                *retiring.entry(n).or_default() += 1;
            }
        }
        // A rollout's pairs are the deployment engine's, which has deadlines of its own.
        if let Some(old) = inst.replaces.and_then(|id| inner.state.instances.get(&id))
            && let Some(from) = old.node.as_deref()
            && !inner.observed.online.contains(&inst.id)
            && inner
                .state
                .apps
                .get(&inst.app)
                .is_some_and(|a| !a.rolling())
        {
            moving.entry(from).or_default().push(inst);
        }
        if let Some(n) = &inst.node {
            let c = counts.entry(n.as_str()).or_default();
            c.0 += 1;
            if let Some(app) = inner.state.apps.get(&inst.app) {
                // Saturating: the sums of requests can pass u64 (see `NodeUse`).
                c.1 = c.1.saturating_add(u64::from(app.spec.resources.cpu_millis));
                c.2 = c.2.saturating_add(app.spec.resources.memory_bytes);
            }
        }
    }
    inner
        .state
        .nodes
        .values()
        .map(|n| {
            let live = inner.nodes.get(&n.name);
            let ready = live.is_some_and(|l| is_ready(l, config, inner.now));
            // Not measured while it is down or has not reconnected: a trial read a down node's
            // last CPU and memory as current (its instances' figures are dropped the same way).
            let host = live
                .and_then(|l| l.host)
                .filter(|_| ready)
                .unwrap_or_default();
            let (mut instances, cpu, memory) =
                counts.get(n.name.as_str()).copied().unwrap_or_default();
            if let Some(l) = live.filter(|l| super::super::is_quarantined(l)) {
                // What it runs is not this cluster's, but it is there.
                let held = l.held.len() + l.held_unreadable;
                instances = instances.max(u32::try_from(held).unwrap_or(u32::MAX));
            }
            let quarantine = live
                .and_then(|l| l.session.as_ref())
                .and_then(|s| s.quarantine.clone())
                .filter(|_| ready);
            let status = match (ready, n.drain) {
                _ if quarantine.is_some() => NodeStatus::Quarantined,
                // A trial saw every node "down" after each failover, in `nodes` and in the
                // metrics, while `list` said they had not reconnected yet and nothing moved.
                (false, _) if live.is_some_and(|l| awaited(l, inner.now)) => {
                    NodeStatus::Reconnecting
                }
                (false, _) => NodeStatus::Down,
                (true, false) => NodeStatus::Ready,
                (true, true) if instances > 0 => NodeStatus::Draining,
                (true, true) => NodeStatus::Ineligible,
            };
            NodeView {
                name: n.name.clone(),
                status,
                labels: n.labels.clone(),
                cores: n.cores,
                memory_bytes: n.memory_bytes,
                instances,
                allocated_cpu_millis: cpu,
                allocated_memory_bytes: memory,
                down_since_ms: match live {
                    _ if ready => 0,
                    // Not connected since this coordinator loaded the store: since the load.
                    Some(l) if awaited(l, inner.now) => l
                        .down_since_ms
                        .unwrap_or(0)
                        .saturating_sub(awaited_ms(config)),
                    Some(l) => l.down_since_ms.unwrap_or(0),
                    None => 0,
                },
                last_heartbeat_ms: live.map(|l| l.last_heartbeat_ms).unwrap_or(0),
                hostname: n.hostname.clone(),
                agent_version: n.agent_version.clone(),
                cpu_percent: host.cpu_percent,
                memory_used_bytes: host.memory_used_bytes,
                address: n.address.clone(),
                message: match quarantine {
                    Some(why) => why,
                    None if status == NodeStatus::Draining => draining(
                        inner,
                        config,
                        instances,
                        moving.get(n.name.as_str()).map(Vec::as_slice),
                        stuck.get(n.name.as_str()).map(Vec::as_slice),
                        retiring.get(n.name.as_str()).copied().unwrap_or(0),
                    ),
                    None => String::new(),
                },
            }
        })
        .collect()
}

/// What a draining node waits on: the handoff under way, each instance no other node takes
/// (with the placer's reason; the drain moves the others past it), the old copies still
/// draining, and how many wait for their turn.
fn draining(
    inner: &Inner,
    config: &ControlConfig,
    instances: u32,
    moving: Option<&[&InstanceRecord]>,
    stuck: Option<&[(&str, u32, &str)]>,
    retiring: u32,
) -> String {
    let mut parts = Vec::new();
    let mut accounted = retiring;
    if let Some(m) = moving {
        parts.push(waiting_on(inner, config, m));
        // Each handoff's old copy is on this node.
        accounted += u32::try_from(m.len()).unwrap_or(u32::MAX);
    }
    if let Some(s) = stuck {
        // By app and index, as a user lists them (the records are kept by id).
        let mut s = s.to_vec();
        s.sort_unstable();
        parts.extend(
            s.iter()
                .map(|(app, index, why)| format!("{app}[{index}] cannot move: {why}")),
        );
        accounted = accounted.saturating_add(u32::try_from(s.len()).unwrap_or(u32::MAX));
    }
    if retiring > 0 {
        parts.push(format!(
            "{} moved, stopping after update.shutdown_delay",
            instances_phrase(retiring)
        ));
    }
    let waiting = instances.saturating_sub(accounted);
    if waiting > 0 {
        // Between two handoffs (the next pass starts one), or a rollout's copies, which the
        // rollout replaces. Not said to wait for a node: those that do are named above.
        parts.push(format!(
            "{} to move, one handoff at a time",
            instances_phrase(waiting)
        ));
    }
    parts.join("; ")
}

/// What a draining node's handoffs wait on: `moving web[1] to b: not online for 12.0s (the drain goes on
/// without it after update.healthy_deadline, 300.0s): crashed 3 times ...`; with the
/// replacement's node down or quarantined, what the reconciler then waits for instead.
fn waiting_on(inner: &Inner, config: &ControlConfig, moving: &[&InstanceRecord]) -> String {
    let seconds = seconds_phrase;
    let one = |r: &InstanceRecord| {
        let app = inner.state.apps.get(&r.app);
        let deadline = app.map_or(0, |a| a.spec.update.healthy_deadline.as_millis() as i64);
        let to = r.node.as_deref().unwrap_or("no node yet");
        let live = r.node.as_deref().and_then(|n| inner.nodes.get(n));
        let rule = match live {
            Some(l) if is_quarantined(l) => {
                format!("its node {to} is quarantined: the handoff waits for its adoption")
            }
            Some(l) if is_ready(l, config, inner.now) => format!(
                "the drain goes on without it after update.healthy_deadline, {}",
                seconds(deadline)
            ),
            _ => match app.map(|a| a.spec.reschedule) {
                Some(Reschedule::After(d)) => format!(
                    "its node {to} is down: the handoff starts again elsewhere once it has been \
                     down for reschedule_after, {}",
                    seconds(d.as_millis() as i64)
                ),
                _ => format!("its node {to} is down: the handoff waits for it to return"),
            },
        };
        let mut text = format!(
            "moving {}[{}] to {to}: not online for {} ({rule})",
            r.app,
            r.index,
            seconds(inner.now.saturating_sub(r.created_ms)),
        );
        if let Some(o) = inner.observed.get(&r.id).filter(|o| !o.message.is_empty()) {
            text.push_str(": ");
            text.push_str(&o.message);
        }
        text
    };
    moving.iter().map(|r| one(r)).collect::<Vec<_>>().join("; ")
}
