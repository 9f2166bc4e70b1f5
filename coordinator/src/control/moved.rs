//! What the events say of the instances a plan moves: one line per moved index, with where
//! from and why, and no placement event beside it for the same index; and of the old copies a
//! returning node's agent is then told to stop.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::Inner;
use super::write::EVENTS_PER_WRITE;
use crate::core::reconcile::{self, Plan, Why};
use crate::model::{Assignment, EventKind, Persisted};

/// One event of a move: (app, node, index, text). The node is where it moved from, the index
/// `None` for one event that speaks for many.
pub(super) type MovedEvent = (String, String, Option<u32>, String);

/// The events of `plan`'s moves, as of `now`. A node's loss of more than [`EVENTS_PER_WRITE`]
/// of one app's instances is one event for them, as placements are (a lost node that ran
/// thousands must not flood watchers and the event history).
pub(super) fn moved_events(inner: &Inner, plan: &Plan, now: i64) -> Vec<MovedEvent> {
    let mut lost_of_app: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &plan.moved {
        if matches!(m.why, Why::NodeLost { .. }) {
            *lost_of_app.entry(m.app.as_str()).or_default() += 1;
        }
    }
    let many = |app: &str| lost_of_app.get(app).is_some_and(|n| *n > EVENTS_PER_WRITE);
    let mut out = Vec::new();
    // Per app and lost node: (when it went down, placed, pending).
    let mut summed: BTreeMap<(&str, &str), (Option<i64>, usize, usize)> = BTreeMap::new();
    for m in &plan.moved {
        match m.why {
            Why::NodeLost { since } if many(&m.app) => {
                let sum = summed
                    .entry((m.app.as_str(), m.from.as_str()))
                    .or_insert((since, 0, 0));
                match m.to.is_empty() {
                    true => sum.2 += 1,
                    false => sum.1 += 1,
                }
            }
            _ => {
                let pending = reconcile::pending_reason(plan, &m.app);
                let text = moved_text(inner, m, pending, now);
                out.push((m.app.clone(), m.from.clone(), Some(m.index), text));
            }
        }
    }
    for ((app, from), (since, placed, pending)) in summed {
        let mut text = format!(
            "{app}: {} instances moved off {from} ({}): {placed} placed on other nodes, \
             {pending} pending",
            placed + pending,
            lost_phrase("down", since, now)
        );
        if let Some(why) = reconcile::pending_reason(plan, app).filter(|_| pending > 0) {
            text.push_str(": ");
            text.push_str(why);
        }
        out.push((app.to_string(), from.to_string(), None, text));
    }
    out
}

/// The (app, index) pairs whose move an event says already: their placement goes unsaid.
pub(super) fn said_by_moves(plan: &Plan) -> BTreeSet<(&str, u32)> {
    (plan.moved.iter())
        .filter(|m| m.why.places())
        .map(|m| (m.app.as_str(), m.index))
        .collect()
}

/// How a lost node is lost: `forgotten`, or `down` and how long. After the node's name that
/// reads `down for 31.0s`, in brackets after it `down 31.0s`: `down` is the words before the
/// time.
fn lost_phrase(down: &str, since: Option<i64>, now: i64) -> String {
    match since {
        Some(at) => format!("{down} {}", super::seconds_phrase(now.saturating_sub(at))),
        None => "forgotten".to_string(),
    }
}

/// What an event says of a record that moved or gave way, in a user's words. For one that could
/// not start: `web[1] moved from a to b: it could not start on a for 30s: port 4300 is already in
/// use on this host`, the agent's last word on it without its own retry schedule. `pending` is
/// the placer's reason that the app's instances wait, for a move that found no node.
fn moved_text(inner: &Inner, m: &reconcile::Moved, pending: Option<&str>, now: i64) -> String {
    let said = |id: &Uuid| {
        (inner.observed.get(id))
            .map(|o| o.reason().to_string())
            .unwrap_or_default()
    };
    let seconds = super::seconds_phrase;
    let to = if m.to.is_empty() {
        "no node yet (pending)"
    } else {
        m.to.as_str()
    };
    let (mut text, why) = match m.why {
        reconcile::Why::Unstartable => {
            let failing_ms =
                (inner.unstartable_since.get(&m.old)).map_or(0, |since| now.saturating_sub(*since));
            let text = format!(
                "{}[{}] moved from {} to {to}: it could not start on {} for {}",
                m.app,
                m.index,
                m.from,
                m.from,
                seconds(failing_ms)
            );
            (text, said(&m.old))
        }
        reconcile::Why::Finished => (
            format!(
                "{}[{}] moved from {} to {to} stopped: it had exited with autorestart off, so it \
                 is not run again (run it again with: pmcluster start {} --instance {})",
                m.app, m.index, m.from, m.app, m.index
            ),
            String::new(),
        ),
        reconcile::Why::Overdue { replacement } => {
            let deadline = (inner.ahead.apps.get(&m.app))
                .map_or(0, |a| a.spec.update.healthy_deadline.as_millis() as i64);
            let text = format!(
                "{}[{}] on draining node {} retired without a replacement online: the one on {to} \
                 was not online within update.healthy_deadline ({})",
                m.app,
                m.index,
                m.from,
                seconds(deadline)
            );
            (text, said(&replacement))
        }
        reconcile::Why::Abandoned => {
            let deadline = (inner.ahead.apps.get(&m.app))
                .map_or(0, |a| a.spec.update.healthy_deadline.as_millis() as i64);
            let text = format!(
                "{}[{}] stays on {}: its new copy on {} was not online within \
                 update.healthy_deadline ({}), so the move is given up",
                m.app,
                m.index,
                m.to,
                m.from,
                seconds(deadline)
            );
            (text, said(&m.old))
        }
        reconcile::Why::ReplacementLost => {
            let after =
                (inner.ahead.apps.get(&m.app)).map_or(String::new(), |a| match a.spec.reschedule {
                    pmcluster_spec::app::Reschedule::After(d) => {
                        format!(" for reschedule_after ({})", seconds(d.as_millis() as i64))
                    }
                    pmcluster_spec::app::Reschedule::Never => String::new(),
                });
            // A drain hands over again; a scale-down's move is not made again.
            let then = match inner.ahead.nodes.get(&m.to).is_some_and(|n| n.drain) {
                true => "the drain starts the handoff again",
                false => "the move is given up",
            };
            let text = format!(
                "{}[{}]: its new copy on {} was dropped, that node being down{after} or gone; the \
                 copy on {} serves on and {then}",
                m.app, m.index, m.from, m.to
            );
            (text, String::new())
        }
        reconcile::Why::NodeLost { since } => {
            (lost_text(inner, m, since, pending, now), String::new())
        }
    };
    if !why.is_empty() {
        text.push_str(": ");
        text.push_str(&why);
    }
    text
}

