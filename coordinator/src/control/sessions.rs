//! Agent sessions: attach (quarantine or rename), status reports (the heartbeat), detach.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};

use crate::core::leak::{self, LeakPolicy};
use crate::model::{
    Batch, EventKind, Health, InstanceObserved, InstanceRecord, InstanceState, NodeRecord,
};
use crate::model::{Registration, Report};

use super::sets::publish;
use super::{
    Attached, Control, ControlError, Guard, Inner, Leaving, MemoryTrend, Result, Session,
    instances_phrase, is_quarantined, is_ready, new_node_live,
};
use super::{moved, write};
use crate::core::adoption;

/// Parked reports one report takes in after its own, at most (see `Control::take_parked`).
const PARKED_PER_REPORT: usize = 8;

impl Control {
    /// Registers a node's session. Refuses a name whose session is still alive.
    pub fn attach(&self, reg: &Registration, peer: Option<std::net::IpAddr>) -> Result<Attached> {
        check_registration(reg)?;
        let mut inner = self.lock();
        // The node's record is committed directly below, from what the lock then shows: no
        // queued write may land in between and be overwritten.
        self.quiesce(&mut inner);
        let name = reg.node_name.clone();
        if let Some(live) = inner.nodes.get(&name)
            && let Some(session) = &live.session
            && is_ready(live, &self.config, inner.now)
        {
            if reg.agent_id.is_empty() || session.agent_id != reg.agent_id {
                return Err(ControlError::AlreadyExists(format!(
                    "node {name:?} is already connected; each agent needs its own --node-name"
                )));
            }
            // The same agent again (restarted, or its old connection is half-open): the new
            // session replaces the old one, whose stream ends when its closer is dropped below.
            tracing::info!(node = %name, "agent reconnected; replacing its previous session");
            // The new session knows nothing of the old one's log requests: their readers end
            // now rather than wait forever.
            self.drop_log_routes(&name, "reconnected (its earlier session ended)");
        }
        let quarantine = adoption::quarantine_reason(&inner.state, &registration(reg));
        let mut batch = Batch::default();
        let mut renamed = None;
        if quarantine.is_none() && !reg.renamed_from.is_empty() && reg.renamed_from != name {
            renamed = self.rename_batch(&inner, &reg.renamed_from, &name, &mut batch)?;
        }
        let known = inner.state.nodes.get(&name).or(renamed.as_ref()).cloned();
        // A node forgotten with `nodes forget` whose agent came back: it joins afresh, its sets
        // going on above the generations it had, so the first one (without the instances placed
        // elsewhere since) stops what its agent still runs. Its tombstone goes with this write.
        // (A record put under a forgotten name, renamed to it too, ends its tombstone.)
        let tombstone = inner.state.forgotten.get(&name).cloned();
        if tombstone.is_some() {
            batch.del_forgotten.push(name.clone());
        }
        let forgotten = tombstone.filter(|_| known.is_none() && reg.renamed_from.is_empty());
        // A generation of its own, above any the node had: its first set differs from what
        // its agent applied, and one generation never stands for two sets. (Quarantined, the
        // adoption raises it.)
        let generation = match (&known, &forgotten) {
            (Some(n), _) => n.generation,
            (None, Some(f)) if quarantine.is_none() => {
                let fresh = inner.state.generation.max(f.generation) + 1;
                batch.generation = Some(fresh);
                fresh
            }
            (None, Some(f)) => f.generation,
            (None, None) => 0,
        };
        let address = if reg.advertise_address.is_empty() {
            peer.map(|p| p.to_string()).unwrap_or_default()
        } else {
            reg.advertise_address.clone()
        };
        let record = NodeRecord {
            name: name.clone(),
            labels: reg.labels.clone(),
            cores: reg.cores,
            memory_bytes: reg.memory_bytes,
            hostname: reg.hostname.clone(),
            agent_version: reg.agent_version.clone(),
            generation,
            drain: known.as_ref().is_some_and(|n| n.drain),
            address: address.clone(),
            // Its set goes out once this commits: the agent may hold this generation from now.
            sent_generation: match &quarantine {
                None => Some(generation),
                Some(_) => (known.as_ref().and_then(|n| n.sent_generation))
                    .or(forgotten.as_ref().map(|f| f.sent_up_to)),
            },
            // Restarts asked while no agent was there: its set, going out now, carries them.
            // Raising one above what the agent holds is for a store behind the agent (restored
            // from an older copy), and such a store quarantines the agent (see
            // `NodeRecord::sent_generation`): its adoption raises them. Emptied here, in the
            // record committed before the set is sent, so that no note outlives a restart the
            // agent then runs (a second check would restart it again).
            restarts_unseen: match &quarantine {
                None => BTreeMap::new(),
                Some(_) => known
                    .as_ref()
                    .map(|n| n.restarts_unseen.clone())
                    .unwrap_or_default(),
            },
        };
        if inner.state.nodes.get(&name) != Some(&record) {
            batch.put_nodes.push(record);
        }
        if !batch.is_empty() {
            write::commit(self.store.as_ref(), &mut inner.state, &batch)?;
            inner.ahead.apply(&batch);
            inner.sets.forget();
        }
        let session_id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (commands_tx, commands) = mpsc::channel(256);
        let (closer, closed) = watch::channel(());
        let now = inner.now;
        // Down in this coordinator's view, not merely awaited after a load (its down time is
        // then still ahead): only such a node's stale copies were replaced or removed while it
        // was away, as their events say. A coordinator that restarted cannot tell why the copies
        // an agent holds went, and says nothing of them.
        let was_down = inner
            .nodes
            .get(&name)
            .is_some_and(|l| l.session.is_none() && l.down_since_ms.is_some_and(|at| at <= now));
        let live = inner
            .nodes
            .entry(name.clone())
            .or_insert_with(|| new_node_live(now));
        live.session = Some(Session {
            id: session_id,
            agent_id: reg.agent_id.clone(),
            commands: commands_tx,
            _closer: closer,
            quarantine: quarantine.clone(),
        });
        live.last_heartbeat_ms = self.now();
        live.down_since_ms = None;
        live.down_unannounced = false;
        live.held = reg.held.clone();
        live.held_unreadable = reg.held_unreadable;
        live.reported_generation = reg.generation;
        live.adopting = false;
        if quarantine.is_some() {
            // Nothing goes to a quarantined node, not even the set published at load.
            live.desired.send_replace(None);
        }
        let desired = live.desired.subscribe();
        if quarantine.is_some() {
            // Nor will its agent stop what it was stopping: what it holds is listed as held.
            inner.leaving.remove(&name);
        }
        for st in &reg.instances {
            inner.observed.insert(st.id, st.clone());
        }
        if let Some(old) = &renamed {
            inner.nodes.remove(&old.name);
            inner.leaving.remove(&old.name);
        }
        publish(&mut inner, &name);
        // A new node may take pending instances.
        inner.reconcile_due = true;
        if let Err(e) = self.write(&mut inner, Batch::default()) {
            tracing::error!(error = %e, "reconcile after node registration failed");
        }
        let cluster_id = inner.state.cluster_id.clone();
        // A quarantined node keeps what it holds until its adoption.
        let Inner { state, nodes, .. } = &mut *inner;
        let stale = match (&quarantine, nodes.get_mut(&name)) {
            (None, Some(live)) if was_down || forgotten.is_some() => moved::stale_copies(
                state,
                &name,
                &reg.held,
                forgotten.is_some(),
                &mut live.told_stale,
            ),
            _ => Vec::new(),
        };
        drop(inner);
        if let Some(old) = renamed {
            let text = format!(
                "node {} renamed to {name}; its instances moved with it",
                old.name
            );
            tracing::warn!("{text}");
            self.emit(EventKind::NodeRenamed, "", &name, None, text);
        }
        match &quarantine {
            Some(why) => {
                tracing::error!(node = %name, "node quarantined: {why}");
                self.emit(
                    EventKind::NodeQuarantined,
                    "",
                    &name,
                    None,
                    format!("node {name} quarantined: {why}"),
                );
            }
            None => {
                let text = match (&forgotten, reg.held.len()) {
                    (Some(_), held) if held > 0 => {
                        let held = instances_phrase(u32::try_from(held).unwrap_or(u32::MAX));
                        format!(
                            "node {name} connected; it had been forgotten, so it joins afresh \
                             and its agent removes the {held} it held (their indices were placed \
                             anew when it was forgotten)"
                        )
                    }
                    (Some(_), _) => format!("node {name} connected; it had been forgotten"),
                    (None, _) => format!("node {name} connected"),
                };
                if forgotten.is_some() {
                    tracing::warn!(node = %name, "{text}");
                }
                self.emit(EventKind::NodeUp, "", &name, None, text);
            }
        }
        for (kind, app, index, text) in stale {
            self.emit(kind, &app, &name, index, text);
        }
        Ok(Attached {
            session_id,
            desired,
            commands,
            closed,
            heartbeat_interval: self.config.heartbeat_interval,
            cluster_id,
            quarantine: quarantine.unwrap_or_default(),
            address,
            takes_deltas: reg.takes_deltas,
        })
    }

