//! What the agent knows right now: the instances it supervises (their latest desired assignment
//! and observed status), the highest desired generation applied, and the latest host sample.
//!
//! One plain mutex guards it and is never held across an `.await`: every method takes the lock,
//! copies or changes plain data, and returns. State changes that the coordinator must see fast
//! (started, online, exited) ring [`State::changed`], which the link coalesces into a report.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pmcluster_proto::v1 as pb;
use tokio::sync::{Notify, watch};

use crate::model::{HostSample, InstanceId, Status};
use crate::supervisor::Target;

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
}

/// One supervised instance.
pub(crate) struct Entry {
    pub app: String,
    pub index: u32,
    pub status: Status,
    /// Steers the instance's supervisor task; its current value is the last applied assignment.
    pub target: watch::Sender<Target>,
}

/// Where one instance's output goes, for the log reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogSource {
    pub app: String,
    pub index: u32,
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

    /// Pids of every running instance, for the metrics sampler.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .instances
            .values()
            .filter_map(|e| e.status.pid)
            .collect()
    }

    /// Stores a metrics sample: per-pid cpu and memory, and the host numbers.
    pub fn record_metrics(&self, per_pid: &BTreeMap<u32, (f64, u64)>, host: HostSample) {
        let mut inner = self.lock();
        for entry in inner.instances.values_mut() {
            let (cpu, mem) = entry
                .status
                .pid
                .and_then(|pid| per_pid.get(&pid).copied())
                .unwrap_or((0.0, 0));
            entry.status.cpu_percent = cpu;
            entry.status.memory_bytes = mem;
        }
        inner.host = host;
    }

    /// Log sources of the given instances, or the ids this agent does not know.
    pub fn log_sources(&self, ids: &[InstanceId]) -> Result<Vec<LogSource>, Vec<InstanceId>> {
        let inner = self.lock();
        let mut unknown = Vec::new();
        let mut sources = Vec::new();
        for id in ids {
            match inner.instances.get(id) {
                Some(e) => sources.push(LogSource {
                    app: e.app.clone(),
                    index: e.index,
                }),
                None => unknown.push(id.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(sources)
        } else {
            Err(unknown)
        }
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
