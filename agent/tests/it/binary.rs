//! The `pmcluster-agent` binary: exit codes, and SIGTERM stopping every instance.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;
use tokio::process::{Child, Command};

use crate::fake::{DEADLINE, FakeCoordinator, instance, is_state, must};
use crate::{Reaper, alive, assignment, group_alive, sh_spec, tempdir, wait_until};

/// Starts the agent binary; its stderr goes to `DIR/agent.err`.
fn spawn_agent(dir: &Path, args: &[&str]) -> Child {
    let stderr = must(std::fs::File::create(dir.join("agent.err")), "stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmcluster-agent"));
    cmd.args(args)
        .env_remove("PMCLUSTER_COORDINATOR")
        .env_remove("PMCLUSTER_DATA_DIR")
        .env_remove("PMCLUSTER_NODE_NAME")
        .env_remove("PMCLUSTER_STOP_INSTANCES_ON_EXIT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    must(cmd.spawn(), "spawn agent")
}

async fn exit_of(child: &mut Child) -> ExitStatus {
    match tokio::time::timeout(DEADLINE, child.wait()).await {
        Ok(status) => must(status, "wait agent"),
        Err(_) => panic!("agent did not exit within {DEADLINE:?}"),
    }
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.err")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_node_name_exits_1() {
    let dir = tempdir();
    let coord = FakeCoordinator::start().await;
    coord.reject_next(1);
    let data = dir.path().join("data");
    let data = data.to_string_lossy();
    let mut agent = spawn_agent(
        dir.path(),
        &[
            "--coordinator",
            &coord.url,
            "--node-name",
            "dup",
            "--data-dir",
            &data,
        ],
    );
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
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let data = dir.path().join("data");
    let data = data.to_string_lossy();
    let mut agent = spawn_agent(
        dir.path(),
        &[
            "--coordinator",
            &coord.url,
            "--node-name",
            "term",
            "--data-dir",
            &data,
            "--stop-instances-on-exit",
        ],
    );
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    // One instance ignores SIGTERM (the ignored disposition survives exec), so only the SIGKILL
    // after its kill timeout ends it; the other has a child of its own in its group.
    let mut stubborn = sh_spec("stubborn", "trap '' TERM; exec sleep 30");
    stubborn.kill_timeout_ms = 300;
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

    let agent_pid = agent.id().unwrap_or(0);
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
    let data = data.to_string_lossy().into_owned();
    let url = coord.url.clone();
    let args = |grace: &'static str| -> Vec<String> {
        [
            "--coordinator",
            &url,
            "--node-name",
            "keep",
            "--data-dir",
            &data,
            "--coordinator-grace",
            grace,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let spawn = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_agent(dir.path(), &args)
    };

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
    let agent_pid = agent.id().unwrap_or(0);
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