    /// Adds to `batch` the move of node `old`'s records to `new` and the removal of `old`.
    /// Returns `old`'s record, or `None` when there is no such node (nothing to move).
    pub(super) fn rename_batch(
        &self,
        inner: &Inner,
        old: &str,
        new: &str,
        batch: &mut Batch,
    ) -> Result<Option<NodeRecord>> {
        let Some(record) = inner.state.nodes.get(old) else {
            return Ok(None);
        };
        if inner.nodes.get(old).is_some_and(|l| l.session.is_some()) {
            return Err(ControlError::FailedPrecondition(format!(
                "cannot rename node {old:?} to {new:?}: {old:?} is connected; stop its agent first"
            )));
        }
        if inner.state.nodes.contains_key(new) {
            return Err(ControlError::FailedPrecondition(format!(
                "cannot rename node {old:?} to {new:?}: a node {new:?} exists already; forget it \
                 first with 'pmcluster nodes forget {new}'"
            )));
        }
        for rec in inner.state.instances.values() {
            if rec.node.as_deref() == Some(old) {
                batch.put_instances.push(InstanceRecord {
                    node: Some(new.to_string()),
                    ..rec.clone()
                });
            }
        }
        batch.del_nodes.push(old.to_string());
        Ok(Some(record.clone()))
    }

