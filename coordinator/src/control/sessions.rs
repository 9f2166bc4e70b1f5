//! Agent sessions: attach (quarantine or rename), status reports (the heartbeat), detach.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::model::{AppRecord, Batch, InstanceRecord, NodeRecord, Persisted};

use super::events::EventKind;
use super::views::state_name;
use super::write::{self, publish};
use super::{
    Attached, Control, ControlError, Inner, Result, Session, is_quarantined, is_ready,
    new_node_live,
};

impl Control {
    /// Registers a node's session. Refuses a name whose session is still alive.
    pub fn attach(&self, reg: &pb::Register, peer: Option<std::net::IpAddr>) -> Result<Attached> {
        pmcluster_spec::app::validate_name(&reg.node_name)
            .map_err(|e| ControlError::InvalidArgument(format!("node_name: {}", e.message)))?;
        let mut inner = self.lock();
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
            inner.log_routes.retain(|_, r| r.node != name);
        }
        let quarantine = quarantine_reason(&inner.state, reg);
        let mut batch = Batch::default();
        let mut renamed = None;
        if quarantine.is_none() && !reg.renamed_from.is_empty() && reg.renamed_from != name {
            renamed = self.rename_batch(&inner, &reg.renamed_from, &name, &mut batch)?;
        }
        let known = inner.state.nodes.get(&name).or(renamed.as_ref()).cloned();
        let record = NodeRecord {
            name: name.clone(),
            labels: reg.labels.clone().into_iter().collect(),
            cores: reg.cores,
            memory_bytes: reg.memory_bytes,
            hostname: reg.hostname.clone(),
            agent_version: reg.agent_version.clone(),
            generation: known.as_ref().map(|n| n.generation).unwrap_or(0),
            drain: known.as_ref().is_some_and(|n| n.drain),
            address: if reg.advertise_address.is_empty() {
                peer.map(|p| p.to_string()).unwrap_or_default()
            } else {
                reg.advertise_address.clone()
            },
        };
        if inner.state.nodes.get(&name) != Some(&record) {
            batch.put_nodes.push(record);
        }
        if !batch.is_empty() {
            write::commit(self.store.as_ref(), &mut inner.state, &batch)?;
        }
        let session_id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (commands_tx, commands) = mpsc::channel(256);
        let (closer, closed) = watch::channel(());
        let now = inner.now;
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
        live.held = reg.held.clone();
        live.reported_generation = reg.generation;
        live.adopting = false;
        if quarantine.is_some() {
            // Nothing goes to a quarantined node, not even the set published at load.
            live.desired.send_replace(None);
        }
        let desired = live.desired.subscribe();
        for st in &reg.instances {
            if let Ok(id) = st.instance_id.parse::<Uuid>() {
                inner.observed.insert(id, st.clone());
            }
        }
        if let Some(old) = &renamed {
            inner.nodes.remove(&old.name);
        }
        publish(&mut inner, &name);
        // A new node may take pending instances.
        inner.reconcile_due = true;
        if let Err(e) = self.write(&mut inner, Batch::default()) {
            tracing::error!(error = %e, "reconcile after node registration failed");
        }
        let cluster_id = inner.state.cluster_id.clone();
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
            None => self.emit(
                EventKind::NodeUp,
                "",
                &name,
                None,
                format!("node {name} connected"),
            ),
        }
        Ok(Attached {
            session_id,
            desired,
            commands,
            closed,
            heartbeat_interval: self.config.heartbeat_interval,
            cluster_id,
            quarantine: quarantine.unwrap_or_default(),
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
    pub fn report(&self, node: &str, session_id: u64, report: pb::StatusReport) {
        let mut inner = self.lock();
        let Some(live) = inner.nodes.get_mut(node) else {
            return;
        };
        if live.session.as_ref().map(|s| s.id) != Some(session_id) {
            return;
        }
        live.last_heartbeat_ms = self.now();
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
        for st in report.instances {
            let Ok(id) = st.instance_id.parse::<Uuid>() else {
                continue;
            };
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
            let (app, index) = (rec.app.clone(), rec.index);
            let before = inner.observed.get(&id).map(|o| o.state);
            let online = pb::InstanceState::Online as i32;
            if (before == Some(online)) != (st.state == online) {
                // Handoffs and drains wait for instances to come online.
                inner.reconcile_due = true;
                self.changed.notify_one();
            }
            if st.state == pb::InstanceState::Online as i32 {
                let now = inner.now;
                inner.online_since.entry(id).or_insert(now);
            } else {
                inner.online_since.remove(&id);
            }
            if before != Some(st.state) {
                changes.push((app, index, st.state, st.message.clone()));
            }
            inner.observed.insert(id, st);
        }
        drop(inner);
        for (app, index, state, message) in changes {
            let state = state_name(state);
            let text = if message.is_empty() {
                format!("{app}[{index}] is {state}")
            } else {
                format!("{app}[{index}] is {state}: {message}")
            };
            self.emit(EventKind::InstanceState, &app, node, Some(index), text);
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
        inner.reconcile_due = true;
        self.changed.notify_one();
        inner.log_routes.retain(|_, r| r.node != node);
        drop(inner);
        self.emit(
            EventKind::NodeDown,
            "",
            node,
            None,
            format!("node {node} disconnected"),
        );
    }
}

/// Why a registering agent must be quarantined: it serves another cluster, or it applied a
/// newer desired set than this coordinator's record of the node (the store lost writes or was
/// restored). Either way this coordinator's view of the node is not to be trusted over the
/// agent's, so it sends nothing until an operator adopts the node.
pub(super) fn quarantine_reason(state: &Persisted, reg: &pb::Register) -> Option<String> {
    let name = &reg.node_name;
    let n = reg.held.len();
    let adopt = format!(
        "its {n} instance(s) keep running; to make them this cluster's, run 'pmcluster nodes adopt {name}'"
    );
    if !reg.cluster_id.is_empty() && reg.cluster_id != state.cluster_id {
        return Some(format!(
            "the agent belongs to cluster {}, this coordinator serves cluster {} (a lost or \
             replaced store?); {adopt}",
            reg.cluster_id, state.cluster_id
        ));
    }
    // A renamed node brings the generations of its old name.
    let known = state
        .nodes
        .get(name)
        .or_else(|| state.nodes.get(&reg.renamed_from))
        .map(|n| n.generation)
        .unwrap_or(0);
    if reg.generation > known {
        return Some(format!(
            "the agent applied desired-set generation {}, but this coordinator's store knows the \
             node only up to generation {known} (a lost or restored store?); {adopt}",
            reg.generation
        ));
    }
    None
}

/// The records that make a quarantined node's held instances this cluster's. Apps that do not
/// exist are created from the agent's spec, with enough instances for every held index. A held
/// instance is taken only where it fits: its app has the same process spec (else the reconciler
/// replaces it), and its index has no placed record already (a pending one is replaced by it).
pub(super) fn adoption_batch(
    state: &Persisted,
    node: &str,
    held: &[pb::Assignment],
    now: i64,
) -> Batch {
    let mut batch = Batch::default();
    let mut apps: BTreeMap<String, AppRecord> = BTreeMap::new();
    let mut taken: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut sorted: Vec<&pb::Assignment> = held.iter().collect();
    sorted.sort_by_key(|a| (a.index, a.instance_id.clone()));
    for a in sorted {
        let Ok(id) = a.instance_id.parse::<Uuid>() else {
            continue;
        };
        let Some(Ok(spec)) = a.spec.clone().map(AppSpec::try_from) else {
            continue;
        };
        if state.instances.contains_key(&id) {
            continue;
        }
        let name = spec.name.clone();
        // An app this cluster had (or an earlier held instance created) keeps its count: an
        // index beyond it is not wanted. A new app counts what its spec says, or more.
        let (mut app, existed) = match apps.get(&name).or(state.apps.get(&name)) {
            Some(app) => (app.clone(), state.apps.contains_key(&name)),
            None => (
                AppRecord {
                    version: a.app_version.max(1),
                    ..AppRecord::new(spec.clone(), now)
                },
                false,
            ),
        };
        if !app.spec.same_process(&spec)
            || (existed && a.index >= app.spec.instances)
            || !taken.insert((name.clone(), a.index))
        {
            continue;
        }
        let occupied = state
            .app_instances(&name)
            .iter()
            .filter(|r| r.index == a.index && r.draining_since.is_none())
            .any(|r| r.node.is_some());
        if occupied {
            continue;
        }
        for r in state.app_instances(&name) {
            if r.index == a.index && r.node.is_none() {
                batch.del_instances.push(r.id);
            }
        }
        if app.spec.instances <= a.index {
            app.spec.instances = a.index + 1;
        }
        batch.put_instances.push(InstanceRecord {
            id,
            app: name.clone(),
            index: a.index,
            node: Some(node.to_string()),
            port: u16::try_from(a.port).ok().filter(|p| *p != 0),
            app_version: app.version,
            restart_epoch: a.restart_epoch,
            stopped: !a.run,
            replaces: None,
            draining_since: None,
            created_ms: now,
        });
        apps.insert(name, app);
    }
    for (name, app) in apps {
        if state.apps.get(&name) != Some(&app) {
            batch.put_apps.push(app);
        }
    }
    batch
}
