//! The control shell: owns the in-memory state, turns user commands and agent reports into store
//! batches, runs the reconciler on every change, and publishes each node's desired set.
//!
//! Every change follows one path, `write::Control::write`: command batch -> reconcile on the
//! result -> generations for touched nodes -> queue -> one store commit for the queue -> apply
//! in memory -> publish. Nothing is applied to `state` or sent to an agent before the store has
//! accepted it, and nothing outside `write` calls the store (a node's registration commits its
//! record through `write::commit` once the queue is empty).
//!
//! By concern: `commands` (user commands → batches), `write` (the write path), `tick` (heartbeat
//! lapses, follow-ups, rollout steps, autoscale samples), `sessions` (attach, report, detach),
//! `logs` (log routes), `events` (the event feed), `views` (read-only views). This file holds the
//! state they share (`Inner`, under one lock; log routes under a lock of their own), the handle
//! and the error. Time and ids come from
//! the `Clock` only. It takes and returns `model`'s plain types (commands, views, events, agent
//! messages) and never a wire type: `api` converts at the boundary through `wire`, and `limits`
//! weighs what must fit in a message.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pmcluster_spec::SpecError;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::core::autoscale::Sample;
use crate::core::leak::{self, LeakPolicy};
use crate::core::quota::Caps;
use crate::core::reconcile::{self, Link};
use crate::model::{
    AppRecord, Assignment, Batch, DesiredSet, Event, HostMetrics, InstanceCommand,
    InstanceObserved, LogLine, LogRequest, Persisted, TokenRecord,
};
use crate::store::{Store, StoreError};

mod commands;
mod events;
mod handouts;
mod logs;
mod moved;
mod parked;
mod sessions;
mod sets;
mod tick;
mod tokens;
mod views;
mod write;

pub use crate::model::{EventKind, Rollouts};
pub use commands::{Applied, ApplyCmd, Count, RolloutAction, ScaleCmd, Scaled};
pub use handouts::{Pending, Wait};
use sets::publish;
pub use tokens::NewToken;

/// Knobs of the control loop.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// How often agents report; sent to them at registration.
    pub heartbeat_interval: Duration,
    /// A connected node that has not reported for this long is considered down.
    pub heartbeat_timeout: Duration,
    /// `--max-apps` and `--max-instances-per-app`.
    pub caps: Caps,
    /// `--leak-window` and `--leak-min-growth`.
    pub leak: LeakPolicy,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            caps: Caps::default(),
            leak: LeakPolicy::default(),
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
    /// Over a configured cap (`--max-apps`, `--max-instances-per-app`); the message names it.
    #[error("{0}")]
    ResourceExhausted(String),
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
    /// Out of rotation (one index only), and back.
    Disable,
    Enable,
}

impl Action {
    /// The verb that asks for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Disable => "disable",
            Action::Enable => "enable",
        }
    }
}

/// Messages to an agent besides its desired set.
#[derive(Debug, Clone)]
pub enum AgentCommand {
    Logs(LogRequest),
    CancelLogs(u64),
    /// A signal or message for some of its instances (see `handouts`).
    Hand(InstanceCommand),
}