/// What the event of an instance moved off a lost node says: `web[2] moved from n2 to n1: node
/// n2 down for 31.0s`, or where no node takes it, `web[2] moved off n2 (down 31.0s): pending,
/// no ready node ...` with the placer's reason.
fn lost_text(
    inner: &Inner,
    m: &reconcile::Moved,
    since: Option<i64>,
    pending: Option<&str>,
    now: i64,
) -> String {
    let (app, index, from) = (&m.app, m.index, &m.from);
    if m.to.is_empty() {
        let text = format!(
            "{app}[{index}] moved off {from} ({}): pending",
            lost_phrase("down", since, now)
        );
        return match pending {
            Some(why) if !why.is_empty() => format!("{text}, {why}"),
            _ => text,
        };
    }
    // Moved stopped, as it was: said, or a user would wonder why it does not run.
    let stopped = match inner.ahead.instances.get(&m.old) {
        Some(r) if r.stopped => " stopped",
        _ => "",
    };
    format!(
        "{app}[{index}] moved from {from} to {}{stopped}: node {from} {}",
        m.to,
        lost_phrase("down for", since, now)
    )
}

/// The events of the copies a returning node's agent still runs whose records went while it
/// was away (replaced elsewhere, or removed by a scale-down or a delete): its first set leaves
/// them out, so its agent stops them. One per copy, or past [`EVENTS_PER_WRITE`] of an app, one
/// for them all. `forgotten`: it was away as a forgotten node. `told`: the copies an earlier
/// return of the node told of, which are not told of again (its agent had not applied the set
/// that stops them when its link dropped); left as the stale copies it holds now, so that a
/// copy it no longer runs is not remembered.
pub(super) fn stale_copies(
    state: &Persisted,
    node: &str,
    held: &[Assignment],
    forgotten: bool,
    told: &mut BTreeSet<Uuid>,
) -> Vec<(EventKind, String, Option<u32>, String)> {
    let away = match forgotten {
        true => format!("after {node} was forgotten"),
        false => format!("while {node} was down"),
    };
    let mut per_app: BTreeMap<&str, Vec<&Assignment>> = BTreeMap::new();
    let mut stale_now = BTreeSet::new();
    // A held copy its agent does not run (a user stopped it) has nothing to stop.
    for a in held.iter().filter(|a| a.run) {
        if !state.instances.contains_key(&a.id) {
            stale_now.insert(a.id);
            if !told.contains(&a.id) {
                per_app.entry(a.spec.name.as_str()).or_default().push(a);
            }
        }
    }
    *told = stale_now;
    let mut out = Vec::new();
    for (app, mut stale) in per_app {
        if stale.len() > EVENTS_PER_WRITE {
            let text = format!(
                "{app}: {} instances on {node} stopped: replaced or removed {away}",
                stale.len()
            );
            out.push((EventKind::InstanceMoved, app.to_string(), None, text));
            continue;
        }
        stale.sort_by_key(|a| (a.index, a.id));
        let records = state.app_instances(app);
        for a in stale {
            let index = a.index;
            // The copy that serves the index now: a draining one is on its way out.
            let now_at = (records.iter())
                .filter(|r| r.index == index)
                .min_by_key(|r| r.draining_since.is_some());
            let (kind, text) = match now_at.map(|r| r.node.as_deref()) {
                // Its replacement waited as pending, and took the node back as it returned.
                Some(Some(to)) if to == node => (
                    EventKind::InstanceMoved,
                    format!(
                        "{app}[{index}] on {node} stopped: replaced {away}, by a new copy there"
                    ),
                ),
                Some(Some(to)) => (
                    EventKind::InstanceMoved,
                    format!("{app}[{index}] on {node} stopped: replaced on {to} {away}"),
                ),
                Some(None) => (
                    EventKind::InstanceMoved,
                    format!(
                        "{app}[{index}] on {node} stopped: replaced {away} (the new copy is \
                         pending)"
                    ),
                ),
                None => (
                    EventKind::InstanceState,
                    format!("{app}[{index}] on {node} stopped: removed {away}"),
                ),
            };
            out.push((kind, app.to_string(), Some(index), text));
        }
    }
    out
}
