//! The desired-set diff: given what the agent supervises and a new desired set from the
//! coordinator, the actions that make the first match the second.
//!
//! Pure and deterministic (sorted maps, actions ordered by instance id): no tokio, no clocks, no
//! I/O. The supervisor module carries the actions out.

// Pure: no wall clock, random ids, environment or hash order (see clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use pmcluster_spec::AppSpec;

use crate::model::{Assignment, DesiredSet, InstanceId};

/// What the agent knows about one instance it supervises.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    /// The assignment last applied to it.
    pub assignment: Assignment,
    /// It left the desired set and is being stopped, to be forgotten.
    pub removing: bool,
}

/// One step towards the desired set.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Run it: a new instance, or one that was stopped (or is being removed) and must run again.
    Start(Assignment),
    /// Stop the running process and start it again with this assignment: its restart epoch went
    /// up, or its process spec, port or index changed.
    Restart(Assignment),
    /// Keep it stopped (stop it if it runs) and remember this assignment for a later start.
    /// New instances with `run = false` are created stopped so they are reported STOPPED.
    Stop(Assignment),
    /// Not in the set any more: stop it, then forget it.
    Remove(InstanceId),
}

impl Action {
    pub fn instance_id(&self) -> &InstanceId {
        match self {
            Action::Start(a) | Action::Restart(a) | Action::Stop(a) => &a.instance_id,
            Action::Remove(id) => id,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start(a) => write!(f, "start {}", a.instance_id),
            Action::Restart(a) => write!(f, "restart {}", a.instance_id),
            Action::Stop(a) => write!(f, "stop {}", a.instance_id),
            Action::Remove(id) => write!(f, "remove {id}"),
        }
    }
}

/// The outcome of [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The set is older than one already applied: ignore it.
    Stale { generation: u64, highest: u64 },
    /// Apply these actions (possibly none), then record `generation` as applied.
    Apply {
        generation: u64,
        actions: Vec<Action>,
    },
}

/// Diffs `current` against `set`. `highest` is the highest generation applied so far.
///
/// Re-applying the same set yields no action. When an instance id appears twice in the set the
/// first assignment wins (the coordinator never sends that; this keeps the plan well defined).
pub fn plan(current: &BTreeMap<InstanceId, Current>, highest: u64, set: &DesiredSet) -> Plan {
    if set.generation < highest {
        return Plan::Stale {
            generation: set.generation,
            highest,
        };
    }
    let mut seen = BTreeSet::new();
    let mut actions = Vec::new();
    for wanted in &set.assignments {
        if !seen.insert(wanted.instance_id.clone()) {
            continue;
        }
        let action = match current.get(&wanted.instance_id) {
            None => Some(start_or_stop(wanted)),
            Some(cur) if cur.removing => Some(start_or_stop(wanted)),
            Some(cur) => diff_one(&cur.assignment, wanted),
        };
        actions.extend(action);
    }
    for (id, cur) in current {
        if !cur.removing && !seen.contains(id) {
            actions.push(Action::Remove(id.clone()));
        }
    }
    actions.sort_by(|a, b| a.instance_id().cmp(b.instance_id()));
    Plan::Apply {
        generation: set.generation,
        actions,
    }
}

fn start_or_stop(wanted: &Assignment) -> Action {
    if wanted.run {
        Action::Start(wanted.clone())
    } else {
        Action::Stop(wanted.clone())
    }
}

