//! The once-per-tick pass: one read of `/proc` for every instance at once (not one per
//! instance), from which each instance's CPU and resident memory are summed over its whole
//! process tree; the host's CPU, memory and load; and, in the same pass, the size checks that
//! rotate log files and the memory checks behind `max_memory_restart`.
//!
//! The pass reads files, so it runs on the blocking pool, never on a runtime worker. Turning a
//! process table into per-instance numbers ([`aggregate`]) is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::logs::{log_path, log_streams, rotate_copy_truncate};
use crate::model::{HostSample, InstanceId, Status};
use crate::process::{self, ProcId, Stat};
use crate::state::Agent;
use crate::state::{Poke, State};

/// How often instances and host are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many passes the whole of `/proc` is read, to find processes that joined an
/// instance's tree; the passes in between read only the processes already known (and every
/// leader). Reading every process on a busy host each second would be most of the agent's idle
/// cost; a child is seen within this many seconds.
pub const FULL_SCAN_EVERY: u32 = 5;

/// Static host facts for registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    pub cores: u32,
    pub memory_bytes: u64,
}

/// One instance's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceSample {
    /// Percent of one core, over the whole process tree, since the previous pass.
    pub cpu_percent: f64,
    /// CPU time the process tree used since the previous pass, in milliseconds; a process
    /// first seen in this pass counts with all its time (it ran as part of the instance), so
    /// the sum over passes is the tree's cumulative CPU time.
    pub cpu_ms_used: u64,
    /// Resident memory of the whole process tree.
    pub rss_bytes: u64,
    pub family: Vec<ProcId>,
}

/// What the metrics pass needs of one instance.
#[derive(Clone, Debug)]
struct SampleTarget {
    pub id: InstanceId,
    pub pid: Option<u32>,
    pub max_memory: Option<u64>,
    /// Its log files, size limit and files kept, for an instance that writes its files itself
    /// (see [`rotate_copy_truncate`]).
    pub logs: Option<(Vec<PathBuf>, u64, u32)>,
}

/// Owns what must live from one pass to the next: sysinfo's `System` (host CPU percentages are
/// deltas between two refreshes) and each process's CPU time at the previous pass.
pub struct Sampler {
    system: System,
    /// CPU ticks by process at the last pass, keyed with the start time against pid reuse.
    previous: BTreeMap<ProcId, u64>,
    last: Option<Instant>,
    ticks_per_second: u64,
    page_size: u64,
    passes: u32,
    /// The processes of every instance at the last pass.
    known: BTreeSet<u32>,
}

impl Sampler {
    pub fn new() -> Result<Sampler, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )?;
        Ok(Sampler {
            system,
            previous: BTreeMap::new(),
            last: None,
            ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
            page_size: u64::try_from(rustix::param::page_size()).unwrap_or(4096),
            passes: 0,
            known: BTreeSet::new(),
        })
    }

    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            hostname: System::host_name().unwrap_or_default(),
            cores: self.cores(),
            memory_bytes: self.system.total_memory(),
        }
    }

    fn cores(&self) -> u32 {
        match self.system.cpus().len() {
            0 => std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
            n => u32::try_from(n).unwrap_or(u32::MAX),
        }
    }

    /// One pass: every instance leader in `leaders` (id, pid) and the host.
    pub fn sample(
        &mut self,
        leaders: &[(InstanceId, u32)],
    ) -> (BTreeMap<InstanceId, InstanceSample>, HostSample) {
        let now = Instant::now();
        let elapsed = self.last.map(|t| now.duration_since(t));
        self.last = Some(now);
        // No instance, no scan: an idle agent does not read /proc for nothing.
        let full = self.passes.is_multiple_of(FULL_SCAN_EVERY);
        self.passes = self.passes.wrapping_add(1);
        let table = if leaders.is_empty() {
            Vec::new()
        } else if full {
            process::scan().unwrap_or_default()
        } else {
            let mut pids = self.known.clone();
            pids.extend(leaders.iter().map(|(_, pid)| *pid));
            pids.into_iter().filter_map(process::read_stat).collect()
        };
        let usage = aggregate(
            &table,
            leaders,
            &self.previous,
            elapsed,
            self.ticks_per_second,
            self.page_size,
        );
        self.known = usage
            .values()
            .flat_map(|u| u.family.iter().map(|p| p.pid))
            .collect();
        self.previous = table
            .iter()
            .map(|s| {
                let id = ProcId {
                    pid: s.pid,
                    start_ticks: s.start_ticks,
                };
                (id, s.cpu_ticks)
            })
            .collect();
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let host = HostSample {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            load1: System::load_average().map(|l| l.one).unwrap_or(0.0),
            cores: self.cores(),
        };
        (usage, host)
    }
}