    /// Records a status report (also the heartbeat). Ignored if the session was replaced.
    ///
    /// Called on an async worker, by the session's task. A write that plans thousands of
    /// placements holds the state for seconds; a report that waited for it would hold its worker
    /// as long, and with every worker so held no HTTP/2 ping is answered and every agent drops
    /// its link (it gives up after 3 s). So a report that finds the state taken for longer than
    /// a brief contention is parked (see [`super::parked`]) and taken in by the next report that
    /// gets the state, or by the tick the parking asks for.
    pub fn report(&self, node: &str, session_id: u64, report: Report) {
        let Some(inner) = self.try_lock_for_report() else {
            self.parked.park(node, session_id, report, self.now());
            self.changed.notify_one();
            return;
        };
        // A parked report of this node's session is older than this one, which says all it said.
        self.parked.drop_node(node, session_id);
        self.take_report(inner, node, session_id, report);
        self.take_parked(false);
    }

    /// Takes in the parked reports, each as it would have been when it came. Unless `wait`, as
    /// a report does: once the state is taken for long again, what is left stays parked, and
    /// at most [`PARKED_PER_REPORT`], so that one agent's session task does not take in
    /// thousands on its async worker; the tick, which each parking woke, takes the rest.
    pub(super) fn take_parked(&self, wait: bool) {
        let mut left = if wait { usize::MAX } else { PARKED_PER_REPORT };
        while self.parked.busy() && left > 0 {
            left -= 1;
            let inner = if wait {
                self.lock()
            } else if let Some(inner) = self.try_lock_for_report() {
                inner
            } else {
                return;
            };
            let Some((node, session_id, report)) = self.parked.pop() else {
                return;
            };
            self.take_report(inner, &node, session_id, report);
        }
    }

