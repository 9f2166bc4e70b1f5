//! Every instance in a cgroup of its own: a grandchild that double-forks into a session of its
//! own (out of the instance's process group and family, and reparented to the agent) still goes
//! with the instance's stop or crash. Reported as skipped (see `skip`) without root or a
//! writable cgroup2 hierarchy.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;

use crate::binary::{Started, exit_of, start_agent, stderr_of};
use crate::fake::{instance, is_state, must};
use crate::skip::{Need, skip};
use crate::{AgentCgroups, Reaper, assignment, sh_spec, wait_until};

/// What the agent logs when the kernel refuses to clone an instance into its cgroup.
const CLONE3_REFUSED: &str = "cannot start instances inside their cgroups with clone3";

/// The cgroup2 mount point if this process may make cgroups under its own, or what is missing
/// and why.
fn usable(test: &str) -> Result<PathBuf, (Need, String)> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err((Need::Root, "not root".to_string()));
    }
    cgroup2_dir(test).map_err(|why| (Need::Cgroup2, why))
}

fn cgroup2_dir(test: &str) -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mount = pmcluster_agent::cgroup::parse_mountinfo(&mountinfo)
        .ok_or("no cgroup2 file system mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own = pmcluster_agent::cgroup::parse_own_cgroup(&own).ok_or("no cgroup2 entry")?;
    let probe = pmcluster_agent::cgroup::join_base(
        &mount,
        &own,
        &format!("pmcluster-probe-{test}-{}", std::process::id()),
    )
    .ok_or("own cgroup outside the hierarchy")?;
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let joinable = probe.join("cgroup.procs").exists();
    let _ = std::fs::remove_dir(&probe);
    if !joinable {
        return Err(format!("{} is not a cgroup2 directory", probe.display()));
    }
    Ok(mount)
}

/// Whether `pid` runs (zombies do not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The cgroup2 directory of a process.
fn cgroup_of(mount: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = pmcluster_agent::cgroup::parse_own_cgroup(&text)?;
    Some(mount.join(own.trim_start_matches('/')))
}

fn pids_in(cgroup: &Path) -> Vec<u32> {
    pmcluster_agent::cgroup::procs(cgroup).unwrap_or_default()
}

