//! `--wait` of `start` and `scale`: the verb returns once every instance it asked for is up, as
//! `docker compose up --wait` and `nomad job run` do, so that a script can act on the exit status
//! instead of polling `list` itself.
//!
//! Whether the instances are up is judged by [`progress`], a pure function of the instance list;
//! [`until_up`] asks the coordinator for that list until the answer is final or time runs out.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::supervise::RETRYING;

use crate::commands::list_instances;
use crate::failover::Conn;
use crate::output::state_name;

/// Between two looks at the instance list: a start of a small app takes tens of milliseconds,
/// and one list of an app is a cheap call.
const POLL: Duration = Duration::from_millis(50);
/// Instances named in a "not up yet" message; the rest are counted.
const NAMED: usize = 3;

/// What a wait waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goal {
    pub app: String,
    /// Instances the app should have (indices 0..count); `None` (`instances: "max"`, where the
    /// coordinator decides) takes the indices listed.
    pub count: Option<u32>,
    /// Only this index (`start APP --instance N`).
    pub index: Option<u32>,
    /// With autorestart off, an instance that exited stays down: its exit is final.
    pub autorestart: bool,
    /// The version instances must run (the rollout a changed spec started); 0 for any.
    pub version: u64,
    /// How long an instance with neither a port nor a health check must have run to count as
    /// up (the app's `min_uptime`): for those, online only says the process was started.
    pub min_uptime: Duration,
    /// Processes (instance id, pid) the verb replaces (`restart`): never up, however online.
    pub replaced: Vec<(String, u32)>,
}

/// Where a wait stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every instance asked for is up: how many.
    Up(usize),
    /// One cannot come up without a change from the user: which, and why.
    Failed(String),
    /// Not yet: what is missing.
    Waiting(String),
}

/// Online, healthy if it has a health check, and at the version asked for.
fn online(i: &pb::Instance, version: u64) -> bool {
    use pb::HealthState as H;
    i.state == pb::InstanceState::Online as i32
        && !matches!(
            H::try_from(i.health),
            Ok(H::Unhealthy | H::Unknown) | Err(_)
        )
        && i.app_version >= version
}

/// Whether being online says more than "started": it passed a port or health check.
fn checked(i: &pb::Instance) -> bool {
    i.port != 0 || i.health != pb::HealthState::Unspecified as i32
}

