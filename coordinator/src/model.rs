//! Plain data the coordinator keeps: desired state (apps, instance assignments, rollouts) that is
//! persisted, and node records; and what the control takes and gives (`agent`: the messages of an
//! agent session; `view`: read-only views; `event`: the event feed). No I/O and no async here,
//! and no import of the rest of the crate: the core computes over these records, never the other
//! way round, and `wire` converts them to and from the protocol.

use std::collections::BTreeMap;

pub mod agent;
pub mod event;
pub mod index;
pub mod view;

pub use agent::{
    Assignment, CommandResult, Delivery, DesiredSet, Handout, HostMetrics, InstanceCommand,
    InstanceObserved, LogChunk, LogLine, LogRequest, LogStream, LogsQuery, Registration, Report,
};
pub use event::{Event, EventKind};
pub use index::{NodeUse, RecordIndex};
pub use view::{
    AppView, AutoscaleView, Endpoint, EndpointsView, Health, InstanceState, InstanceView,
    NodeStatus, NodeView, Rollouts,
};

use pmcluster_spec::AppSpec;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An app as stored: its spec (whose `instances` is the desired count) and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub spec: AppSpec,
    /// Incremented by every apply that changes the spec (instance count aside).
    pub version: u64,
    pub updated_at_ms: i64,
    /// Earlier specs by version, for instances still running them during a rollout and for
    /// `rollout undo`. The current spec is `spec`.
    #[serde(default)]
    pub versions: BTreeMap<u64, AppSpec>,
    /// The running rollout, or the last one.
    #[serde(default)]
    pub deployment: Option<Deployment>,
    /// Finished rollouts, oldest first (the last 20).
    #[serde(default)]
    pub history: Vec<Deployment>,
    /// The autoscaler's changes, oldest first (the last 20), kept with the app so that
    /// `autoscale APP` shows them after a coordinator restart and however busy the event feed is.
    #[serde(default)]
    pub scaled: Vec<ScaleDecision>,
}

/// One change the autoscaler made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleDecision {
    pub at_ms: i64,
    /// E.g. `cpu avg 86% > 70% for 30s: 4 -> 5`.
    pub reason: String,
}

/// Most autoscaler decisions kept per app.
pub const SCALE_DECISIONS_KEPT: usize = 20;

impl AppRecord {
    /// A new app at version 1.
    pub fn new(spec: AppSpec, now_ms: i64) -> AppRecord {
        AppRecord {
            spec,
            version: 1,
            updated_at_ms: now_ms,
            versions: BTreeMap::new(),
            deployment: None,
            history: Vec::new(),
            scaled: Vec::new(),
        }
    }

    /// The spec instances of `version` run.
    pub fn spec_of(&self, version: u64) -> &AppSpec {
        if version == self.version {
            &self.spec
        } else {
            self.versions.get(&version).unwrap_or(&self.spec)
        }
    }

    /// Whether a rollout is under way.
    pub fn rolling(&self) -> bool {
        self.deployment.as_ref().is_some_and(|d| d.state.active())
    }

    /// Whether the rollout to the app's version failed and was not rolled back: the instances
    /// still on an earlier version keep it (they are what serves) until an undo or a new
    /// version, as the old side of a failed Kubernetes deployment does. A failed rolling restart
    /// holds nothing: its instances all run the app's version, restarted or not.
    pub fn held_by_failure(&self) -> bool {
        self.deployment.as_ref().is_some_and(|d| {
            d.state == State::Failed && d.to_version == self.version && d.kind != Kind::Restart
        })
    }

    /// The version that still serves after a failed rollout was left standing, while its spec
    /// is kept: where the next rollout starts from, what an undo returns to, and what new and
    /// moved indices run meanwhile.
    pub fn held_version(&self) -> Option<u64> {
        self.deployment
            .as_ref()
            .filter(|d| self.held_by_failure() && self.versions.contains_key(&d.from_version))
            .map(|d| d.from_version)
    }
}

