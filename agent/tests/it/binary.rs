//! The `pmcluster-agent` binary: exit codes, and SIGTERM stopping every instance.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;
use tokio::process::{Child, Command};

use crate::fake::{DEADLINE, FakeCoordinator, Session, instance, is_state, must};
use crate::{AgentCgroups, Reaper, alive, assignment, group_alive, sh_spec, tempdir, wait_until};

/// Starts the agent binary; its stderr goes to `DIR/agent.err`.
/// `--coordinator URL --node-name NODE --data-dir DATA`, then `extra`: how these tests run it.
pub(crate) fn agent_args(url: &str, node: &str, data: &Path, extra: &[&str]) -> Vec<String> {
    let data = data.to_string_lossy();
    [
        "--coordinator",
        url,
        "--node-name",
        node,
        "--data-dir",
        &data,
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(str::to_string)
    .collect()
}

/// A real agent (this binary) registered with a fresh fake coordinator: how most of these tests
/// begin. `args` starts it again the same way.
pub(crate) struct Started {
    pub dir: tempfile::TempDir,
    pub coord: FakeCoordinator,
    pub data: std::path::PathBuf,
    pub args: Vec<String>,
    pub agent: AgentProcess,
    pub session: Session,
}

pub(crate) async fn start_agent(node: &str, extra: &[&str]) -> Started {
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let data = dir.path().join("data");
    let args = agent_args(&coord.url, node, &data, extra);
    let agent = spawn_agent(dir.path(), &args);
    let (session, _) = coord.accept().await;
    session.registered(100).await;
    Started {
        dir,
        coord,
        data,
        args,
        agent,
        session,
    }
}

impl Started {
    /// Sends `desired` as generation `generation` while the agent is stopped, then a SIGTERM
    /// (a detach), so that both are pending when it runs again and either may be handled first.
    /// Returns its stderr once it has exited 0 with every supervisor ended in time.
    pub(crate) async fn detach_with_pending(
        &mut self,
        generation: u64,
        desired: Vec<pb::Assignment>,
    ) -> String {
        let agent = Pid::from_raw(self.agent.id().expect("the agent's pid") as i32);
        must(kill(agent, Signal::SIGSTOP), "SIGSTOP the agent");
        self.session.desired(generation, desired).await;
        must(kill(agent, Signal::SIGTERM), "SIGTERM the agent");
        must(kill(agent, Signal::SIGCONT), "SIGCONT the agent");
        let status = exit_of(&mut self.agent).await;
        let stderr = stderr_of(self.dir.path());
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("did not end within"), "{stderr}");
        stderr
    }
}

/// An agent binary a test started, used as its [`Child`]. Dropped, it kills the agent if it
/// still runs, waits for it, and then removes the cgroups it left empty: an agent that is
/// killed (as most of these tests end theirs) never removes its own, and nothing else would.
/// Every agent of a node and data dir has the same cgroups, so a test that starts the next
/// agent on them keeps the previous one's handle until the end (as a shadowed binding does):
/// dropped early, it could take a cgroup from under the running agent.
pub(crate) struct AgentProcess {
    child: Child,
    cgroups: Option<AgentCgroups>,
}

impl std::ops::Deref for AgentProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // An agent that still runs might make a cgroup after the removal; one already waited
        // for refuses the kill, which is as good.
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + DEADLINE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                eprintln!("the agent did not exit within {DEADLINE:?}; its cgroups stay");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_empty();
        }
    }
}

/// The value of flag `name` in `args`.
fn flag<'a>(args: &'a [impl AsRef<std::ffi::OsStr>], name: &str) -> Option<&'a std::ffi::OsStr> {
    args.windows(2)
        .find(|pair| pair[0].as_ref() == name)
        .map(|pair| pair[1].as_ref())
}

