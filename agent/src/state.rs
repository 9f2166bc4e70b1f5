//! What the agent knows right now: the instances it supervises (their latest desired assignment
//! and observed status), the highest desired generation applied, and the latest host sample.
//!
//! One plain mutex guards it and is never held across an `.await`: every method takes the lock,
//! copies or changes plain data, and returns. State changes that the coordinator must see fast
//! (started, online, exited) ring [`State::changed`], which the link coalesces into a report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pmcluster_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};

use crate::logs::{log_path, log_streams};
use crate::model::{HostSample, InstanceId, Status};
use crate::process::ProcId;
use crate::supervisor::{Poke, Target};

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

/// What the metrics pass needs of one instance.
#[derive(Clone, Debug)]
pub(crate) struct SampleTarget {
    pub id: InstanceId,
    pub pid: Option<u32>,
    pub max_memory: Option<u64>,
    /// Its log files, size limit and files kept, for an instance that writes its files itself
    /// (see [`crate::logs::rotate_copy_truncate`]).
    pub logs: Option<(Vec<PathBuf>, u64, u32)>,
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

    /// What the metrics pass samples and checks, one entry per instance.
    pub fn sample_targets(&self, logs_dir: &std::path::Path) -> Vec<SampleTarget> {
        self.lock()
            .instances
            .iter()
            .map(|(id, e)| {
                let target = e.target.borrow();
                let spec = target.assignment.spec.as_ref().ok();
                // Pumps rotate as they write; only an instance adopted from an agent that let it
                // write its files directly needs the metrics pass (see `metrics::rotate_logs`).
                let logs = spec.and_then(|spec| {
                    let max = spec.supervision.log_max_bytes.filter(|m| *m > 0)?;
                    let paths = log_streams(spec.merge_logs)
                        .iter()
                        .map(|s| log_path(logs_dir, &e.app, e.index, *s))
                        .collect();
                    Some((paths, max, spec.supervision.log_keep))
                });
                SampleTarget {
                    id: id.clone(),
                    pid: e.status.pid,
                    max_memory: spec.and_then(|s| s.supervision.max_memory_restart),
                    logs,
                }
            })
            .collect()
    }

    /// Stores a metrics sample: per-instance cpu, memory and processes, and the host numbers.
    pub fn record_metrics(
        &self,
        per_instance: &BTreeMap<InstanceId, crate::metrics::InstanceSample>,
        host: HostSample,
    ) {
        let mut inner = self.lock();
        for (id, entry) in inner.instances.iter_mut() {
            match per_instance.get(id) {
                Some(sample) if entry.status.pid.is_some() => {
                    entry.status.cpu_percent = sample.cpu_percent;
                    entry.status.memory_bytes = sample.rss_bytes;
                    entry.family.clone_from(&sample.family);
                }
                _ => {
                    entry.status.cpu_percent = 0.0;
                    entry.status.memory_bytes = 0;
                }
            }
        }
        inner.host = host;
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