/// Per-instance numbers from one process table: each leader's family (see
/// [`process::family`]); CPU from the ticks each process used since `previous` (a process first
/// seen in this pass counts from this pass on), over `elapsed`.
pub fn aggregate(
    table: &[Stat],
    leaders: &[(InstanceId, u32)],
    previous: &BTreeMap<ProcId, u64>,
    elapsed: Option<Duration>,
    ticks_per_second: u64,
    page_size: u64,
) -> BTreeMap<InstanceId, InstanceSample> {
    let children = process::children_index(table);
    let seconds = elapsed.map_or(0.0, |e| e.as_secs_f64());
    leaders
        .iter()
        .map(|(id, leader)| {
            let mut sample = InstanceSample::default();
            let mut ticks = 0u64;
            let mut ticks_used = 0u64;
            // Instances lead their own process group (the agent starts them so).
            for i in process::family(table, &children, *leader, *leader) {
                let s = &table[i];
                let pid = ProcId {
                    pid: s.pid,
                    start_ticks: s.start_ticks,
                };
                match previous.get(&pid) {
                    Some(before) => {
                        let delta = s.cpu_ticks.saturating_sub(*before);
                        ticks += delta;
                        ticks_used += delta;
                    }
                    None => ticks_used += s.cpu_ticks,
                }
                sample.rss_bytes += s.rss_pages * page_size;
                sample.family.push(pid);
            }
            sample.cpu_ms_used = ticks_used.saturating_mul(1000) / ticks_per_second.max(1);
            if seconds > 0.0 {
                sample.cpu_percent = ticks as f64 * 100.0 / (seconds * ticks_per_second as f64);
            }
            (id.clone(), sample)
        })
        .collect()
}

/// What the metrics pass samples and checks, one entry per instance.
fn sample_targets(state: &State, logs_dir: &Path) -> Vec<SampleTarget> {
    state
        .lock()
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
                Some((paths, max, spec.supervision.log_keep_bounded()))
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
/// `sampled` names the process each instance's sample is of: one that was replaced while the
/// pass ran (a memory restart does so within a pass) is not the instance's now, and its figures
/// are not shown against the new pid (a trial saw a fresh process above its memory limit).
fn record_metrics(
    state: &State,
    per_instance: &BTreeMap<InstanceId, InstanceSample>,
    sampled: &[SampleTarget],
    host: HostSample,
) {
    let sampled: BTreeMap<&InstanceId, Option<u32>> =
        sampled.iter().map(|t| (&t.id, t.pid)).collect();
    let mut inner = state.lock();
    for (id, entry) in inner.instances.iter_mut() {
        let sampled_pid = sampled.get(id).copied().flatten();
        apply_sample(
            &mut entry.status,
            &mut entry.family,
            per_instance.get(id),
            sampled_pid,
        );
    }
    inner.host = host;
}

/// One instance's sample onto its status: `sampled_pid` is the process the sample was taken of.
fn apply_sample(
    status: &mut Status,
    family: &mut Vec<ProcId>,
    sample: Option<&InstanceSample>,
    sampled_pid: Option<u32>,
) {
    // The old process's CPU time was the instance's all the same: it counts.
    if let Some(sample) = sample {
        status.cpu_time_ms = status.cpu_time_ms.saturating_add(sample.cpu_ms_used);
    }
    match sample {
        Some(sample) if status.pid.is_some() && status.pid == sampled_pid => {
            status.cpu_percent = sample.cpu_percent;
            status.memory_bytes = sample.rss_bytes;
            family.clone_from(&sample.family);
        }
        _ => {
            status.cpu_percent = 0.0;
            status.memory_bytes = 0;
        }
    }
}

/// Rotates the log files of `targets` that grew past their limit while their instance writes
/// them directly (adopted from an older agent; a pump never lets a file pass its limit, and a
/// copy and truncate behind its back would lose lines). Blocking file I/O.
fn rotate_logs(targets: &[SampleTarget]) {
    for t in targets {
        let (Some((paths, max, keep)), Some(pid)) = (&t.logs, t.pid) else {
            continue;
        };
        for path in paths {
            let big = std::fs::metadata(path).is_ok_and(|m| m.len() > *max);
            if big
                && writes_directly(pid)
                && let Err(e) = rotate_copy_truncate(path, *keep, *max)
            {
                tracing::warn!(instance = %t.id, "cannot rotate {}: {e}", path.display());
            }
        }
    }
}

/// Logs a pass of rotations that panicked (its task's end, which nothing else looks at).
fn rotated(pass: Result<(), tokio::task::JoinError>) {
    if let Err(e) = pass {
        tracing::error!("a log rotation pass failed: {e}");
    }
}

/// Whether the process's stdout or stderr is a regular file (not a pipe to a pump).
fn writes_directly(pid: u32) -> bool {
    [1, 2]
        .iter()
        .any(|fd| std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|m| m.is_file()))
}

