//! `--wait` of `start`, `scale`, `restart` and `apply`: the verb returns once every instance it
//! asked for is up, as `docker compose up --wait` and `nomad job run` do, so that a script can
//! act on the exit status instead of polling `list` itself. `apply` waits for each app in turn,
//! within one `--wait-timeout`. `stop --wait` and `delete --wait` wait the other way: until the
//! instances are stopped, or their processes ended.
//!
//! Whether the instances are up is judged by [`progress`], a pure function of the instance list,
//! and whether a rollout the verb started failed by [`rollout_failed`] (or still runs, by
//! [`rollout_running`]: the wait ends with the rollout, not before), one of the rollout's status;
//! [`until_up`] asks the coordinator for both until the answer is final or time runs out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::supervise::{DEFAULT_MIN_UPTIME, RETRYING};
use serde_json::{Value, json};

use crate::args::WaitFlags;
use crate::commands::{Ctx, list_instances, list_instances_until};
use crate::error::ApiError;
use crate::failover::{Conn, TAKEOVER_WAIT, open, poll};
use crate::output::{deployment_active, state_name};

/// The first pause between two looks at the instance list: a start of a small app takes tens of
/// milliseconds. Each pause is half as long again, up to [`POLL_MAX`]: a long wait on a large
/// app must not keep the coordinator listing it 20 times a second.
const POLL: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);
/// How long a wait woken by an event takes the events that follow it before it looks, and the
/// most it takes in all.
const BURST: Duration = Duration::from_millis(5);
const BURST_MAX: Duration = Duration::from_millis(100);
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
    /// The instances as they were before the verb (`restart`): instance id, pid and state. One
    /// that still matches is not restarted yet, whatever its state says (an errored or exited
    /// one too: the coordinator shows its old report until the agent's next).
    pub replaced: Vec<(String, u32, i32)>,
    /// The rollout the verb started (its id): a failure or a rollback of it fails the wait.
    pub rollout: Option<u64>,
    /// The verb created the app: processes still ending of an app deleted before under the
    /// same name are no part of it, and are not waited for.
    pub created: bool,
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
    // Draining or stopping: on its way out. Another instance so (moved elsewhere, say) shares
    // its index with its replacement for a moment; only the replacement counts.
    let leaving = |i: &pb::Instance| {
        i.state == pb::InstanceState::Draining as i32
            || i.state == pb::InstanceState::Stopping as i32
    };
    // A process the verb replaces, or one at an older version than the rollout's: it must be
    // gone, not only joined by its replacement (as `kubectl rollout status` waits for the old
    // pods to end). The same process on its way out is still the one replaced: in waves, the
    // old instance is listed so until its process has ended.
    let stale = |i: &pb::Instance| {
        i.app_version < goal.version
            || goal.replaced.iter().any(|(id, pid, state)| {
                *id == i.id && *pid == i.pid && (*state == i.state || leaving(i))
            })
    };
    let up = |i: &pb::Instance| online(i, goal.version) && (checked(i) || steady(i));
    // One a quarantined node holds is no instance of this app here: it neither counts as up nor
    // waits to be replaced.
    let mine: Vec<&pb::Instance> = instances
        .iter()
        .filter(|i| i.app == app && !i.unmanaged && !(goal.created && i.removed))
        .collect();
    let wanted: Vec<u32> = match (goal.index, goal.count) {
        (Some(i), _) => vec![i],
        (None, Some(n)) => (0..n).collect(),
        (None, None) => {
            // Stale ones too: right after a restart every instance is.
            let mut all: Vec<u32> = mine
                .iter()
                .filter(|i| !leaving(i))
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
            if goal.index.is_none() {
                // Stopped by a user: a wait for the whole app leaves it down, as `signal` passes
                // it by; it would not come up by itself.
                continue;
            }
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

/// Why the rollout `id` will not bring its version up, from the app's rollout status: it failed,
/// was rolled back or superseded, or another replaced it while it ran. `None` while it runs, once
/// it succeeded, or when the status no longer lists it.
pub fn rollout_failed(id: u64, status: &pb::RolloutStatus) -> Option<String> {
    let current = status.current.as_ref();
    let d = match current {
        Some(d) if d.id == id => d,
        _ => status.history.iter().find(|d| d.id == id)?,
    };
    let version = d.to_version;
    let how = match d.state.as_str() {
        "failed" => "failed",
        "rolled back" => "was rolled back",
        "superseded" => "was superseded by a later change",
        // Still running by its own record, but no longer the current one.
        "running" | "paused" | "awaiting promotion" if current.is_some_and(|c| c.id != id) => {
            "was replaced by another rollout"
        }
        _ => return None,
    };
    let why = if d.message.is_empty() {
        String::new()
    } else {
        format!(": {}", d.message)
    };
    let next = match current {
        Some(c) if c.id == id && d.state == "failed" => left_standing(d),
        _ => String::new(),
    };
    Some(format!("the rollout of version {version} {how}{why}{next}"))
}

/// What a failed rollout that was not rolled back leaves, and the ways on: the indices it did
/// not reach keep their version, and serve.
pub fn left_standing(d: &pb::Deployment) -> String {
    // A rolling restart's instances all run its version, restarted or not.
    if d.kind == "restart" {
        return String::new();
    }
    format!(
        "; the instances it did not replace keep running version {}: `pmcluster rollout undo \
         {}` returns every instance to it, or apply a fixed spec",
        d.from_version, d.app
    )
}

/// What is left of the rollout `id` while it runs (or waits, paused or for a promotion): the
/// instances may all be up before it is done (each replacement must stay healthy for the
/// policy's `min_healthy_time`, and may yet crash), so a wait for it is not over. `None` once it
/// ended, or when it is not the current one (see [`rollout_failed`] for those).
pub fn rollout_running(id: u64, status: &pb::RolloutStatus) -> Option<String> {
    let d = status
        .current
        .as_ref()
        .filter(|d| d.id == id && deployment_active(d))?;
    Some(format!(
        "the rollout of version {} is {}, {} of {} on it",
        d.to_version, d.state, d.done, d.total
    ))
}

/// [`progress`] with the rollout the verb started taken in: instances up while that rollout
/// still runs (`running`, from [`rollout_running`]) are not the end of the wait.
pub fn with_rollout(progress: Progress, running: Option<String>) -> Progress {
    match (progress, running) {
        (Progress::Up(n), Some(rollout)) => Progress::Waiting(format!("{n} of {n} up; {rollout}")),
        (progress, _) => progress,
    }
}

/// What the rollout `id` waits for, when it waits for a person rather than for instances: a
/// promotion after its canary, or a resume.
pub fn rollout_held(id: u64, status: &pb::RolloutStatus) -> Option<String> {
    let d = status.current.as_ref().filter(|d| d.id == id)?;
    match d.state.as_str() {
        "awaiting promotion" => Some(format!(
            "the rollout of version {} waits for `pmcluster rollout promote {}` after its canary",
            d.to_version, d.app
        )),
        "paused" => Some(format!(
            "the rollout of version {} is paused: `pmcluster rollout resume {}`",
            d.to_version, d.app
        )),
        _ => None,
    }
}

/// Asks for the app's instances until [`progress`] says they are up (returns how many) or
/// cannot be, or until `deadline` (an error with what is missing). `timeout` is the
/// `--wait-timeout` that error names: `deadline` may be nearer (`apply` waits for its apps in
/// turn within one timeout).
pub async fn until_up(
    conn: &mut Conn,
    goal: &Goal,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let mut pause = POLL;
    // The app's events wake the wait as soon as an instance changes, so it ends when the last
    // one is up rather than at the next look; the pauses remain for a coordinator without them.
    let mut events = app_events(conn, &goal.app, deadline).await;
    // When each process (instance id and pid) was first seen online, by this clock.
    let mut online_since: HashMap<(String, u32), Instant> = HashMap::new();
    // A rollout held for a person (a canary to promote, a pause) is said once, when it is seen:
    // the wait goes on, for a promotion from another terminal, but a user trial sat out the
    // whole --wait-timeout not knowing why.
    let mut said_held = false;
    loop {
        let instances = list_instances_until(conn, &goal.app, Some(deadline)).await?;
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
        // What the rollout the verb started waits for, if it waits for a person, and whether
        // it still runs: the wait ends with it, not before.
        let (mut held, mut running) = (None, None);
        if let Some(id) = goal.rollout {
            let req = pb::RolloutRequest {
                app: goal.app.clone(),
            };
            let status = poll!(conn, deadline, get_rollout, req).await?;
            if let Some(why) = rollout_failed(id, &status) {
                anyhow::bail!("{}: {why}", goal.app);
            }
            held = rollout_held(id, &status);
            running = rollout_running(id, &status);
            if let Some(step) = held.as_ref().filter(|_| !said_held) {
                said_held = true;
                eprintln!(
                    "note: {}: {step}; waiting for it until --wait-timeout ({})",
                    goal.app,
                    humantime::format_duration(timeout)
                );
            }
        }
        match with_rollout(progress(goal, &instances, steady), running) {
            Progress::Up(n) => return Ok(n),
            Progress::Failed(why) => anyhow::bail!("{why}"),
            Progress::Waiting(what) => {
                if Instant::now() >= deadline {
                    let next = match held {
                        Some(step) => step,
                        None => format!(
                            "see `pmcluster list {}` and `pmcluster logs {}`",
                            goal.app, goal.app
                        ),
                    };
                    anyhow::bail!(
                        "{}: not up after {} ({what}); {next}",
                        goal.app,
                        humantime::format_duration(timeout),
                    );
                }
            }
        }
        // No event says that an instance has been up for min_uptime: look again then.
        let settles = instances
            .iter()
            .filter_map(|i| online_since.get(&(i.id.clone(), i.pid)))
            .map(|since| *since + goal.min_uptime)
            .filter(|at| *at > now)
            .min();
        let mut next = (now + pause).min(deadline);
        if let Some(at) = settles {
            next = next.min(at);
        }
        if !pause_or_event(&mut events, next, deadline).await {
            pause = (pause * 3 / 2).min(POLL_MAX);
        }
    }
}

/// The app's events, which wake a wait as soon as something changes; `None` when they cannot
/// be had by `deadline` (a coordinator without them: the pauses alone then).
async fn app_events(
    conn: &mut Conn,
    app: &str,
    deadline: Instant,
) -> Option<tonic::Streaming<pb::Event>> {
    let req = pb::WatchEventsRequest {
        app: app.to_string(),
        history: 0,
        no_follow: false,
    };
    let opening = open!(conn, watch_events, req);
    tokio::time::timeout_at(deadline, opening)
        .await
        .ok()
        .and_then(Result::ok)
}

/// Sleeps until `next` or the next event, whichever comes first; says whether an event came.
/// After one it takes the burst that follows (a start of 50 is 50 events), so that one look
/// covers them, at most [`BURST_MAX`] later however they keep coming. A stream that ended or
/// failed is dropped: the pauses alone from then on.
async fn pause_or_event<S, T, E>(events: &mut Option<S>, next: Instant, deadline: Instant) -> bool
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
{
    let Some(stream) = events.as_mut() else {
        tokio::time::sleep_until(next).await;
        return false;
    };
    let woken = tokio::select! {
        event = stream.next() => matches!(event, Some(Ok(_))),
        () = tokio::time::sleep_until(next) => return false,
    };
    if !woken {
        *events = None;
        return true;
    }
    let end = (Instant::now() + BURST_MAX).min(deadline);
    while Instant::now() < end {
        let by = (Instant::now() + BURST).min(end);
        match tokio::time::timeout_at(by, stream.next()).await {
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    true
}

/// Waits until none of `ids` (the app's instances before `delete`) is listed: their records
/// go at once, and the coordinator lists each process that was running as stopping until its
/// agent reports it ended (or its agent's session ends, when nothing more can be known). The
/// error names what is left when `timeout` runs out.
pub async fn until_gone(
    conn: &mut Conn,
    app: &str,
    ids: &HashSet<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = POLL;
    // Opened before the first look, so that an end after it wakes the wait.
    let mut events = app_events(conn, app, deadline).await;
    loop {
        let left: Vec<pb::Instance> = match list_instances_until(conn, app, Some(deadline)).await {
            Ok(listed) => listed
                .into_iter()
                .filter(|i| ids.contains(i.id.as_str()))
                .collect(),
            Err(e) if e.code == tonic::Code::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut named: Vec<String> = left
                .iter()
                .take(NAMED)
                .map(|i| match i.pid {
                    0 => format!("{app}[{}] {}", i.index, state_name(i.state)),
                    pid => format!("{app}[{}] {}, pid {pid}", i.index, state_name(i.state)),
                })
                .collect();
            if left.len() > NAMED {
                named.push(format!("and {} more", left.len() - NAMED));
            }
            let (n, noun) = match left.len() {
                1 => (1, "process has"),
                n => (n, "processes have"),
            };
            anyhow::bail!(
                "{app}: {n} {noun} not ended after {} ({}); see `pmcluster list {app}`",
                humantime::format_duration(timeout),
                named.join(", ")
            );
        }
        let next = (Instant::now() + pause).min(deadline);
        if !pause_or_event(&mut events, next, deadline).await {
            pause = (pause * 3 / 2).min(POLL_MAX);
        }
    }
}

/// The instances `stop --wait` still waits for, of `app` (or its one `index`): those its
/// coordinator does not list as stopped yet, as `web[1] stopping, pid 4711`. One a quarantined
/// node holds is left out (nothing stops it until the node is adopted), and so is a removed
/// one's process, which is no longer the app's.
pub fn not_stopped(app: &str, index: Option<u32>, instances: &[pb::Instance]) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.app == app && !i.unmanaged && !i.removed)
        .filter(|i| index.is_none_or(|x| x == i.index))
        .filter(|i| i.state != pb::InstanceState::Stopped as i32)
        .map(|i| match i.pid {
            0 => format!("{app}[{}] {}", i.index, state_name(i.state)),
            pid => format!("{app}[{}] {}, pid {pid}", i.index, state_name(i.state)),
        })
        .collect()
}

/// `stop --wait`: prints what the stop did, then waits until [`not_stopped`] is empty or
/// `timeout` runs out (an error naming what still runs). As [`finish`] does: in text, a line on
/// the wait follows; in JSON or YAML, the one value comes after the wait, with a `wait` field.
pub async fn finish_stop(
    conn: &mut Conn,
    ctx: &mut Ctx<'_>,
    said: Said,
    app: &str,
    index: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let structured = ctx.structured();
    let mut value = said.value.clone();
    if !structured {
        say(ctx, said)?;
    }
    let started = Instant::now();
    let result = until_stopped(conn, app, index, timeout).await;
    let seconds = started.elapsed().as_secs_f64();
    if structured {
        value["wait"] = match &result {
            Ok(n) => json!({"stopped": n, "seconds": (seconds * 100.0).round() / 100.0}),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        ctx.value(&value)?;
    } else if let Ok(n) = &result {
        ctx.line(&format!("{app}: {n} stopped after {seconds:.2}s"))?;
    }
    result.map(|_| ())
}

/// Asks for the app's instances until none of the targeted ones runs; returns how many are
/// stopped.
async fn until_stopped(
    conn: &mut Conn,
    app: &str,
    index: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut pause = POLL;
    // Opened before the first look, so that a stop after it wakes the wait.
    let mut events = app_events(conn, app, deadline).await;
    loop {
        let instances = list_instances_until(conn, app, Some(deadline)).await?;
        let left = not_stopped(app, index, &instances);
        if left.is_empty() {
            let stopped = instances
                .iter()
                .filter(|i| i.app == app && !i.unmanaged && !i.removed)
                .filter(|i| index.is_none_or(|x| x == i.index))
                .count();
            return Ok(stopped);
        }
        if Instant::now() >= deadline {
            let mut named: Vec<String> = left.iter().take(NAMED).cloned().collect();
            if left.len() > NAMED {
                named.push(format!("and {} more", left.len() - NAMED));
            }
            let noun = if left.len() == 1 {
                "instance"
            } else {
                "instances"
            };
            anyhow::bail!(
                "{app}: {} {noun} not stopped after {} ({}); see `pmcluster list {app}`",
                left.len(),
                humantime::format_duration(timeout),
                named.join(", ")
            );
        }
        let next = (Instant::now() + pause).min(deadline);
        if !pause_or_event(&mut events, next, deadline).await {
            pause = (pause * 3 / 2).min(POLL_MAX);
        }
    }
}

/// What a verb did, as its JSON value and its lines of text.
pub struct Said {
    pub value: Value,
    pub lines: Vec<String>,
}

/// Prints what a verb did, as the output format asks.
pub fn say(ctx: &mut Ctx<'_>, said: Said) -> anyhow::Result<()> {
    if ctx.structured() {
        return ctx.value(&said.value);
    }
    for line in &said.lines {
        ctx.line(line)?;
    }
    Ok(())
}

/// Prints what a verb did and, with `--wait`, waits for `goal`. In text, the verb's lines come
/// first and a line on the wait follows. In JSON or YAML, the one value comes after the wait,
/// with a `wait` field: how many are up and how long it took, or why not (the exit status then
/// says it failed too).
/// A goal that could not be made (the call for the app's spec failed) still prints what the verb
/// did, then the error.
pub async fn finish(
    conn: &mut Conn,
    ctx: &mut Ctx<'_>,
    flags: &WaitFlags,
    said: Said,
    goal: Result<Option<Goal>, ApiError>,
) -> anyhow::Result<()> {
    let goal = match goal {
        Ok(goal) => goal,
        Err(e) => {
            say(ctx, said)?;
            return Err(anyhow::Error::from(e).context("--wait: reading the app's spec"));
        }
    };
    let Some(goal) = goal.filter(|_| flags.wait) else {
        return say(ctx, said);
    };
    let deadline = Instant::now() + flags.wait_timeout;
    if ctx.structured() {
        let (waited, result) = wait_for(conn, ctx, &goal, deadline, flags.wait_timeout).await?;
        let mut value = said.value;
        refresh_deployment(conn, &goal, &mut value).await;
        if let Some(object) = value.as_object_mut() {
            object.insert("wait".to_string(), waited);
        }
        ctx.value(&value)?;
        return result;
    }
    say(ctx, said)?;
    wait_for(conn, ctx, &goal, deadline, flags.wait_timeout)
        .await?
        .1
}

/// The `deployment` of a verb's JSON value as it stands after its wait: the verb's reply gave
/// it as it started (`"state": "running", "done": 0`), which read as unfinished after a wait
/// that saw it succeed. Left as it was when the rollout cannot be read.
pub async fn refresh_deployment(conn: &mut Conn, goal: &Goal, value: &mut Value) {
    let Some(id) = goal.rollout else { return };
    let Some(slot) = value.get_mut("deployment").filter(|d| d.is_object()) else {
        return;
    };
    let req = pb::RolloutRequest {
        app: goal.app.clone(),
    };
    let Ok(status) = crate::failover::call!(conn, get_rollout, req).await else {
        return;
    };
    let now = status
        .current
        .iter()
        .chain(status.history.iter())
        .find(|d| d.id == id);
    if let Some(d) = now {
        *slot = crate::output::deployment_json(d);
    }
}

/// One wait by [`until_up`]: in text, a line on how long it took; for JSON, the `wait` field
/// (how many are up and in how long, or why not) and the outcome. The outer error is one of
/// printing.
pub async fn wait_for(
    conn: &mut Conn,
    ctx: &mut Ctx<'_>,
    goal: &Goal,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<(Value, anyhow::Result<()>)> {
    let started = Instant::now();
    match until_up(conn, goal, deadline, timeout).await {
        Ok(up) => {
            let seconds = started.elapsed().as_secs_f64();
            if !ctx.structured() {
                ctx.line(&format!("{}: {up} up after {seconds:.2}s", goal.app))?;
            }
            let rounded = (seconds * 100.0).round() / 100.0;
            Ok((json!({"up": up, "seconds": rounded}), Ok(())))
        }
        Err(e) => Ok((json!({"error": format!("{e:#}")}), Err(e))),
    }
}

/// What `--wait` waits for on `app` (or one index of it), as its spec says now. Asked after the
/// verb's change was made, so a failover meanwhile is waited out (a read, safe to ask again).
pub async fn goal(conn: &mut Conn, app: &str, index: Option<u32>) -> Result<Goal, ApiError> {
    let req = pb::GetAppRequest {
        name: app.to_string(),
    };
    let shown = poll!(conn, Instant::now() + TAKEOVER_WAIT, get_app, req).await?;
    Ok(goal_of(app, &shown, index))
}

/// What `--wait` waits for on `name`, whose app is `app`: every index its spec asks for (or
/// `index`), at any version, nothing replaced.
pub fn goal_of(name: &str, app: &pb::App, index: Option<u32>) -> Goal {
    let spec = app.spec.as_ref();
    Goal {
        app: name.to_string(),
        count: spec.filter(|s| !s.instances_max).map(|s| s.instances),
        index,
        autorestart: spec.and_then(|s| s.autorestart).unwrap_or(true),
        version: 0,
        min_uptime: spec
            .and_then(|s| s.min_uptime_ms)
            .map_or(DEFAULT_MIN_UPTIME, Duration::from_millis),
        replaced: Vec::new(),
        rollout: None,
        created: false,
    }
}

/// The app's running processes (or one index's) as they are now, for [`Goal::replaced`]. Those
/// with no process are left out: after a restart, their next report is about the new attempt
/// (the coordinator shows an instance restarted and not yet retried as launching).
pub async fn snapshot(
    conn: &mut Conn,
    app: &str,
    index: Option<u32>,
) -> Result<Vec<(String, u32, i32)>, ApiError> {
    Ok(list_instances(conn, app)
        .await?
        .into_iter()
        .filter(|i| i.pid != 0 && index.is_none_or(|x| x == i.index))
        .map(|i| (i.id, i.pid, i.state))
        .collect())
}

#[cfg(test)]
mod tests;
