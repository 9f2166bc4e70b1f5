//! pmcluster agent: supervises the instances of one host and links the host to the coordinator.
//!
//! The coordinator sends this node's desired set over one outbound stream ([`link`]); the pure
//! [`desired`] diff turns it into actions; one task per instance ([`supervisor`]) runs, restarts
//! (timing from the pure [`restart`] policy) and stops the processes; [`metrics`] samples them,
//! [`logs`] serves their output, and [`state`] holds what the agent knows. The agent keeps
//! supervising while the coordinator is unreachable.
//!
//! Owns no listening port and reads no environment: `main` builds the [`Config`].
//!
//! Restarting the agent does not touch the instances: by default it exits and leaves them
//! running; the next agent with the same data dir adopts them from its local state ([`persist`]),
//! asks the coordinator before starting anything that does not run, and starts its last desired
//! set on its own only when the coordinator stays unreachable past the grace period.

pub mod cgroup;
pub mod config;
pub mod desired;
pub mod health;
pub mod identity;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod orphans;
pub mod persist;
mod ports;
pub mod process;
pub mod restart;
mod state;
mod supervisor;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, RawConfig};

use crate::model::{Assignment, DesiredSet, InstanceId};
use crate::process::ProcId;
use crate::state::Agent;

/// Extra time, beyond the longest kill timeout, that shutdown waits for instances to stop before
/// it kills what is left.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or write the agent id file {}: {source}", path.display())]
    IdFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data dir {} is in use by another agent; each agent needs its own --data-dir",
        path.display()
    )]
    DataDirInUse { path: PathBuf },
    #[error("cannot read host information: {0}")]
    Host(String),
    #[error("cannot watch for child exits: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("link task failed: {0}")]
    LinkTask(String),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

impl AgentError {
    /// Whether the error is the operator's to fix before a restart can help (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, AgentError::Identity(_))
    }
}

/// Runs the agent until `shutdown` is cancelled (then stops or leaves its instances, as
/// configured, and returns `Ok`), or until the coordinator refuses the node name at the first
/// connection.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let logs_dir = config.data_dir.join("logs");
    let instances_dir = config.data_dir.join("instances");
    for dir in [&logs_dir, &instances_dir] {
        if let Err(source) = tokio::fs::create_dir_all(dir).await {
            return Err(AgentError::Dir {
                path: dir.clone(),
                source,
            });
        }
    }
    // Held until the agent returns: two agents adopting the same instances would fight.
    let _lock = lock_data_dir(&config.data_dir)?;
    let remembered = identity::check_node_name(
        &config.data_dir,
        identity::load(&config.data_dir)?,
        &config.node_name,
        config.rename_node,
    )?;
    if !remembered.renamed_from.is_empty() {
        tracing::warn!(
            "renaming node {:?} to {:?} (--rename-node): the coordinator moves its instances over",
            remembered.renamed_from,
            config.node_name
        );
    }
    identity::save(&config.data_dir, &remembered)?;
    if config.subreaper
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!("cannot become a child subreaper ({e}); orphans of instances go to init");
    }
    // Listening before the first spawn, so that no exit goes unnoticed.
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(AgentError::Signals)?;
    let sampler = metrics::Sampler::new().map_err(|e| AgentError::Host(e.to_string()))?;
    let link_config = link::LinkConfig {
        agent_id: agent_id(&config.data_dir)?,
        endpoint: link::endpoint(&config.coordinator)?,
        url: config.coordinator.clone(),
        labels: config.labels.clone(),
        host: sampler.host_info(),
    };
    let (cleared, _) = watch::channel(false);
    let marker = orphans::Marker::new(&config.node_name, &config.data_dir);
    let cgroups = if config.cgroups {
        cgroup::Cgroups::detect(&config.node_name, &marker.key)
    } else {
        tracing::info!("instances run without cgroups (--no-cgroups)");
        cgroup::Cgroups::off()
    };
    let state = state::State::default();
    // Sets below this generation are stale even right after a restart: a coordinator that lost
    // its state must not be able to empty this node.
    state.lock().generation = remembered.generation;
    let agent = Arc::new(Agent {
        node_name: config.node_name.clone(),
        data_dir: config.data_dir.clone(),
        identity: Mutex::new(remembered),
        logs_dir,
        instances_dir,
        state,
        ports: ports::Ports::default(),
        reaper: Arc::new(process::Reaper::new(config.subreaper)),
        supervisors: TaskTracker::new(),
        stop_instances: CancellationToken::new(),
        detach: CancellationToken::new(),
        cleared,
        unclaimed: Mutex::new(Vec::new()),
        started: Instant::now(),
        log_pump: config.log_pump.clone(),
        cgroups,
        marker,
        orphans: Mutex::new(None),
    });
    tracing::info!(
        node = %config.node_name,
        coordinator = %config.coordinator,
        data_dir = %config.data_dir.display(),
        "agent starting"
    );

    // Reaper, link and metrics stop after the instances, so stops see their exits and the
    // coordinator can watch them go.
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    {
        let reaper = Arc::clone(&agent.reaper);
        let cancel = background.clone();
        tasks.spawn(async move { reaper.run(sigchld, cancel).await });
    }
    let local = adopt_local(&agent);
    if !local.is_empty() {
        tasks.spawn(start_local_after(
            Arc::clone(&agent),
            local,
            config.coordinator_grace,
            background.clone(),
        ));
    }
    tasks.spawn(metrics::run(
        Arc::clone(&agent),
        sampler,
        background.clone(),
    ));
    let mut link_task = tasks.spawn(link::run(
        Arc::clone(&agent),
        link_config,
        background.clone(),
    ));
    tasks.close();

    let result = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        joined = &mut link_task => match joined {
            Ok(r) => r.map_err(AgentError::from),
            Err(e) => Err(AgentError::LinkTask(e.to_string())),
        },
    };

    if config.stop_instances_on_exit {
        stop_instances(&agent).await;
    } else {
        leave_instances(&agent).await;
    }
    background.cancel();
    tasks.wait().await;
    agent.cgroups.tidy();
    tracing::info!("agent stopped");
    result
}