/// One placed (or pending) instance of an app: the unit the scheduler decides about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// New for every placement, so an agent can tell a replacement from the instance it runs.
    pub id: Uuid,
    pub app: String,
    pub index: u32,
    /// `None` while pending (no ready node could take it).
    pub node: Option<String>,
    /// Fixed port from the app's range; `None` for no port or `auto:` ports.
    pub port: Option<u16>,
    pub app_version: u64,
    /// Bumped by Restart; the agent restarts the process when it sees a higher epoch.
    pub restart_epoch: u64,
    /// Stopped by a user: kept in the app but not run.
    pub stopped: bool,
    /// The record of the same index this one takes over from once online (a migration off a
    /// draining node). Both run meanwhile; the old one is removed after the handoff.
    #[serde(default)]
    pub replaces: Option<Uuid>,
    /// Being replaced in a rollout: no longer an endpoint since this time (ms); removed after the
    /// app's shutdown_delay.
    #[serde(default)]
    pub draining_since: Option<i64>,
    /// When the record was created (ms), for the rollout's healthy deadline.
    #[serde(default)]
    pub created_ms: i64,
    /// Nodes where this index could not start (see `core::reconcile`, *unstartable*): a move
    /// leaves them out. Empty for nearly every record, so not written then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// Out of rotation (`pmcluster disable`): it runs, but is no endpoint until enabled. A new
    /// record of the index (a move, a rollout's replacement) starts enabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// An API token. Only a hash of its secret is kept: the bearer value is shown once, when made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public part of the bearer value (`pmc_<id>_<secret>`): lists and revocation use it.
    pub id: String,
    /// SHA-256 of the whole bearer value, lowercase hex.
    pub hash: String,
    pub role: crate::core::access::Role,
    /// For `operate`: the apps it may change (a glob); `None` is every app.
    #[serde(default)]
    pub apps: Option<String>,
    #[serde(default)]
    pub description: String,
    pub created_ms: i64,
    #[serde(default)]
    pub created_by: String,
}

/// A node as registered by its agent. Persisted so assignments survive a coordinator restart
/// while the agent reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub hostname: String,
    pub agent_version: String,
    /// Generation of the last desired set computed for this node.
    pub generation: u64,
    /// A drain was requested: the node takes no new instances and its instances move off.
    #[serde(default)]
    pub drain: bool,
    /// Where its instances are reached (advertised, or the agent connection's source address).
    #[serde(default)]
    pub address: String,
    /// The highest generation its agent may have been sent: `generation` as of the node's last
    /// commit while an agent was attached to it unquarantined, or being adopted. Writes while
    /// no agent is there move `generation` but not this, so that an agent registering above it
    /// applied a set this store never made (it lost writes, or was restored from an older
    /// copy), however many writes came since. `None` in records written before it was kept:
    /// `generation` stands in (see [`NodeRecord::sent_up_to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_generation: Option<u64>,
    /// Restarts asked while no agent of the node was attached, by instance, with the epoch each
    /// asked: a record's epoch may be behind what the agent runs (a store restored from an
    /// older copy), so one step up may ask for a restart the agent already did. Checked at the
    /// agent's next unquarantined registration, or the node's adoption, in the write that then
    /// empties it (see `control::raised_restarts`). Stored, so a coordinator restarted in
    /// between still carries them out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarts_unseen: BTreeMap<Uuid, u64>,
}

impl NodeRecord {
    /// The highest generation this node's agent may hold, by this store.
    pub fn sent_up_to(&self) -> u64 {
        self.sent_generation.unwrap_or(self.generation)
    }
}

/// A node forgotten with `nodes forget`, kept after its record goes: an agent that comes back
/// under that name is then known for one this store forgot, not one it never knew (a store
/// that lost writes or was restored), and joins afresh instead of being quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenNode {
    pub name: String,
    /// The record's [`NodeRecord::sent_up_to`]: an agent above it applied sets this store
    /// never made, and is quarantined as before.
    pub sent_up_to: u64,
    /// The record's generation: the node's sets go on from it, so none goes back.
    pub generation: u64,
    pub forgotten_ms: i64,
}

/// Forgotten nodes kept, at most: the oldest goes first. A node forgotten longer ago than 1,024
/// others that comes back is quarantined, as one the store never knew.
pub const MAX_FORGOTTEN: usize = 1024;

/// Everything the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    pub apps: BTreeMap<String, AppRecord>,
    pub instances: BTreeMap<Uuid, InstanceRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Nodes forgotten, by name; a name is never both here and in `nodes`.
    pub forgotten: BTreeMap<String, ForgottenNode>,
    /// API tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Highest desired-set generation handed out, cluster-wide.
    pub generation: u64,
    /// Made once, when the store is created. Agents remember it: a coordinator that lost its
    /// state comes back with another id, and they refuse its desired sets until adopted.
    pub cluster_id: String,
    /// Sums over `instances`, kept by [`Persisted::apply`]; not stored. Code that fills
    /// `instances` directly (a store loading) calls [`Persisted::reindex`] after.
    pub index: RecordIndex,
}

