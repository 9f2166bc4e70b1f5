//! What the agent knows right now: the instances it supervises (their latest desired assignment
//! and observed status), the highest desired generation applied, and the latest host sample.
//!
//! One plain mutex guards it and is never held across an `.await`: every method takes the lock,
//! copies or changes plain data, and returns. State changes that the coordinator must see fast
//! (started, online, exited) ring [`State::changed`], which the link coalesces into a report.
//!
//! Also what every part of the agent shares ([`Agent`]: dirs, reaper, cgroups, shutdown tokens,
//! the state) and the two messages to a supervisor that several layers send ([`Target`] from
//! the desired set, [`Poke`] from the metrics pass). They live here, below logs, metrics, the
//! supervisor and the link, so that none of those reaches up for them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pmcluster_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cgroup::Cgroups;
use crate::identity::Identity;
use crate::orphans::{Marker, Orphan};
use crate::ports::Ports;

use crate::model::{Assignment, HostSample, InstanceId, Status};
use crate::process::{ProcId, Reaper};

/// What a supervisor must make its instance be. The latest value is all that matters, which is
/// why it travels in a `watch` channel.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The assignment last applied; `run` says whether the process should run.
    pub assignment: Assignment,
    /// The instance left the desired set: stop it and forget it.
    pub remove: bool,
    /// Bumped by every Start and Restart action. A supervisor that sees a new value (re)starts
    /// its process at once, even if it was waiting out a backoff or had given up.
    pub start_seq: u64,
}

/// What an instance's record said of it when its process was found ended at the agent's start:
/// the instance goes on from there when it is started again, rather than from 0 (a crash loop
/// that outlived its agent read 7 restarts, then 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
}

/// Something the metrics pass asks of a supervisor.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Poke {
    /// The process tree of `pid` uses `rss` bytes, more than `limit`.
    Memory { pid: u32, rss: u64, limit: u64 },
}

/// What every part of the agent shares.
pub(crate) struct Agent {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// What the data dir remembers (see [`crate::identity`]); saved whenever it changes.
    pub identity: Mutex<Identity>,
    /// `DATA_DIR/logs`: instance stdout/stderr files.
    pub logs_dir: PathBuf,
    /// `DATA_DIR/instances`: one record per instance (see [`crate::persist`]).
    pub records: crate::persist::Records,
    pub state: State,
    pub ports: Ports,
    pub reaper: Arc<Reaper>,
    /// Every supervisor task.
    pub supervisors: TaskTracker,
    /// Cancelled at shutdown with `stop_instances_on_exit`: every supervisor stops its instance
    /// and ends.
    pub stop_instances: CancellationToken,
    /// Cancelled at shutdown otherwise: every supervisor records its process and ends, leaving
    /// it running.
    pub detach: CancellationToken,
    /// Mirrors `Inner::cleared` for supervisors to wait on.
    pub cleared: watch::Sender<bool>,
    /// Instances of the local state that did not run at startup: forgotten unless the first
    /// desired set brings them back. With what their records said of them, which a supervisor
    /// made for one of them starts from.
    pub unclaimed: Mutex<BTreeMap<InstanceId, Carried>>,
    /// The origin of the restart policy's clock.
    pub started: Instant,
    /// See [`crate::Config::log_pump`].
    pub log_pump: Option<PathBuf>,
    /// The agent's end of the socket to its pump host, once started (see
    /// [`crate::logs::host`]).
    pub pump_host: Mutex<Option<PumpHost>>,
    /// Where instances' cgroups go (see [`crate::cgroup`]), if anywhere.
    pub cgroups: Cgroups,
    /// What marks this agent's instances and pumps (see [`crate::orphans`]).
    pub marker: Marker,
    /// Instances of no local record found at startup, until the coordinator's first desired
    /// set settles them (see [`crate::orphans`]).
    pub orphans: Mutex<Option<Vec<Orphan>>>,
    /// `--advertise-address`.
    pub advertise_address: Option<String>,
}

/// A running log pump host, as the agent holds it (see `crate::logs::host`).
pub(crate) struct PumpHost {
    /// The agent's end of the host's socket.
    pub socket: std::os::fd::OwnedFd,
    /// The host process, to end it when it does not answer (through the reaper, see
    /// `crate::process::Reaper::signal_unreaped`).
    pub pid: u32,
}