/// The agent's persistent id, `DATA_DIR/agent-id`, made on its first start. It lets the
/// coordinator tell this agent after a restart (whose old session may still look alive) from
/// another agent configured with the same node name.
fn agent_id(data_dir: &Path) -> Result<String, AgentError> {
    let path = data_dir.join("agent-id");
    let io = |source| AgentError::IdFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = data_dir.join("agent-id.tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// Takes an exclusive lock on `DATA_DIR/agent.lock` for as long as the returned file lives.
fn lock_data_dir(data_dir: &Path) -> Result<File, AgentError> {
    let path = data_dir.join("agent.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::Dir {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(_) => Err(AgentError::DataDirInUse {
            path: data_dir.to_path_buf(),
        }),
    }
}

/// Reads the local state: adopts every instance whose process still runs (same pid, same start
/// time) and returns the assignments of the others, which must wait for the coordinator.
fn adopt_local(agent: &Arc<Agent>) -> Vec<Assignment> {
    let (saved, bad) = match persist::load(&agent.instances_dir) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(
                "cannot read the local state in {}: {e}; starting empty",
                agent.instances_dir.display()
            );
            return Vec::new();
        }
    };
    for (path, why) in bad {
        tracing::warn!("ignoring {}: {why}", path.display());
    }
    let mut waiting = Vec::new();
    let mut adopted = BTreeSet::new();
    // Cgroups of instances that run (left alone) and of those whose process ended while no
    // agent ran (what is left in them goes: nothing supervises it).
    let mut running_cgroups = BTreeSet::new();
    let mut dead_cgroups = BTreeSet::new();
    for s in saved {
        let cgroup = s
            .process
            .as_ref()
            .and_then(|p| p.cgroup.clone())
            .or_else(|| agent.cgroups.path_for(&InstanceId::new(&s.instance_id)));
        let alive = s.process.as_ref().and_then(|p| {
            let id = ProcId {
                pid: p.pid,
                start_ticks: p.start_ticks,
            };
            id.alive().then_some((p, id))
        });
        match (&cgroup, alive.is_some()) {
            (Some(path), true) => running_cgroups.insert(path.clone()),
            (Some(path), false) => dead_cgroups.insert(path.clone()),
            (None, _) => false,
        };
        let assignment = match s.assignment() {
            Ok(a) => a,
            Err(why) => {
                // Nothing to supervise it with. Left alone (and reported in the log): the
                // coordinator may place a new copy, which then finds its port taken.
                tracing::error!(
                    instance = %s.instance_id,
                    pid = alive.map(|(_, id)| id.pid),
                    "cannot read the saved spec ({why}); not adopting it"
                );
                continue;
            }
        };
        match alive {
            Some((p, id)) => {
                adopted.insert(assignment.instance_id.clone());
                supervisor::adopt(agent, &s, assignment, p, id);
            }
            None => {
                if let Some(p) = &s.process {
                    tracing::info!(
                        instance = %s.instance_id,
                        pid = p.pid,
                        "ended while the agent was down"
                    );
                }
                waiting.push(assignment);
            }
        }
    }
    let unknown_cgroups = agent
        .cgroups
        .sweep_at_start(&running_cgroups, &dead_cgroups);
    let found = orphans::find(&agent.marker, &unknown_cgroups, &adopted);
    for o in &found {
        tracing::warn!(
            instance = %o.instance_id,
            pids = ?o.members.iter().map(|p| p.pid).collect::<Vec<_>>(),
            "running, but no local record names it; the coordinator's first desired set \
             decides whether it is adopted or stopped"
        );
    }
    *agent
        .orphans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(found);
    *agent
        .unclaimed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        waiting.iter().map(|a| a.instance_id.clone()).collect();
    waiting
}

