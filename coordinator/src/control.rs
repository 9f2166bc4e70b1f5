//! The control shell: owns the in-memory state, turns user commands and agent reports into store
//! batches, runs the reconciler on every change, and publishes each node's desired set.
//!
//! Every change follows one path, [`Control::write`]: command batch -> reconcile on the result ->
//! generations for touched nodes -> one store commit -> apply in memory -> publish. Nothing is
//! applied in memory or sent to an agent before the store has accepted it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::autoscale::AutoscalePolicy;
use pmcluster_spec::{AppSpec, SpecError};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::core::autoscale::{self, Decision, Sample};
use crate::core::reconcile::{self, Link, NodeView, Plan, Snapshot};
use crate::core::rollout::{self, Deployment, Facts, Kind, State};
use crate::core::scheduler;
use crate::limits;
use crate::model::{
    AppRecord, Batch, InstanceRecord, NodeRecord, Persisted, SCALE_DECISIONS_KEPT, ScaleDecision,
};
use crate::store::{Store, StoreError};

/// Knobs of the control loop.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// How often agents report; sent to them at registration.
    pub heartbeat_interval: Duration,
    /// A connected node that has not reported for this long is considered down.
    pub heartbeat_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = ControlError> = std::result::Result<T, E>;

/// A user command that targets an app or one of its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

/// Messages to an agent besides its desired set.
#[derive(Debug, Clone)]
pub enum AgentCommand {
    Logs(pb::LogRequest),
    CancelLogs(u64),
}

/// Live side of a node: its session (if connected) and last report.
struct NodeLive {
    /// Latest desired set; the session task sends each new value.
    desired: watch::Sender<Option<pb::DesiredSet>>,
    session: Option<Session>,
    last_heartbeat_ms: i64,
    host: Option<pb::HostMetrics>,
    /// Unix ms the node was last seen going down; `None` while connected.
    down_since_ms: Option<i64>,
    /// The instances the agent said it holds at registration (see `pb::Register::held`).
    held: Vec<pb::Assignment>,
    /// Highest desired-set generation the agent reported applying.
    reported_generation: u64,
    /// Adopted by an operator and not yet confirmed by a report: its sets carry `adopt`.
    adopting: bool,
}

struct Session {
    id: u64,
    /// The agent's persistent id (empty for agents that send none).
    agent_id: String,
    commands: mpsc::Sender<AgentCommand>,
    /// Dropped to end the session's outbound stream.
    _closer: watch::Sender<()>,
    /// Why the node is quarantined: nothing is sent to it or placed on it until adopted.
    quarantine: Option<String>,
}

/// Where the lines of one log request go.
struct LogRoute {
    node: String,
    lines: mpsc::Sender<Result<pb::LogLine, tonic::Status>>,
    /// Lines dropped since the reader last had room; announced to it once it has room again.
    dropped: u64,
}

struct Inner {
    /// The time of the current critical section (see `Control::lock`).
    now: i64,
    state: Persisted,
    nodes: BTreeMap<String, NodeLive>,
    observed: HashMap<Uuid, pb::InstanceStatus>,
    log_routes: HashMap<u64, LogRoute>,
    /// Why instances of an app are pending, from the last reconcile.
    pending: BTreeMap<String, String>,
    /// Since when each instance has been reported online without a break.
    online_since: HashMap<Uuid, i64>,
    /// Autoscaler memory per app: metric history and last change.
    scaling: BTreeMap<String, Scaling>,
    last_sample_ms: i64,
    /// Something the reconciler looks at changed since it last ran (a node came, went or
    /// lapsed, an instance went on- or offline, a write committed). The reconciler is a pure
    /// function of that state and the clock, so while this is false and its follow-up time has
    /// not come, a tick skips it: with 100,000 pending instances, re-placing them four times a
    /// second held a core and the lock.
    reconcile_due: bool,
    /// When the last reconcile said something becomes due (a lost node's reschedule, the end
    /// of a drain delay).
    followup_at: Option<i64>,
}

/// What the autoscaler remembers of one app (in memory: a coordinator restart starts afresh).
#[derive(Default)]
struct Scaling {
    history: VecDeque<Sample>,
    last_change_ms: Option<i64>,
    last_reason: String,
}

/// Instances per `ListInstances` page unless the client asks for another size, and the most it
/// may ask for: a page of views is built under the state lock, so it must stay short.
const DEFAULT_INSTANCE_PAGE: u32 = 1000;
const MAX_INSTANCE_PAGE: u32 = 5000;
/// Apps per `ListApps` page, likewise (an app's view carries its spec, up to 1 MiB).
const DEFAULT_APP_PAGE: u32 = 100;
const MAX_APP_PAGE: u32 = 1000;

/// Where a `ListInstances` page ends, as its token says: the sort key of its last instance.
#[derive(Debug, PartialEq, Eq)]
struct InstanceKey {
    app: String,
    index: u32,
    id: Uuid,
}

impl InstanceKey {
    /// `index/id/app`: the app name last, so that it needs no escaping.
    fn token(app: &str, index: u32, id: &str) -> String {
        format!("{index}/{id}/{app}")
    }

    fn parse(token: &str) -> Result<Option<InstanceKey>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            ControlError::InvalidArgument(
                "page_token: not a token this coordinator gave; list again without it".into(),
            )
        };
        let mut parts = token.splitn(3, '/');
        let index = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let id = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let app = parts.next().filter(|a| !a.is_empty()).ok_or_else(bad)?;
        Ok(Some(InstanceKey {
            app: app.to_string(),
            index,
            id,
        }))
    }

    /// Whether `key` sorts after this one (and so belongs to a later page).
    fn is_before(&self, key: &(&str, u32, Uuid)) -> bool {
        (self.app.as_str(), self.index, self.id) < *key
    }
}

/// Placements of one app in one write that still get an event each; more get one event.
const EVENTS_PER_WRITE: usize = 20;

/// Most samples kept per app (one a second): an hour.
const MAX_SAMPLES: usize = 3600;
/// Most recent events kept for `events` and `autoscale` history.
const RECENT_EVENTS: usize = 1000;

pub struct Control {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
    events: broadcast::Sender<pb::Event>,
    /// The last events, for late watchers (`events --history`) and autoscale status.
    recent: Mutex<VecDeque<pb::Event>>,
    config: ControlConfig,
    ids: AtomicU64,
    /// The time and fresh ids: an input, so tests and the simulation can drive them.
    clock: Arc<dyn Clock>,
}

/// What a new agent session receives.
pub struct Attached {
    pub session_id: u64,
    pub desired: watch::Receiver<Option<pb::DesiredSet>>,
    pub commands: mpsc::Receiver<AgentCommand>,
    pub closed: watch::Receiver<()>,
    pub heartbeat_interval: Duration,
    pub cluster_id: String,
    /// Why the node is quarantined (empty: it is not).
    pub quarantine: String,
}

fn new_node_live(now: i64) -> NodeLive {
    NodeLive {
        desired: watch::Sender::new(None),
        session: None,
        last_heartbeat_ms: 0,
        host: None,
        down_since_ms: Some(now),
        held: Vec::new(),
        reported_generation: 0,
        adopting: false,
    }
}

fn is_quarantined(live: &NodeLive) -> bool {
    live.session
        .as_ref()
        .is_some_and(|s| s.quarantine.is_some())
}

impl Control {
    /// Loads the state from `store` and publishes every node's desired set, ready for agents to
    /// reconnect. Instances are neither started nor stopped by a restart of the coordinator.
    pub fn open(store: Arc<dyn Store>, config: ControlConfig) -> Result<Control> {
        Control::open_with(store, config, Arc::new(SystemClock::default()))
    }