/// The environment variable that tells an instance where to listen for `pmcluster send`.
pub const MESSAGES_VAR: &str = "PMCLUSTER_MESSAGES";

impl Agent {
    /// Whether the agent is on its way out (either shutdown): a desired set that arrives now
    /// is not applied, since no supervisor would carry it out, and its generation must not be
    /// remembered or reported as applied.
    pub fn leaving(&self) -> bool {
        self.detach.is_cancelled() || self.stop_instances.is_cancelled()
    }

    /// An agent on `data_dir` that no coordinator steers and that runs without cgroups, for
    /// unit tests of what a desired set does to it.
    #[cfg(test)]
    pub(crate) fn for_test(data_dir: &std::path::Path) -> Agent {
        Agent {
            node_name: "n1".to_string(),
            data_dir: data_dir.to_path_buf(),
            identity: Mutex::new(Identity::default()),
            logs_dir: data_dir.join("logs"),
            records: crate::persist::Records::open(data_dir.join("instances")).0,
            state: State::default(),
            ports: Ports::default(),
            reaper: Arc::new(Reaper::new(false)),
            supervisors: TaskTracker::new(),
            stop_instances: CancellationToken::new(),
            detach: CancellationToken::new(),
            cleared: watch::channel(false).0,
            unclaimed: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            log_pump: None,
            pump_host: Mutex::new(None),
            cgroups: Cgroups::off(),
            marker: Marker::new("n1", data_dir),
            orphans: Mutex::new(None),
            advertise_address: None,
        }
    }

    /// Where an instance listens for messages (`pmcluster send`): a unix socket path the
    /// instance itself binds, in `DATA_DIR/messages`. `None` for an id that is not a plain
    /// name (ids are UUIDs; anything else must not become a path).
    pub fn message_socket(&self, id: &InstanceId) -> Option<PathBuf> {
        let plain = !id.as_str().is_empty()
            && id
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        plain.then(|| self.data_dir.join("messages").join(id.as_str()))
    }

    /// What `${HOST}` expands to: the advertised address, else the one the coordinator last
    /// recorded for this node (empty until one has).
    pub fn host(&self) -> String {
        match &self.advertise_address {
            Some(a) => a.clone(),
            None => self
                .identity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .address
                .clone(),
        }
    }
}

/// Shared agent state; see the module doc.
#[derive(Default)]
pub(crate) struct State {
    inner: Mutex<Inner>,
    /// Rung when an instance changes state (not on metric updates).
    pub changed: Notify,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// Highest desired-set generation applied.
    pub generation: u64,
    pub instances: BTreeMap<InstanceId, Entry>,
    pub host: HostSample,
    /// Whether instances that do not run may be started: false after an agent restart until
    /// the coordinator's first desired set is applied (or the grace period passed), so that a
    /// node whose work moved elsewhere never starts a second copy of it.
    pub cleared: bool,
}

/// One supervised instance.
pub(crate) struct Entry {
    pub app: String,
    pub index: u32,
    pub status: Status,
    /// Steers the instance's supervisor task; its current value is the last applied assignment.
    pub target: watch::Sender<Target>,
    /// Asks the supervisor for something the metrics pass noticed (memory over the limit).
    pub pokes: mpsc::Sender<Poke>,
    /// The processes of the instance at the last sample (leader, descendants, group), so that a
    /// stop also reaches descendants that left the group and outlived the leader.
    pub family: Vec<ProcId>,
}

/// Where one instance's output goes, for the log reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogSource {
    pub app: String,
    pub index: u32,
    /// stdout and stderr share one file (`merge_logs`).
    pub merged: bool,
}

impl State {
    /// The lock. A panic elsewhere while it was held leaves plain data behind that is still
    /// usable, so poisoning is ignored rather than taking the whole agent down.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Every instance's status, sorted by id.
    pub fn instances(&self) -> Vec<pb::InstanceStatus> {
        self.lock()
            .instances
            .iter()
            .map(|(id, e)| e.status.to_pb(id))
            .collect()
    }

