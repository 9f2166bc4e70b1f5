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
mod into_cgroup;
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
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("{flag} {}: {reason}", path.display())]
    Tls {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl AgentError {
    /// Whether the error is the operator's to fix before a restart can help (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, AgentError::Identity(_) | AgentError::Tls { .. })
    }
}

/// Reads the TLS files once at startup, so a missing or unreadable one fails the start (exit
/// 64) rather than every reconnect.
fn client_tls(files: &config::TlsFiles) -> Result<tonic::transport::ClientTlsConfig, AgentError> {
    let read = |flag: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| AgentError::Tls {
            flag,
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    let cert = read("--tls-cert", &files.cert)?;
    let key = read("--tls-key", &files.key)?;
    let ca = read("--ca", &files.ca)?;
    check_pem("--tls-cert", &files.cert, &cert, Holds::Certificate)?;
    check_pem("--ca", &files.ca, &ca, Holds::Certificate)?;
    check_pem("--tls-key", &files.key, &key, Holds::Key)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}

/// What a TLS flag's file must hold.
enum Holds {
    Certificate,
    Key,
}

/// Whether `pem`, read from the file `flag` names, holds what that flag needs.
fn check_pem(flag: &'static str, path: &Path, pem: &[u8], holds: Holds) -> Result<(), AgentError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let missing = match holds {
        Holds::Key => PrivateKeyDer::from_pem_slice(pem).is_err().then_some(
            "holds no PEM private key; give the key `pmcluster certs issue agent NODE` wrote",
        ),
        Holds::Certificate => (!CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok())).then_some(
            "holds no PEM certificate; give the files `pmcluster certs init` and `pmcluster \
             certs issue agent NODE` wrote",
        ),
    };
    match missing {
        Some(reason) => Err(AgentError::Tls {
            flag,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

/// Runs the agent until `shutdown` is cancelled (then stops or leaves its instances, as
/// configured, and returns `Ok`), or until the coordinator refuses the node name at the first
/// connection.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let logs_dir = config.data_dir.join("logs");
    let instances_dir = config.data_dir.join("instances");
    let messages_dir = config.data_dir.join("messages");
    for dir in [&logs_dir, &instances_dir, &messages_dir] {
        if let Err(source) = persist::create_private_dir(dir) {
            return Err(AgentError::Dir {
                path: dir.clone(),
                source,
            });
        }
    }
    // Held until the agent returns: two agents adopting the same instances would fight.
    let _lock = lock_data_dir(&config.data_dir)?;
    tighten_data_dir(&config.data_dir);
    // Under the lock: no rotation of this data dir's files is under way.
    logs::remove_stale_copies(&logs_dir);
    // Under the lock: the spares it takes over must be no running agent's.
    let (records, leftovers) = persist::Records::open(instances_dir);
    tracing::debug!(
        kept = leftovers.kept,
        deleted = leftovers.deleted,
        "spare record files from the previous run"
    );
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
    identity::save(&config.data_dir, &remembered, identity::Flush::Now)?;
    if config.subreaper
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!("cannot become a child subreaper ({e}); orphans of instances go to init");
    }
    // Listening before the first spawn, so that no exit goes unnoticed.
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(AgentError::Signals)?;
    let sampler = metrics::Sampler::new().map_err(|e| AgentError::Host(e.to_string()))?;
    let tls = match &config.tls {
        Some(files) => Some(client_tls(files)?),
        None => None,
    };
    let link_config = link::LinkConfig {
        tls,
        agent_id: agent_id(&config.data_dir)?,
        coordinators: config.coordinators.clone(),
        labels: config.labels.clone(),
        host: sampler.host_info(),
    };
    let (cleared, _) = watch::channel(false);
    let marker = orphans::Marker::new(&config.node_name, &config.data_dir);
    let cgroups = if config.cgroups {
        cgroup::Cgroups::detect(&config.node_name, &marker.key, &config.data_dir)
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
        records,
        state,
        ports: ports::Ports::default(),
        reaper: Arc::new(process::Reaper::new(config.subreaper)),
        supervisors: TaskTracker::new(),
        stop_instances: CancellationToken::new(),
        detach: CancellationToken::new(),
        cleared,
        unclaimed: Mutex::new(std::collections::BTreeMap::new()),
        started: Instant::now(),
        log_pump: config.log_pump.clone(),
        pump_host: Mutex::new(None),
        cgroups,
        marker,
        orphans: Mutex::new(None),
        advertise_address: config.advertise_address.clone(),
    });
    tracing::info!(
        node = %config.node_name,
        coordinators = %config.coordinators.join(","),
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
    let local = supervisor::adopt_local(&agent);
    if !local.is_empty() {
        tasks.spawn(supervisor::start_local_after(
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
    let mut file = persist::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    persist::tighten(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{id}\n").as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// Makes the data dir its owner's only: it holds the agent id, the apps' environments and their
/// output. A data dir an older agent (or a copy) left wider is tightened, and said so.
fn tighten_data_dir(data_dir: &Path) {
    let (tightened, failed) = persist::tighten_data_dir(data_dir);
    for (path, mode) in &tightened {
        tracing::warn!(
            path = %path.display(),
            "was mode {mode:04o}, readable beyond its owner; now {:04o}",
            mode & 0o700
        );
    }
    for (path, e) in &failed {
        tracing::warn!(path = %path.display(), "cannot make it its owner's only: {e}");
    }
}

/// Takes an exclusive lock on `DATA_DIR/agent.lock` for as long as the returned file lives.
fn lock_data_dir(data_dir: &Path) -> Result<File, AgentError> {
    let path = data_dir.join("agent.lock");
    let file = persist::private_file()
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
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AgentError::DataDirInUse {
            path: data_dir.to_path_buf(),
        }),
        // A filesystem without locks (NFS without lockd: ENOLCK, EOPNOTSUPP) is not another
        // agent: saying "in use" would send the operator after a process that does not exist.
        Err(e) => Err(AgentError::Lock {
            path,
            source: e.into(),
        }),
    }
}

/// Stops every instance in parallel (each supervisor does its own graceful stop) and waits; kills
/// what is left if that takes longer than the longest kill timeout.
async fn stop_instances(agent: &Agent) {
    tracing::info!("stopping every instance");
    // Under the state lock, which a desired set is applied under (see `Agent::leaving`), and
    // with the grace read under the same lock: no set adds an instance after either.
    let grace = {
        let inner = agent.state.lock();
        agent.stop_instances.cancel();
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
    {
        // Under the state lock, which a desired set is applied under (see `Agent::leaving`).
        let _applying = agent.state.lock();
        agent.detach.cancel();
    }
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

/// Keeps the module layering of ARCHITECTURE.md ("Agent layers") honest: every file under
/// `src/` belongs to a module of [`LAYERS`], and no module names (`crate::x`) a module listed
/// after it or the crate root. Submodules (`logs/pump.rs`) count as their module, which may use
/// its own parts freely (`super::`).
#[cfg(test)]
mod layering {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Bottom to top; a module may use only modules listed before it. Each line is one layer of
    /// ARCHITECTURE.md; the order within a line is the order of use within that layer.
    const LAYERS: &[&[&str]] = &[
        &["model", "config"],
        &["restart", "desired"],
        &["persist", "identity"],
        &["process", "into_cgroup", "cgroup", "ports", "orphans"],
        &["health"],
        &["state"],
        &["logs"],
        &["metrics"],
        &["supervisor"],
        &["link"],
    ];

    /// The crate-level names each file uses (`crate::name`, and each head of a
    /// `crate::{a, b::c}` group). Line comments are left out: a doc link is no dependency.
    fn uses(source: &str) -> Vec<String> {
        let code: String = source
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut names = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `pmcluster_crate::` or similar is another path.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0usize;
                let mut head = true;
                let mut name = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => head = true,
                        ':' if depth == 0 => head = false,
                        c if head && (c.is_alphanumeric() || c == '_') => name.push(c),
                        _ => {}
                    }
                    if (!head || c == ',') && !name.is_empty() {
                        names.push(std::mem::take(&mut name));
                    }
                }
                if !name.is_empty() {
                    names.push(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
        names
    }

    /// Every `.rs` file under `dir`, as (module it belongs to, path under `src`, text).
    fn files(
        src: &Path,
        dir: &Path,
        module: Option<&str>,
        out: &mut Vec<(String, String, String)>,
    ) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path.is_dir() {
                files(src, &path, Some(module.unwrap_or(&name)), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let shown = path
                    .strip_prefix(src)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.push((module.unwrap_or(&name).to_string(), shown, source));
            }
        }
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let rank: BTreeMap<&str, usize> = LAYERS
            .iter()
            .flat_map(|layer| layer.iter())
            .enumerate()
            .map(|(i, m)| (*m, i))
            .collect();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &src, None, &mut all);
        let mut wrong = Vec::new();
        for (module, path, source) in &all {
            if module == "lib" || module == "main" {
                continue;
            }
            let Some(&own) = rank.get(module.as_str()) else {
                wrong.push(format!("{path}: module {module} is in no layer of LAYERS"));
                continue;
            };
            for used in uses(source) {
                match rank.get(used.as_str()) {
                    Some(&r) if r < own || used == *module => {}
                    Some(_) => {
                        wrong.push(format!("{path}: {module} uses {used}, a module above it"))
                    }
                    None => wrong.push(format!(
                        "{path}: {module} uses crate::{used}, the crate root (move it down)"
                    )),
                }
            }
        }
        assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    }

    #[test]
    fn uses_reads_paths_and_groups() {
        let source = "use crate::model::Id;\n// crate::link in a comment\nuse crate::{Agent, logs::{a, b}, state};\nlet x = crate::restart::human(d);\nuse pmcluster_crate::x;";
        assert_eq!(uses(source), ["model", "Agent", "logs", "state", "restart"]);
    }
}