    /// As [`Control::open`], with the time and ids from `clock` (a manual one in tests and the
    /// simulation).
    pub fn open_with(
        store: Arc<dyn Store>,
        config: ControlConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Control> {
        let mut state = store.load()?;
        let now = clock.now_ms();
        if state.cluster_id.is_empty() {
            // A new store is a new cluster. Agents that served another one refuse its sets, so a
            // coordinator that lost its state cannot empty them.
            let batch = Batch {
                cluster_id: Some(clock.new_id().to_string()),
                ..Batch::default()
            };
            store.commit(&batch)?;
            state.apply(&batch);
            if state.nodes.is_empty() && state.apps.is_empty() {
                tracing::info!(cluster_id = %state.cluster_id, "new cluster");
            } else {
                tracing::info!(cluster_id = %state.cluster_id, "the store had no cluster id yet; made one");
            }
        } else {
            tracing::info!(cluster_id = %state.cluster_id, "cluster loaded");
        }
        let mut nodes = BTreeMap::new();
        for name in state.nodes.keys() {
            nodes.insert(name.clone(), new_node_live(now));
        }
        let mut inner = Inner {
            state,
            nodes,
            observed: HashMap::new(),
            log_routes: HashMap::new(),
            pending: BTreeMap::new(),
            online_since: HashMap::new(),
            scaling: BTreeMap::new(),
            last_sample_ms: 0,
            reconcile_due: true,
            followup_at: None,
            now,
        };
        let names: Vec<String> = inner.nodes.keys().cloned().collect();
        for name in names {
            publish(&mut inner, &name);
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Control {
            inner: Mutex::new(inner),
            store,
            events,
            recent: Mutex::new(VecDeque::new()),
            config,
            ids: AtomicU64::new(1),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that was only ever changed after a
        // successful commit, so it is still consistent: keep serving.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // One time for the whole critical section, read under the lock so it never goes back.
        inner.now = inner.now.max(self.clock.now_ms());
        inner
    }

    /// The time of the current critical section's clock (outside one: now).
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    fn emit(&self, kind: &str, app: &str, node: &str, index: Option<u32>, message: String) {
        let event = pb::Event {
            at_ms: self.now(),
            kind: kind.to_string(),
            app: app.to_string(),
            node: node.to_string(),
            index,
            message,
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No receivers is fine: events are for watchers, not a log.
        let _ = self.events.send(event);
    }

    /// Up to `n` most recent events of `app` (all apps when empty), oldest first.
    pub fn recent_events(&self, app: &str, kind: Option<&str>, n: usize) -> Vec<pb::Event> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<pb::Event> = recent
            .iter()
            .rev()
            .filter(|e| app.is_empty() || e.app == app)
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    // ----- user commands -----

    /// Creates or updates an app. Returns the stored app, (created, changed), and the rollout a
    /// process change started.
    pub fn apply(&self, spec: AppSpec) -> Result<(pb::App, bool, bool, Option<pb::Deployment>)> {
        self.apply_keeping(spec, false)
    }

    /// [`Control::apply`], optionally keeping the app's current instance count (see
    /// `ApplyAppRequest.keep_instances`): decided under the same lock as the write, so a scale
    /// that landed after the caller read the spec stands.
    pub fn apply_keeping(
        &self,
        spec: AppSpec,
        keep_instances: bool,
    ) -> Result<(pb::App, bool, bool, Option<pb::Deployment>)> {
        let mut inner = self.lock();
        let existing = inner.state.apps.get(&spec.name).cloned();
        let spec = match &existing {
            Some(old) if keep_instances => AppSpec {
                instances_max: old.spec.instances_max,
                ..spec.with_instances(old.spec.instances)?
            },
            _ => spec,
        };
        let now = self.now();
        let (record, created, changed) = match existing {
            None => (AppRecord::new(spec, now), true, true),
            Some(old) => {
                if old.spec == spec {
                    let view = app_view(&inner, &self.config, &old);
                    return Ok((view, false, false, None));
                }
                // The version counts what runs: a new count, placement or autoscaling policy
                // changes where instances run, not what they run, so nothing restarts.
                if old.spec.same_process(&spec) {
                    let rec = AppRecord {
                        spec,
                        updated_at_ms: now,
                        ..old
                    };
                    (rec, false, true)
                } else {
                    let has_instances = !inner.state.app_instances(&old.spec.name).is_empty();
                    (
                        new_version(old, spec, now, Kind::Update, has_instances),
                        false,
                        true,
                    )
                }
            }
        };
        let deployment = record
            .deployment
            .clone()
            .filter(|d| d.state.active() && d.started_ms == now);
        let name = record.spec.name.clone();
        let (version, count) = (record.version, record.spec.instances);
        self.write(&mut inner, Batch::app(record))?;
        let view = inner
            .state
            .apps
            .get(&name)
            .map(|a| app_view(&inner, &self.config, a))
            .unwrap_or_default();
        drop(inner);
        let deployment = deployment.map(|d| deployment_view(&name, &d));
        if let Some(d) = &deployment {
            self.emit(
                "rollout.started",
                &name,
                "",
                None,
                format!(
                    "{name}: rolling out version {} (from {})",
                    d.to_version, d.from_version
                ),
            );
        }
        let what = if created { "created" } else { "updated" };
        self.emit(
            "app.applied",
            &name,
            "",
            None,
            format!("{name} {what}: version {version}, {count} instances"),
        );
        Ok((view, created, changed, deployment))
    }

    pub fn get_app(&self, name: &str) -> Result<pb::App> {
        let inner = self.lock();
        let app = find_app(&inner, name)?;
        Ok(app_view(&inner, &self.config, app))
    }

    pub fn list_apps(&self) -> Vec<pb::App> {
        let inner = self.lock();
        inner
            .state
            .apps
            .values()
            .map(|a| app_view(&inner, &self.config, a))
            .collect()
    }

    /// Forgets an app; its instances are stopped by their agents. Returns how many there were.
    pub fn delete_app(&self, name: &str) -> Result<u32> {
        let mut inner = self.lock();
        find_app(&inner, name)?;
        let removed = inner.state.app_instances(name).len() as u32;
        self.write(
            &mut inner,
            Batch {
                del_apps: vec![name.to_string()],
                ..Batch::default()
            },
        )?;
        drop(inner);
        self.emit("app.deleted", name, "", None, format!("{name} deleted"));
        Ok(removed)
    }

    /// Sets the desired count. Returns (previous, new).
    pub fn scale(&self, name: &str, count: i64) -> Result<(u32, u32)> {
        if count < 0 {
            return Err(ControlError::InvalidArgument(format!(
                "instances: {count} is negative; give a count of 0 or more"
            )));
        }
        let count = u32::try_from(count).map_err(|_| {
            ControlError::InvalidArgument(format!("instances: {count} is too large"))
        })?;
        let mut inner = self.lock();
        let app = find_app(&inner, name)?.clone();
        if let Some(p) = &app.spec.autoscale
            && !(p.min..=p.max).contains(&count)
        {
            return Err(ControlError::InvalidArgument(format!(
                "instances: {name} autoscales between {} and {}; scale within that range, or turn \
                 autoscaling off first with: pmcluster autoscale {name} --off",
                p.min, p.max
            )));
        }
        let previous = app.spec.instances;
        let spec = app.spec.with_instances(count)?;
        let mut batch = Batch {
            put_apps: vec![AppRecord {
                spec,
                updated_at_ms: self.now(),
                ..app
            }],
            ..Batch::default()
        };
        if count < previous {
            self.rebalance_moves(&inner, name, count, &mut batch);
        }
        self.write(&mut inner, batch)?;
        // A manual scale inside the bounds holds until the metrics say otherwise.
        inner
            .scaling
            .entry(name.to_string())
            .or_default()
            .last_change_ms = Some(self.now());
        drop(inner);
        self.emit(
            "app.scaled",
            name,
            "",
            None,
            format!("{name} scaled from {previous} to {count}"),
        );
        Ok((previous, count))
    }

    /// Moves that keep the app's spread even after a scale-down to `count`.
    fn rebalance_moves(&self, inner: &Inner, name: &str, count: u32, batch: &mut Batch) {
        let Some(app) = inner.state.apps.get(name) else {
            return;
        };
        let spec = &app.spec;
        // Only plain spread apps: moving instances of apps with resources or limits could break
        // a rule the scheduler honoured when it placed them.
        if spec.placement.strategy != pmcluster_spec::placement::Strategy::Spread
            || spec.placement.max_per_node.is_some()
            || spec.resources != pmcluster_spec::app::Resources::default()
        {
            return;
        }
        let ready: Vec<String> = ready_nodes(inner, &self.config)
            .into_iter()
            .filter(|n| {
                inner.state.nodes.get(n).is_some_and(|rec| {
                    !rec.drain
                        && spec
                            .placement
                            .constraints
                            .iter()
                            .all(|c| c.matches(&rec.labels))
                })
            })
            .collect();
        let mut placed: BTreeMap<String, Vec<u32>> =
            ready.iter().map(|n| (n.clone(), Vec::new())).collect();
        let mut by_index = BTreeMap::new();
        for inst in inner.state.app_instances(name) {
            if inst.index >= count {
                continue;
            }
            if let Some(v) = inst.node.as_ref().and_then(|n| placed.get_mut(n)) {
                v.push(inst.index);
                by_index.insert(inst.index, inst.clone());
            }
        }
        // With a shutdown_delay the app asked for graceful stops: a move is a handoff (the new
        // copy replaces the old one once online, and the old one then drains), as in a node
        // drain. Without one it is a plain move, which also works when two agents share a host
        // and a fixed port.
        let handoff = !spec.update.shutdown_delay.is_zero();
        let now = self.now();
        for (index, _from, to) in scheduler::rebalance(&placed) {
            if let Some(old) = by_index.get(&index) {
                if !handoff {
                    batch.del_instances.push(old.id);
                }
                batch.put_instances.push(InstanceRecord {
                    id: self.clock.new_id(),
                    node: Some(to),
                    replaces: handoff.then_some(old.id),
                    draining_since: None,
                    created_ms: now,
                    ..old.clone()
                });
            }
        }
    }

    /// Starts, stops or restarts the app's instances, or one of them.
    pub fn act(&self, name: &str, index: Option<u32>, action: Action) -> Result<u32> {
        let mut inner = self.lock();
        let app = find_app(&inner, name)?;
        if let Some(i) = index
            && i >= app.spec.instances
        {
            return Err(ControlError::NotFound(format!(
                "app {name:?} has no instance {i}: it has {} (indices 0-{})",
                app.spec.instances,
                app.spec.instances.saturating_sub(1)
            )));
        }
        let mut batch = Batch::default();
        for inst in inner.state.app_instances(name) {
            if index.is_some_and(|i| i != inst.index) {
                continue;
            }
            let mut next = inst.clone();
            match action {
                Action::Start => next.stopped = false,
                Action::Stop => next.stopped = true,
                Action::Restart => {
                    next.stopped = false;
                    next.restart_epoch += 1;
                }
            }
            if next != *inst {
                batch.put_instances.push(next);
            }
        }
        let affected = match action {
            // Starting what already runs is a no-op, but it still "applies" to those instances.
            Action::Start | Action::Stop => inner
                .state
                .app_instances(name)
                .iter()
                .filter(|i| index.is_none_or(|x| x == i.index))
                .count() as u32,
            Action::Restart => batch.put_instances.len() as u32,
        };
        self.write(&mut inner, batch)?;
        drop(inner);
        let verb = match action {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        };
        self.emit(
            &format!("app.{verb}"),
            name,
            "",
            index,
            format!("{verb} {name}: {affected} instances"),
        );
        Ok(affected)
    }

    /// Replaces every instance of the app in waves (its update policy) with fresh processes.
    pub fn rolling_restart(&self, name: &str) -> Result<pb::Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner, name)?.clone();
        let now = self.now();
        let epoch = inner
            .state
            .app_instances(name)
            .iter()
            .map(|i| i.restart_epoch)
            .max()
            .unwrap_or(0)
            + 1;
        let d = start_deployment(&app, Kind::Restart, app.version, app.version, epoch, now);
        let record = with_deployment(app, d.clone());
        self.write(&mut inner, Batch::app(record))?;
        drop(inner);
        self.emit(
            "rollout.started",
            name,
            "",
            None,
            format!("{name}: rolling restart"),
        );
        Ok(deployment_view(name, &d))
    }

    /// The app's rollout and rollout history.
    pub fn get_rollout(&self, name: &str) -> Result<pb::RolloutStatus> {
        let inner = self.lock();
        let app = find_app(&inner, name)?;
        let mut versions: Vec<u64> = app.versions.keys().copied().collect();
        versions.push(app.version);
        Ok(pb::RolloutStatus {
            current: app.deployment.as_ref().map(|d| deployment_view(name, d)),
            history: app
                .history
                .iter()
                .map(|d| deployment_view(name, d))
                .collect(),
            versions,
            version: app.version,
        })
    }

    /// Pauses, resumes or promotes the app's running rollout.
    pub fn control_rollout(&self, name: &str, action: &str) -> Result<pb::Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner, name)?.clone();
        let Some(mut d) = app.deployment.clone().filter(|d| d.state.active()) else {
            return Err(ControlError::InvalidArgument(format!(
                "app {name:?} has no rollout in progress; see: pmcluster rollout history {name}"
            )));
        };
        match action {
            "pause" => d.state = State::Paused,
            "resume" => d.state = State::Running,
            "promote" => {
                d.promoted = true;
                d.state = State::Running;
            }
            other => {
                return Err(ControlError::InvalidArgument(format!(
                    "action: {other:?} is not pause, resume or promote"
                )));
            }
        }
        d.updated_ms = self.now();
        let record = with_deployment(app, d.clone());
        self.write(&mut inner, Batch::app(record))?;
        drop(inner);
        self.emit(
            &format!("rollout.{action}"),
            name,
            "",
            None,
            format!("{name}: rollout {action}"),
        );
        Ok(deployment_view(name, &d))
    }