pub(crate) fn spawn_agent(dir: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> AgentProcess {
    let stderr = must(std::fs::File::create(dir.join("agent.err")), "stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmcluster-agent"));
    cmd.args(args)
        .env_remove("PMCLUSTER_COORDINATOR")
        .env_remove("PMCLUSTER_DATA_DIR")
        .env_remove("PMCLUSTER_NODE_NAME")
        .env_remove("PMCLUSTER_STOP_INSTANCES_ON_EXIT")
        .env_remove("PMCLUSTER_NO_CGROUPS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    // Named from its flags as the agent names them. Tests that leave one out are about flags it
    // rejects before it makes any.
    let cgroups = match (flag(args, "--node-name"), flag(args, "--data-dir")) {
        (Some(node), Some(data)) => AgentCgroups::of(&node.to_string_lossy(), Path::new(data)),
        _ => None,
    };
    AgentProcess {
        child: must(cmd.spawn(), "spawn agent"),
        cgroups,
    }
}

pub(crate) async fn exit_of(child: &mut Child) -> ExitStatus {
    match tokio::time::timeout(DEADLINE, child.wait()).await {
        Ok(status) => must(status, "wait agent"),
        Err(_) => panic!("agent did not exit within {DEADLINE:?}"),
    }
}

pub(crate) fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.err")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_node_name_exits_1() {
    let dir = tempdir();
    let coord = FakeCoordinator::start().await;
    coord.reject_next(1);
    let args = agent_args(&coord.url, "dup", &dir.path().join("data"), &[]);
    let mut agent = spawn_agent(dir.path(), &args);
    let status = exit_of(&mut agent).await;
    let err = stderr_of(dir.path());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "node name dup is already connected to the coordinator; pick another --node-name"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn bad_flags_exit_2() {
    let dir = tempdir();
    let cases: &[(&[&str], &str)] = &[
        (&["--data-dir", "/tmp/x", "--label", "k"], "--label"),
        (
            &["--data-dir", "/tmp/x", "--node-name", "a b"],
            "--node-name",
        ),
        (
            &["--data-dir", "/tmp/x", "--coordinator", "localhost:1"],
            "--coordinator",
        ),
        (&["--node-name", "x"], "--data-dir"),
    ];
    for (args, want) in cases {
        let mut agent = spawn_agent(dir.path(), args);
        let status = exit_of(&mut agent).await;
        let err = stderr_of(dir.path());
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stop_flag_stops_every_instance() {
    let reaper = Reaper::default();
    let Started {
        dir,
        mut agent,
        session: mut s,
        // Kept to the end: `..` would drop the fake coordinator at once.
        coord: _coord,
        ..
    } = start_agent("term", &["--stop-instances-on-exit"]).await;
    // One instance ignores SIGTERM (the ignored disposition survives exec), so only the SIGKILL
    // after its kill timeout ends it; the other has a child of its own in its group.
    let mut stubborn = sh_spec("stubborn", "trap '' TERM; exec sleep 30");
    stubborn.kill_timeout_ms = Some(300);
    let family = sh_spec("family", "sleep 30 & wait");
    s.desired(
        1,
        vec![assignment("a", 0, &stubborn), assignment("b", 0, &family)],
    )
    .await;
    let r = s
        .report_where("both online", |r| {
            is_state(r, "a", pb::InstanceState::Online)
                && is_state(r, "b", pb::InstanceState::Online)
        })
        .await;
    let pids: Vec<u32> = ["a", "b"]
        .iter()
        .map(|id| instance(&r, id).map_or(0, |i| i.pid))
        .collect();
    for pid in &pids {
        assert_ne!(*pid, 0);
        reaper.add(*pid);
    }

    let agent_pid = agent.id().expect("the agent's pid");
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
    for pid in pids {
        assert!(!alive(pid), "instance {pid} left behind");
        wait_until("group left behind", || !group_alive(pid)).await;
    }
}

/// Pid of an instance in a report (0 when it has none).
fn pid_in(r: &pb::StatusReport, id: &str) -> u32 {
    instance(r, id).map_or(0, |i| i.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarts_adopt_running_instances() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let data = dir.path().join("data");
    let url = coord.url.clone();
    let args = |grace: &str| agent_args(&url, "keep", &data, &["--coordinator-grace", grace]);
    let spawn = |args: Vec<String>| spawn_agent(dir.path(), &args);

    // Agent 1 runs a (with a child of its own) and b.
    let mut agent = spawn(args("60s"));
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let a = sh_spec("keeper", "sleep 30 & wait");
    let b = sh_spec("other", "exec sleep 30");
    let set = vec![assignment("a", 0, &a), assignment("b", 0, &b)];
    s.desired(1, set.clone()).await;
    let r = s
        .report_where("a and b online", |r| {
            is_state(r, "a", pb::InstanceState::Online)
                && is_state(r, "b", pb::InstanceState::Online)
        })
        .await;
    let (pid_a, pid_b) = (pid_in(&r, "a"), pid_in(&r, "b"));
    reaper.add(pid_a);
    reaper.add(pid_b);

    // SIGTERM without --stop-instances-on-exit: the agent exits 0, the instances run on.
    let agent_pid = agent.id().expect("the agent's pid");
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
    assert!(
        group_alive(pid_a) && group_alive(pid_b),
        "instances left running"
    );
    // b dies while no agent runs.
    must(
        nix::sys::signal::killpg(Pid::from_raw(pid_b as i32), Signal::SIGKILL),
        "kill b",
    );
    wait_until("b gone", || !group_alive(pid_b)).await;

    // Agent 2 adopts a (same pid) and does not start b before the coordinator says so.
    let mut agent = spawn(args("60s"));
    let (mut s, register) = coord.accept().await;
    let adopted: Vec<(String, u32)> = register
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.pid))
        .collect();
    assert_eq!(adopted, [("a".to_string(), pid_a)], "{register:?}");
    s.registered(100).await;
    for _ in 0..3 {
        let r = s
            .report_where("a report", |r| instance(r, "a").is_some())
            .await;
        assert!(
            instance(&r, "b").is_none(),
            "b started before the coordinator asked: {r:?}"
        );
        assert_eq!(pid_in(&r, "a"), pid_a);
    }
    s.desired(2, set.clone()).await;
    let r = s
        .report_where("b started again, a untouched", |r| {
            is_state(r, "b", pb::InstanceState::Online) && pid_in(r, "b") != 0
        })
        .await;
    assert_eq!(pid_in(&r, "a"), pid_a, "no duplicate of a");
    let pid_b2 = pid_in(&r, "b");
    reaper.add(pid_b2);

    // The adopted a is watched: when it dies, it is restarted.
    must(
        kill(Pid::from_raw(pid_a as i32), Signal::SIGKILL),
        "kill -9 a",
    );
    let r = s
        .report_where("a restarted", |r| {
            instance(r, "a").is_some_and(|i| {
                i.state == pb::InstanceState::Online as i32 && i.pid != 0 && i.pid != pid_a
            })
        })
        .await;
    let pid_a2 = pid_in(&r, "a");
    reaper.add(pid_a2);
    wait_until("a's old group gone", || !group_alive(pid_a)).await;

    // kill -9 of the agent; b dies too; agent 3 gets a silent coordinator and starts b on its own
    // once the grace period is over, and adopts a.
    agent.kill().await.ok();
    let _ = agent.wait().await;
    must(
        nix::sys::signal::killpg(Pid::from_raw(pid_b2 as i32), Signal::SIGKILL),
        "kill b",
    );
    wait_until("b gone", || !group_alive(pid_b2)).await;
    drop(s);
    let mut agent = spawn(args("1s"));
    let (mut s, register) = coord.accept().await;
    assert_eq!(
        register.instances.iter().map(|i| i.pid).collect::<Vec<_>>(),
        [pid_a2]
    );
    s.registered(100).await;
    let r = s
        .report_where("b started after the grace period", |r| {
            is_state(r, "b", pb::InstanceState::Online) && pid_in(r, "b") != 0
        })
        .await;
    reaper.add(pid_in(&r, "b"));
    assert_eq!(pid_in(&r, "a"), pid_a2);
    agent.kill().await.ok();
}

/// The pipe on file descriptor `fd` of `pid` (`pipe:[1234]`), if that is a pipe.
fn pipe_of(pid: u32, fd: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy().into_owned();
    link.starts_with("pipe:").then_some(link)
}

/// Field `n` (0: the state) after the name of `/proc/PID/stat`, as a number (0 when it is gone).
fn stat_number(pid: u32, n: usize) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    rest.split_whitespace()
        .nth(n)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Process group of `pid` (0 when it is gone).
fn pgrp_of(pid: u32) -> u32 {
    stat_number(pid, 2)
}

/// Parent of `pid` (0 when it is gone).
fn ppid_of(pid: u32) -> u32 {
    stat_number(pid, 1)
}

/// Live processes outside process group `pgid` that hold `pipe` open: the readers of an
/// instance's output pipe (its own processes, the writers, are in its group).
fn pipe_holders(pipe: &str, pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pgrp_of(pid) == pgid || !group_alive_pid(pid) {
            continue;
        }
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == pipe));
        if holds {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Whether `pid` runs (not a zombie).
fn group_alive_pid(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    rest.split_whitespace()
        .next()
        .is_some_and(|s| s != "Z" && s != "X")
}

/// Numbers of the lines `<RFC 3339 stamp> <word> <n>` of `text`; panics on a line without a
/// stamp. A last line without its newline is left out (it may still be being written).
fn stamped_numbers(text: &str, word: &str) -> Vec<u64> {
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (stamp, rest) = l.split_once(' ').unwrap_or(("", l));
            let b = stamp.as_bytes();
            let stamped = stamp.len() == 24 && b[10] == b'T' && b[23] == b'Z';
            let n = rest
                .strip_prefix(word)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok());
            match (stamped, n) {
                (true, Some(n)) => n,
                _ => panic!("not a stamped {word} line: {l:?}"),
            }
        })
        .collect()
}

