//! What a node's agent and the control say to each other, as plain data: a registration and
//! status reports up, desired sets and log requests down, log lines back. `wire` reads and
//! writes the `AgentLink` messages these come from and go to.

use std::collections::BTreeMap;
use std::sync::Arc;

use pmcluster_spec::AppSpec;
use uuid::Uuid;

use super::view::{Health, InstanceState};

/// One instance a node runs (or holds, for a quarantined node): the unit of a desired set.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub id: Uuid,
    pub index: u32,
    pub app_version: u64,
    /// The spec of `app_version` (during a rollout the old instances keep their process). Shared:
    /// one spec serves every assignment of its app and version, in every set published until the
    /// app changes, so a set is cheap to build and an unchanged assignment compares by pointer.
    pub spec: Arc<AppSpec>,
    /// 0: none.
    pub port: u32,
    pub run: bool,
    pub restart_epoch: u64,
}

/// What a node must run, as of `generation`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredSet {
    pub generation: u64,
    /// By id.
    pub assignments: Vec<Assignment>,
    pub cluster_id: String,
    /// Set while an operator's adoption is not yet confirmed: the agent takes `cluster_id`.
    pub adopt: bool,
}

/// What an agent said of one instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceObserved {
    pub id: Uuid,
    pub state: InstanceState,
    pub pid: u32,
    /// 0: none.
    pub port: u32,
    pub cpu_percent: f64,
    /// CPU time of the process tree as the agent summed it; grows while one agent runs it.
    pub cpu_time_ms: u64,
    pub memory_bytes: u64,
    pub restarts: u32,
    pub started_at_ms: i64,
    pub last_exit_code: Option<i32>,
    pub message: String,
    pub restart_epoch: u64,
    pub health: Health,
    /// Failed attempts in a row to spawn its process on this node; 0 once one runs.
    pub start_failures: u32,
}

impl InstanceObserved {
    /// The agent's last word on it, without its own retry schedule or restart advice: what
    /// happened, for an event or a rollout's failure to quote.
    pub fn reason(&self) -> &str {
        use pmcluster_spec::supervise::{RESTART_ADVICE, RETRYING};
        let why = self.message.as_str();
        let why = why.split_once(RETRYING).map_or(why, |(w, _)| w);
        why.split_once(RESTART_ADVICE).map_or(why, |(w, _)| w)
    }

    /// Whether the agent gave up on the process of restart epoch `epoch` (or a later one):
    /// errored, with no retry of its own scheduled (a start it still retries is reported as
    /// errored too, with its schedule).
    pub fn gave_up(&self, epoch: u64) -> bool {
        self.state == InstanceState::Errored
            && self.restart_epoch >= epoch
            && !self.message.contains(pmcluster_spec::supervise::RETRYING)
    }
}

/// The host's own figures, from a report.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostMetrics {
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub load1: f64,
    pub cores: u32,
}

/// An agent opening its session.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registration {
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub hostname: String,
    pub agent_version: String,
    /// The highest desired-set generation it applied.
    pub generation: u64,
    pub instances: Vec<InstanceObserved>,
    /// Empty: the peer's address stands.
    pub advertise_address: String,
    /// The agent's persistent id (empty for agents that send none).
    pub agent_id: String,
    /// The cluster it remembers serving (empty: none yet).
    pub cluster_id: String,
    /// What it runs and remembers (for listing and adopting a quarantined node).
    pub held: Vec<Assignment>,
    /// Held assignments that could not be read (a bad id or spec): counted, never adopted.
    pub held_unreadable: usize,
    /// The node name its data dir had before `--rename-node` (empty: none).
    pub renamed_from: String,
    /// It reads desired sets sent as deltas.
    pub takes_deltas: bool,
}

/// A status report, also the heartbeat.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub generation: u64,
    pub instances: Vec<InstanceObserved>,
    pub host: Option<HostMetrics>,
}

/// A request to an agent for the output of some of its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub request_id: u64,
    pub instance_ids: Vec<Uuid>,
    /// How many past lines per instance.
    pub lines: u32,
    pub follow: bool,
    /// None of the past lines: an agent that knows this field ignores `lines`.
    pub no_history: bool,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogStream {
    /// A line of pmcluster's own (e.g. "N lines dropped here").
    #[default]
    Unspecified,
    Stdout,
    Stderr,
}

/// One line of an instance's output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogLine {
    pub app: String,
    pub index: u32,
    pub node: String,
    pub stream: LogStream,
    /// Without its trailing newline.
    pub line: String,
    /// A notice of pmcluster's own that some instances' logs were not read: the answer is partial.
    pub unread: bool,
}

/// Lines an agent sends for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogChunk {
    pub request_id: u64,
    pub lines: Vec<LogLine>,
    /// The request is done (without `follow`: all was sent).
    pub eof: bool,
    /// Why the agent could not read (empty: it could).
    pub error: String,
}

/// What to hand instances now (`signal`, `send`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handout {
    /// A canonical signal name (`SIGUSR2`).
    Signal(String),
    /// One line of text.
    Message(String),
}

/// A handout for some instances of one node; answered by a [`CommandResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCommand {
    pub request_id: u64,
    pub instance_ids: Vec<Uuid>,
    pub handout: Handout,
}

/// What an agent did with an [`InstanceCommand`]: per instance id (as the agent wrote it),
/// `Ok` or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub request_id: u64,
    pub outcomes: Vec<(String, Result<(), String>)>,
}

/// What became of a handout for one instance, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub index: u32,
    pub instance_id: Uuid,
    pub node: Option<String>,
    /// `Err`: why it was not delivered.
    pub outcome: Result<(), String>,
    /// Sent, with no answer: the agent may still carry it out (see `pb::Delivery`).
    pub unconfirmed: bool,
}

/// A user's `logs` request: the app, one index or all, past lines per instance, follow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogsQuery {
    pub app: String,
    pub index: Option<u32>,
    /// 0: the default.
    pub lines: u32,
    pub follow: bool,
    /// No past lines at all (`logs --lines 0`), which `lines` cannot say: its 0 is the default.
    pub no_history: bool,
}