    /// Rolls back to the previous version (or `to_version`) as a new rollout.
    pub fn undo_rollout(&self, name: &str, to_version: Option<u64>) -> Result<pb::Deployment> {
        let mut inner = self.lock();
        let app = find_app(&inner, name)?.clone();
        let target = match to_version {
            Some(v) => v,
            None => app
                .versions
                .keys()
                .copied()
                .filter(|v| *v < app.version)
                .max()
                .ok_or_else(|| {
                    ControlError::InvalidArgument(format!(
                        "app {name:?} has no earlier version to go back to"
                    ))
                })?,
        };
        let Some(spec) = app.versions.get(&target).cloned() else {
            let known: Vec<String> = app.versions.keys().map(|v| v.to_string()).collect();
            return Err(ControlError::InvalidArgument(format!(
                "to_version: app {name:?} has no version {target} to go back to (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        // The old process, with today's count and policies.
        let spec = with_current_policies(&app, spec);
        let now = self.now();
        let has_instances = !inner.state.app_instances(name).is_empty();
        let record = new_version(app, spec, now, Kind::Rollback, has_instances);
        let d = record.deployment.clone();
        self.write(&mut inner, Batch::app(record))?;
        drop(inner);
        self.emit(
            "rollout.started",
            name,
            "",
            None,
            format!("{name}: rolling back to version {target}"),
        );
        d.map(|d| deployment_view(name, &d))
            .ok_or_else(|| ControlError::InvalidArgument("nothing to roll back".into()))
    }

    /// The app's endpoints: online, healthy, not draining instances with their node's address.
    pub fn endpoints(&self, name: &str) -> Result<pb::Endpoints> {
        let inner = self.lock();
        find_app(&inner, name)?;
        let mut endpoints: Vec<pb::Endpoint> = inner
            .state
            .app_instances(name)
            .into_iter()
            .filter(|r| r.draining_since.is_none())
            .filter(|r| healthy_since(&inner, r).is_some())
            .filter_map(|r| {
                let node = r.node.as_ref()?;
                let port = inner
                    .observed
                    .get(&r.id)
                    .map(|o| o.port)
                    .filter(|p| *p != 0)
                    .or(r.port.map(u32::from))?;
                let host = inner
                    .state
                    .nodes
                    .get(node)
                    .map(|n| n.address.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "127.0.0.1".into());
                Some(pb::Endpoint {
                    host,
                    port,
                    index: r.index,
                    node: node.clone(),
                    version: r.app_version,
                    instance_id: r.id.to_string(),
                })
            })
            .collect();
        endpoints.sort_by_key(|e| (e.index, e.port));
        Ok(pb::Endpoints {
            app: name.to_string(),
            endpoints,
        })
    }

    /// One step of every running rollout.
    fn rollout_tick(&self, inner: &mut Inner, now: i64) -> Vec<(String, String)> {
        let rolling: Vec<AppRecord> = inner
            .state
            .apps
            .values()
            .filter(|a| a.rolling())
            .cloned()
            .collect();
        let mut events = Vec::new();
        for app in rolling {
            let Some(d) = app.deployment.clone() else {
                continue;
            };
            let name = app.spec.name.clone();
            let records: Vec<InstanceRecord> = inner
                .state
                .app_instances(&name)
                .into_iter()
                .cloned()
                .collect();
            let refs: Vec<&InstanceRecord> = records.iter().collect();
            let facts: BTreeMap<Uuid, Facts> = records
                .iter()
                .map(|r| {
                    let node_up = r
                        .node
                        .as_ref()
                        .and_then(|n| inner.nodes.get(n))
                        .is_some_and(|l| is_ready(l, &self.config, inner.now));
                    let f = Facts {
                        healthy_since: healthy_since(inner, r),
                        node_up,
                        placed: r.node.is_some(),
                    };
                    (r.id, f)
                })
                .collect();
            let step = rollout::step(&d, &app.spec.update, app.spec.instances, &refs, &facts, now);
            let mut batch = Batch::default();
            for old_id in &step.replace {
                let Some(old) = records.iter().find(|r| r.id == *old_id) else {
                    continue;
                };
                let epoch = if d.kind == Kind::Restart {
                    d.restart_epoch
                } else {
                    old.restart_epoch
                };
                batch.put_instances.push(InstanceRecord {
                    id: self.clock.new_id(),
                    app: name.clone(),
                    index: old.index,
                    node: None,
                    port: app.spec.port.port_for(old.index),
                    app_version: d.to_version,
                    restart_epoch: epoch,
                    stopped: old.stopped,
                    replaces: Some(old.id),
                    draining_since: None,
                    created_ms: now,
                });
                if old.stopped {
                    batch.del_instances.push(old.id);
                }
            }
            for id in &step.drain {
                if let Some(r) = records.iter().find(|r| r.id == *id) {
                    batch.put_instances.push(InstanceRecord {
                        draining_since: Some(now),
                        ..r.clone()
                    });
                }
            }
            batch.del_instances.extend(step.remove.iter().copied());
            let next = step.deployment.clone();
            let mut record = with_deployment(app.clone(), next.clone());
            if next.state != d.state || next.done != d.done {
                events.push((
                    name.clone(),
                    format!(
                        "{name}: rollout to version {} {} ({}/{})",
                        next.to_version,
                        next.state.name(),
                        next.done,
                        next.total
                    ),
                ));
            }
            if step.rollback {
                let spec = with_current_policies(&app, app.spec_of(d.from_version).clone());
                let failed = Deployment {
                    state: State::RolledBack,
                    ..next
                };
                record = new_version(
                    with_deployment(app.clone(), failed),
                    spec,
                    now,
                    Kind::Rollback,
                    true,
                );
                events.push((
                    name.clone(),
                    format!(
                        "{name}: rolling back to version {}: {}",
                        d.from_version, step.deployment.message
                    ),
                ));
            }
            if record != app || !batch.is_empty() {
                batch.put_apps.push(record);
                if let Err(e) = self.write(inner, batch) {
                    tracing::error!(app = %name, error = %e, "rollout step failed to commit");
                }
            }
        }
        events
    }

    pub fn list_instances(&self, app: &str) -> Result<Vec<pb::Instance>> {
        let inner = self.lock();
        if !app.is_empty() && held_views(&inner, app).is_empty() {
            find_app(&inner, app)?;
        }
        let mut out: Vec<pb::Instance> = inner
            .state
            .instances
            .values()
            .filter(|i| app.is_empty() || i.app == app)
            .map(|i| instance_view(&inner, &self.config, i))
            .collect();
        out.extend(held_views(&inner, app));
        out.sort_by(|a, b| (&a.app, a.index, &a.id).cmp(&(&b.app, b.index, &b.id)));
        Ok(out)
    }

    /// One page of `list_instances`: at most `page_size` instances (0: the default) after the
    /// position `page_token` names, within [`limits::LIST_REPLY_BUDGET`]. Returns the page and the
    /// token of the next one (empty after the last).
    pub fn list_instances_page(
        &self,
        app: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<pb::Instance>, String)> {
        let page_size = match page_size {
            0 => DEFAULT_INSTANCE_PAGE,
            n => n.min(MAX_INSTANCE_PAGE),
        } as usize;
        let after = InstanceKey::parse(page_token)?;
        let inner = self.lock();
        let held = held_views(&inner, app);
        if !app.is_empty() && held.is_empty() {
            find_app(&inner, app)?;
        }
        // Only keys are sorted; views are built for the page alone.
        let mut keys: Vec<(&str, u32, Uuid)> = inner
            .state
            .instances
            .values()
            .filter(|i| app.is_empty() || i.app == app)
            .map(|i| (i.app.as_str(), i.index, i.id))
            .filter(|k| after.as_ref().is_none_or(|a| a.is_before(k)))
            .collect();
        // A partial sort: the page is all that is needed of the order.
        let wanted = page_size.min(keys.len());
        if wanted < keys.len() {
            keys.select_nth_unstable(wanted);
            keys.truncate(wanted + 1);
        }
        keys.sort_unstable();
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = keys.len() > wanted;
        for key in &keys {
            let Some(rec) = inner.state.instances.get(&key.2) else {
                continue;
            };
            if page.len() == wanted {
                break;
            }
            let view = instance_view(&inner, &self.config, rec);
            let size = prost::Message::encoded_len(&view) + 8;
            if !page.is_empty() && bytes + size > limits::LIST_REPLY_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            page.push(view);
        }
        let next = match page.last() {
            Some(last) if more => InstanceKey::token(&last.app, last.index, &last.id),
            _ => String::new(),
        };
        // What quarantined nodes hold is not in the records' order; it comes with the first page
        // (a handful of instances per node, bounded by the desired-set budget).
        if page_token.is_empty() {
            page.extend(held);
            page.sort_by(|a, b| (&a.app, a.index, &a.id).cmp(&(&b.app, b.index, &b.id)));
        }
        Ok((page, next))
    }

    /// One page of `list_apps`, as [`Control::list_instances_page`] pages instances.
    pub fn list_apps_page(&self, page_size: u32, page_token: &str) -> (Vec<pb::App>, String) {
        let page_size = match page_size {
            0 => DEFAULT_APP_PAGE,
            n => n.min(MAX_APP_PAGE),
        } as usize;
        let inner = self.lock();
        let counts = state_counts(&inner, &self.config);
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let start = (
            std::ops::Bound::Excluded(page_token.to_string()),
            std::ops::Bound::Unbounded,
        );
        let apps: Box<dyn Iterator<Item = &AppRecord>> = if page_token.is_empty() {
            Box::new(inner.state.apps.values())
        } else {
            Box::new(inner.state.apps.range(start).map(|(_, a)| a))
        };
        for app in apps {
            if page.len() == page_size {
                more = true;
                break;
            }
            let view = app_view_counted(app, counts.get(app.spec.name.as_str()));
            let size = prost::Message::encoded_len(&view) + 8;
            if !page.is_empty() && bytes + size > limits::LIST_REPLY_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            page.push(view);
        }
        let next = match page.last() {
            Some(last) if more => last
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        (page, next)
    }

    pub fn list_nodes(&self) -> Vec<pb::Node> {
        let inner = self.lock();
        // (instances, cpu millis, memory bytes) reserved per node.
        let mut counts: BTreeMap<&str, (u32, u64, u64)> = BTreeMap::new();
        for inst in inner.state.instances.values() {
            if let Some(n) = &inst.node {
                let c = counts.entry(n.as_str()).or_default();
                c.0 += 1;
                if let Some(app) = inner.state.apps.get(&inst.app) {
                    c.1 += u64::from(app.spec.resources.cpu_millis);
                    c.2 += app.spec.resources.memory_bytes;
                }
            }
        }
        inner
            .state
            .nodes
            .values()
            .map(|n| {
                let live = inner.nodes.get(&n.name);
                let ready = live.is_some_and(|l| is_ready(l, &self.config, inner.now));
                let host = live.and_then(|l| l.host).unwrap_or_default();
                let (mut instances, cpu, memory) =
                    counts.get(n.name.as_str()).copied().unwrap_or_default();
                if let Some(l) = live.filter(|l| is_quarantined(l)) {
                    // What it runs is not this cluster's, but it is there.
                    instances = instances.max(u32::try_from(l.held.len()).unwrap_or(u32::MAX));
                }
                let quarantine = live
                    .and_then(|l| l.session.as_ref())
                    .and_then(|s| s.quarantine.clone())
                    .filter(|_| ready);
                let status = match (ready, n.drain) {
                    _ if quarantine.is_some() => pb::NodeStatus::Quarantined,
                    (false, _) => pb::NodeStatus::Down,
                    (true, false) => pb::NodeStatus::Ready,
                    (true, true) if instances > 0 => pb::NodeStatus::Draining,
                    (true, true) => pb::NodeStatus::Ineligible,
                };
                pb::Node {
                    name: n.name.clone(),
                    status: status as i32,
                    labels: n.labels.clone().into_iter().collect(),
                    cores: n.cores,
                    memory_bytes: n.memory_bytes,
                    instances,
                    allocated_cpu_millis: cpu,
                    allocated_memory_bytes: memory,
                    down_since_ms: if ready {
                        0
                    } else {
                        live.and_then(|l| l.down_since_ms).unwrap_or(0)
                    },
                    last_heartbeat_ms: live.map(|l| l.last_heartbeat_ms).unwrap_or(0),
                    hostname: n.hostname.clone(),
                    agent_version: n.agent_version.clone(),
                    cpu_percent: host.cpu_percent,
                    memory_used_bytes: host.memory_used_bytes,
                    address: n.address.clone(),
                    message: quarantine.unwrap_or_default(),
                }
            })
            .collect()
    }

    // ----- logs -----

    /// Asks the agents of the app's instances for their logs. The returned receiver ends when
    /// every agent has sent all it had (without `follow`), or never (with `follow`), until the
    /// reader goes away.
    pub fn stream_logs(
        &self,
        req: &pb::StreamLogsRequest,
    ) -> Result<mpsc::Receiver<Result<pb::LogLine, tonic::Status>>> {
        let mut inner = self.lock();
        let app = find_app(&inner, &req.app)?;
        if let Some(i) = req.index
            && i >= app.spec.instances
        {
            return Err(ControlError::NotFound(format!(
                "app {:?} has no instance {i}: it has {}",
                req.app, app.spec.instances
            )));
        }
        let lines = match req.lines {
            0 => 20,
            n => n.min(10_000),
        };
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for inst in inner.state.app_instances(&req.app) {
            if req.index.is_some_and(|i| i != inst.index) {
                continue;
            }
            if let Some(node) = &inst.node {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .push(inst.id.to_string());
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        for (node, instance_ids) in by_node {
            let Some(commands) = inner
                .nodes
                .get(&node)
                .and_then(|l| l.session.as_ref())
                .map(|s| s.commands.clone())
            else {
                continue;
            };
            let request_id = self.ids.fetch_add(1, Ordering::Relaxed);
            let request = pb::LogRequest {
                request_id,
                instance_ids,
                lines,
                follow: req.follow,
            };
            if commands.try_send(AgentCommand::Logs(request)).is_ok() {
                inner.log_routes.insert(
                    request_id,
                    LogRoute {
                        node,
                        lines: tx.clone(),
                        dropped: 0,
                    },
                );
            }
        }
        Ok(rx)
    }

    /// Routes lines an agent sent; drops the route at end of stream or when the reader is gone.
    pub fn log_chunk(&self, node: &str, chunk: pb::LogChunk) {
        let mut inner = self.lock();
        let Some(route) = inner.log_routes.get_mut(&chunk.request_id) else {
            return;
        };
        if route.node != node {
            return;
        }
        let mut gone = route_lines(route, chunk.lines);
        if chunk.eof && route.dropped > 0 && !gone {
            // The end of a request: announce what was dropped at its tail, if there is room.
            gone = announce_dropped(route, None);
        }
        if !chunk.error.is_empty() {
            tracing::warn!(node, error = %chunk.error, "agent could not read logs");
        }
        if gone || chunk.eof {
            inner.log_routes.remove(&chunk.request_id);
            if gone && !chunk.eof {
                send_command(&inner, node, AgentCommand::CancelLogs(chunk.request_id));
            }
        }
    }

    /// Drops log routes whose reader went away and tells their agents to stop following.
    pub fn reap_log_routes(&self) {
        let mut inner = self.lock();
        let gone: Vec<(u64, String)> = inner
            .log_routes
            .iter()
            .filter(|(_, r)| r.lines.is_closed())
            .map(|(id, r)| (*id, r.node.clone()))
            .collect();
        for (id, node) in gone {
            inner.log_routes.remove(&id);
            send_command(&inner, &node, AgentCommand::CancelLogs(id));
        }
    }

    // ----- agent sessions -----

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
            self.store.commit(&batch)?;
            inner.state.apply(&batch);
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
            self.emit("node.renamed", "", &name, None, text);
        }
        match &quarantine {
            Some(why) => {
                tracing::error!(node = %name, "node quarantined: {why}");
                self.emit(
                    "node.quarantined",
                    "",
                    &name,
                    None,
                    format!("node {name} quarantined: {why}"),
                );
            }
            None => self.emit("node.up", "", &name, None, format!("node {name} connected")),
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
    fn rename_batch(
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

    /// Adopts quarantined nodes (`name`, or every quarantined node when empty): their held
    /// instances become this cluster's (apps that are not here are created from the agents'
    /// specs), and they receive desired sets again, with a generation above the one each agent
    /// applied and `adopt` set so that it takes this cluster's id. Adopting every node in one
    /// write keeps the reconciler from placing an index that a not-yet-adopted node holds.
    pub fn adopt_node(&self, name: &str) -> Result<Vec<pb::Node>> {
        let mut inner = self.lock();
        let names: Vec<String> = if name.is_empty() {
            inner
                .nodes
                .iter()
                .filter(|(_, l)| is_quarantined(l))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            let live = inner.nodes.get(name).ok_or_else(|| node_not_found(name))?;
            if !is_quarantined(live) {
                return Err(ControlError::FailedPrecondition(format!(
                    "node {name:?} is not quarantined; there is nothing to adopt"
                )));
            }
            vec![name.to_string()]
        };
        if names.is_empty() {
            return Err(ControlError::FailedPrecondition(
                "no node is quarantined; there is nothing to adopt".into(),
            ));
        }
        let now = self.now();
        let mut scratch = inner.state.clone();
        let mut batch = Batch::default();
        let mut generation = inner.state.generation;
        let mut imported = Vec::new();
        for n in &names {
            let Some(live) = inner.nodes.get(n) else {
                continue;
            };
            let part = adoption_batch(&scratch, n, &live.held, now);
            generation = generation.max(live.reported_generation);
            imported.push((n.clone(), part.put_instances.len()));
            scratch.apply(&part);
            batch
                .put_apps
                .retain(|a| !part.put_apps.iter().any(|p| p.spec.name == a.spec.name));
            batch.put_apps.extend(part.put_apps);
            batch.put_instances.extend(part.put_instances);
            batch.del_instances.extend(part.del_instances);
        }
        // Above anything the agents applied, so their next sets are not stale.
        generation += 1;
        batch.generation = Some(generation);
        for n in &names {
            let node = inner
                .state
                .nodes
                .get(n)
                .cloned()
                .ok_or_else(|| node_not_found(n))?;
            batch.put_nodes.push(NodeRecord { generation, ..node });
        }
        self.write(&mut inner, batch)?;
        for n in &names {
            if let Some(live) = inner.nodes.get_mut(n) {
                if let Some(s) = live.session.as_mut() {
                    s.quarantine = None;
                }
                live.adopting = true;
            }
            publish(&mut inner, n);
        }
        // Anything the adoption left unplaced can go to these nodes now.
        inner.reconcile_due = true;
        if let Err(e) = self.write(&mut inner, Batch::default()) {
            tracing::error!(error = %e, "reconcile after adoption failed");
        }
        drop(inner);
        for (n, count) in imported {
            let text = format!("node {n} adopted with {count} of its instances");
            tracing::warn!("{text}");
            self.emit("node.adopted", "", &n, None, text);
        }
        Ok(self
            .list_nodes()
            .into_iter()
            .filter(|n| names.contains(&n.name))
            .collect())
    }

    /// Forgets a node that is not connected: its record goes, and its instances are replaced
    /// elsewhere at once (the reconciler treats records on an unknown node as lost).
    pub fn forget_node(&self, name: &str) -> Result<pb::Node> {
        let before = self
            .list_nodes()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| node_not_found(name))?;
        let mut inner = self.lock();
        if inner.nodes.get(name).is_some_and(|l| l.session.is_some()) {
            return Err(ControlError::FailedPrecondition(format!(
                "node {name:?} is connected; stop its agent first (or drain it to move its \
                 instances while it runs)"
            )));
        }
        let batch = Batch {
            del_nodes: vec![name.to_string()],
            ..Batch::default()
        };
        self.write(&mut inner, batch)?;
        inner.nodes.remove(name);
        drop(inner);
        self.emit(
            "node.forgotten",
            "",
            name,
            None,
            format!("node {name} forgotten; its instances are placed elsewhere"),
        );
        Ok(before)
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
            self.emit("instance.state", &app, node, Some(index), text);
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
        inner.log_routes.retain(|_, r| r.node != node);
        drop(inner);
        self.emit(
            "node.down",
            "",
            node,
            None,
            format!("node {node} disconnected"),
        );
    }

    /// Periodic housekeeping: ends sessions that stopped heartbeating, and reconciles, which
    /// reschedules instances of nodes down for too long and advances drains.
    pub fn tick(&self) {
        let mut lapsed = Vec::new();
        let mut scaled = Vec::new();
        let rolled;
        {
            let mut inner = self.lock();
            let now = self.now();
            for (name, live) in inner.nodes.iter_mut() {
                if live.session.is_some() && !is_ready(live, &self.config, now) {
                    live.session = None;
                    live.down_since_ms = Some(now);
                    lapsed.push(name.clone());
                }
            }
            if !lapsed.is_empty() {
                inner.reconcile_due = true;
            }
            if let Err(e) = self.write(&mut inner, Batch::default()) {
                tracing::error!(error = %e, "periodic reconcile failed");
            }
            rolled = self.rollout_tick(&mut inner, now);
            if now - inner.last_sample_ms >= 1000 {
                inner.last_sample_ms = now;
                scaled = self.autoscale_tick(&mut inner, now);
            }
        }
        for (app, reason) in scaled {
            self.emit("autoscale", &app, "", None, format!("{app}: {reason}"));
        }
        for (app, text) in rolled {
            self.emit("rollout", &app, "", None, text);
        }
        for name in lapsed {
            self.emit(
                "node.down",
                "",
                &name,
                None,
                format!("node {name} missed heartbeats"),
            );
        }
        self.reap_log_routes();
    }

    /// Samples every autoscaled app and applies the decisions. Returns (app, reason) of changes.
    fn autoscale_tick(&self, inner: &mut Inner, now: i64) -> Vec<(String, String)> {
        let apps: Vec<(String, AppRecord)> = inner
            .state
            .apps
            .iter()
            .filter(|(_, a)| a.spec.autoscale.is_some())
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        inner
            .scaling
            .retain(|name, _| apps.iter().any(|(n, _)| n == name));
        let mut changes = Vec::new();
        for (name, app) in apps {
            let Some(policy) = app.spec.autoscale.clone() else {
                continue;
            };
            let sample = self.sample(inner, &name, now);
            let scaling = inner.scaling.entry(name.clone()).or_default();
            scaling.history.push_back(sample);
            let keep_ms = (policy
                .up_stabilization
                .max(policy.down_stabilization)
                .as_millis() as i64)
                + 60_000;
            while scaling.history.len() > MAX_SAMPLES
                || scaling
                    .history
                    .front()
                    .is_some_and(|s| s.at_ms < now - keep_ms)
            {
                scaling.history.pop_front();
            }
            let history: Vec<Sample> = scaling.history.iter().copied().collect();
            let memory_request = app
                .spec
                .supervision
                .max_memory_restart
                .unwrap_or(app.spec.resources.memory_bytes);
            let decision = autoscale::decide(autoscale::Input {
                policy: &policy,
                memory_request,
                current: app.spec.instances,
                history: &history,
                last_change_ms: scaling.last_change_ms,
                now_ms: now,
            });
            match decision {
                Decision::Hold { reason } => scaling.last_reason = reason,
                Decision::Scale { to, reason } => {
                    scaling.last_reason = reason.clone();
                    scaling.last_change_ms = Some(now);
                    let spec = match app.spec.with_instances(to) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(app = %name, error = %e, "autoscale target refused");
                            continue;
                        }
                    };
                    let mut scaled = app.scaled.clone();
                    scaled.push(ScaleDecision {
                        at_ms: now,
                        reason: format!("{name}: {reason}"),
                    });
                    let excess = scaled.len().saturating_sub(SCALE_DECISIONS_KEPT);
                    scaled.drain(..excess);
                    let batch = Batch {
                        put_apps: vec![AppRecord {
                            spec,
                            updated_at_ms: now,
                            scaled,
                            ..app.clone()
                        }],
                        ..Batch::default()
                    };
                    match self.write(inner, batch) {
                        Ok(()) => changes.push((name.clone(), reason)),
                        Err(e) => {
                            tracing::error!(app = %name, error = %e, "autoscale write failed")
                        }
                    }
                }
            }
        }
        changes
    }

    /// Average metrics of an app's online instances whose node reported recently.
    fn sample(&self, inner: &Inner, app: &str, now: i64) -> Sample {
        let fresh_ms = (self.config.heartbeat_interval.as_millis() as i64) * 3 + 500;
        let (mut n, mut cpu, mut mem) = (0u32, 0.0, 0.0);
        for rec in inner.state.app_instances(app) {
            let Some(node) = rec.node.as_ref().and_then(|n| inner.nodes.get(n)) else {
                continue;
            };
            if node.session.is_none() || now - node.last_heartbeat_ms > fresh_ms {
                continue;
            }
            if let Some(o) = inner.observed.get(&rec.id)
                && o.state == pb::InstanceState::Online as i32
            {
                n += 1;
                cpu += o.cpu_percent;
                mem += o.memory_bytes as f64;
            }
        }
        Sample {
            at_ms: now,
            online: n,
            cpu: (n > 0).then(|| cpu / f64::from(n)),
            memory: (n > 0).then(|| mem / f64::from(n)),
        }
    }

    /// Turns autoscaling on or off (`None`), or changes the policy.
    pub fn set_autoscale(
        &self,
        name: &str,
        policy: Option<AutoscalePolicy>,
    ) -> Result<pb::AutoscaleStatus> {
        {
            let mut inner = self.lock();
            let app = find_app(&inner, name)?.clone();
            let spec = AppSpec {
                autoscale: policy.clone(),
                ..app.spec.clone()
            }
            .validate()?;
            if spec != app.spec {
                let batch = Batch {
                    put_apps: vec![AppRecord {
                        spec,
                        updated_at_ms: self.now(),
                        ..app
                    }],
                    ..Batch::default()
                };
                self.write(&mut inner, batch)?;
            }
            // A new policy is judged on fresh evidence, without a cooldown from before.
            inner.scaling.remove(name);
        }
        let text = match &policy {
            Some(p) => format!("{name}: autoscaling between {} and {}", p.min, p.max),
            None => format!("{name}: autoscaling off"),
        };
        self.emit("autoscale.policy", name, "", None, text);
        self.get_autoscale(name)
    }

    pub fn get_autoscale(&self, name: &str) -> Result<pb::AutoscaleStatus> {
        let inner = self.lock();
        let app = find_app(&inner, name)?;
        let sample = self.sample(&inner, name, self.now());
        let policy = app
            .spec
            .autoscale
            .as_ref()
            .map(pmcluster_spec::wire::autoscale_to_wire);
        let status = pb::AutoscaleStatus {
            app: name.to_string(),
            policy: Some(policy.unwrap_or_default()),
            instances: app.spec.instances,
            online: sample.online,
            cpu_avg: sample.cpu,
            memory_avg_bytes: sample.memory.map(|m| m as u64),
            state: inner
                .scaling
                .get(name)
                .map(|s| s.last_reason.clone())
                .unwrap_or_default(),
            decisions: app
                .scaled
                .iter()
                .map(|d| pb::Event {
                    at_ms: d.at_ms,
                    kind: "autoscale".into(),
                    app: name.to_string(),
                    message: d.reason.clone(),
                    ..pb::Event::default()
                })
                .collect(),
        };
        Ok(status)
    }

    /// Starts (or stops, with `drain = false`) draining a node.
    pub fn set_drain(&self, node: &str, drain: bool) -> Result<pb::Node> {
        let mut inner = self.lock();
        let Some(record) = inner.state.nodes.get(node).cloned() else {
            return Err(ControlError::NotFound(format!(
                "node {node:?} not found; see the nodes with 'pmcluster nodes'"
            )));
        };
        if record.drain != drain {
            let batch = Batch {
                put_nodes: vec![NodeRecord { drain, ..record }],
                ..Batch::default()
            };
            self.write(&mut inner, batch)?;
        }
        drop(inner);
        let what = if drain { "draining" } else { "eligible again" };
        self.emit("node.drain", "", node, None, format!("node {node} {what}"));
        self.list_nodes()
            .into_iter()
            .find(|n| n.name == node)
            .ok_or_else(|| ControlError::NotFound(format!("node {node:?} not found")))
    }

    // ----- the one write path -----

    /// Applies a command's batch plus whatever the reconciler then wants, as one commit.
    fn write(&self, inner: &mut Inner, mut batch: Batch) -> Result<()> {
        let now = self.now();
        for app in &batch.put_apps {
            let stored = inner.state.apps.get(&app.spec.name).map(|a| &a.spec);
            if stored != Some(&app.spec) {
                limits::check_spec(&pb::AppSpec::from(&app.spec))
                    .map_err(ControlError::InvalidArgument)?;
            }
        }
        if batch.is_empty() && !inner.reconcile_due && inner.followup_at.is_none_or(|at| now < at) {
            return Ok(());
        }
        let owned;
        let view: &Persisted = if batch.is_empty() {
            &inner.state
        } else {
            let mut next = inner.state.clone();
            next.apply(&batch);
            owned = next;
            &owned
        };
        let online: BTreeSet<Uuid> = inner
            .observed
            .iter()
            .filter(|(_, o)| o.state == pb::InstanceState::Online as i32)
            .map(|(id, _)| *id)
            .collect();
        let nodes = node_views(inner, view, &self.config);
        let plan = reconcile::reconcile(Snapshot {
            apps: &view.apps,
            instances: &view.instances,
            nodes: &nodes,
            online: &online,
            now_ms: now,
        });
        let pending = plan.pending.clone();
        let followup_at = plan.followup_at;
        let placed = materialize(view, &plan, &mut batch, now, self.clock.as_ref());
        if batch.is_empty() {
            inner.pending = pending;
            inner.reconcile_due = false;
            inner.followup_at = followup_at;
            return Ok(());
        }
        // Nodes whose desired set changes: old and new homes of every touched record.
        let mut touched = BTreeSet::new();
        for inst in &batch.put_instances {
            if let Some(old) = inner
                .state
                .instances
                .get(&inst.id)
                .and_then(|i| i.node.clone())
            {
                touched.insert(old);
            }
            if let Some(n) = &inst.node {
                touched.insert(n.clone());
            }
        }
        for id in &batch.del_instances {
            if let Some(old) = inner.state.instances.get(id).and_then(|i| i.node.clone()) {
                touched.insert(old);
            }
        }
        // App spec changes reach agents through refreshed records, already counted above.
        // An adoption raises the generation above what its agent applied.
        let mut generation = inner.state.generation.max(batch.generation.unwrap_or(0));
        for name in &touched {
            if let Some(node) = view.nodes.get(name) {
                generation += 1;
                batch.put_nodes.retain(|n| &n.name != name);
                batch.put_nodes.push(NodeRecord {
                    generation,
                    ..node.clone()
                });
            }
        }
        if generation != inner.state.generation {
            batch.generation = Some(generation);
        }
        // Before anything is committed: a set its agent cannot decode would take the node, and
        // every app on it, offline. A refused write changes nothing.
        check_desired_sets(&inner.state, &batch, &touched)?;
        inner.pending = pending;
        self.store.commit(&batch)?;
        inner.state.apply(&batch);
        // The plan was applied in full, so the next reconcile should find nothing; one more run
        // confirms it cheaply.
        inner.reconcile_due = true;
        inner.followup_at = followup_at;
        for id in &batch.del_instances {
            inner.observed.remove(id);
            inner.online_since.remove(id);
        }
        for name in &touched {
            publish(inner, name);
        }
        // One event per placement, unless a write places many of an app: then one for all of
        // them, so that a scale to 100,000 does not flood watchers and the event history.
        let mut per_app: BTreeMap<&str, Vec<(u32, Option<&str>)>> = BTreeMap::new();
        for (app, index, node) in &placed {
            per_app
                .entry(app.as_str())
                .or_default()
                .push((*index, node.as_deref()));
        }
        for (app, placements) in per_app {
            if placements.len() > EVENTS_PER_WRITE {
                let on_nodes = placements.iter().filter(|p| p.1.is_some()).count();
                let pending = placements.len() - on_nodes;
                self.emit(
                    "instance.placed",
                    app,
                    "",
                    None,
                    format!("{app}: {on_nodes} instances placed, {pending} pending"),
                );
                continue;
            }
            for (index, node) in placements {
                self.emit(
                    "instance.placed",
                    app,
                    node.unwrap_or(""),
                    Some(index),
                    match node {
                        Some(n) => format!("{app}[{index}] placed on {n}"),
                        None => format!("{app}[{index}] pending: no ready node"),
                    },
                );
            }
        }
        Ok(())
    }

    /// Whether a node has a live session (for tests and the API).
    pub fn is_connected(&self, node: &str) -> bool {
        let inner = self.lock();
        inner.nodes.get(node).is_some_and(|l| l.session.is_some())
    }

    /// A copy of the stored records (read-only; for the simulation's invariant checks).
    pub fn persisted(&self) -> Persisted {
        self.lock().state.clone()
    }

    /// Nodes with a live session that reports in time, i.e. where the reconciler may place.
    pub fn ready_node_names(&self) -> Vec<String> {
        let inner = self.lock();
        ready_nodes(&inner, &self.config)
    }

    /// What the reconciler would do now, without doing it: empty once the cluster converged.
    pub fn dry_plan(&self) -> Plan {
        let inner = self.lock();
        let online: BTreeSet<Uuid> = inner
            .observed
            .iter()
            .filter(|(_, o)| o.state == pb::InstanceState::Online as i32)
            .map(|(id, _)| *id)
            .collect();
        let nodes = node_views(&inner, &inner.state, &self.config);
        reconcile::reconcile(Snapshot {
            apps: &inner.state.apps,
            instances: &inner.state.instances,
            nodes: &nodes,
            online: &online,
            now_ms: inner.now,
        })
    }
}

/// Refuses `batch` when it would make the desired set of a node in `touched` weigh more than
/// [`limits::DESIRED_SET_BUDGET`]. The error names `instances` (the count is what a user can
/// change on the spot), the node, the app weighing most there and that app's largest field.
fn check_desired_sets(state: &Persisted, batch: &Batch, touched: &BTreeSet<String>) -> Result<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let put: BTreeMap<Uuid, &InstanceRecord> =
        batch.put_instances.iter().map(|r| (r.id, r)).collect();
    let deleted: BTreeSet<Uuid> = batch.del_instances.iter().copied().collect();
    let app_of = |name: &str| -> Option<&AppRecord> {
        if batch.del_apps.iter().any(|d| d == name) {
            return None;
        }
        batch
            .put_apps
            .iter()
            .rev()
            .find(|a| a.spec.name == name)
            .or_else(|| state.apps.get(name))
    };
    // Bytes of one assignment per (app, version): the spec dominates and is weighed once.
    let mut weights: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    // Per node: total bytes, and (bytes, instances) per app.
    type Weighed<'a> = (usize, BTreeMap<&'a str, (usize, u32)>);
    let mut per_node: BTreeMap<&str, Weighed<'_>> = BTreeMap::new();
    let kept = state
        .instances
        .values()
        .filter(|r| !put.contains_key(&r.id))
        .chain(put.values().copied())
        .filter(|r| !deleted.contains(&r.id));
    for rec in kept {
        let Some(node) = rec.node.as_deref().filter(|n| touched.contains(*n)) else {
            continue;
        };
        let Some(app) = app_of(&rec.app) else {
            continue;
        };
        let bytes = *weights
            .entry((rec.app.as_str(), rec.app_version))
            .or_insert_with(|| {
                use prost::Message as _;
                limits::assignment_bytes(
                    pb::AppSpec::from(app.spec_of(rec.app_version)).encoded_len(),
                )
            });
        let entry = per_node.entry(node).or_default();
        entry.0 += bytes;
        let by_app = entry.1.entry(rec.app.as_str()).or_default();
        by_app.0 += bytes;
        by_app.1 += 1;
    }
    let Some((node, (total, apps))) = per_node
        .into_iter()
        .filter(|(_, (total, _))| *total > limits::DESIRED_SET_BUDGET)
        .max_by_key(|(_, (total, _))| *total)
    else {
        return Ok(());
    };
    let (app, (app_bytes, count)) = apps
        .into_iter()
        .max_by_key(|(_, (bytes, _))| *bytes)
        .unwrap_or_default();
    let field = app_of(app)
        .map(|a| limits::largest_field(&pb::AppSpec::from(&a.spec)))
        .map(|(name, size)| format!("; its largest field is {name} ({})", limits::human(size)))
        .unwrap_or_default();
    Err(ControlError::InvalidArgument(format!(
        "instances: this change would make node {node:?}'s desired set {}, over the {} limit of          one node's set; {count} instances of {app:?} weigh {} there{field}. Lower the count,          spread the app with placement.max_per_node, or make its spec smaller",
        limits::human(total),
        limits::human(limits::DESIRED_SET_BUDGET),
        limits::human(app_bytes),
    )))
}

/// Turns a plan into records in `batch` (minting ids). Returns (app, index, node) of placements.
fn materialize(
    state: &Persisted,
    plan: &Plan,
    batch: &mut Batch,
    now_ms: i64,
    clock: &dyn Clock,
) -> Vec<(String, u32, Option<String>)> {
    let mut placed = Vec::new();
    let put: BTreeMap<Uuid, usize> = batch
        .put_instances
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    let edit = |batch: &mut Batch, id: Uuid, f: &dyn Fn(&mut InstanceRecord)| {
        if let Some(&i) = put.get(&id) {
            if let Some(rec) = batch.put_instances.get_mut(i) {
                f(rec);
            }
        } else if let Some(rec) = state.instances.get(&id) {
            let mut rec = rec.clone();
            f(&mut rec);
            batch.put_instances.push(rec);
        }
    };
    for (id, node) in &plan.assign {
        // Placed now: a rollout's healthy deadline counts from here, not from when it was pending.
        edit(batch, *id, &|r| {
            r.node = Some(node.clone());
            r.created_ms = now_ms;
        });
        if let Some(r) = state.instances.get(id) {
            placed.push((r.app.clone(), r.index, Some(node.clone())));
        }
    }
    for (id, version, port) in &plan.refresh {
        edit(batch, *id, &|r| {
            r.app_version = *version;
            r.port = *port;
        });
    }
    for c in &plan.create {
        let version = state.apps.get(&c.app).map(|a| a.version).unwrap_or(1);
        batch.put_instances.push(InstanceRecord {
            id: clock.new_id(),
            app: c.app.clone(),
            index: c.index,
            node: c.node.clone(),
            port: c.port,
            app_version: version,
            restart_epoch: 0,
            stopped: c.stopped,
            replaces: c.replaces,
            draining_since: None,
            created_ms: now_ms,
        });
        placed.push((c.app.clone(), c.index, c.node.clone()));
    }
    for id in &plan.drain {
        edit(batch, *id, &|r| r.draining_since = Some(now_ms));
    }
    batch.del_instances.extend(plan.remove.iter().copied());
    placed
}

fn is_ready(live: &NodeLive, config: &ControlConfig, now: i64) -> bool {
    let timeout = i64::try_from(config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    live.session.is_some() && now.saturating_sub(live.last_heartbeat_ms) <= timeout
}

/// The reconciler's view of every registered node.
fn node_views<'a>(inner: &Inner, view: &'a Persisted, config: &ControlConfig) -> Vec<NodeView<'a>> {
    view.nodes
        .values()
        .map(|n| {
            let live = inner.nodes.get(&n.name);
            let link = match live {
                Some(l) if is_ready(l, config, inner.now) && is_quarantined(l) => Link::Quarantined,
                Some(l) if is_ready(l, config, inner.now) => Link::Up,
                Some(l) => Link::Down(l.down_since_ms.unwrap_or(0)),
                None => Link::Down(0),
            };
            NodeView {
                name: &n.name,
                labels: &n.labels,
                cores: n.cores,
                memory_bytes: n.memory_bytes,
                link,
                drain: n.drain,
            }
        })
        .collect()
}

fn ready_nodes(inner: &Inner, config: &ControlConfig) -> Vec<String> {
    inner
        .nodes
        .iter()
        .filter(|(_, l)| is_ready(l, config, inner.now))
        .map(|(n, _)| n.clone())
        .collect()
}

fn send_command(inner: &Inner, node: &str, cmd: AgentCommand) {
    if let Some(s) = inner.nodes.get(node).and_then(|l| l.session.as_ref()) {
        // A full queue means the agent is not reading; its session will be replaced anyway.
        let _ = s.commands.try_send(cmd);
    }
}

/// Hands lines to a log reader without ever waiting for it: the agent's link also carries
/// heartbeats. What does not fit is dropped and counted, and the reader is told how many lines it
/// missed (a line of its own, stream UNSPECIFIED) as soon as it has room.
/// Returns whether the reader is gone.
fn route_lines(route: &mut LogRoute, lines: Vec<pb::LogLine>) -> bool {
    for line in lines {
        if route.dropped > 0 {
            if route.lines.capacity() < 2 {
                route.dropped += 1;
                continue;
            }
            if announce_dropped(route, Some(&line)) {
                return true;
            }
        }
        match route.lines.try_send(Ok(line)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => route.dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => return true,
        }
    }
    false
}

/// Sends the "N lines dropped" notice (app and node of `next`, when known) and resets the count.
/// Returns whether the reader is gone.
fn announce_dropped(route: &mut LogRoute, next: Option<&pb::LogLine>) -> bool {
    let n = route.dropped;
    let notice = pb::LogLine {
        app: next.map(|l| l.app.clone()).unwrap_or_default(),
        index: next.map_or(0, |l| l.index),
        node: next.map_or_else(|| route.node.clone(), |l| l.node.clone()),
        stream: pb::LogStream::Unspecified as i32,
        line: format!("[pmcluster] {n} lines dropped here: this reader fell behind"),
    };
    match route.lines.try_send(Ok(notice)) {
        Ok(()) => {
            route.dropped = 0;
            false
        }
        Err(mpsc::error::TrySendError::Full(_)) => false,
        Err(mpsc::error::TrySendError::Closed(_)) => true,
    }
}

/// Recomputes a node's desired set from the records and hands it to its session.
fn publish(inner: &mut Inner, node: &str) {
    let generation = inner
        .state
        .nodes
        .get(node)
        .map(|n| n.generation)
        .unwrap_or(0);
    let mut assignments: Vec<pb::Assignment> = inner
        .state
        .instances
        .values()
        .filter(|i| i.node.as_deref() == Some(node))
        .filter_map(|i| {
            let app = inner.state.apps.get(&i.app)?;
            Some(pb::Assignment {
                instance_id: i.id.to_string(),
                index: i.index,
                app_version: i.app_version,
                // An instance runs the spec of its own version: during a rollout the old ones
                // must keep their process (the agent restarts an instance whose spec differs).
                spec: Some(pb::AppSpec::from(app.spec_of(i.app_version))),
                port: i.port.map(u32::from).unwrap_or(0),
                run: !i.stopped,
                restart_epoch: i.restart_epoch,
            })
        })
        .collect();
    assignments.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let cluster_id = inner.state.cluster_id.clone();
    let now = inner.now;
    let live = inner
        .nodes
        .entry(node.to_string())
        .or_insert_with(|| new_node_live(now));
    if is_quarantined(live) {
        return;
    }
    let set = pb::DesiredSet {
        generation,
        assignments,
        cluster_id,
        adopt: live.adopting,
    };
    live.desired.send_replace(Some(set));
}

fn node_not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!(
        "node {name:?} not found; see the nodes with 'pmcluster nodes'"
    ))
}