/// Everything a log file holds with its rotated copies, oldest first.
fn read_rotated(path: &Path, keep: u32) -> String {
    let mut text = String::new();
    for n in (1..=keep).rev() {
        let mut name = path.as_os_str().to_os_string();
        name.push(format!(".{n}"));
        text.push_str(&std::fs::read_to_string(name).unwrap_or_default());
    }
    text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    text
}

/// Identity of a file (inode), 0 when missing.
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.ino())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_leaves_timestamped_instances_logging() {
    let reaper = Reaper::default();
    let Started {
        dir,
        mut coord,
        data,
        args,
        mut agent,
        session: mut s,
    } = start_agent("stamps", &["--coordinator-grace", "60s"]).await;
    // A line on stdout every ~50 ms; on stderr the same with padding, so that its file (16 KiB
    // at most) rotates about once a second.
    let pad = "x".repeat(900);
    let mut spec = sh_spec(
        "ticking",
        &format!(
            "i=0; while :; do i=$((i+1)); echo tick $i; echo pad $i {pad} >&2; sleep 0.05; done"
        ),
    );
    spec.log_timestamps = true;
    spec.log_max_bytes = Some(16 * 1024);
    spec.log_keep = Some(3);
    let mut a = assignment("t", 0, &spec);
    s.desired(1, vec![a.clone()]).await;
    let r = s
        .report_where("t online", |r| is_state(r, "t", pb::InstanceState::Online))
        .await;
    let pid = pid_in(&r, "t");
    assert_ne!(pid, 0);
    reaper.add(pid);
    let agent_pid = agent.id().unwrap_or(0);
    let logs = data.join("logs");
    let out = logs.join("ticking-0-out.log");
    let err = logs.join("ticking-0-err.log");
    let ticks = || stamped_numbers(&read_rotated(&out, 3), "tick");
    wait_until("first ticks", || ticks().len() >= 3).await;

    // Who reads the instance's pipes: one pump each, not the agent.
    let pipes: Vec<String> = [1, 2].iter().filter_map(|fd| pipe_of(pid, *fd)).collect();
    assert_eq!(pipes.len(), 2, "stdout and stderr are pipes");
    let pumps: Vec<Vec<u32>> = pipes.iter().map(|p| pipe_holders(p, pid)).collect();
    for (pipe, readers) in pipes.iter().zip(&pumps) {
        for r in readers {
            reaper.add(*r);
        }
        assert_eq!(readers.len(), 1, "{pipe}: readers {readers:?}");
        assert_ne!(readers[0], agent_pid, "{pipe} is read by the agent itself");
    }
    // One pump for both pipes, forked by the agent's pump host: a process of its own, in a
    // group of its own, named and marked as the pump of "t".
    assert_eq!(pumps[0], pumps[1], "one pump reads both pipes");
    let pump = pumps[0][0];
    let comm = std::fs::read_to_string(format!("/proc/{pump}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "pmcluster-pump");
    assert_eq!(pgrp_of(pump), pump, "the pump leads a group of its own");
    let environ = std::fs::read(format!("/proc/{pump}/environ")).unwrap_or_default();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"PMCLUSTER_PUMP_FOR=t"),
        "the pump's environment names its instance: {}",
        String::from_utf8_lossy(&environ)
    );
    let host = ppid_of(pump);
    let host_comm = std::fs::read_to_string(format!("/proc/{host}/comm")).unwrap_or_default();
    assert_eq!(
        host_comm.trim(),
        "pmcluster-pumps",
        "the pump's parent is the host"
    );
    reaper.add(host);

    // kill -9 of the agent: the instance lives on and its lines keep coming, stamped, into the
    // same files, which keep rotating.
    must(agent.kill().await, "kill -9 the agent");
    let _ = agent.wait().await;
    // The host ends with its agent (its socket closed); the pump does not.
    wait_until("the pump host gone", || !group_alive_pid(host)).await;
    let at_kill = ticks().last().copied().unwrap_or(0);
    let err_rotated = inode(&logs.join("ticking-0-err.log.1"));
    wait_until("ticks after the agent died", || {
        ticks().last().is_some_and(|n| *n >= at_kill + 20)
    })
    .await;
    wait_until("stderr rotated without the agent", || {
        inode(&logs.join("ticking-0-err.log.1")) != err_rotated
    })
    .await;
    assert!(group_alive_pid(pid), "the instance died with the agent");
    let seen = ticks();
    let first = seen.iter().position(|n| *n == at_kill).unwrap_or(0);
    assert_eq!(
        seen[first..].to_vec(),
        (at_kill..at_kill + (seen.len() - first) as u64).collect::<Vec<_>>(),
        "a line went missing"
    );
    assert!(stamped_numbers(&read_rotated(&err, 3), "pad").len() > 1);

    // The next agent adopts it (same pid), does not start a second reader, and the lines go on.
    let mut agent = spawn_agent(dir.path(), &args);
    let (mut s, register) = coord.accept().await;
    let adopted: Vec<(String, u32)> = register
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.pid))
        .collect();
    assert_eq!(adopted, [("t".to_string(), pid)], "{register:?}");
    s.registered(100).await;
    s.desired(2, vec![a.clone()]).await;
    let r = s
        .report_where("t online after the restart", |r| {
            r.generation == 2 && is_state(r, "t", pb::InstanceState::Online)
        })
        .await;
    assert_eq!(pid_in(&r, "t"), pid, "adopted, not restarted");
    let now = ticks().last().copied().unwrap_or(0);
    wait_until("ticks after the adoption", || {
        ticks().last().is_some_and(|n| *n >= now + 5)
    })
    .await;
    let again: Vec<Vec<u32>> = pipes.iter().map(|p| pipe_holders(p, pid)).collect();
    assert_eq!(again, pumps, "the same pumps read the pipes");

    // Stopping the instance ends its pumps: their pipes end with it.
    a.run = false;
    s.desired(3, vec![a]).await;
    s.report_where("t stopped", |r| {
        is_state(r, "t", pb::InstanceState::Stopped)
    })
    .await;
    wait_until("pumps gone", || {
        pumps.iter().flatten().all(|p| !group_alive_pid(*p))
    })
    .await;
    agent.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_instance_whose_pumps_died_gets_new_ones() {
    let reaper = Reaper::default();
    let Started {
        dir,
        mut coord,
        data,
        args,
        mut agent,
        session: mut s,
    } = start_agent("repump", &["--coordinator-grace", "60s"]).await;
    // It ignores SIGPIPE, so it lives through the time its pipe has no reader (its lines are
    // lost then); merged, so one pipe carries both streams.
    let mut spec = sh_spec(
        "repumped",
        "trap '' PIPE; i=0; while :; do i=$((i+1)); echo tick $i; echo tick $i >&2; sleep 0.05; done",
    );
    spec.log_timestamps = true;
    spec.merge_logs = true;
    let a = assignment("p", 0, &spec);
    s.desired(1, vec![a.clone()]).await;
    let r = s
        .report_where("p online", |r| is_state(r, "p", pb::InstanceState::Online))
        .await;
    let pid = pid_in(&r, "p");
    assert_ne!(pid, 0);
    reaper.add(pid);
    let out = data.join("logs").join("repumped-0-out.log");
    let ticks = || stamped_numbers(&std::fs::read_to_string(&out).unwrap_or_default(), "tick");
    wait_until("first ticks", || ticks().len() >= 4).await;
    let pipe = pipe_of(pid, 1).unwrap_or_default();
    assert_eq!(pipe_of(pid, 2).as_ref(), Some(&pipe), "one pipe for both");
    let old = pipe_holders(&pipe, pid);
    assert_eq!(old.len(), 1, "{old:?}");
    reaper.add(old[0]);

    // No agent, and its pump is killed too: nobody reads the pipe.
    must(agent.kill().await, "kill -9 the agent");
    let _ = agent.wait().await;
    must(
        kill(Pid::from_raw(old[0] as i32), Signal::SIGKILL),
        "kill -9 the pump",
    );
    wait_until("the pump gone", || pipe_holders(&pipe, pid).is_empty()).await;
    let before = ticks().last().copied().unwrap_or(0);

    // The next agent adopts the instance and starts a new pump on its pipe.
    let mut agent = spawn_agent(dir.path(), &args);
    let (mut s, register) = coord.accept().await;
    let adopted: Vec<u32> = register.instances.iter().map(|i| i.pid).collect();
    assert_eq!(adopted, [pid], "{register:?}");
    s.registered(100).await;
    s.desired(2, vec![a]).await;
    // The agent itself holds the pipe for a moment while it hands it to the new pump (it
    // reopens it through /proc): only holders other than the agent count.
    let agent_pid = agent.id().unwrap_or(0);
    let pumps = || -> Vec<u32> {
        pipe_holders(&pipe, pid)
            .into_iter()
            .filter(|p| *p != agent_pid)
            .collect()
    };
    wait_until("a new pump", || pumps().len() == 1).await;
    let new = pumps();
    reaper.add(new[0]);
    assert_ne!(new, old);
    wait_until("ticks again", || {
        ticks().last().is_some_and(|n| *n >= before + 5)
    })
    .await;
    assert!(group_alive_pid(pid));
    let r = s
        .report_where("p online", |r| {
            r.generation == 2 && is_state(r, "p", pb::InstanceState::Online)
        })
        .await;
    assert_eq!(pid_in(&r, "p"), pid);
    agent.kill().await.ok();
}