/// Samples every [`SAMPLE_INTERVAL`] until `cancel`.
pub(crate) async fn run(agent: Arc<Agent>, mut sampler: Sampler, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The rotations run beside the samples, not in their task: one may wait for a file's lock
    // (up to the log lock's bound, per file), and the samples must not wait with it. One pass
    // of rotations at a time.
    let mut rotating: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                // Awaited: the agent lets go of its data dir only once no rotation is under way
                // (another agent's rotation of the same files would share their copies aside).
                if let Some(r) = rotating.take() {
                    rotated(r.await);
                }
                return;
            }
            _ = tick.tick() => {}
        }
        if let Some(r) = rotating.take_if(|r| r.is_finished()) {
            rotated(r.await);
        }
        let targets = sample_targets(&agent.state, &agent.logs_dir);
        let rotations: Vec<SampleTarget> = targets
            .iter()
            .filter(|t| t.logs.is_some() && t.pid.is_some())
            .cloned()
            .collect();
        if !rotations.is_empty() && rotating.is_none() {
            rotating = Some(tokio::task::spawn_blocking(move || {
                rotate_logs(&rotations);
            }));
        }
        let leaders: Vec<(InstanceId, u32)> = targets
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.pid?)))
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            let (usage, host) = sampler.sample(&leaders);
            (sampler, usage, host, targets)
        })
        .await;
        let (back, usage, host, targets) = match joined {
            Ok(result) => result,
            Err(e) => {
                // The sampler went down with the blocking task; the agent goes on without metrics.
                tracing::error!("metrics sampler failed, no more metrics: {e}");
                return;
            }
        };
        sampler = back;
        record_metrics(&agent.state, &usage, &targets, host);
        for t in &targets {
            let (Some(limit), Some(pid)) = (t.max_memory, t.pid) else {
                continue;
            };
            let rss = usage.get(&t.id).map_or(0, |u| u.rss_bytes);
            if rss > limit {
                // A full queue means a request is already waiting: nothing is lost.
                let _ = agent.state.poke(&t.id, Poke::Memory { pid, rss, limit });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, pgrp: u32, cpu_ticks: u64, rss_pages: u64) -> Stat {
        Stat {
            pid,
            state: 'S',
            ppid,
            pgrp,
            cpu_ticks,
            start_ticks: 1000 + u64::from(pid),
            rss_pages,
        }
    }

    fn id(pid: u32) -> ProcId {
        ProcId {
            pid,
            start_ticks: 1000 + u64::from(pid),
        }
    }

    #[test]
    fn tree_sums() {
        // Instance a: leader 10, child 11, grandchild 12 (setsid'd). Instance b: 20 alone.
        let table = vec![
            stat(1, 0, 1, 999, 100),
            stat(10, 1, 10, 150, 10),
            stat(11, 10, 10, 300, 20),
            stat(12, 11, 12, 40, 30),
            stat(20, 1, 20, 500, 5),
        ];
        // 11 is new since the last pass; 10 used 50 ticks, 12 used 40, 20 used 0.
        let previous: BTreeMap<ProcId, u64> =
            [(id(10), 100), (id(12), 0), (id(20), 500), (id(99), 7)].into();
        let leaders = vec![
            (InstanceId::new("a"), 10),
            (InstanceId::new("b"), 20),
            (InstanceId::new("gone"), 30),
        ];
        let got = aggregate(
            &table,
            &leaders,
            &previous,
            Some(Duration::from_secs(2)),
            100,
            4096,
        );
        let render: Vec<String> = got
            .iter()
            .map(|(id, s)| {
                let pids: Vec<u32> = s.family.iter().map(|p| p.pid).collect();
                format!(
                    "{id}: {:.1}% {}ms {} {pids:?}",
                    s.cpu_percent,
                    s.cpu_ms_used,
                    s.rss_bytes / 4096
                )
            })
            .collect();
        assert_eq!(
            render,
            [
                "a: 45.0% 3900ms 60 [10, 11, 12]",
                "b: 0.0% 0ms 5 [20]",
                "gone: 0.0% 0ms 0 []"
            ]
        );
        // The first pass has no elapsed time: no CPU figure yet.
        let first = aggregate(&table, &leaders, &previous, None, 100, 4096);
        assert_eq!(
            first.get(&InstanceId::new("a")).map(|s| s.cpu_percent),
            Some(0.0)
        );
    }

    /// A trial saw a process started by a memory restart shown with its predecessor's memory,
    /// above the limit: a sample counts for the process it was taken of only.
    #[test]
    fn a_sample_shows_against_its_own_process_only() {
        use crate::model::InstanceState;
        let sample = InstanceSample {
            cpu_percent: 12.5,
            cpu_ms_used: 300,
            rss_bytes: 160 << 20,
            family: vec![ProcId {
                pid: 10,
                start_ticks: 1,
            }],
        };
        // (pid now, pid sampled, sample) -> (cpu %, memory, cpu time)
        let cases = [
            (Some(10), Some(10), Some(&sample), (12.5, 160 << 20, 1300)),
            (Some(11), Some(10), Some(&sample), (0.0, 0, 1300)),
            (None, Some(10), Some(&sample), (0.0, 0, 1300)),
            (Some(11), None, None, (0.0, 0, 1000)),
        ];
        for (now, sampled, sample, want) in cases {
            let mut status = Status::new(InstanceState::Online, 0);
            status.pid = now;
            status.cpu_percent = 50.0;
            status.memory_bytes = 170 << 20;
            status.cpu_time_ms = 1000;
            let mut family = Vec::new();
            apply_sample(&mut status, &mut family, sample, sampled);
            let got = (status.cpu_percent, status.memory_bytes, status.cpu_time_ms);
            assert_eq!(got, want, "now {now:?}, sampled {sampled:?}");
            assert_eq!(family.is_empty(), want.1 == 0, "now {now:?}");
        }
    }

    #[test]
    fn samples_own_process() {
        let Ok(mut sampler) = Sampler::new() else {
            return;
        };
        let me = std::process::id();
        let info = sampler.host_info();
        assert!(info.cores >= 1);
        assert!(info.memory_bytes > 0);
        let (usage, host) = sampler.sample(&[(InstanceId::new("me"), me)]);
        let rss = usage.get(&InstanceId::new("me")).map_or(0, |u| u.rss_bytes);
        assert!(rss > 0, "rss of own process: {usage:?}");
        assert!(host.memory_total_bytes >= host.memory_used_bytes);
    }
}
