//! Issue 12 item 4: the data dir and everything the agent writes in it are its owner's only,
//! and a data dir left wider is tightened at startup, with a log line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pmcluster_proto::v1 as pb;

use crate::binary::{agent_args, spawn_agent, stderr_of};
use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::{Reaper, assignment, sh_spec, tempdir, wait_until};

fn mode(path: &Path) -> u32 {
    must(std::fs::symlink_metadata(path), "stat")
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    must(
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        "chmod",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_data_dir_is_owner_only_and_tightened_at_startup() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let data = dir.path().join("data");
    // What an older agent left: everything readable by all.
    must(std::fs::create_dir_all(data.join("logs")), "mkdir");
    must(
        std::fs::write(data.join("agent-id"), "0123abcd\n"),
        "agent-id",
    );
    must(
        std::fs::write(data.join("logs/old-0-out.log"), "old\n"),
        "old log",
    );
    for (path, m) in [
        (data.clone(), 0o755),
        (data.join("logs"), 0o777),
        (data.join("agent-id"), 0o644),
        (data.join("logs/old-0-out.log"), 0o644),
    ] {
        chmod(&path, m);
    }

    let mut coord = FakeCoordinator::start().await;
    let args = agent_args(&coord.url, "modes", &data, &[]);
    let _agent = spawn_agent(dir.path(), &args);
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    s.desired(
        1,
        vec![assignment(
            "m",
            0,
            &sh_spec("modes", "echo out; echo err >&2; exec sleep 30"),
        )],
    )
    .await;
    let r = s
        .report_where("online", |r| is_state(r, "m", pb::InstanceState::Online))
        .await;
    reaper.add(instance(&r, "m").map_or(0, |i| i.pid));
    let logs = data.join("logs");
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    wait_until("both lines written", || {
        read("modes-0-out.log").contains("out") && read("modes-0-err.log").contains("err")
    })
    .await;
    wait_until("the instance's record saved", || {
        data.join("instances/m.json").exists()
    })
    .await;

    let mut checked = Vec::new();
    for name in ["", "logs", "instances"] {
        let path = data.join(name);
        assert_eq!(mode(&path), 0o700, "{}", path.display());
        checked.push(path.clone());
        for entry in must(std::fs::read_dir(&path), "read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                continue;
            }
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            checked.push(path);
        }
    }
    for want in [
        "agent-id",
        "agent.lock",
        "identity.json",
        "instances/m.json",
        "logs/modes-0-out.log",
        "logs/modes-0-err.log",
        "logs/old-0-out.log",
    ] {
        assert!(checked.contains(&data.join(want)), "{want} not checked");
    }
    // The agent kept the id it found, and said what it tightened.
    assert_eq!(read("../agent-id").trim(), "0123abcd");
    let err = stderr_of(dir.path());
    for path in [
        data.clone(),
        data.join("agent-id"),
        logs.join("old-0-out.log"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(&path.display().to_string())
                && l.contains("readable beyond its owner")),
            "no line about {}:\n{err}",
            path.display()
        );
    }
}