/// The `log-pump` program, which the agent runs when its pump host cannot start a pump: the
/// stdout pipe on its stdin, the stderr pipe on its stdout (read, not written), each into its
/// file, until both pipes end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_pump_program_reads_its_stdin_and_stdout() {
    use std::io::Write;
    let dir = tempdir();
    let out = dir.path().join("p-out.log");
    let err = dir.path().join("p-err.log");
    let cloexec = rustix::pipe::PipeFlags::CLOEXEC;
    let (out_r, out_w) = must(rustix::pipe::pipe_with(cloexec), "a pipe");
    let (err_r, err_w) = must(rustix::pipe::pipe_with(cloexec), "a pipe");
    let mut pump = must(
        Command::new(env!("CARGO_BIN_EXE_pmcluster-agent"))
            .arg("log-pump")
            .arg("--out")
            .arg(&out)
            .arg("--err")
            .arg(&err)
            .stdin(Stdio::from(out_r))
            .stdout(Stdio::from(err_r))
            .stderr(Stdio::null())
            // Ended with the test, whatever its outcome.
            .kill_on_drop(true)
            .spawn(),
        "start the log pump",
    );
    let mut out_w = std::fs::File::from(out_w);
    let mut err_w = std::fs::File::from(err_w);
    must(out_w.write_all(b"to stdout\n"), "write the stdout pipe");
    must(err_w.write_all(b"to stderr\n"), "write the stderr pipe");
    drop((out_w, err_w));
    let status = must(
        tokio::time::timeout(DEADLINE, pump.wait()).await,
        "the pump ends with its pipes",
    );
    assert!(must(status, "the pump's exit").success());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap_or_default(),
        "to stdout\n"
    );
    assert_eq!(
        std::fs::read_to_string(&err).unwrap_or_default(),
        "to stderr\n"
    );
}