/// A set of changes written to the store in one transaction, then applied in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub put_apps: Vec<AppRecord>,
    pub del_apps: Vec<String>,
    pub put_instances: Vec<InstanceRecord>,
    pub del_instances: Vec<Uuid>,
    pub put_nodes: Vec<NodeRecord>,
    /// Nodes forgotten (`nodes forget`) or renamed away.
    pub del_nodes: Vec<String>,
    pub put_forgotten: Vec<ForgottenNode>,
    /// Forgotten nodes that came back, or were let go for newer ones.
    pub del_forgotten: Vec<String>,
    pub put_tokens: Vec<TokenRecord>,
    /// Tokens revoked, by id.
    pub del_tokens: Vec<String>,
    pub generation: Option<u64>,
    /// Set once, by the first commit to a new store.
    pub cluster_id: Option<String>,
}

impl Batch {
    /// A batch that writes one app record.
    pub fn app(record: AppRecord) -> Batch {
        Batch {
            put_apps: vec![record],
            ..Batch::default()
        }
    }

    /// One batch that does what `batches` do applied one after another: the transaction of a
    /// group commit. Each key ends up either put (its last record) or deleted, never both, so
    /// the result means the same whichever order a store applies puts and deletes in.
    pub fn merged(batches: &[&Batch]) -> Batch {
        /// A key's last word: `Some` put, `None` deleted.
        fn fold<K: Ord, V: Clone>(
            last: &mut BTreeMap<K, Option<V>>,
            puts: impl Iterator<Item = (K, V)>,
            dels: impl Iterator<Item = K>,
        ) {
            for (k, v) in puts {
                last.insert(k, Some(v));
            }
            for k in dels {
                last.insert(k, None);
            }
        }
        fn split<K, V>(last: BTreeMap<K, Option<V>>) -> (Vec<V>, Vec<K>) {
            let (mut puts, mut dels) = (Vec::new(), Vec::new());
            for (k, v) in last {
                match v {
                    Some(v) => puts.push(v),
                    None => dels.push(k),
                }
            }
            (puts, dels)
        }
        let (mut apps, mut instances, mut nodes, mut tokens, mut forgotten) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        let mut out = Batch::default();
        for b in batches {
            fold(
                &mut apps,
                b.put_apps.iter().map(|a| (a.spec.name.clone(), a.clone())),
                b.del_apps.iter().cloned(),
            );
            fold(
                &mut instances,
                b.put_instances.iter().map(|i| (i.id, i.clone())),
                b.del_instances.iter().copied(),
            );
            fold(
                &mut nodes,
                b.put_nodes.iter().map(|n| (n.name.clone(), n.clone())),
                b.del_nodes.iter().cloned(),
            );
            fold(
                &mut tokens,
                b.put_tokens.iter().map(|t| (t.id.clone(), t.clone())),
                b.del_tokens.iter().cloned(),
            );
            fold(
                &mut forgotten,
                b.put_forgotten.iter().map(|f| (f.name.clone(), f.clone())),
                b.del_forgotten.iter().cloned(),
            );
            if b.generation.is_some() {
                out.generation = b.generation;
            }
            if b.cluster_id.is_some() {
                out.cluster_id.clone_from(&b.cluster_id);
            }
        }
        (out.put_apps, out.del_apps) = split(apps);
        (out.put_instances, out.del_instances) = split(instances);
        (out.put_nodes, out.del_nodes) = split(nodes);
        (out.put_tokens, out.del_tokens) = split(tokens);
        (out.put_forgotten, out.del_forgotten) = split(forgotten);
        out
    }

    pub fn is_empty(&self) -> bool {
        self.put_apps.is_empty()
            && self.del_apps.is_empty()
            && self.put_instances.is_empty()
            && self.del_instances.is_empty()
            && self.put_nodes.is_empty()
            && self.del_nodes.is_empty()
            && self.put_forgotten.is_empty()
            && self.del_forgotten.is_empty()
            && self.put_tokens.is_empty()
            && self.del_tokens.is_empty()
            && self.generation.is_none()
            && self.cluster_id.is_none()
    }
}