/// Why a registering agent must be quarantined: it serves another cluster, or it applied a
/// newer desired set than this coordinator's record of the node (the store lost writes or was
/// restored). Either way this coordinator's view of the node is not to be trusted over the
/// agent's, so it sends nothing until an operator adopts the node.
fn quarantine_reason(state: &Persisted, reg: &pb::Register) -> Option<String> {
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
fn adoption_batch(state: &Persisted, node: &str, held: &[pb::Assignment], now: i64) -> Batch {
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

fn find_app<'a>(inner: &'a Inner, name: &str) -> Result<&'a AppRecord> {
    if name.is_empty() {
        return Err(ControlError::InvalidArgument("app: name is empty".into()));
    }
    inner.state.apps.get(name).ok_or_else(|| {
        ControlError::NotFound(format!(
            "app {name:?} not found; see the apps with 'pmcluster apps'"
        ))
    })
}

fn instance_view(inner: &Inner, config: &ControlConfig, rec: &InstanceRecord) -> pb::Instance {
    use pb::InstanceState as S;
    let observed = inner.observed.get(&rec.id);
    let mut out = pb::Instance {
        id: rec.id.to_string(),
        app: rec.app.clone(),
        index: rec.index,
        node: rec.node.clone().unwrap_or_default(),
        port: rec.port.map(u32::from).unwrap_or(0),
        app_version: rec.app_version,
        stopped: rec.stopped,
        ..pb::Instance::default()
    };
    if let Some(o) = observed {
        out.pid = o.pid;
        if o.port != 0 {
            out.port = o.port;
        }
        out.cpu_percent = o.cpu_percent;
        out.memory_bytes = o.memory_bytes;
        out.restarts = o.restarts;
        out.started_at_ms = o.started_at_ms;
        out.last_exit_code = o.last_exit_code;
        out.message = o.message.clone();
        out.health = o.health;
    }
    let connected = rec
        .node
        .as_ref()
        .and_then(|n| inner.nodes.get(n))
        .is_some_and(|l| is_ready(l, config, inner.now));
    let state = match (&rec.node, observed) {
        (None, _) => {
            out.message = inner
                .pending
                .get(&rec.app)
                .cloned()
                .unwrap_or_else(|| "waiting for a node".into());
            if rec.stopped { S::Stopped } else { S::Pending }
        }
        (Some(n), _) if !connected => {
            out.message = format!("node {n} is down");
            S::Unknown
        }
        (Some(_), Some(o)) => {
            let s = S::try_from(o.state).unwrap_or(S::Launching);
            match (rec.stopped, s) {
                (true, S::Stopped) => S::Stopped,
                (true, _) => S::Stopping,
                // Asked to run again but the agent has not acted on it yet.
                (false, S::Stopped) => S::Launching,
                (false, s) => s,
            }
        }
        (Some(_), None) => {
            if rec.stopped {
                S::Stopped
            } else {
                S::Launching
            }
        }
    };
    out.state = if rec.draining_since.is_some() && state == S::Online {
        S::Draining as i32
    } else {
        state as i32
    };
    out
}