    /// The assignments of the instances held (not being removed), sorted by id: what a
    /// coordinator that lost its state needs to list and adopt them.
    pub fn held(&self) -> Vec<pb::Assignment> {
        self.lock()
            .instances
            .iter()
            .filter_map(|(id, e)| {
                let t = e.target.borrow();
                if t.remove {
                    return None;
                }
                let a = &t.assignment;
                let spec = a.spec.as_ref().ok()?;
                Some(pb::Assignment {
                    instance_id: id.to_string(),
                    index: a.index,
                    app_version: a.app_version,
                    spec: Some(pb::AppSpec::from(spec.as_ref())),
                    port: a.port.map(u32::from).unwrap_or(0),
                    run: a.run,
                    restart_epoch: a.restart_epoch,
                })
            })
            .collect()
    }

    /// A full status report (the heartbeat).
    pub fn report(&self) -> pb::StatusReport {
        let inner = self.lock();
        pb::StatusReport {
            generation: inner.generation,
            instances: inner
                .instances
                .iter()
                .map(|(id, e)| e.status.to_pb(id))
                .collect(),
            host: Some(pb::HostMetrics::from(&inner.host)),
        }
    }

    /// Changes one instance's status; rings [`State::changed`] when its state or pid changed.
    pub fn update(&self, id: &InstanceId, f: impl FnOnce(&mut Status)) {
        let notify = {
            let mut inner = self.lock();
            let Some(entry) = inner.instances.get_mut(id) else {
                return;
            };
            let before = (entry.status.state, entry.status.pid);
            f(&mut entry.status);
            before != (entry.status.state, entry.status.pid)
        };
        if notify {
            self.changed.notify_one();
        }
    }

    /// Forgets an instance if its target still says "remove" (a desired set may have brought it
    /// back while it was stopping). Returns whether it was forgotten.
    pub fn forget_if_removed(&self, id: &InstanceId) -> bool {
        let forgot = {
            let mut inner = self.lock();
            let removing = inner
                .instances
                .get(id)
                .is_some_and(|e| e.target.borrow().remove);
            if removing {
                inner.instances.remove(id);
            }
            removing
        };
        if forgot {
            self.changed.notify_one();
        }
        forgot
    }

    /// Passes a request to an instance's supervisor without waiting; false when its queue is
    /// full (a request is already waiting) or the instance is gone.
    pub fn poke(&self, id: &InstanceId, poke: Poke) -> bool {
        let tx = self.lock().instances.get(id).map(|e| e.pokes.clone());
        tx.is_some_and(|tx| tx.try_send(poke).is_ok())
    }

    /// The processes of an instance at the last sample.
    pub fn family(&self, id: &InstanceId) -> Vec<ProcId> {
        self.lock()
            .instances
            .get(id)
            .map(|e| e.family.clone())
            .unwrap_or_default()
    }

    /// One instance's status.
    pub fn status(&self, id: &InstanceId) -> Option<Status> {
        self.lock().instances.get(id).map(|e| e.status.clone())
    }

    /// Log sources of the given instances this agent knows, and the ids it does not (a copy
    /// the coordinator assigned that it has not applied yet, or one it just forgot).
    pub fn log_sources(&self, ids: &[InstanceId]) -> (Vec<LogSource>, Vec<InstanceId>) {
        let inner = self.lock();
        let mut unknown = Vec::new();
        let mut sources = Vec::new();
        for id in ids {
            match inner.instances.get(id) {
                Some(e) => sources.push(LogSource {
                    app: e.app.clone(),
                    index: e.index,
                    merged: e
                        .target
                        .borrow()
                        .assignment
                        .spec
                        .as_ref()
                        .is_ok_and(|s| s.merge_logs),
                }),
                None => unknown.push(id.clone()),
            }
        }
        (sources, unknown)
    }

    /// Process group ids of instances that still have a process, for the last-resort kill.
    pub fn running_pids(&self) -> Vec<(InstanceId, u32)> {
        self.lock()
            .instances
            .iter()
            .filter_map(|(id, e)| e.status.pid.map(|p| (id.clone(), p)))
            .collect()
    }
}
