//! pmcluster agent: supervises the instances of one host and links the host to the coordinator.
//!
//! The coordinator sends this node's desired set over one outbound stream ([`link`]); the pure
//! [`desired`] diff turns it into actions; one task per instance ([`supervisor`]) runs, restarts
//! (timing from the pure [`restart`] policy) and stops the processes; [`metrics`] samples them,
//! [`logs`] serves their output, and [`state`] holds what the agent knows. The agent keeps
//! supervising while the coordinator is unreachable.
//!
//! Owns no listening port and reads no environment: `main` builds the [`Config`].

pub mod config;
pub mod desired;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod model;
mod ports;
pub mod restart;
mod state;
mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, RawConfig};

/// Extra time, beyond the longest kill timeout, that shutdown waits for instances to stop before
/// it kills what is left.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node name {node} is already connected to the coordinator; pick another --node-name")]
    NameTaken { node: String },
    #[error("cannot create log directory {}: {source}", path.display())]
    LogDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read host information: {0}")]
    Host(String),
    #[error("coordinator URL {url:?}: {reason}")]
    Coordinator { url: String, reason: String },
    #[error("link task failed: {0}")]
    Link(String),
}

/// What every part of the agent shares.
pub(crate) struct Agent {
    pub node_name: String,
    /// `DATA_DIR/logs`: instance stdout/stderr files.
    pub logs_dir: PathBuf,
    pub state: state::State,
    pub ports: ports::Ports,
    /// Every supervisor task.
    pub supervisors: TaskTracker,
    /// Cancelled at shutdown: every supervisor stops its instance and ends.
    pub stop_instances: CancellationToken,
}

/// Runs the agent until `shutdown` is cancelled (then stops every instance and returns `Ok`), or
/// until the coordinator refuses the node name at the first connection.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let logs_dir = config.data_dir.join("logs");
    if let Err(source) = tokio::fs::create_dir_all(&logs_dir).await {
        return Err(AgentError::LogDir {
            path: logs_dir,
            source,
        });
    }
    let sampler = metrics::Sampler::new().map_err(|e| AgentError::Host(e.to_string()))?;
    let link_config = link::LinkConfig {
        endpoint: link::endpoint(&config.coordinator)?,
        url: config.coordinator.clone(),
        labels: config.labels.clone(),
        host: sampler.host_info(),
    };
    let agent = Arc::new(Agent {
        node_name: config.node_name.clone(),
        logs_dir,
        state: state::State::default(),
        ports: ports::Ports::default(),
        supervisors: TaskTracker::new(),
        stop_instances: CancellationToken::new(),
    });
    tracing::info!(
        node = %config.node_name,
        coordinator = %config.coordinator,
        data_dir = %config.data_dir.display(),
        "agent starting"
    );

    // Link and metrics stop after the instances, so the coordinator can watch them go.
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
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
            Ok(r) => r,
            Err(e) => Err(AgentError::Link(e.to_string())),
        },
    };

    stop_instances(&agent).await;
    background.cancel();
    tasks.wait().await;
    tracing::info!("agent stopped");
    result
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
            let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            tracing::warn!(instance = %id, pid, "SIGKILL");
            supervisor::signal_group(pgid, Signal::SIGKILL);
        }
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