impl Persisted {
    /// Applies a batch that the store has accepted.
    pub fn apply(&mut self, batch: &Batch) {
        // The index counts each record at its app's reservation. A batch that changes the
        // reservation of an app with records, or one applied to a state whose index is not
        // current, builds the index again; any other takes its records out before they change
        // and puts them back after.
        let rebuild = self.index.records != self.instances.len()
            || batch.put_apps.iter().any(|a| {
                let name = a.spec.name.as_str();
                self.index.holds(name)
                    && index::reservation(self.apps.get(name)) != index::reservation(Some(a))
            })
            || (batch.del_apps.iter()).any(|name| {
                self.index.holds(name) && index::reservation(self.apps.get(name)) != (0, 0)
            });
        let mut ids: Vec<Uuid> = Vec::new();
        if !rebuild {
            ids.extend(batch.put_instances.iter().map(|i| i.id));
            ids.extend(batch.del_instances.iter().copied());
            ids.sort_unstable();
            ids.dedup();
            for id in &ids {
                if let Some(old) = self.instances.get(id) {
                    self.index.sub(old, &self.apps);
                }
            }
        }
        for app in &batch.put_apps {
            self.apps.insert(app.spec.name.clone(), app.clone());
        }
        for name in &batch.del_apps {
            self.apps.remove(name);
        }
        for inst in &batch.put_instances {
            self.instances.insert(inst.id, inst.clone());
        }
        for id in &batch.del_instances {
            self.instances.remove(id);
        }
        for node in &batch.put_nodes {
            self.nodes.insert(node.name.clone(), node.clone());
        }
        for name in &batch.del_nodes {
            self.nodes.remove(name);
        }
        for node in &batch.put_forgotten {
            self.forgotten.insert(node.name.clone(), node.clone());
        }
        for name in &batch.del_forgotten {
            self.forgotten.remove(name);
        }
        for token in &batch.put_tokens {
            self.tokens.insert(token.id.clone(), token.clone());
        }
        for id in &batch.del_tokens {
            self.tokens.remove(id);
        }
        if let Some(g) = batch.generation {
            self.generation = g;
        }
        if let Some(id) = &batch.cluster_id {
            self.cluster_id.clone_from(id);
        }
        if rebuild {
            self.reindex();
        } else {
            for id in &ids {
                if let Some(new) = self.instances.get(id) {
                    self.index.add(new, &self.apps);
                }
            }
        }
    }

    /// Builds the index from the records, after they were filled without [`Persisted::apply`].
    pub fn reindex(&mut self) {
        self.index = RecordIndex::build(&self.apps, &self.instances);
    }

    /// The index, when it is current. Debug builds check it against one built afresh.
    pub fn index(&self) -> Option<&RecordIndex> {
        if self.index.records != self.instances.len() {
            return None;
        }
        debug_assert!(
            self.index
                .matches(&RecordIndex::build(&self.apps, &self.instances)),
            "the record index differs from the records: {:?}",
            self.index
        );
        Some(&self.index)
    }

    /// Instances of one app, sorted by index.
    pub fn app_instances(&self, app: &str) -> Vec<&InstanceRecord> {
        if let Some(index) = self.index() {
            return (index.of_app(app).into_iter().flatten())
                .filter_map(|(_, id)| self.instances.get(id))
                .collect();
        }
        let mut v: Vec<&InstanceRecord> =
            self.instances.values().filter(|i| i.app == app).collect();
        v.sort_by_key(|i| (i.index, i.id));
        v
    }
}

/// What a rollout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A new version.
    Update,
    /// Same version, fresh processes (`restart --rolling`).
    Restart,
    /// Back to an earlier version after a failure (or `rollout undo`).
    Rollback,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Running,
    Paused,
    /// The canaries are healthy; waiting for `rollout promote`.
    AwaitingPromotion,
    Succeeded,
    Failed,
    /// Failed, and a rollback deployment replaced it.
    RolledBack,
    /// Replaced by a newer deployment before it finished.
    Superseded,
}

impl State {
    pub fn active(self) -> bool {
        matches!(
            self,
            State::Running | State::Paused | State::AwaitingPromotion
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::AwaitingPromotion => "awaiting promotion",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled back",
            State::Superseded => "superseded",
        }
    }
}

/// A rollout of one app, persisted with the app so a coordinator restart resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub kind: Kind,
    pub from_version: u64,
    pub to_version: u64,
    /// Rolling restart: records below this restart epoch are outdated.
    pub restart_epoch: u64,
    pub state: State,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// Last time an index finished (or the start).
    pub progress_ms: i64,
    pub promoted: bool,
    pub message: String,
    /// Indices finished, of `total`, as of the last step.
    pub done: u32,
    pub total: u32,
}