/// The pid the instance's escaped grandchild wrote to `file`.
async fn escaped_pid(file: &Path) -> u32 {
    let read = || {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    wait_until("the escaped grandchild's pid", || read().is_some()).await;
    read().unwrap_or(0)
}

/// A shell whose grandchild double-forks into a session of its own, writes its pid to `file`,
/// then runs `rest`.
fn escaping_spec(app: &str, file: &Path, rest: &str) -> pb::AppSpec {
    let line = format!(
        "echo started; setsid sh -c \"sleep 300 & echo \\$! > {}\"; {rest}",
        file.display()
    );
    let mut spec = sh_spec(app, &line);
    // Output through log pumps, which must stay out of the cgroup.
    spec.log_timestamps = true;
    spec.autorestart = Some(false);
    spec
}

/// The log pumps of an instance, from the agent's record.
fn pumps_of(data: &Path, id: &str) -> Vec<u32> {
    let (saved, _) = must(
        pmcluster_agent::persist::load(&data.join("instances")),
        "local state",
    );
    saved
        .iter()
        .filter(|s| s.instance_id == id)
        .filter_map(|s| s.process.as_ref())
        .flat_map(|p| p.pumps.iter().map(|pump| pump.pid))
        .collect()
}

/// Checks that the instance and its escaped grandchild share the instance's cgroup and that
/// the log pumps are not in it; returns the cgroup.
fn check_membership(
    mount: &Path,
    data: &Path,
    node: &str,
    id: &str,
    pid: u32,
    escaped: u32,
) -> PathBuf {
    let cg = cgroup_of(mount, pid).unwrap_or_default();
    // `pmcluster-<node>-<agent key>/<instance>`.
    let base = cg
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    assert!(
        cg.ends_with(id) && base.is_some_and(|b| b.starts_with(&format!("pmcluster-{node}-"))),
        "instance {pid} is in {}",
        cg.display()
    );
    let members = pids_in(&cg);
    assert!(members.contains(&pid), "{members:?}");
    assert!(members.contains(&escaped), "{members:?}");
    // Recorded, so that a restarted agent finds it again. The record is written right after the
    // start is reported, so it may lag the report a little on a loaded machine.
    let deadline = std::time::Instant::now() + crate::fake::DEADLINE;
    let recorded = loop {
        let (saved, _) = must(
            pmcluster_agent::persist::load(&data.join("instances")),
            "local state",
        );
        let recorded = saved
            .iter()
            .find(|s| s.instance_id == id)
            .and_then(|s| s.process.as_ref())
            .and_then(|p| p.cgroup.clone());
        if recorded.as_deref() == Some(cg.as_path()) || std::time::Instant::now() > deadline {
            break recorded;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(recorded.as_deref(), Some(cg.as_path()));
    let pumps = pumps_of(data, id);
    assert!(!pumps.is_empty(), "no log pumps recorded");
    for pump in pumps {
        assert!(running(pump), "pump {pump} is not running");
        assert!(
            !members.contains(&pump),
            "pump {pump} is in the instance's cgroup"
        );
    }
    cg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_a_grandchild_that_left_group_and_family() {
    let mount = match usable("stop") {
        Ok(m) => m,
        Err((need, why)) => return skip(need, &format!("cgroups are not usable here: {why}")),
    };
    let reaper = Reaper::default();
    let Started {
        dir,
        data,
        mut agent,
        session: mut s,
        // Kept to the end: `..` would drop the fake coordinator at once.
        coord: _coord,
        ..
    } = start_agent("cg-stop", &["--stop-instances-on-exit"]).await;
    let file = dir.path().join("escaped.pid");
    let spec = escaping_spec("escaper", &file, "exec sleep 300");
    let mut a = assignment("e1", 0, &spec);
    s.desired(1, vec![a.clone()]).await;
    let r = s
        .report_where("e1 online", |r| {
            is_state(r, "e1", pb::InstanceState::Online)
        })
        .await;
    let pid = instance(&r, "e1").map_or(0, |i| i.pid);
    assert_ne!(pid, 0);
    reaper.add(pid);
    let escaped = escaped_pid(&file).await;
    reaper.add(escaped);
    assert!(running(escaped));
    let cg = check_membership(&mount, &data, "cg-stop", "e1", pid, escaped);
    let pumps = pumps_of(&data, "e1");

    a.run = false;
    s.desired(2, vec![a]).await;
    s.report_where("e1 stopped", |r| {
        is_state(r, "e1", pb::InstanceState::Stopped)
    })
    .await;
    wait_until("the instance gone", || !running(pid)).await;
    wait_until("the escaped grandchild gone", || !running(escaped)).await;
    wait_until("the instance's cgroup removed", || !cg.exists()).await;
    // The pumps end on their own, once every writer of their pipe is gone, with the output.
    for pump in pumps {
        wait_until("the log pump ended", || !running(pump)).await;
    }
    let log =
        std::fs::read_to_string(data.join("logs").join("escaper-0-out.log")).unwrap_or_default();
    assert!(log.contains("started"), "{log}");

    // Born in its cgroup (clone3 with CLONE_INTO_CGROUP, Linux 5.7+), not moved there: the
    // agent says so when the kernel refuses, and every start then pays a migration.
    let stderr = stderr_of(dir.path());
    assert!(!stderr.contains(CLONE3_REFUSED), "{stderr}");

    let agent_pid = agent.id().unwrap_or(0);
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_ends_a_grandchild_that_left_group_and_family() {
    let mount = match usable("crash") {
        Ok(m) => m,
        Err((need, why)) => return skip(need, &format!("cgroups are not usable here: {why}")),
    };
    let reaper = Reaper::default();
    let Started {
        dir,
        data,
        mut agent,
        session: mut s,
        // Kept to the end: `..` would drop the fake coordinator at once.
        coord: _coord,
        ..
    } = start_agent("cg-crash", &["--stop-instances-on-exit"]).await;
    let file = dir.path().join("escaped.pid");
    let spec = escaping_spec("crasher", &file, "sleep 2; exit 3");
    s.desired(1, vec![assignment("c1", 0, &spec)]).await;
    let r = s
        .report_where("c1 online", |r| {
            is_state(r, "c1", pb::InstanceState::Online)
        })
        .await;
    let pid = instance(&r, "c1").map_or(0, |i| i.pid);
    assert_ne!(pid, 0);
    reaper.add(pid);
    let escaped = escaped_pid(&file).await;
    reaper.add(escaped);
    let cg = check_membership(&mount, &data, "cg-crash", "c1", pid, escaped);

    let r = s
        .report_where("c1 exited", |r| {
            is_state(r, "c1", pb::InstanceState::Exited)
        })
        .await;
    assert_eq!(instance(&r, "c1").and_then(|i| i.last_exit_code), Some(3));
    wait_until("the escaped grandchild gone", || !running(escaped)).await;
    wait_until("the instance's cgroup removed", || !cg.exists()).await;

    // Born in its cgroup (clone3 with CLONE_INTO_CGROUP, Linux 5.7+), not moved there: the
    // agent says so when the kernel refuses, and every start then pays a migration.
    let stderr = stderr_of(dir.path());
    assert!(!stderr.contains(CLONE3_REFUSED), "{stderr}");

    let agent_pid = agent.id().unwrap_or(0);
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
}

/// An instance stopped or removed while it waits out its restart delay loses the cgroup its
/// exit kept for the restart: a long-lived agent would otherwise gather one for each until it
/// exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_or_removal_during_a_restart_delay_removes_the_kept_cgroup() {
    if let Err((need, why)) = usable("delay") {
        return skip(need, &format!("cgroups are not usable here: {why}"));
    }
    // Nothing to reap: its processes end on their own.
    let Started {
        dir,
        data,
        mut agent,
        session: mut s,
        // Kept to the end: `..` would drop the fake coordinator at once.
        coord: _coord,
        ..
    } = start_agent("cg-delay", &["--stop-instances-on-exit"]).await;
    let mut spec = sh_spec("waiter", "exit 1");
    spec.restart_delay_ms = 60_000;
    let removed = assignment("r1", 0, &spec);
    let mut stopped = assignment("s1", 1, &spec);
    s.desired(1, vec![removed, stopped.clone()]).await;
    let exited = |r: &pb::StatusReport, id: &str| {
        instance(r, id).is_some_and(|i| i.last_exit_code == Some(1))
    };
    s.report_where("both exited, their restarts due in a minute", |r| {
        exited(r, "r1") && exited(r, "s1")
    })
    .await;
    let cgroups = AgentCgroups::of("cg-delay", &data).expect("the agent's cgroups");
    let kept = [cgroups.base().join("r1"), cgroups.base().join("s1")];
    for cg in &kept {
        assert!(cg.is_dir(), "{} not kept for the restart", cg.display());
    }

    stopped.run = false;
    s.desired(2, vec![stopped]).await;
    s.report_where("r1 removed, s1 stopped", |r| {
        instance(r, "r1").is_none() && is_state(r, "s1", pb::InstanceState::Stopped)
    })
    .await;
    for cg in &kept {
        wait_until("the kept cgroup removed", || !cg.exists()).await;
    }

    let agent_pid = agent.id().unwrap_or(0);
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
}