/// The instances that quarantined nodes hold and this cluster has no record of (of `app`, or of
/// every app when empty), as the agents report them: listed, so that an operator sees what runs
/// before adopting it.
fn held_views(inner: &Inner, app: &str) -> Vec<pb::Instance> {
    let mut out = Vec::new();
    for (node, live) in &inner.nodes {
        let Some(why) = live.session.as_ref().and_then(|s| s.quarantine.as_ref()) else {
            continue;
        };
        for a in &live.held {
            let app_name = a.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if (!app.is_empty() && app_name != app)
                || a.instance_id
                    .parse::<Uuid>()
                    .is_ok_and(|id| inner.state.instances.contains_key(&id))
            {
                continue;
            }
            let mut view = pb::Instance {
                id: a.instance_id.clone(),
                app: app_name,
                index: a.index,
                node: node.clone(),
                port: a.port,
                app_version: a.app_version,
                stopped: !a.run,
                state: pb::InstanceState::Unknown as i32,
                ..pb::Instance::default()
            };
            if let Some(o) = a
                .instance_id
                .parse::<Uuid>()
                .ok()
                .and_then(|id| inner.observed.get(&id))
            {
                view.pid = o.pid;
                if o.port != 0 {
                    view.port = o.port;
                }
                view.cpu_percent = o.cpu_percent;
                view.memory_bytes = o.memory_bytes;
                view.restarts = o.restarts;
                view.started_at_ms = o.started_at_ms;
                view.state = o.state;
                view.health = o.health;
            }
            view.message = format!("not managed: node {node} is quarantined ({why})");
            out.push(view);
        }
    }
    out
}

