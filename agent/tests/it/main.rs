//! Agent tests against a fake coordinator, with real child processes (`sh`, `sleep`).
//!
//! Every wait has a deadline ([`fake::DEADLINE`]); no test sleeps for correctness. Every process
//! an agent starts is recorded in a [`Reaper`] that kills its group when the test ends, pass or
//! fail, and agents are stopped (or killed) by the test that started them. The cgroups an agent
//! binary leaves empty go with the test's handle on it (`binary::AgentProcess`); those of the
//! processes a [`Reaper`] kills, with the reaper.

mod binary;
mod cgroups;
mod ended;
mod fake;
mod files;
mod link;
mod logging;
mod resources;
mod skeleton;
mod skip;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use pmcluster_agent::{AgentError, Config};
use pmcluster_proto::v1 as pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use fake::{DEADLINE, must};

/// A spec that runs `sh -c LINE`.
pub fn sh_spec(app: &str, line: &str) -> pb::AppSpec {
    pb::AppSpec {
        name: app.to_string(),
        script: "sh".to_string(),
        args: vec!["-c".to_string(), line.to_string()],
        instances: 1,
        kill_timeout_ms: Some(2000),
        ..Default::default()
    }
}

pub fn assignment(id: &str, index: u32, spec: &pb::AppSpec) -> pb::Assignment {
    pb::Assignment {
        instance_id: id.to_string(),
        index,
        app_version: 1,
        spec: Some(spec.clone()),
        port: 0,
        run: true,
        restart_epoch: 0,
    }
}

/// Kills the process groups of every pid it was given when dropped.
#[derive(Default)]
pub struct Reaper {
    pids: Mutex<Vec<u32>>,
}

impl Reaper {
    pub fn add(&self, pid: u32) {
        if pid != 0 {
            self.pids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(pid);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let pids = self
            .pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The agent's cgroups of these processes (an agent that left its instances running
        // does not remove them): emptied by the kills below, then removed.
        let cgroups: Vec<std::path::PathBuf> =
            pids.iter().filter_map(|p| agent_cgroup(*p)).collect();
        for pid in pids.iter() {
            let pid = Pid::from_raw(*pid as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
        for cg in cgroups {
            pmcluster_agent::cgroup::kill(&cg);
            for _ in 0..50 {
                if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // The agent's directory too, once nothing is left in it.
            if let Some(parent) = cg.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The cgroup an agent put `pid` in (`.../pmcluster-NODE/INSTANCE`), if any.
fn agent_cgroup(pid: u32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = pmcluster_agent::cgroup::parse_own_cgroup(&text)?;
    let parent = own.rsplit('/').nth(1)?;
    if !parent.starts_with("pmcluster-") {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = pmcluster_agent::cgroup::parse_mountinfo(&mountinfo)?;
    Some(mount.join(own.trim_start_matches('/')))
}

/// The cgroups an agent makes (`<cgroup2 mount><own cgroup>/pmcluster-<node>-<key>`, see
/// `pmcluster_agent::cgroup`), named from its node name and data dir as the agent names them,
/// so that a test removes its own agent's and no other's.
pub struct AgentCgroups {
    base: PathBuf,
}

impl AgentCgroups {
    /// Those of an agent with `node` and `data_dir` started from this process (it inherits this
    /// process's cgroup); `None` without a cgroup2 hierarchy, where it makes none.
    pub fn of(node: &str, data_dir: &Path) -> Option<AgentCgroups> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = pmcluster_agent::cgroup::parse_mountinfo(&mountinfo)?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = pmcluster_agent::cgroup::parse_own_cgroup(&own)?;
        let key = pmcluster_agent::orphans::Marker::new(node, &canonical(data_dir)).key;
        let name = pmcluster_spec::instance::cgroup_name(node, &key);
        let base = pmcluster_agent::cgroup::join_base(&mount, &own, &name)?;
        Some(AgentCgroups { base })
    }

    /// The agent's directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Removes every empty directory of the agent's, deepest first. Call it once no agent of
    /// this node and data dir runs: a running one may be about to use what is empty now. One
    /// that still holds processes is left (the kernel refuses it) to the [`Reaper`] of the
    /// test that recorded them.
    pub fn remove_empty(&self) {
        remove_empty_below(&self.base);
    }
}

/// Post-order, so that a directory goes after its children: the kernel removes no cgroup that
/// has any.
fn remove_empty_below(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_below(&entry.path());
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ResourceBusy
            ) => {}
        Err(e) => eprintln!("cannot remove {}: {e}", dir.display()),
    }
}

/// The path the agent keys on: its data dir's canonical path, which before its first start
/// does not exist yet (the agent makes it), so its parent's canonical path with its name.
fn canonical(data_dir: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(data_dir) {
        return path;
    }
    match (data_dir.parent(), data_dir.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).map_or_else(|_| data_dir.to_path_buf(), |p| p.join(name))
        }
        _ => data_dir.to_path_buf(),
    }
}

/// Whether a process (or zombie) with this pid exists.
pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Whether any process of this process group runs. Zombies do not count: orphaned members are
/// reaped by init, which some sandboxes never do.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(Pid::from_raw(pgid as i32), None).is_ok();
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// Waits until `f` holds, polling every 20 ms; fails the test at the deadline.
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not true within {DEADLINE:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An agent running inside the test process.
pub struct InProcessAgent {
    cancel: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl InProcessAgent {
    pub fn start(url: &str, data_dir: &Path, node: &str) -> InProcessAgent {
        let mut config = Config::embedded(url, node, data_dir.to_path_buf());
        config.labels = [("zone".to_string(), "a".to_string())].into();
        // Timestamped output goes through pump processes, as with the agent binary.
        config.log_pump = Some(env!("CARGO_BIN_EXE_pmcluster-agent").into());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(pmcluster_agent::run(config, cancel.clone()));
        InProcessAgent { cancel, task }
    }

    /// Stops the agent (and so its instances) and returns its result.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.cancel.cancel();
        match tokio::time::timeout(DEADLINE, self.task).await {
            Ok(joined) => must(joined, "agent task"),
            Err(_) => panic!("agent did not stop within {DEADLINE:?}"),
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    must(tempfile::tempdir(), "tempdir")
}