    /// A report, under the state lock `inner`, which it holds until its events are out.
    fn take_report(&self, mut inner: Guard<'_>, node: &str, session_id: u64, report: Report) {
        let now = inner.now;
        let Some(live) = inner.nodes.get_mut(node) else {
            return;
        };
        if live.session.as_ref().map(|s| s.id) != Some(session_id) {
            return;
        }
        live.last_heartbeat_ms = self.now();
        // Memory is sampled a few dozen times per leak window, not on every report: a node's
        // instances together, so a report between samples looks no trend up.
        let spacing = self.config.leak.window_ms / SAMPLES_PER_WINDOW;
        let sample = now.saturating_sub(live.memory_sampled_ms) >= spacing;
        if sample {
            live.memory_sampled_ms = now;
        }
        live.host = report.host;
        live.reported_generation = report.generation;
        let quarantined = is_quarantined(live);
        let node_generation = inner.state.nodes.get(node).map_or(0, |n| n.generation);
        if let Some(live) = inner.nodes.get_mut(node)
            && live.adopting
            && report.generation >= node_generation
        {
            // The agent applied a set of this cluster: it has taken the new cluster id.
            live.adopting = false;
        }
        let mut changes = Vec::new();
        let mut leaks = Vec::new();
        // Removed instances whose processes this agent may still run: kept while its report
        // holds them running, or is of a set older than the one without them. One a report of
        // that set or later leaves out has ended (an agent reports all it holds).
        let mut leaving = inner.leaving.remove(node).unwrap_or_default();
        let mut still_leaving = HashMap::new();
        let generation = report.generation;
        for st in report.instances {
            let id = st.id;
            // Most reports have none: no lookup then (a report holds every instance).
            if !leaving.is_empty()
                && let Some(mut process) = leaving.remove(&id)
                && !inner.state.instances.contains_key(&id)
            {
                if Leaving::running(&st) || generation < process.until {
                    if st.pid != 0 {
                        process.seen_pid = st.pid;
                    }
                    process.status = st;
                    still_leaving.insert(id, process);
                } else {
                    leaving.insert(id, process);
                }
                continue;
            }
            // Most of a report repeats what the last one said (an agent reports its whole set
            // after any change): a status taken in full already, for a record unchanged since,
            // changes nothing unless its memory is due for a sample.
            if !sample && inner.observed.settled_as(&st) {
                continue;
            }
            let Some(rec) = inner.state.instances.get(&id) else {
                if quarantined {
                    // Held by a quarantined node: listed from what the agent reports.
                    inner.observed.insert(id, st);
                }
                continue;
            };
            if rec.node.as_deref() != Some(node) {
                continue;
            }
            // Only what waits on an instance's state needs a pass when it changes: a migration's
            // replacement coming online (the old side retires), a draining record going offline
            // (it goes at once), a rollout (its engine steps on them). Any other instance coming
            // online changes no plan, and a full pass for each made creating apps cost a pass
            // over every record per new instance.
            let prior = inner
                .observed
                .get(&id)
                .map(|o| (o.state, o.restarts, o.health));
            let before = prior.map(|(state, _, _)| state);
            let online = InstanceState::Online;
            let awaited = (before == Some(online)) != (st.state == online)
                && (rec.replaces.is_some()
                    || rec.draining_since.is_some()
                    || inner.state.apps.get(&rec.app).is_some_and(|a| a.rolling()));
            let (index, stopped) = (rec.index, rec.stopped);
            // The app's name only where an event needs it: most reports change nothing.
            let app = |inner: &Inner| {
                (inner.state.instances.get(&id))
                    .map(|r| r.app.clone())
                    .unwrap_or_default()
            };
            if awaited {
                inner.reconcile_due = true;
                self.changed.notify_one();
            }
            // A restart is an event even when no report caught the instance between its two
            // processes (a fast app is online again within one report's delay): its count grew.
            let restarted = prior.is_some_and(|(_, restarts, _)| st.restarts > restarts);
            // A check's verdict that changes while the state stays is an event as well (an
            // online instance failing its health check, or passing it again): what `events -f`
            // is watched for, and what `--wait` waits on.
            let verdict = matches!(st.health, Health::Healthy | Health::Unhealthy);
            let health_turned = verdict
                && prior.is_some_and(|(state, _, health)| state == st.state && health != st.health);
            if st.state == online {
                let now = inner.now;
                if restarted {
                    // Online since the new process, not the old one.
                    inner.online_since.insert(id, now);
                } else {
                    inner.online_since.entry(id).or_insert(now);
                }
            } else {
                inner.online_since.remove(&id);
            }
            let failing = st.start_failures > 0 && !stopped;
            if failing != inner.unstartable_since.contains_key(&id) {
                if failing {
                    let now = inner.now;
                    inner.unstartable_since.insert(id, now);
                } else {
                    inner.unstartable_since.remove(&id);
                }
                // The reconciler sets a follow-up for the move.
                inner.reconcile_due = true;
                self.changed.notify_one();
            }
            if before != Some(st.state) || restarted || health_turned {
                let health = health_turned.then_some(st.health);
                changes.push((app(&inner), index, st.state, health, st.message.clone()));
            }
            if sample {
                if let Some(trend) = sample_memory(&mut inner, &self.config.leak, &st) {
                    leaks.push((app(&inner), index, trend));
                }
            } else if st.state != InstanceState::Online || st.memory_bytes == 0 {
                inner.memory.remove(&id);
            }
            inner.observed.insert(id, st);
            inner.observed.settle(id);
        }
        // Not in a report of an older set: it may not have started them yet.
        still_leaving.extend(leaving.extract_if(|_, process| generation < process.until));
        if !still_leaving.is_empty() {
            inner.leaving.insert(node.to_string(), still_leaving);
        }
        // The events go out under the state lock: a node's reports are taken in on more than
        // one thread (its session's, and whichever takes in its parked report), and its events
        // must come out in the order its reports were taken in.
        self.emit_ended(node, leaving);
        for (app, index, trend) in leaks {
            self.emit(
                EventKind::InstanceLeakSuspected,
                &app,
                node,
                Some(index),
                format!("{app}[{index}]: memory leak suspected: {trend}"),
            );
        }
        for (app, index, state, health, message) in changes {
            let (state, message) = match health {
                Some(Health::Healthy) => (format!("{}, healthy", state.name()), message),
                // The agent's message names the verdict already ("unhealthy: 3 health checks
                // failed in a row ..."): said once.
                Some(Health::Unhealthy) => (
                    format!("{}, unhealthy", state.name()),
                    message
                        .strip_prefix("unhealthy: ")
                        .map_or(message.clone(), str::to_string),
                ),
                _ => (state.name().to_string(), message),
            };
            let text = state_text(&app, index, &state, &message);
            self.emit(EventKind::InstanceState, &app, node, Some(index), text);
        }
        drop(inner);
    }