/// A restart asked just as the agent detaches (SIGTERM without `--stop-instances-on-exit`) is
/// carried out, by this agent or by the next: the record left behind names the process's own
/// restart epoch, not the one of the target it had no time to act on. The agent is stopped while
/// the restart and the SIGTERM arrive, so that both are pending when it runs again; whichever it
/// handles first, the restart must happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_asked_as_the_agent_detaches_is_not_lost() {
    let reaper = Reaper::default();
    let mut st = start_agent("detach", &[]).await;
    let spec = sh_spec("keeper", "exec sleep 30");
    let mut a = assignment("a", 0, &spec);
    st.session.desired(1, vec![a.clone()]).await;
    let r = st
        .session
        .report_where("a online", |r| is_state(r, "a", pb::InstanceState::Online))
        .await;
    let pid_a = pid_in(&r, "a");
    reaper.add(pid_a);

    a.restart_epoch = 1;
    // Every supervisor ends at the detach, whether it was restarting or not.
    st.detach_with_pending(2, vec![a.clone()]).await;
    // Whichever came first, the record pairs the process with the epoch it runs under: the old
    // one with 0 (the restart is still to do), or a new one with 1 (it was done).
    let record =
        std::fs::read_to_string(st.data.join("instances").join("a.json")).expect("a's record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("a JSON record");
    let pid = record["process"]["pid"]
        .as_u64()
        .expect("a pid in the record") as u32;
    reaper.add(pid);
    let epoch = record["restart_epoch"].as_u64();
    assert!(
        (pid == pid_a && epoch == Some(0)) || (pid != pid_a && epoch == Some(1)),
        "{record}"
    );

    let mut next = spawn_agent(st.dir.path(), &st.args);
    let (mut s, register) = st.coord.accept().await;
    for i in &register.instances {
        reaper.add(i.pid);
    }
    s.registered(100).await;
    s.desired(3, vec![a.clone()]).await;
    let r = s
        .report_where("a restarted under epoch 1", |r| {
            instance(r, "a").is_some_and(|i| {
                i.state == pb::InstanceState::Online as i32
                    && i.restart_epoch == 1
                    && i.pid != 0
                    && i.pid != pid_a
            })
        })
        .await;
    reaper.add(pid_in(&r, "a"));
    wait_until("the old process gone", || !group_alive(pid_a)).await;
    next.kill().await.ok();
}

/// How many lines of `log` (in the agent's logs dir) are `line`.
pub(crate) fn lines_in(data: &Path, log: &str, line: &str) -> usize {
    std::fs::read_to_string(data.join("logs").join(log))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}