/// Live side of a node: its session (if connected) and last report.
struct NodeLive {
    /// Latest desired set; the session task sends each new value.
    desired: watch::Sender<Option<Arc<DesiredSet>>>,
    session: Option<Session>,
    last_heartbeat_ms: i64,
    host: Option<HostMetrics>,
    /// Unix ms the node was last seen going down; `None` while connected. For a node loaded
    /// from the store and not connected since (see [`awaited_node_live`]), a time ahead: when
    /// it will count as down.
    down_since_ms: Option<i64>,
    /// Loaded from the store and not connected since: its `node.down` is owed for when the time
    /// it was given passes, since no session of it will lapse or close to say so (see
    /// `Control::tick`). A registration clears it, and a later loss emits its own.
    down_unannounced: bool,
    /// The instances the agent said it holds at registration (see `Registration::held`).
    held: Vec<Assignment>,
    /// Held instances the agent sent that could not be read: counted in the node's view.
    held_unreadable: usize,
    /// The held copies whose stops an event has said (see `moved::stale_copies`): a link that
    /// drops and comes back before its agent applied its set lists them again, and a second
    /// event would tell of a second stop.
    told_stale: BTreeSet<Uuid>,
    /// Highest desired-set generation the agent reported applying.
    reported_generation: u64,
    /// Adopted by an operator and not yet confirmed by a report: its sets carry `adopt`.
    adopting: bool,
    /// When its report last sampled its instances' memory (see `sessions::sample_memory`).
    memory_sampled_ms: i64,
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
    /// The session the request went out on: its agent is told to stop through it, and the
    /// route ends with it (`commands` closed), so a reader never waits on a session that is gone.
    commands: mpsc::Sender<AgentCommand>,
    lines: mpsc::Sender<LogLine>,
    /// Lines dropped since the reader last had room; announced to it once it has room again.
    dropped: u64,
    /// One of those was a notice that logs were not read: the announcement carries it on.
    dropped_unread: bool,
    /// The app and the indices asked for: named in a notice when the answer never comes.
    app: String,
    indices: Vec<u32>,
    /// Until the agent's first chunk (clock ms): past it, the reader is told the node did not
    /// answer and the route ends ([`logs::LOG_ANSWER_WAIT`]). `None` once it answered, and for
    /// a follow request (which an agent with nothing to show answers with nothing).
    answer_by: Option<i64>,
    /// A chunk came: a notice that the answer ended early says "no more logs".
    answered: bool,
}

/// The memory of one instance's process over the leak window.
#[derive(Default)]
struct MemoryTrend {
    /// The process the samples are of: a new one starts afresh.
    started_at_ms: i64,
    samples: VecDeque<leak::Sample>,
    /// The trend in words while a leak is suspected.
    suspected: Option<String>,
}

/// Where the answer to one instance command goes.
struct CommandRoute {
    node: String,
    reply: tokio::sync::oneshot::Sender<crate::model::CommandResult>,
}

/// The state lock's guard: writes wait on it, and let go of it while the store commits.
type Guard<'a> = parking_lot::MutexGuard<'a, Inner>;

/// How long an agent's report waits for the state before it is parked: longer than another
/// report or an ordinary write holds it, short enough that an async worker is never held long.
const REPORT_LOCK_WAIT: Duration = Duration::from_millis(2);