/// Starts the instances of the local state that do not run if the coordinator has not sent a
/// desired set within `grace` (static stability: a host keeps its services up when the
/// coordinator is down), and not at all if it has (it knows whether they moved elsewhere).
async fn start_local_after(
    agent: Arc<Agent>,
    waiting: Vec<Assignment>,
    grace: Duration,
    cancel: CancellationToken,
) {
    let mut cleared = agent.cleared.subscribe();
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = cleared.wait_for(|c| *c) => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                "no desired set from the coordinator within {grace:?}; starting the {} instance(s) \
                 of the last desired set that do not run",
                waiting.len()
            );
            let mut assignments: Vec<Assignment> = {
                let inner = agent.state.lock();
                inner
                    .instances
                    .values()
                    .map(|e| e.target.borrow().assignment.clone())
                    .collect()
            };
            assignments.extend(waiting);
            // The last set applied, again: its generation is the remembered one (a lower one
            // would be stale).
            let generation = agent.state.generation();
            supervisor::apply_local(&agent, DesiredSet { generation, assignments });
        }
    }
}

/// Stops every instance in parallel (each supervisor does its own graceful stop) and waits; kills
/// what is left if that takes longer than the longest kill timeout.
async fn stop_instances(agent: &Agent) {
    let grace = {
        let inner = agent.state.lock();
        inner
            .instances
            .values()
            .filter_map(|e| {
                e.target
                    .borrow()
                    .assignment
                    .spec
                    .as_ref()
                    .ok()
                    .map(|s| s.kill_timeout)
            })
            .max()
            .unwrap_or_default()
    } + SHUTDOWN_SLACK;
    tracing::info!("stopping every instance");
    agent.stop_instances.cancel();
    agent.supervisors.close();
    if tokio::time::timeout(grace, agent.supervisors.wait())
        .await
        .is_err()
    {
        let left = agent.state.running_pids();
        tracing::error!(
            "{} instance(s) still running {grace:?} after the stop; killing them",
            left.len()
        );
        for (id, pid) in left {
            tracing::warn!(instance = %id, pid, "SIGKILL");
            process::signal_group(pid, Signal::SIGKILL);
            if let Some(path) = agent.cgroups.path_for(&id) {
                cgroup::kill(&path);
            }
        }
    }
}

/// Ends every supervisor and leaves the processes running, recorded for the next agent.
async fn leave_instances(agent: &Agent) {
    let n = agent.state.running_pids().len();
    tracing::info!("leaving {n} instance(s) running for the next agent to adopt");
    agent.detach.cancel();
    agent.supervisors.close();
    if tokio::time::timeout(SHUTDOWN_SLACK, agent.supervisors.wait())
        .await
        .is_err()
    {
        tracing::warn!("some supervisors did not end within {SHUTDOWN_SLACK:?}");
    }
}

/// Waits for SIGTERM or SIGINT and returns its name. Install it before starting anything, so a
/// signal that arrives during startup is not lost.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_is_made_once_and_kept() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = agent_id(dir.path())?;
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(agent_id(dir.path())?, first);
        let other = tempfile::tempdir()?;
        assert_ne!(agent_id(other.path())?, first);
        Ok(())
    }
}