/// Whether two assignment specs run the same process (the count and placement do not matter,
/// so scaling an app leaves its running instances alone).
fn same_process(a: &Result<Arc<AppSpec>, String>, b: &Result<Arc<AppSpec>, String>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.same_process(b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

/// The action for an instance the agent has and the set still holds.
fn diff_one(old: &Assignment, wanted: &Assignment) -> Option<Action> {
    // Anything that changes the process itself (its argv, env, port or log files) needs a restart.
    // A new app version alone does not: the coordinator gives an instance the version it
    // returns to (a rollback) when the instance runs that process already.
    let changed = !same_process(&old.spec, &wanted.spec)
        || old.port != wanted.port
        || old.index != wanted.index
        || old.app != wanted.app;
    match (old.run, wanted.run) {
        (true, false) => Some(Action::Stop(wanted.clone())),
        (false, false) if changed || old.restart_epoch != wanted.restart_epoch => {
            // Stays stopped; remember the new assignment for the next start.
            Some(Action::Stop(wanted.clone()))
        }
        (false, false) => None,
        (false, true) => Some(Action::Start(wanted.clone())),
        (true, true) if changed || wanted.restart_epoch > old.restart_epoch => {
            Some(Action::Restart(wanted.clone()))
        }
        // Same instance, nothing new (a lower epoch is a replay of an older command).
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pmcluster_spec::AppSpec;

    use super::*;

    /// Builds an assignment from a compact text: `id` then optional `key=value` words:
    /// `v=` app version, `e=` restart epoch, `p=` port, `i=` index, `stop` (run = false),
    /// `script=` a different spec, `bad` an invalid spec.
    fn a(text: &str) -> Assignment {
        let mut words = text.split_whitespace();
        let id = words.next().unwrap_or_default();
        let mut out = Assignment {
            instance_id: InstanceId::new(id),
            app: "web".into(),
            index: 0,
            app_version: 1,
            spec: Ok(Arc::new(AppSpec::new("web", "sleep", &["30"]))),
            port: None,
            run: true,
            restart_epoch: 0,
        };
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            let n = v.parse::<u64>().unwrap_or(0);
            match k {
                "v" => out.app_version = n,
                "e" => out.restart_epoch = n,
                "p" => out.port = u16::try_from(n).ok(),
                "i" => out.index = u32::try_from(n).unwrap_or(0),
                "stop" => out.run = false,
                "script" => out.spec = Ok(Arc::new(AppSpec::new("web", v, &[]))),
                "n" => {
                    let mut spec = AppSpec::new("web", "sleep", &["30"]);
                    spec.instances = v.parse().expect("count");
                    out.spec = Ok(Arc::new(spec));
                }
                "bad" => out.spec = Err("invalid spec: script: is empty".into()),
                other => panic!("unknown word {other:?} in {text:?}"),
            }
        }
        out
    }

    /// `current`: one assignment per `;`-separated item, `-` prefix marks one being removed.
    /// `set`: `gen: item; item`. Returns the rendered plan.
    fn render(current: &str, highest: u64, set: &str) -> String {
        let current: BTreeMap<InstanceId, Current> = current
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (removing, s) = match s.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, s),
                };
                let assignment = a(s);
                (
                    assignment.instance_id.clone(),
                    Current {
                        assignment,
                        removing,
                    },
                )
            })
            .collect();
        let (generation, items) = set.split_once(':').unwrap_or(("0", set));
        let set = DesiredSet {
            generation: generation.trim().parse().unwrap_or(0),
            assignments: items
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(a)
                .collect(),
        };
        match plan(&current, highest, &set) {
            Plan::Stale {
                generation,
                highest,
            } => format!("stale {generation} < {highest}"),
            Plan::Apply {
                generation,
                actions,
            } => {
                let mut out = format!("gen {generation}");
                for action in actions {
                    out.push_str(", ");
                    out.push_str(&action.to_string());
                }
                out
            }
        }
    }

    fn check(current: &str, highest: u64, set: &str, want: &str) {
        assert_eq!(
            render(current, highest, set),
            want,
            "current [{current}] highest {highest} set [{set}]"
        );
    }

    #[test]
    fn plans() {
        // Empty agent, new instances.
        check("", 0, "1: a; b", "gen 1, start a, start b");
        check("", 0, "1: a stop", "gen 1, stop a");
        check("", 0, "1: b; a", "gen 1, start a, start b");
        check("", 0, "1: a; a v=2", "gen 1, start a");
        // Idempotent: the same set again changes nothing.
        check("a; b", 1, "1: a; b", "gen 1");
        check("a stop", 1, "1: a stop", "gen 1");
        // Stale sets are ignored, whatever they hold.
        check("a", 5, "4: b", "stale 4 < 5");
        check("a", 5, "0:", "stale 0 < 5");
        // Newer generation, same content: nothing to do but record it.
        check("a", 1, "2: a", "gen 2");
        // Instances that left the set are removed; those already leaving are left alone.
        check("a; b", 1, "2: a", "gen 2, remove b");
        check("a; b", 1, "2:", "gen 2, remove a, remove b");
        check("a; -b", 1, "2: a", "gen 2");
        // One being removed that comes back is started (or kept stopped).
        check("-a", 1, "2: a", "gen 2, start a");
        check("-a", 1, "2: a stop", "gen 2, stop a");
        // Restart epoch.
        check("a e=1", 1, "2: a e=2", "gen 2, restart a");
        check("a e=3", 1, "2: a e=2", "gen 2");
        check("a stop e=1", 1, "2: a stop e=2", "gen 2, stop a");
        // Spec, port and index changes restart a running instance; a version with the same
        // process (a rollback to what it runs) does not.
        check("a v=1", 1, "2: a v=2", "gen 2");
        check("a v=1", 1, "2: a v=2 script=node", "gen 2, restart a");
        check("a", 1, "2: a script=node", "gen 2, restart a");
        // A new instance count (scale) is not a change of the process.
        check("a", 1, "2: a n=12", "gen 2");
        check("a", 1, "2: a bad", "gen 2, restart a");
        check("a p=3000", 1, "2: a p=3001", "gen 2, restart a");
        check("a i=0", 1, "2: a i=1", "gen 2, restart a");
        // ... and are only remembered for a stopped one.
        check("a stop v=1", 1, "2: a stop script=node", "gen 2, stop a");
        // Run flag.
        check("a", 1, "2: a stop", "gen 2, stop a");
        check("a stop", 1, "2: a", "gen 2, start a");
        check("a stop e=1", 1, "2: a e=2 v=3", "gen 2, start a");
        // A mix, ordered by id.
        check(
            "a; b e=1; c stop; d",
            3,
            "3: a; b e=2; c; e stop; f",
            "gen 3, restart b, start c, remove d, stop e, start f",
        );
    }
}