    /// The events for removed instances whose processes a report of `node` said have ended: one
    /// per process, or, past [`write::EVENTS_PER_WRITE`] of an app in one report, one for them
    /// all, as placements are (a scale from 10,000 to 0 must not flood the event history).
    fn emit_ended(&self, node: &str, ended: HashMap<uuid::Uuid, Leaving>) {
        let mut per_app: BTreeMap<String, Vec<(u32, uuid::Uuid, u32)>> = BTreeMap::new();
        // One never reported running has no process to speak of.
        for (id, process) in ended.into_iter().filter(|(_, p)| p.seen_pid != 0) {
            per_app
                .entry(process.app)
                .or_default()
                .push((process.index, id, process.seen_pid));
        }
        for (app, mut ended) in per_app {
            if ended.len() > write::EVENTS_PER_WRITE {
                let text = format!(
                    "{app}: {} removed instances' processes have ended",
                    ended.len()
                );
                self.emit(EventKind::InstanceState, &app, node, None, text);
                continue;
            }
            ended.sort_unstable();
            for (index, _, pid) in ended {
                let text = format!("{app}[{index}] removed: its process {pid} has ended");
                self.emit(EventKind::InstanceState, &app, node, Some(index), text);
            }
        }
    }

    /// Ends a node's session (its stream closed). Ignored if a newer session replaced it.
    pub fn detach(&self, node: &str, session_id: u64) {
        let mut inner = self.lock();
        let Some(live) = inner.nodes.get_mut(node) else {
            return;
        };
        if live.session.as_ref().map(|s| s.id) != Some(session_id) {
            return;
        }
        live.session = None;
        live.down_since_ms = Some(self.now());
        // No report will say when they end: they are no longer listed.
        inner.leaving.remove(node);
        inner.reconcile_due = true;
        self.changed.notify_one();
        // Their callers hear that the node went away (the reply channel closes).
        self.command_routes.lock().retain(|_, r| r.node != node);
        drop(inner);
        self.drop_log_routes(node, "disconnected");
        self.emit(
            EventKind::NodeDown,
            "",
            node,
            None,
            format!("node {node} disconnected"),
        );
    }
}