struct Inner {
    /// The time of the current critical section (see `Control::lock`).
    now: i64,
    /// The records as the store holds them: what reads, reports and the agents' desired sets
    /// come from.
    state: Persisted,
    /// `state` with every queued write applied (see `write`): what commands read and the
    /// reconciler plans on, so that a write queued behind another builds on it. Equal to
    /// `state` whenever the queue is empty.
    ahead: Persisted,
    /// Writes planned on `ahead` and not yet committed, oldest first.
    queue: VecDeque<write::Queued>,
    /// A writer is committing the head of `queue` with the lock let go.
    committing: bool,
    /// The number the next queued write gets, and the outcomes of committed ones not yet
    /// collected by their writers.
    next_seq: u64,
    outcomes: BTreeMap<u64, std::result::Result<(), StoreError>>,
    nodes: BTreeMap<String, NodeLive>,
    observed: Observed,
    /// Why instances of an app are pending, from the last reconcile.
    pending: BTreeMap<String, String>,
    /// Instances a drain cannot move, by app, each with the placer's reason, from the last
    /// reconcile (what a draining node says it waits on).
    unmovable: BTreeMap<String, BTreeMap<Uuid, String>>,
    /// Since when each instance has been reported online without a break.
    online_since: HashMap<Uuid, i64>,
    /// Since when each instance's agent has reported, without a break, that it cannot start
    /// its process (the reconciler moves it after the app's reschedule_after).
    unstartable_since: BTreeMap<Uuid, i64>,
    /// Rollout replacements seen healthy for their `min_healthy_time` (`rollout::Facts::proven`):
    /// in memory, like every observation.
    proven: BTreeSet<Uuid>,
    /// Memory samples of each online instance's current process, and whether a leak is
    /// suspected (in memory only: a new leader watches afresh).
    memory: HashMap<Uuid, MemoryTrend>,
    /// Autoscaler memory per app: metric history and last change.
    scaling: BTreeMap<String, Scaling>,
    /// The autoscaler's scale decisions by (app, direction, outcome), for `/metrics`: counters
    /// of this control's term (a new leader starts at zero, which Prometheus reads as a reset).
    autoscale_counts: BTreeMap<(String, &'static str, &'static str), u64>,
    last_sample_ms: i64,
    /// Something the reconciler looks at changed since it last ran (a node came, went or
    /// lapsed, an instance went on- or offline, a write committed). The reconciler is a pure
    /// function of that state and the clock, so while this is false and its follow-up time has
    /// not come, a tick skips it: with 100,000 pending instances, re-placing them four times a
    /// second held a core and the lock.
    reconcile_due: bool,
    /// A write committed since the last tick: tick at once (a rollout or autoscale change it
    /// made steps then), with or without a full reconcile.
    tick_due: bool,
    /// When the last reconcile said something becomes due (a lost node's reschedule, the end
    /// of a drain delay).
    followup_at: Option<i64>,
    /// Shared specs and published weights the desired sets are built and weighed with.
    sets: sets::Sets,
    /// Processes whose records are gone while their agents still run them, by node.
    leaving: BTreeMap<String, HashMap<Uuid, Leaving>>,
    /// Quarantined nodes whose adoption is being written: a write planned meanwhile that
    /// touches them marks its generation sent (`NodeRecord::sent_generation`), since it lands
    /// with or after the adoption, whose end lets their sets go out.
    being_adopted: BTreeSet<String>,
}

/// A process whose record was removed (scaled away, its app deleted, the old side of a move or
/// a rollout) while its agent ran it. Listed as stopping, from its agent's reports, until a
/// report no longer holds it running, so that `list` shows what is still ending and
/// `scale --wait` waits for the processes rather than the records (as `kubectl get pods` lists
/// a terminating pod). In memory only, like every observation: a new leader starts without.
#[derive(Debug, Clone)]
struct Leaving {
    app: String,
    index: u32,
    app_version: u64,
    /// Its agent's last report of it; pid 0 until a report holds it running.
    status: InstanceObserved,
    /// The last pid a report gave it (0: none), for the event at its end.
    seen_pid: u32,
    /// The node's desired-set generation that left it out. A report of an older set may not
    /// hold the process yet (just started, not reported before its record went) or may not
    /// have stopped it yet: only a report of this generation or later that does not hold it
    /// running says it has ended.
    until: u64,
}

impl Leaving {
    /// Whether a report of the process says it may still run: one launching may have no pid
    /// yet (its agent spawns it as the report goes out).
    fn running(o: &InstanceObserved) -> bool {
        use crate::model::InstanceState as S;
        match o.state {
            S::Launching => true,
            S::Online | S::Stopping => o.pid != 0,
            _ => false,
        }
    }
}

/// What the agents last reported of each instance, and which of them are online: the
/// reconciler's `online` set, kept current as reports come in rather than gathered from every
/// report at each plan (at 5,000 instances that gathering was a fifth of a write).
#[derive(Default)]
struct Observed {
    by_id: HashMap<Uuid, InstanceObserved>,
    online: std::collections::BTreeSet<Uuid>,
    /// Reported exited: with autorestart off, ended for good (the reconciler moves such an
    /// instance stopped). Few at any time, so kept like `online` rather than gathered per plan.
    exited: std::collections::BTreeSet<Uuid>,
    /// Instances whose last status a report took in full (their online and failing times
    /// follow it), and whose records have not changed since: the same status again changes
    /// nothing, and a report passes it by (see `Control::report`).
    settled: std::collections::HashSet<Uuid>,
}