fn app_view(inner: &Inner, config: &ControlConfig, app: &AppRecord) -> pb::App {
    let mut counts = StateCounts::default();
    for rec in inner.state.app_instances(&app.spec.name) {
        counts.add(instance_view(inner, config, rec).state);
    }
    app_view_counted(app, Some(&counts))
}

/// Online, pending and stopped instances of an app, as its view shows them.
#[derive(Debug, Default, Clone, Copy)]
struct StateCounts {
    online: u32,
    pending: u32,
    stopped: u32,
}

impl StateCounts {
    fn add(&mut self, state: i32) {
        match pb::InstanceState::try_from(state) {
            Ok(pb::InstanceState::Online) => self.online += 1,
            Ok(pb::InstanceState::Pending) => self.pending += 1,
            Ok(pb::InstanceState::Stopped) => self.stopped += 1,
            _ => {}
        }
    }
}

/// [`StateCounts`] of every app in one pass over the instances.
fn state_counts<'a>(inner: &'a Inner, config: &ControlConfig) -> BTreeMap<&'a str, StateCounts> {
    let mut counts: BTreeMap<&str, StateCounts> = BTreeMap::new();
    for rec in inner.state.instances.values() {
        counts
            .entry(rec.app.as_str())
            .or_default()
            .add(instance_view(inner, config, rec).state);
    }
    counts
}

