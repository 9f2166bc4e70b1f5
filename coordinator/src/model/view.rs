//! What the control shows of the cluster: read-only views of apps, instances, nodes, endpoints,
//! rollouts and autoscaling, built under the state lock and handed out as plain data. `wire`
//! turns them into the public API's messages.

use std::collections::BTreeMap;

use pmcluster_spec::AppSpec;
use pmcluster_spec::autoscale::AutoscalePolicy;

use super::Deployment;
use super::event::Event;

/// An instance's state as `list` shows it (and as agents report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceState {
    /// What an agent that sent no state said.
    #[default]
    Unspecified,
    Pending,
    Launching,
    Online,
    Stopped,
    Exited,
    Errored,
    Stopping,
    Unknown,
    Draining,
    Restarting,
}

impl InstanceState {
    /// Lowercase, as users see it (`online`, `pending`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Unspecified => "unspecified",
            InstanceState::Pending => "pending",
            InstanceState::Launching => "launching",
            InstanceState::Online => "online",
            InstanceState::Stopped => "stopped",
            InstanceState::Exited => "exited",
            InstanceState::Errored => "errored",
            InstanceState::Stopping => "stopping",
            InstanceState::Unknown => "unknown",
            InstanceState::Draining => "draining",
            InstanceState::Restarting => "restarting",
        }
    }
}

/// An instance's health check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// No health check configured (or not run yet).
    #[default]
    Unspecified,
    Healthy,
    Unhealthy,
    /// Configured but no result yet.
    Unknown,
}

/// An app with the counts of its instances by state.
#[derive(Debug, Clone, PartialEq)]
pub struct AppView {
    pub spec: AppSpec,
    pub version: u64,
    pub updated_at_ms: i64,
    pub online: u32,
    pub pending: u32,
    pub stopped: u32,
    /// Failed for good; a trial's errored app read "0 online, 0 pending, 0 stopped" and nothing
    /// more.
    pub errored: u32,
    /// Crashed and waiting for their restart: a crash loop.
    pub restarting: u32,
    /// Exited on their own with autorestart off.
    pub exited: u32,
}

/// One instance: its record merged with what its agent last reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceView {
    /// A text: an instance a quarantined node holds is listed with the id its agent sent.
    pub id: String,
    pub app: String,
    pub index: u32,
    /// Empty while pending.
    pub node: String,
    pub state: InstanceState,
    pub pid: u32,
    pub port: u32,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub restarts: u32,
    pub started_at_ms: i64,
    pub app_version: u64,
    pub last_exit_code: Option<i32>,
    pub message: String,
    pub stopped: bool,
    pub health: Health,
    /// Its node's address (empty while pending).
    pub host: String,
    /// Out of rotation (`disable`).
    pub disabled: bool,
    /// Non-empty while a memory leak is suspected: the trend, in words.
    pub leak: String,
    /// Its record is gone and its process is still ending (see `control::Leaving`).
    pub removed: bool,
    /// Held by a quarantined node, of which there is no record (see `control::views`).
    pub unmanaged: bool,
}

/// A node's status as `nodes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Ready,
    Down,
    /// Drained with instances still on it.
    Draining,
    /// Drained and empty.
    Ineligible,
    Quarantined,
    /// Not connected since this coordinator loaded the store, within the time it gives agents
    /// to come back: not counted down yet.
    Reconnecting,
}

/// One node: its record, its link and what it reported last.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub instances: u32,
    pub last_heartbeat_ms: i64,
    pub hostname: String,
    pub agent_version: String,
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub allocated_cpu_millis: u64,
    pub allocated_memory_bytes: u64,
    /// 0 while ready.
    pub down_since_ms: i64,
    pub address: String,
    /// Why the node is quarantined (empty: it is not).
    pub message: String,
}

/// Where one instance of an app serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u32,
    pub index: u32,
    pub node: String,
    pub version: u64,
    pub instance_id: String,
}

/// An app's endpoints: online, healthy, not draining instances, by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointsView {
    pub app: String,
    pub endpoints: Vec<Endpoint>,
}

/// An app's autoscaling: its policy (`None`: off), what the autoscaler sees and decided.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleView {
    pub app: String,
    pub policy: Option<AutoscalePolicy>,
    pub instances: u32,
    pub online: u32,
    pub cpu_avg: Option<f64>,
    pub memory_avg_bytes: Option<u64>,
    /// The autoscaler's last reason (empty before its first sample).
    pub state: String,
    /// Its changes, oldest first.
    pub decisions: Vec<Event>,
}

/// An app's rollouts: the running or last one, the finished ones (oldest first), and the versions
/// it keeps (the current one last).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollouts {
    pub current: Option<Deployment>,
    pub history: Vec<Deployment>,
    pub versions: Vec<u64>,
    pub version: u64,
}

/// The figures `/metrics` shows, copied under the state lock in one pass: names and numbers
/// only, so the lock is held for a copy and the text is written after it is released.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsView {
    /// One per (app, index, node), sorted so; a handoff's two records on one node are merged.
    pub instances: Vec<InstanceFigures>,
    pub apps: Vec<AppFigures>,
    pub nodes: Vec<NodeFigures>,
    /// The autoscaler's changes and refusals since this control started, by app, direction
    /// and outcome.
    pub autoscale: Vec<AutoscaleCount>,
}

/// One instance as `/metrics` labels it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceFigures {
    pub app: String,
    pub index: u32,
    /// Empty while pending.
    pub node: String,
    pub online: bool,
    pub cpu_time_ms: u64,
    pub memory_bytes: u64,
    pub restarts: u64,
}

/// An app's counts and its current rollout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppFigures {
    pub app: String,
    pub desired: u32,
    pub online: u32,
    pub pending: u32,
    /// The app's deployment (running or the last one): its state, indices done and of how many.
    pub rollout: Option<(&'static str, u32, u32)>,
}

/// A node's status, capacity and what is placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFigures {
    pub name: String,
    pub status: NodeStatus,
    pub cores: u32,
    pub memory_bytes: u64,
    pub instances: u32,
    pub allocated_cpu_millis: u64,
    pub allocated_memory_bytes: u64,
}

impl NodeStatus {
    /// Lowercase, as `nodes` shows it.
    pub fn name(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Draining => "draining",
            NodeStatus::Ineligible => "ineligible",
            NodeStatus::Quarantined => "quarantined",
            NodeStatus::Reconnecting => "reconnecting",
        }
    }

    pub const ALL: [NodeStatus; 6] = [
        NodeStatus::Ready,
        NodeStatus::Down,
        NodeStatus::Draining,
        NodeStatus::Ineligible,
        NodeStatus::Quarantined,
        NodeStatus::Reconnecting,
    ];
}

/// How often the autoscaler came to one outcome for one app in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscaleCount {
    pub app: String,
    /// `up` or `down`.
    pub direction: &'static str,
    /// `scaled`, `capped` (held at `--max-instances-per-app`), `refused` (the target is not a
    /// valid count) or `failed` (the write failed).
    pub outcome: &'static str,
    pub count: u64,
}