impl Observed {
    fn get(&self, id: &Uuid) -> Option<&InstanceObserved> {
        self.by_id.get(id)
    }

    fn insert(&mut self, id: Uuid, o: InstanceObserved) {
        if o.state == crate::model::InstanceState::Online {
            self.online.insert(id);
        } else {
            self.online.remove(&id);
        }
        if o.state == crate::model::InstanceState::Exited {
            self.exited.insert(id);
        } else {
            self.exited.remove(&id);
        }
        self.settled.remove(&id);
        self.by_id.insert(id, o);
    }

    fn remove(&mut self, id: &Uuid) {
        self.online.remove(id);
        self.exited.remove(id);
        self.settled.remove(id);
        self.by_id.remove(id);
    }

    /// Marks `id`'s status as taken in full by a report.
    fn settle(&mut self, id: Uuid) {
        self.settled.insert(id);
    }

    /// `id`'s record changed: its next status is taken in full.
    fn unsettle(&mut self, id: &Uuid) {
        self.settled.remove(id);
    }

    /// Whether `o` is the status a report already took in full for a record unchanged since.
    fn settled_as(&self, o: &InstanceObserved) -> bool {
        self.settled.contains(&o.id) && self.by_id.get(&o.id) == Some(o)
    }
}

/// What the autoscaler remembers of one app. The samples are in memory (a restart or a new
/// leader samples afresh); the last change is seeded from the stored decisions, so a cooldown
/// outlives the coordinator that started it.
#[derive(Default)]
struct Scaling {
    history: VecDeque<Sample>,
    last_change_ms: Option<i64>,
    last_reason: String,
}

pub struct Control {
    inner: parking_lot::Mutex<Inner>,
    /// Log requests in flight, under a lock of their own: every chunk an agent sends is routed
    /// here, and must not wait behind a reconcile or a commit holding `inner`. Lock order:
    /// `inner`, then `log_routes`; the log paths never take `inner` while holding this one.
    log_routes: parking_lot::Mutex<HashMap<u64, LogRoute>>,
    /// Instance commands waiting for their agent's answer, under a lock of their own for the
    /// same reason. Lock order: `inner`, then `command_routes`.
    command_routes: parking_lot::Mutex<HashMap<u64, CommandRoute>>,
    /// The committed tokens, copied out of `inner` at each commit that changes them: every call
    /// carrying a token looks it up on an async worker, which must not wait behind a write that
    /// holds `inner` for seconds. Lock order: `inner`, then `tokens`.
    tokens: parking_lot::RwLock<BTreeMap<String, TokenRecord>>,
    /// Rung when a group of queued writes was committed (or refused).
    settled: parking_lot::Condvar,
    store: Arc<dyn Store>,
    events: broadcast::Sender<Event>,
    /// The last events, for late watchers (`events --history`) and autoscale status.
    recent: Mutex<VecDeque<Event>>,
    config: ControlConfig,
    ids: AtomicU64,
    /// The time and fresh ids: an input, so tests and the simulation can drive them.
    clock: Arc<dyn Clock>,
    /// Rung when something the tick acts on changed (a commit, a node came or went, an instance
    /// went on- or offline): the control loop then ticks at once instead of at its next wake-up.
    changed: tokio::sync::Notify,
    /// Cancelled when this control stops serving (its coordinator stepped down as leader):
    /// streams and loops that hold it end.
    retired: tokio_util::sync::CancellationToken,
    /// Agent reports that would have waited long for `inner` (see `Control::report`).
    parked: parked::Parked,
}