/// Judges `instances` (the app's, as `ListInstances` gives them) against `goal`. `steady` says
/// whether an instance has been seen online, as the same process, for `goal.min_uptime`: the
/// caller keeps the clock, so that this stays a pure function.
pub fn progress(
    goal: &Goal,
    instances: &[pb::Instance],
    steady: impl Fn(&pb::Instance) -> bool,
) -> Progress {
    let app = goal.app.as_str();
    // A process the verb replaces, or one at an older version than the rollout's: it must be
    // gone, not only joined by its replacement (as `kubectl rollout status` waits for the old
    // pods to end).
    let stale = |i: &pb::Instance| {
        i.app_version < goal.version
            || goal
                .replaced
                .iter()
                .any(|(id, pid)| *id == i.id && *pid == i.pid)
    };
    let up = |i: &pb::Instance| online(i, goal.version) && (checked(i) || steady(i));
    let mine: Vec<&pb::Instance> = instances.iter().filter(|i| i.app == app).collect();
    // Another instance draining or stopping (moved elsewhere, say) shares its index with its
    // replacement for a moment; only the replacement counts.
    let leaving = |i: &pb::Instance| {
        i.state == pb::InstanceState::Draining as i32
            || i.state == pb::InstanceState::Stopping as i32
    };
    let wanted: Vec<u32> = match (goal.index, goal.count) {
        (Some(i), _) => vec![i],
        (None, Some(n)) => (0..n).collect(),
        (None, None) => {
            let mut all: Vec<u32> = mine
                .iter()
                .filter(|i| !stale(i) && !leaving(i))
                .map(|i| i.index)
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let (mut ready, mut missing) = (0, Vec::new());
    for index in &wanted {
        let of_index: Vec<&pb::Instance> =
            mine.iter().copied().filter(|i| i.index == *index).collect();
        let current: Vec<&pb::Instance> = of_index
            .iter()
            .copied()
            .filter(|i| !stale(i) && !leaving(i))
            .collect();
        let old = of_index.iter().find(|i| stale(i));
        if current.iter().any(|i| up(i)) {
            match old {
                None => ready += 1,
                Some(o) => missing.push(format!(
                    "{app}[{index}] up, the process it replaces still {}",
                    state_name(o.state)
                )),
            }
            continue;
        }
        let Some(i) = current.first().or(old) else {
            missing.push(format!("{app}[{index}] not placed yet"));
            continue;
        };
        let why = if i.message.is_empty() {
            String::new()
        } else {
            format!(": {}", i.message)
        };
        let replacing = stale(i);
        if i.stopped && !replacing {
            return Progress::Failed(format!(
                "{app}[{index}] is stopped; start it with: pmcluster start {app} --instance \
                 {index}"
            ));
        }
        // An error the agent retries is not final: the program may be installed or the port
        // freed meanwhile, or the coordinator may move the instance to another node.
        let errored = i.state == pb::InstanceState::Errored as i32;
        if errored && !replacing && !i.message.contains(RETRYING) {
            return Progress::Failed(format!("{app}[{index}] errored{why}"));
        }
        if i.state == pb::InstanceState::Exited as i32 && !replacing && !goal.autorestart {
            return Progress::Failed(format!("{app}[{index}] exited and autorestart is off{why}"));
        }
        let mut status = state_name(i.state).to_string();
        if replacing {
            status = if i.app_version < goal.version {
                format!("{status} at version {} of {}", i.app_version, goal.version)
            } else {
                format!("{status}, not restarted yet")
            };
        } else if i.state == pb::InstanceState::Online as i32 {
            status = if checked(i) {
                "online, not healthy yet".to_string()
            } else {
                format!(
                    "online for less than min_uptime ({})",
                    humantime::format_duration(goal.min_uptime)
                )
            };
        }
        if i.restarts > 0 {
            status.push_str(&format!(" (restarts {})", i.restarts));
        }
        missing.push(format!("{app}[{index}] {status}{why}"));
    }
    // Scaled down: the instances above the new count must be gone too.
    if let (None, Some(n)) = (goal.index, goal.count) {
        let above = mine.iter().filter(|i| i.index >= n).count();
        if above > 0 {
            missing.push(format!(
                "{above} instance(s) above the new count still stopping"
            ));
        }
    }
    if missing.is_empty() {
        return Progress::Up(ready);
    }
    let mut shown: Vec<String> = missing.iter().take(NAMED).cloned().collect();
    if missing.len() > NAMED {
        shown.push(format!("and {} more", missing.len() - NAMED));
    }
    Progress::Waiting(format!(
        "{ready} of {} up; {}",
        wanted.len(),
        shown.join("; ")
    ))
}

/// Asks for the app's instances until [`progress`] says they are up (returns how many) or
/// cannot be, or until `timeout` (an error with what is missing).
pub async fn until_up(conn: &mut Conn, goal: &Goal, timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    // When each process (instance id and pid) was first seen online, by this clock.
    let mut online_since: HashMap<(String, u32), Instant> = HashMap::new();
    loop {
        let instances = list_instances(conn, &goal.app).await?;
        let now = Instant::now();
        online_since.retain(|(id, pid), _| {
            instances.iter().any(|i| {
                &i.id == id && i.pid == *pid && i.state == pb::InstanceState::Online as i32
            })
        });
        for i in &instances {
            if i.state == pb::InstanceState::Online as i32 {
                online_since.entry((i.id.clone(), i.pid)).or_insert(now);
            }
        }
        let steady = |i: &pb::Instance| {
            online_since
                .get(&(i.id.clone(), i.pid))
                .is_some_and(|since| now.duration_since(*since) >= goal.min_uptime)
        };
        match progress(goal, &instances, steady) {
            Progress::Up(n) => return Ok(n),
            Progress::Failed(why) => anyhow::bail!("{why}"),
            Progress::Waiting(what) => {
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "{}: not up after {} ({what}); see `pmcluster list {}` and `pmcluster \
                         logs {}`",
                        goal.app,
                        humantime::format_duration(timeout),
                        goal.app,
                        goal.app
                    );
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests;