fn app_view_counted(app: &AppRecord, counts: Option<&StateCounts>) -> pb::App {
    let counts = counts.copied().unwrap_or_default();
    pb::App {
        spec: Some(pb::AppSpec::from(&app.spec)),
        version: app.version,
        updated_at_ms: app.updated_at_ms,
        online: counts.online,
        pending: counts.pending,
        stopped: counts.stopped,
    }
}

/// Online, and healthy when the app has a health check: since when, without a break.
fn healthy_since(inner: &Inner, r: &InstanceRecord) -> Option<i64> {
    let since = *inner.online_since.get(&r.id)?;
    let o = inner.observed.get(&r.id)?;
    let has_check = inner
        .state
        .apps
        .get(&r.app)
        .is_some_and(|a| a.spec_of(r.app_version).supervision.health_check.is_some());
    let health = pb::HealthState::try_from(o.health).unwrap_or(pb::HealthState::Unspecified);
    match health {
        pb::HealthState::Unhealthy => None,
        pb::HealthState::Healthy => Some(since),
        _ if has_check => None,
        _ => Some(since),
    }
}

/// An earlier process (`spec`) with the app's current count and policies: what a rollback runs.
fn with_current_policies(app: &AppRecord, spec: AppSpec) -> AppSpec {
    AppSpec {
        instances: app.spec.instances,
        autoscale: app.spec.autoscale.clone(),
        update: app.spec.update.clone(),
        ..spec
    }
}

fn start_deployment(
    app: &AppRecord,
    kind: Kind,
    from: u64,
    to: u64,
    epoch: u64,
    now: i64,
) -> Deployment {
    Deployment {
        id: app
            .history
            .last()
            .map(|d| d.id)
            .max(app.deployment.as_ref().map(|d| d.id))
            .unwrap_or(0)
            + 1,
        kind,
        from_version: from,
        to_version: to,
        restart_epoch: epoch,
        state: State::Running,
        started_ms: now,
        updated_ms: now,
        progress_ms: now,
        promoted: false,
        message: String::new(),
        done: 0,
        total: app.spec.instances,
    }
}

/// The app with `d` as its deployment; a deployment it replaces goes to the history.
fn with_deployment(mut app: AppRecord, d: Deployment) -> AppRecord {
    if let Some(old) = app.deployment.take()
        && old.id != d.id
    {
        let old = if old.state.active() {
            Deployment {
                state: State::Superseded,
                ..old
            }
        } else {
            old
        };
        app.history.push(old);
        let excess = app.history.len().saturating_sub(20);
        app.history.drain(..excess);
    }
    app.deployment = Some(d);
    app
}

/// The app at a new version running `spec`; with running instances, a rollout to it starts.
fn new_version(old: AppRecord, spec: AppSpec, now: i64, kind: Kind, roll: bool) -> AppRecord {
    let from = old.version;
    let to = old
        .versions
        .keys()
        .copied()
        .max()
        .unwrap_or(0)
        .max(old.version)
        + 1;
    let mut app = AppRecord {
        versions: old.versions.clone(),
        ..old.clone()
    };
    app.versions.insert(from, old.spec.clone());
    // Keep the last ten versions.
    while app.versions.len() > 10 {
        let Some(first) = app.versions.keys().next().copied() else {
            break;
        };
        app.versions.remove(&first);
    }
    app.spec = spec;
    app.version = to;
    app.updated_at_ms = now;
    if roll {
        let d = start_deployment(&app, kind, from, to, 0, now);
        app = with_deployment(app, d);
    }
    app
}

fn deployment_view(app: &str, d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        app: app.to_string(),
        kind: match d.kind {
            Kind::Update => "update",
            Kind::Restart => "restart",
            Kind::Rollback => "rollback",
        }
        .to_string(),
        from_version: d.from_version,
        to_version: d.to_version,
        state: d.state.name().to_string(),
        started_ms: d.started_ms,
        updated_ms: d.updated_ms,
        message: d.message.clone(),
        done: d.done,
        total: d.total,
    }
}