/// What a new agent session receives.
pub struct Attached {
    pub session_id: u64,
    pub desired: watch::Receiver<Option<Arc<DesiredSet>>>,
    pub commands: mpsc::Receiver<AgentCommand>,
    pub closed: watch::Receiver<()>,
    pub heartbeat_interval: Duration,
    pub cluster_id: String,
    /// Why the node is quarantined (empty: it is not).
    pub quarantine: String,
    /// The address the node's instances are reached at, as recorded (advertised, or seen).
    pub address: String,
    /// The agent reads desired sets sent as deltas.
    pub takes_deltas: bool,
}

fn new_node_live(now: i64) -> NodeLive {
    NodeLive {
        desired: watch::Sender::new(None),
        session: None,
        last_heartbeat_ms: 0,
        host: None,
        down_since_ms: Some(now),
        down_unannounced: false,
        held: Vec::new(),
        held_unreadable: 0,
        told_stale: BTreeSet::new(),
        reported_generation: 0,
        adopting: false,
        memory_sampled_ms: i64::MIN,
    }
}

/// A node as a coordinator that just loaded the store (a restart, or a takeover in an HA pair)
/// sees it: not connected, and given [`awaited_ms`] to connect before it counts as down, as if
/// its last heartbeat had come then. Counted from the load instead, every node's reschedule
/// and drain clocks would start while its agent is still finding the new leader (it notices a
/// silent old one only by its keepalive): a short `reschedule_after` then moved every instance
/// of the cluster to whichever node reconnected first, and a drain replaced all of a draining
/// node's instances at once.
fn awaited_node_live(now: i64, config: &ControlConfig) -> NodeLive {
    NodeLive {
        down_since_ms: Some(now.saturating_add(awaited_ms(config))),
        down_unannounced: true,
        ..new_node_live(now)
    }
}

/// The heartbeat timeout in ms.
fn timeout_ms(config: &ControlConfig) -> i64 {
    i64::try_from(config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX)
}

/// How long a coordinator that loaded the store gives each node to connect: the heartbeat
/// timeout, and never less than the agents' longest reconnect wait. A trial with heartbeat
/// timeout 2s and `reschedule_after` 1s froze etcd for 20 s: the agents had backed off to
/// 5-6 s between tries meanwhile, so the new leader found every node down and restarted a
/// whole app on the node that came back first, while every instance ran.
fn awaited_ms(config: &ControlConfig) -> i64 {
    let within = i64::try_from(pmcluster_spec::link::AGENT_RECONNECT_WITHIN.as_millis());
    timeout_ms(config).max(within.unwrap_or(i64::MAX))
}

/// Whether a node loaded from the store has not connected since, and is still within the time
/// [`awaited_node_live`] gives it.
fn awaited(live: &NodeLive, now: i64) -> bool {
    live.session.is_none() && live.down_since_ms.is_some_and(|at| at > now)
}

/// The autoscaler's memory as the stored decisions leave it: the time and reason of each app's
/// last change.
fn resumed_scaling(state: &Persisted) -> BTreeMap<String, Scaling> {
    state
        .apps
        .iter()
        .filter_map(|(name, app)| {
            app.scaled.last().map(|d| {
                let scaling = Scaling {
                    history: VecDeque::new(),
                    last_change_ms: Some(d.at_ms),
                    last_reason: d.reason.clone(),
                };
                (name.clone(), scaling)
            })
        })
        .collect()
}

/// At an adoption, the records of `noted` restarts (instance id, epoch asked) that are still at
/// the epoch asked, not restarted again since, and not above what their agent `held` at
/// registration: each one above what the agent holds, so that the restart happens (a store
/// restored from an older copy has records behind the agent). Ordinarily a record is one
/// above, and none is.
fn raised_restarts(
    records: &Persisted,
    noted: &BTreeMap<Uuid, u64>,
    held: &[crate::model::Assignment],
) -> Vec<crate::model::InstanceRecord> {
    held.iter()
        .filter_map(|a| {
            let asked = noted.get(&a.id)?;
            let rec = records.instances.get(&a.id)?;
            (rec.restart_epoch == *asked && rec.restart_epoch <= a.restart_epoch).then(|| {
                crate::model::InstanceRecord {
                    restart_epoch: a.restart_epoch + 1,
                    ..rec.clone()
                }
            })
        })
        .collect()
}