/// Adds an instance's memory sample to its trend and judges it (see `core::leak`). Returns
/// the trend when a leak has just become suspected. Only online processes are watched.
fn sample_memory(inner: &mut Inner, policy: &LeakPolicy, st: &InstanceObserved) -> Option<String> {
    if st.state != InstanceState::Online || st.memory_bytes == 0 {
        inner.memory.remove(&st.id);
        return None;
    }
    let now = inner.now;
    let trend = inner.memory.entry(st.id).or_default();
    if trend.started_at_ms != st.started_at_ms {
        *trend = MemoryTrend {
            started_at_ms: st.started_at_ms,
            ..MemoryTrend::default()
        };
    }
    // A trend needs a few dozen points per window, not one per report: at 20,000 instances
    // reporting every second, a sample (and a judgement) per report cost a third of a core and
    // 100 MB for the default 5-minute window. The report gates its node's samples as a whole;
    // this keeps an instance's own spacing where reports come closer together.
    let spacing = policy.window_ms / SAMPLES_PER_WINDOW;
    if trend
        .samples
        .back()
        .is_some_and(|last| now - last.at_ms < spacing)
    {
        return None;
    }
    trend.samples.push_back(leak::Sample {
        at_ms: now,
        rss: st.memory_bytes,
    });
    while trend
        .samples
        .front()
        .is_some_and(|s| s.at_ms < now - policy.window_ms)
        || trend.samples.len() > MAX_MEMORY_SAMPLES
    {
        trend.samples.pop_front();
    }
    let now_suspected = leak::judge(policy, trend.samples.make_contiguous()).describe();
    let newly = trend.suspected.is_none() && now_suspected.is_some();
    trend.suspected = now_suspected;
    if newly { trend.suspected.clone() } else { None }
}

/// Samples a window is judged on, at most: one per window/60 (5 s for the default 5 minutes,
/// every heartbeat for windows up to a minute).
const SAMPLES_PER_WINDOW: i64 = 60;
/// Samples kept per instance whatever the window.
const MAX_MEMORY_SAMPLES: usize = 2 * SAMPLES_PER_WINDOW as usize;

/// What the core's quarantine decision needs of a registration.
pub(super) fn registration(reg: &Registration) -> adoption::Registration<'_> {
    adoption::Registration {
        node: &reg.node_name,
        cluster_id: &reg.cluster_id,
        renamed_from: &reg.renamed_from,
        generation: reg.generation,
        held: reg.held.len() + reg.held_unreadable,
    }
}

/// Refuses a registration whose names or texts the coordinator would store, show or use as a
/// key unchecked: the node names (a cgroup and the etcd store's keys are named after them),
/// labels (bounded as constraints are), and the free texts (no NUL, bounded), each error naming
/// its field.
fn check_registration(reg: &Registration) -> Result<()> {
    use pmcluster_spec::limits::{MAX_NAME_BYTES, check_text};
    let invalid = |e: pmcluster_spec::SpecError| {
        ControlError::InvalidArgument(format!("{}: {}", e.field, e.message))
    };
    pmcluster_spec::app::validate_node_name(&reg.node_name).map_err(invalid)?;
    if !reg.renamed_from.is_empty() {
        pmcluster_spec::app::validate_node_name(&reg.renamed_from).map_err(|e| {
            invalid(pmcluster_spec::SpecError {
                field: "renamed_from".into(),
                ..e
            })
        })?;
    }
    for (key, value) in &reg.labels {
        if key.is_empty() {
            return Err(ControlError::InvalidArgument(
                "labels: a label key is empty".into(),
            ));
        }
        check_text("labels", key, MAX_NAME_BYTES).map_err(invalid)?;
        check_text(&format!("labels.{key}"), value, MAX_NAME_BYTES).map_err(invalid)?;
    }
    for (field, value) in [
        ("hostname", &reg.hostname),
        ("agent_version", &reg.agent_version),
        ("advertise_address", &reg.advertise_address),
        ("agent_id", &reg.agent_id),
        ("cluster_id", &reg.cluster_id),
    ] {
        check_text(field, value, MAX_NAME_BYTES).map_err(invalid)?;
    }
    if !reg.advertise_address.is_empty() {
        pmcluster_spec::address::validate_address("advertise_address", &reg.advertise_address)
            .map_err(invalid)?;
    }
    Ok(())
}

/// The event of an instance's new state: `web[0] is online: restarted: ...`. A message that
/// already starts with the state (the agent's `exited with code 0`) follows the instance
/// directly, not after `is exited:`, which would say it twice.
pub(super) fn state_text(app: &str, index: u32, state: &str, message: &str) -> String {
    let says_state = message
        .strip_prefix(state)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ':', ';', ',']));
    match () {
        _ if message.is_empty() => format!("{app}[{index}] is {state}"),
        _ if says_state => format!("{app}[{index}] {message}"),
        _ => format!("{app}[{index}] is {state}: {message}"),
    }
}