/// Lowercase state name as users see it (`online`, `pending`, ...).
pub fn state_name(state: i32) -> &'static str {
    match pb::InstanceState::try_from(state) {
        Ok(pb::InstanceState::Pending) => "pending",
        Ok(pb::InstanceState::Launching) => "launching",
        Ok(pb::InstanceState::Online) => "online",
        Ok(pb::InstanceState::Stopped) => "stopped",
        Ok(pb::InstanceState::Exited) => "exited",
        Ok(pb::InstanceState::Errored) => "errored",
        Ok(pb::InstanceState::Stopping) => "stopping",
        Ok(pb::InstanceState::Unknown) => "unknown",
        Ok(pb::InstanceState::Draining) => "draining",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use pmcluster_spec::PortSpec;

    fn register(name: &str) -> pb::Register {
        pb::Register {
            node_name: name.into(),
            cores: 2,
            memory_bytes: 1 << 30,
            ..pb::Register::default()
        }
    }

    fn web(instances: u32) -> AppSpec {
        let mut spec = AppSpec::new("web", "testapp", &[]);
        spec.instances = instances;
        spec.port = PortSpec::Range(4100, 4199);
        spec
    }

    /// Per-node instance counts of `app`, as text like "a:4 b:4 c:4".
    fn spread(c: &Control, app: &str) -> String {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for i in c.list_instances(app).unwrap_or_default() {
            *counts
                .entry(if i.node.is_empty() {
                    "-".into()
                } else {
                    i.node
                })
                .or_default() += 1;
        }
        counts
            .iter()
            .map(|(n, c)| format!("{n}:{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The held assignments of node `name` in `c`'s desired set, as an agent would send them.
    fn held_of(c: &Control, name: &str) -> Vec<pb::Assignment> {
        let inner = c.lock();
        inner
            .nodes
            .get(name)
            .and_then(|l| l.desired.borrow().clone())
            .map(|s| s.assignments)
            .unwrap_or_default()
    }

    /// Issue 9 item 2: a coordinator on a new store quarantines agents of the old cluster (sends
    /// nothing, lists what they hold), and adoption imports their instances with the same ids,
    /// a generation above theirs and `adopt` set.
    #[tokio::test]
    async fn issue9_a_new_store_quarantines_then_adopts_without_restarts() -> Result<()> {
        let old = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let _a = old.attach(&register("a"), None)?;
        let _b = old.attach(&register("b"), None)?;
        old.apply(web(4))?;
        let old_cluster = old.lock().state.cluster_id.clone();
        let regs: Vec<pb::Register> = ["a", "b"]
            .iter()
            .map(|n| {
                let generation = old.lock().state.nodes[*n].generation;
                pb::Register {
                    cluster_id: old_cluster.clone(),
                    generation,
                    held: held_of(&old, n),
                    ..register(n)
                }
            })
            .collect();
        let old_ids: BTreeSet<String> = old
            .list_instances("web")?
            .into_iter()
            .map(|i| i.id)
            .collect();

        let new = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        assert_ne!(new.lock().state.cluster_id, old_cluster);
        let mut sessions = Vec::new();
        for reg in &regs {
            let attached = new.attach(reg, None)?;
            assert!(
                attached.quarantine.contains("nodes adopt"),
                "{}",
                attached.quarantine
            );
            assert!(
                attached.desired.borrow().is_none(),
                "a set went to a quarantined node"
            );
            sessions.push(attached);
        }
        let nodes = new.list_nodes();
        assert!(
            nodes
                .iter()
                .all(|n| n.status == pb::NodeStatus::Quarantined as i32)
        );
        let listed: BTreeSet<String> = new
            .list_instances("web")?
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(listed, old_ids, "the held instances are listed");
        assert!(
            new.lock().state.apps.is_empty(),
            "nothing is imported before adoption"
        );

        let adopted = new.adopt_node("")?;
        assert_eq!(adopted.len(), 2);
        let ids: BTreeSet<String> = new
            .list_instances("web")?
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, old_ids, "the same instances, none new");
        assert_eq!(new.get_app("web")?.spec.map(|s| s.instances), Some(4));
        for (reg, session) in regs.iter().zip(&sessions) {
            let set = session
                .desired
                .borrow()
                .clone()
                .ok_or(ControlError::NotFound("no set".into()))?;
            assert!(set.adopt && set.generation > reg.generation, "{set:?}");
            let cluster_id = new.lock().state.cluster_id.clone();
            assert_eq!(set.cluster_id, cluster_id);
            let mut got: Vec<String> = set
                .assignments
                .iter()
                .map(|a| a.instance_id.clone())
                .collect();
            let mut want: Vec<String> = reg.held.iter().map(|a| a.instance_id.clone()).collect();
            got.sort();
            want.sort();
            assert_eq!(
                got, want,
                "node {} keeps exactly what it holds",
                reg.node_name
            );
        }
        assert!(matches!(
            new.adopt_node("a"),
            Err(ControlError::FailedPrecondition(_))
        ));
        Ok(())
    }

    /// A store that is behind the agent (restored from an old copy) quarantines it too.
    #[test]
    fn issue9_an_agent_ahead_of_the_store_is_quarantined() {
        let mut state = Persisted {
            cluster_id: "c1".into(),
            ..Persisted::default()
        };
        state.nodes.insert(
            "a".into(),
            NodeRecord {
                name: "a".into(),
                labels: BTreeMap::new(),
                cores: 1,
                memory_bytes: 1,
                hostname: String::new(),
                agent_version: String::new(),
                generation: 5,
                drain: false,
                address: String::new(),
            },
        );
        let reg = |cluster: &str, generation: u64| pb::Register {
            cluster_id: cluster.into(),
            generation,
            ..register("a")
        };
        // (agent's cluster, agent's generation) -> quarantined?
        let cases = [
            ("c1", 5, false),
            ("c1", 3, false),
            ("", 0, false),
            ("c1", 6, true),
            ("c2", 5, true),
            ("c2", 0, true),
        ];
        for (cluster, generation, want) in cases {
            assert_eq!(
                quarantine_reason(&state, &reg(cluster, generation)).is_some(),
                want,
                "{cluster} {generation}"
            );
        }
    }

    #[tokio::test]
    async fn pending_until_nodes_then_spread_and_scale_down() -> Result<()> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let c = Control::open(store.clone(), ControlConfig::default())?;
        c.apply(web(3))?;
        assert_eq!(spread(&c, "web"), "-:3");
        let _a = c.attach(&register("a"), None)?;
        let _b = c.attach(&register("b"), None)?;
        let _c = c.attach(&register("c"), None)?;
        assert_eq!(
            spread(&c, "web"),
            "a:3",
            "pending instances go to the first node that appears"
        );
        c.delete_app("web")?;
        c.apply(web(1))?;
        c.scale("web", 12)?;
        assert_eq!(spread(&c, "web"), "a:4 b:4 c:4");
        let ports: Vec<u32> = c.list_instances("web")?.iter().map(|i| i.port).collect();
        assert_eq!(ports, (4100..4112).collect::<Vec<u32>>());
        c.scale("web", 5)?;
        assert_eq!(spread(&c, "web"), "a:2 b:2 c:1");
        let indices: Vec<u32> = c.list_instances("web")?.iter().map(|i| i.index).collect();
        assert_eq!(indices, vec![0, 1, 2, 3, 4]);

        // A coordinator restart from the same store keeps every assignment and generation.
        let before = c.list_instances("web")?;
        let gens: Vec<u64> = store.load()?.nodes.values().map(|n| n.generation).collect();
        drop(c);
        let c2 = Control::open(store.clone(), ControlConfig::default())?;
        let after = c2.list_instances("web")?;
        let ids = |v: &[pb::Instance]| {
            v.iter()
                .map(|i| (i.id.clone(), i.node.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&before), ids(&after));
        let gens2: Vec<u64> = store.load()?.nodes.values().map(|n| n.generation).collect();
        assert_eq!(gens, gens2);
        Ok(())
    }

    #[tokio::test]
    async fn an_apply_can_keep_the_count_a_scale_set_meanwhile() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let _a = c.attach(&register("a"), None)?;
        c.apply(web(2))?;
        // A client read the spec at 2 instances, then someone scaled to 5...
        let mut read = web(2);
        c.scale("web", 5)?;
        // ...and the client applies its edit: the count it read does not undo the scale.
        read.env.insert("X".into(), "1".into());
        let (app, _, changed, _) = c.apply_keeping(read.clone(), true)?;
        assert!(changed);
        assert_eq!(app.spec.map(|s| s.instances), Some(5));
        // Without keep_instances the spec's count is the count.
        let (app, ..) = c.apply_keeping(read, false)?;
        assert_eq!(app.spec.map(|s| s.instances), Some(2));
        // A new app takes its spec's count either way.
        let mut other = web(3);
        other.name = "other".into();
        other.port = PortSpec::Range(4300, 4399);
        let (app, created, ..) = c.apply_keeping(other, true)?;
        assert!(created);
        assert_eq!(app.spec.map(|s| s.instances), Some(3));
        Ok(())
    }

    #[tokio::test]
    async fn a_rebalance_move_with_a_shutdown_delay_is_a_handoff() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let _a = c.attach(&register("a"), None)?;
        let _b = c.attach(&register("b"), None)?;
        let mut spec = web(6);
        spec.update.shutdown_delay = Duration::from_secs(5);
        c.apply(spec)?;
        assert_eq!(spread(&c, "web"), "a:3 b:3");
        // A node joins; the scale-down to 3 would leave a:2 b:1 c:0, so one index moves to c.
        let _c = c.attach(&register("c"), None)?;
        let before = c.list_instances("web")?;
        c.scale("web", 3)?;
        // Every kept index still has its old copy; a moved one also has a new copy elsewhere,
        // which takes over once online (the old one then drains for the delay).
        let after = c.list_instances("web")?;
        assert!(after.iter().any(|i| i.node == "c"), "{after:?}");
        for index in 0..3 {
            let old = before
                .iter()
                .find(|i| i.index == index)
                .map(|i| i.id.clone());
            assert!(
                after
                    .iter()
                    .any(|i| i.index == index && Some(&i.id) == old.as_ref()),
                "index {index} lost its serving copy"
            );
        }
        let copies = |index: u32| after.iter().filter(|i| i.index == index).count();
        assert!((0..3).any(|i| copies(i) == 2), "a move was made: {after:?}");
        Ok(())
    }

    #[tokio::test]
    async fn desired_sets_follow_commands() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let mut a = c.attach(&register("a"), None)?;
        c.apply(web(2))?;
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        assert_eq!(set.assignments.len(), 2);
        assert!(set.assignments.iter().all(|x| x.run));
        let g1 = set.generation;
        c.act("web", Some(1), Action::Stop)?;
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        assert!(set.generation > g1);
        let stopped: Vec<u32> = set
            .assignments
            .iter()
            .filter(|x| !x.run)
            .map(|x| x.index)
            .collect();
        assert_eq!(stopped, vec![1]);
        c.act("web", None, Action::Restart)?;
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        assert!(
            set.assignments
                .iter()
                .all(|x| x.run && x.restart_epoch == 1)
        );
        // Unchanged apply: no new generation.
        let g = set.generation;
        let (_, created, changed, _) = c.apply(web(2))?;
        assert!(!created && !changed);
        assert_eq!(a.desired.borrow().as_ref().map(|s| s.generation), Some(g));
        // Changed spec: new version reaches the agent.
        let mut v2 = web(2);
        v2.env.insert("X".into(), "1".into());
        let (app, _, changed, deployment) = c.apply(v2)?;
        assert!(changed);
        assert_eq!(app.version, 2);
        // A new process rolls out in waves: nothing is replaced in place.
        let d = deployment.expect("a rollout starts");
        assert_eq!(
            (d.from_version, d.to_version, d.state.as_str()),
            (1, 2, "running")
        );
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        assert!(set.assignments.iter().all(|x| x.app_version == 1));
        let old_spec = set
            .assignments
            .iter()
            .find(|x| x.index == 1)
            .map(|x| x.spec.clone());
        // Its first step creates a replacement for index 0. Port 4100 is held by the old one on
        // the only node, so the old one goes first (stop-then-start), then the new one starts.
        for _ in 0..3 {
            c.tick();
        }
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        let versions: Vec<(u32, u64)> = set
            .assignments
            .iter()
            .map(|x| (x.index, x.app_version))
            .collect();
        assert!(
            versions.contains(&(0, 2)) && versions.contains(&(1, 1)),
            "{versions:?}"
        );
        assert_eq!(set.assignments.len(), 2);
        // The instance still on version 1 keeps version 1's spec, so its agent leaves it running.
        let still_old = set.assignments.iter().find(|x| x.index == 1);
        assert_eq!(still_old.map(|x| x.spec.clone()), old_spec);
        let new = set.assignments.iter().find(|x| x.index == 0);
        assert_ne!(new.map(|x| x.spec.clone()), old_spec);
        c.delete_app("web")?;
        let set = a.desired.borrow_and_update().clone().unwrap_or_default();
        assert!(set.assignments.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn the_same_agent_replaces_its_stale_session_and_another_is_refused() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let with_id = |id: &str| pb::Register {
            agent_id: id.into(),
            ..register("a")
        };
        let first = c.attach(&with_id("agent-1"), None)?;
        // Same agent id (the agent restarted; its old connection still looks alive).
        let second = c.attach(&with_id("agent-1"), None)?;
        assert!(c.is_connected("a"));
        // Another agent configured with the same node name, or one that sends no id.
        for other in ["agent-2", ""] {
            assert!(matches!(
                c.attach(&with_id(other), None),
                Err(ControlError::AlreadyExists(_))
            ));
        }
        // The replaced session ending later does not take the node down.
        c.detach("a", first.session_id);
        assert!(c.is_connected("a"));
        c.detach("a", second.session_id);
        assert!(!c.is_connected("a"));
        Ok(())
    }

    #[test]
    fn a_slow_log_reader_loses_lines_visibly_and_never_blocks() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut route = LogRoute {
            node: "a".into(),
            lines: tx,
            dropped: 0,
        };
        let lines = |from: u32, n: u32| -> Vec<pb::LogLine> {
            (from..from + n)
                .map(|i| pb::LogLine {
                    app: "web".into(),
                    line: format!("line {i}"),
                    stream: pb::LogStream::Stdout as i32,
                    ..pb::LogLine::default()
                })
                .collect()
        };
        // Ten lines into room for four: four arrive, six are counted, nothing waits.
        assert!(!route_lines(&mut route, lines(0, 10)));
        assert_eq!(route.dropped, 6);
        let mut got = Vec::new();
        while let Ok(Ok(l)) = rx.try_recv() {
            got.push(l.line);
        }
        assert_eq!(got, ["line 0", "line 1", "line 2", "line 3"]);
        // Room again: the gap is announced before the next line.
        assert!(!route_lines(&mut route, lines(10, 1)));
        let notice = rx.try_recv().ok().and_then(|l| l.ok()).unwrap_or_default();
        assert_eq!(notice.stream, pb::LogStream::Unspecified as i32);
        assert!(notice.line.contains("6 lines dropped"), "{}", notice.line);
        let next = rx.try_recv().ok().and_then(|l| l.ok()).unwrap_or_default();
        assert_eq!(next.line, "line 10");
        assert_eq!(route.dropped, 0);
        // The reader went away.
        drop(rx);
        assert!(route_lines(&mut route, lines(11, 1)));
    }

    #[tokio::test]
    async fn pages_cover_every_instance_once_in_order() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let _a = c.attach(&register("a"), None)?;
        c.apply(web(7))?;
        let mut other = web(3);
        other.name = "api".into();
        other.port = PortSpec::Range(4300, 4399);
        c.apply(other)?;
        let all = c.list_instances("")?;
        let key = |i: &pb::Instance| (i.app.clone(), i.index, i.id.clone());
        // (app filter, page size) -> every page's length.
        let cases: &[(&str, u32, &[usize])] = &[
            ("", 0, &[10]),
            ("", 3, &[3, 3, 3, 1]),
            ("", 5, &[5, 5]),
            ("", 10, &[10]),
            ("web", 2, &[2, 2, 2, 1]),
            ("api", 2, &[2, 1]),
            ("api", 9, &[3]),
        ];
        for (app, size, lengths) in cases {
            let (mut got, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
            for _ in 0..20 {
                let (page, next) = c.list_instances_page(app, *size, &token)?;
                pages.push(page.len());
                got.extend(page);
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            assert_eq!(&pages, lengths, "app {app:?} size {size}");
            let want: Vec<_> = all
                .iter()
                .filter(|i| app.is_empty() || i.app == *app)
                .map(key)
                .collect();
            assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want);
        }
        assert!(matches!(
            c.list_instances_page("", 2, "not a token"),
            Err(ControlError::InvalidArgument(m)) if m.starts_with("page_token:")
        ));
        let (apps, next) = c.list_apps_page(1, "");
        assert_eq!((apps.len(), next.as_str()), (1, "api"));
        let (apps, next) = c.list_apps_page(1, &next);
        assert_eq!(
            apps.first()
                .and_then(|a| a.spec.as_ref())
                .map(|s| s.name.as_str()),
            Some("web")
        );
        assert_eq!(apps.first().map(|a| a.online + a.pending), Some(0));
        assert!(next.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_desired_set_over_budget_is_refused_and_changes_nothing() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let mut a = c.attach(&register("a"), None)?;
        let mut small = web(2);
        small.name = "small".into();
        c.apply(small)?;
        // Just under the spec limit: a few fit in one node's set, twenty do not.
        let mut big = web(1);
        big.name = "big".into();
        big.port = PortSpec::None;
        big.env.insert("BIG".into(), "x".repeat(900 << 10));
        c.apply(big.clone())?;
        let before = a.desired.borrow_and_update().clone().unwrap_or_default();
        let err = c
            .scale("big", 20)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "instances:",
            "node \"a\"",
            "over the 12 MiB limit",
            "env.BIG (900 KiB)",
        ] {
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        // Refused as a whole: nothing stored, nothing sent, the app keeps its count.
        assert!(!a.desired.has_changed().unwrap_or(true));
        assert_eq!(a.desired.borrow().clone().unwrap_or_default(), before);
        assert_eq!(c.get_app("big")?.spec.map(|s| s.instances), Some(1));
        // The same through an apply of the count.
        let err = c
            .apply(big.with_instances(20)?)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("instances:")));
        // A spec over its own limit names its largest field, whatever else it changes.
        big.env.insert("BIG".into(), "x".repeat(3 << 19));
        let err = c
            .apply(big)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("env.BIG: app \"big\" encodes to 1.5 MiB, over the 1 MiB limit"),
            "{err}"
        );
        assert_eq!(spread(&c, "small"), "a:2");
        Ok(())
    }

    #[tokio::test]
    async fn bad_input_is_refused_without_change() -> Result<()> {
        let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
        let _a = c.attach(&register("a"), None)?;
        c.apply(web(2))?;
        let cases: Vec<(Result<(u32, u32)>, &str)> = vec![
            (c.scale("web", -1), "negative"),
            (c.scale("nope", 1), "not found"),
            (c.scale("web", 101), "port"),
            (c.scale("", 1), "empty"),
        ];
        for (got, want) in cases {
            let err = got.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        assert!(matches!(
            c.act("web", Some(2), Action::Restart),
            Err(ControlError::NotFound(_))
        ));
        assert!(matches!(
            c.attach(&register("a"), None),
            Err(ControlError::AlreadyExists(_))
        ));
        assert!(matches!(
            c.attach(&register("bad name"), None),
            Err(ControlError::InvalidArgument(_))
        ));
        assert_eq!(spread(&c, "web"), "a:2");
        Ok(())
    }
}
