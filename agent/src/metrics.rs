//! Metrics sampling: once per second, one sysinfo refresh for every instance pid at once (not one
//! per instance) plus the host's CPU, memory and load, written into [`State`].
//!
//! The sysinfo `System` lives as long as the agent inside one [`Sampler`]: CPU percentages are
//! deltas between two refreshes of the same `System`. The refresh reads `/proc`, so it runs on the
//! blocking pool, never on a runtime worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
    System,
};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::Agent;
use crate::model::HostSample;

/// How often instances and host are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Static host facts for registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    pub cores: u32,
    pub memory_bytes: u64,
}

/// Owns the long-lived sysinfo `System`.
pub struct Sampler {
    system: System,
}

/// One sample: per-pid (cpu percent of one core, RSS bytes) and host numbers.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub per_pid: BTreeMap<u32, (f64, u64)>,
    pub host: HostSample,
}

impl Sampler {
    pub fn new() -> Result<Sampler, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )?;
        Ok(Sampler { system })
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

    /// One refresh pass for `pids` and the host.
    pub fn sample(&mut self, pids: &[u32]) -> Sample {
        let pids: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            // Threads are not needed and are the expensive part on Linux.
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let per_pid = pids
            .iter()
            .filter_map(|pid| {
                let proc = self.system.process(*pid)?;
                Some((pid.as_u32(), (f64::from(proc.cpu_usage()), proc.memory())))
            })
            .collect();
        let host = HostSample {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            load1: System::load_average().map(|l| l.one).unwrap_or(0.0),
            cores: self.cores(),
        };
        Sample { per_pid, host }
    }
}

/// Samples every [`SAMPLE_INTERVAL`] until `cancel`.
pub(crate) async fn run(agent: Arc<Agent>, mut sampler: Sampler, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pids = agent.state.pids();
        let joined = tokio::task::spawn_blocking(move || {
            let sample = sampler.sample(&pids);
            (sampler, sample)
        })
        .await;
        match joined {
            Ok((back, sample)) => {
                sampler = back;
                agent.state.record_metrics(&sample.per_pid, sample.host);
            }
            Err(e) => {
                // The sampler went down with the blocking task; the agent goes on without metrics.
                tracing::error!("metrics sampler failed, no more metrics: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_own_process() {
        let Ok(mut sampler) = Sampler::new() else {
            return;
        };
        let me = std::process::id();
        let info = sampler.host_info();
        assert!(info.cores >= 1);
        assert!(info.memory_bytes > 0);
        let sample = sampler.sample(&[me]);
        let (_, rss) = sample.per_pid.get(&me).copied().unwrap_or_default();
        assert!(rss > 0, "rss of own process: {sample:?}");
        assert!(sample.host.memory_total_bytes >= sample.host.memory_used_bytes);
        // A pid that does not exist is simply absent.
        let sample = sampler.sample(&[u32::MAX - 1]);
        assert!(sample.per_pid.is_empty());
    }
}
