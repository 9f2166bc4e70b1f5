//! Agent tests against a fake coordinator, with real child processes (`sh`, `sleep`).
//!
//! Every wait has a deadline ([`fake::DEADLINE`]); no test sleeps for correctness. Every process
//! an agent starts is recorded in a [`Reaper`] that kills its group when the test ends, pass or
//! fail, and agents are stopped (or killed) by the test that started them.

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

use std::path::Path;
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