/// "1 instance", "3 instances": how events and node messages count instances.
fn instances_phrase(n: u32) -> String {
    match n {
        1 => "1 instance".to_string(),
        n => format!("{n} instances"),
    }
}

/// A span of milliseconds as events and node messages give it: "12.0s".
fn seconds_phrase(ms: i64) -> String {
    format!("{:.1}s", ms.max(0) as f64 / 1000.0)
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
            write::commit(store.as_ref(), &mut state, &batch)?;
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
            nodes.insert(name.clone(), awaited_node_live(now, &config));
        }
        let scaling = resumed_scaling(&state);
        let mut inner = Inner {
            ahead: state.clone(),
            state,
            queue: VecDeque::new(),
            committing: false,
            next_seq: 0,
            outcomes: BTreeMap::new(),
            nodes,
            observed: Observed::default(),
            memory: HashMap::new(),
            pending: BTreeMap::new(),
            unmovable: BTreeMap::new(),
            online_since: HashMap::new(),
            unstartable_since: BTreeMap::new(),
            proven: BTreeSet::new(),
            scaling,
            autoscale_counts: BTreeMap::new(),
            last_sample_ms: 0,
            reconcile_due: true,
            tick_due: false,
            followup_at: None,
            sets: sets::Sets::default(),
            leaving: BTreeMap::new(),
            being_adopted: BTreeSet::new(),
            now,
        };
        let names: Vec<String> = inner.nodes.keys().cloned().collect();
        for name in names {
            publish(&mut inner, &name);
        }
        let (events, _) = broadcast::channel(1024);
        let tokens = parking_lot::RwLock::new(inner.state.tokens.clone());
        Ok(Control {
            inner: parking_lot::Mutex::new(inner),
            log_routes: parking_lot::Mutex::new(HashMap::new()),
            command_routes: parking_lot::Mutex::new(HashMap::new()),
            tokens,
            settled: parking_lot::Condvar::new(),
            store,
            events,
            recent: Mutex::new(VecDeque::new()),
            config,
            ids: AtomicU64::new(1),
            clock,
            changed: tokio::sync::Notify::new(),
            retired: tokio_util::sync::CancellationToken::new(),
            parked: parked::Parked::default(),
        })
    }

    fn lock(&self) -> Guard<'_> {
        // parking_lot's lock is not poisoned by a panic: the state under it was only ever
        // changed after a successful commit, so it is still consistent.
        self.fresh(self.inner.lock())
    }

    /// The state for an agent's report, unless it is taken for longer than another report or a
    /// small write takes it: then `None`, at once while reports are parked already.
    fn try_lock_for_report(&self) -> Option<Guard<'_>> {
        let inner = if self.parked.busy() {
            self.inner.try_lock()
        } else {
            self.inner.try_lock_for(REPORT_LOCK_WAIT)
        };
        inner.map(|inner| self.fresh(inner))
    }

    /// Whether the state lock is free, or becomes so within a moment (as a report waits for
    /// it): a read that finds it so does not wait long on an async worker, unless a long write
    /// takes the lock in the instant between.
    pub fn state_free(&self) -> bool {
        !self.parked.busy() && self.inner.try_lock_for(REPORT_LOCK_WAIT).is_some()
    }

    /// Whether the state lock is free this instant: for a poller that may as well look again at
    /// its next round, and so should not wait at all.
    pub fn state_free_now(&self) -> bool {
        self.inner.try_lock().is_some()
    }

    fn fresh<'a>(&self, mut inner: Guard<'a>) -> Guard<'a> {
        // One time for the whole critical section, read under the lock so it never goes back.
        inner.now = inner.now.max(self.clock.now_ms());
        // Parked reports are heartbeats that came in time (see `parked`).
        for (node, (session_id, at)) in self.parked.take_heard() {
            if let Some(live) = inner.nodes.get_mut(&node)
                && live.session.as_ref().map(|s| s.id) == Some(session_id)
            {
                live.last_heartbeat_ms = live.last_heartbeat_ms.max(at);
            }
        }
        inner
    }

    /// The time of the current critical section's clock (outside one: now).
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The time as this control's clock says (milliseconds), for loops that wait on it.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    /// Whether a node has a live session (for tests and the API).
    pub fn is_connected(&self, node: &str) -> bool {
        let inner = self.lock();
        inner.nodes.get(node).is_some_and(|l| l.session.is_some())
    }

    /// How many agents have a live session.
    pub fn connected_agents(&self) -> usize {
        let inner = self.lock();
        inner.nodes.values().filter(|l| l.session.is_some()).count()
    }

    /// Stops serving: every agent session closes (agents keep their instances and reconnect, to
    /// the new leader), and [`Control::retired`] fires for the streams and the loop that hold
    /// this control. Writes still in flight are refused by the store's fence, not here.
    pub fn retire(&self) {
        self.retired.cancel();
        let mut inner = self.lock();
        for live in inner.nodes.values_mut() {
            live.session = None;
        }
        inner.leaving.clear();
        drop(inner);
        self.command_routes.lock().clear();
        self.log_routes.lock().clear();
    }

    /// Completes once [`Control::retire`] was called.
    pub fn retired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.retired.cancelled()
    }

    /// The token behind [`Control::retired`], for streams that outlive a borrow.
    pub fn retired_token(&self) -> tokio_util::sync::CancellationToken {
        self.retired.clone()
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
    pub fn dry_plan(&self) -> crate::core::reconcile::Plan {
        let inner = self.lock();
        write::plan_for(&inner, &inner.state, &self.config, inner.now, None)
    }
}

