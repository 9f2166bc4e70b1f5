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
async fn sigterm_stops_every_instance() {
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