fn is_ready(live: &NodeLive, config: &ControlConfig, now: i64) -> bool {
    live.session.is_some() && now.saturating_sub(live.last_heartbeat_ms) <= timeout_ms(config)
}

/// The reconciler's view of every registered node.
fn node_views<'a>(
    inner: &Inner,
    view: &'a Persisted,
    config: &ControlConfig,
) -> Vec<reconcile::NodeView<'a>> {
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
            reconcile::NodeView {
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

fn node_not_found(name: &str) -> ControlError {
    match pmcluster_spec::app::validate_node_name(name) {
        Err(e) => ControlError::InvalidArgument(format!("node: {}", e.message)),
        Ok(()) => ControlError::NotFound(format!(
            "node {name:?} not found; see the nodes with 'pmcluster nodes'"
        )),
    }
}

/// The app `name` of `state`: `inner.ahead` for a command, `inner.state` for a read.
fn find_app<'a>(state: &'a Persisted, name: &str) -> Result<&'a AppRecord> {
    if name.is_empty() {
        return Err(ControlError::InvalidArgument("app: name is empty".into()));
    }
    state.apps.get(name).ok_or_else(|| {
        // Looked up first, so that an app stored under an older grammar stays reachable; a
        // name no app could have is the caller's mistake, not a missing app.
        match pmcluster_spec::app::validate_name(name) {
            Err(e) => ControlError::InvalidArgument(format!("app: {}", e.message)),
            Ok(()) => ControlError::NotFound(format!(
                "app {name:?} not found; see the apps with 'pmcluster apps'"
            )),
        }
    })
}

#[cfg(test)]
mod commit_tests;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod parked_tests;
#[cfg(test)]
mod report_tests;
#[cfg(test)]
mod sets_tests;
#[cfg(test)]
mod tests;
