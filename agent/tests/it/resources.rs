//! Resource rules applied before the program runs: CPU affinity, rlimits and the user and group
//! to run as; a restart policy that gives up; and a process tree's memory in the reports.

use pmcluster_proto::v1 as pb;

use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::skip::{Need, skip};
use crate::{InProcessAgent, Reaper, assignment, sh_spec, tempdir, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_limits_and_user_are_in_force_from_the_start() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n8");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    // What the shell reads first thing is what it was started with.
    let mut pinned = sh_spec(
        "pinned",
        "grep Cpus_allowed_list /proc/self/status; echo nofile=$(ulimit -n); echo uid=$(id -u); \
         exec sleep 30",
    );
    pinned.cpu_affinity = vec![0];
    pinned.limits = [("nofile".to_string(), 123u64)].into();
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        pinned.user = "nobody".into();
    }
    s.desired(1, vec![assignment("p", 0, &pinned)]).await;
    let r = s
        .report_where("p online", |r| is_state(r, "p", pb::InstanceState::Online))
        .await;
    reaper.add(instance(&r, "p").map_or(0, |i| i.pid));
    let out = dir.path().join("logs").join("pinned-0-out.log");
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until("the shell's report", || read().contains("uid=")).await;
    let text = read();
    assert!(text.contains("Cpus_allowed_list:\t0\n"), "{text}");
    assert!(text.contains("nofile=123\n"), "{text}");
    if root {
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        assert!(
            nobody.is_some_and(|uid| text.contains(&format!("uid={uid}\n"))),
            "{text}"
        );
    }
    must(agent.stop().await, "agent result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_an_error_not_a_crash_loop() {
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n9");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec("who", "exec sleep 30");
    spec.user = "pmcluster-no-such-user".into();
    s.desired(1, vec![assignment("w", 0, &spec)]).await;
    let r = s
        .report_where("w errored", |r| {
            is_state(r, "w", pb::InstanceState::Errored)
        })
        .await;
    let w = instance(&r, "w").cloned().unwrap_or_default();
    assert_eq!(
        w.message,
        "user \"pmcluster-no-such-user\" does not exist on this host"
    );
    assert_eq!((w.pid, w.restarts), (0, 0));
    must(agent.stop().await, "agent result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_gives_up_and_a_restart_epoch_revives_it() {
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n10");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec("loop", "exit 1");
    spec.max_restarts = Some(2);
    spec.restart_backoff_max_ms = Some(50);
    let mut a = assignment("l", 0, &spec);
    s.desired(1, vec![a.clone()]).await;
    let r = s
        .report_where("l errored", |r| {
            is_state(r, "l", pb::InstanceState::Errored)
        })
        .await;
    let l = instance(&r, "l").cloned().unwrap_or_default();
    assert_eq!((l.restarts, l.last_exit_code), (2, Some(1)));
    assert_eq!(
        l.message,
        "crashed 3 times within 60s of running (last: exited with code 1); restart it with: pmcluster \
         restart loop --instance 0"
    );
    // A user's restart (a higher epoch) gives it another round.
    a.restart_epoch = 1;
    s.desired(2, vec![a]).await;
    s.report_where("l errored again after 3 more starts", |r| {
        instance(r, "l").is_some_and(|i| {
            i.state == pb::InstanceState::Errored as i32 && i.restarts == 5 && i.restart_epoch == 1
        })
    })
    .await;
    must(agent.stop().await, "agent result");
}

/// A field of `/proc/PID/status` (`Uid`, `Groups`), as numbers.
fn status_numbers(pid: u32, field: &str) -> Vec<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Whether this process may raise hard limits (CAP_SYS_RESOURCE, bit 24 of CapEff).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Soft and hard "Max open files" of `/proc/PID/limits`.
fn nofile_of(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_instance_gets_limits_above_the_agents_and_its_groups_and_home() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    if !nix::unistd::Uid::effective().is_root() {
        return skip(Need::Root, "running an instance as another user needs root");
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        return skip(Need::Root, "no user nobody on this host");
    };
    // Above the agent's own hard limit (the instance inherits the agent's limits), within what
    // the kernel allows at all. Raising a hard limit takes CAP_SYS_RESOURCE, which some
    // containers drop even for root: then no order of the calls could raise it, and the test
    // checks a value below the hard limit (the groups and environment still count).
    let (_, hard) = must(getrlimit(Resource::RLIMIT_NOFILE), "getrlimit");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let want = if !has_cap_sys_resource() {
        eprintln!(
            "no CAP_SYS_RESOURCE here: not even root can raise the hard nofile limit \
             ({hard}); checking {} as user nobody instead",
            hard - 1
        );
        hard - 1
    } else if hard == RLIM_INFINITY || hard >= nr_open {
        eprintln!(
            "the agent's hard nofile limit ({hard}) is already the kernel's maximum; \
             checking {nr_open} as user nobody without raising it"
        );
        nr_open
    } else {
        (hard + 4096).min(nr_open)
    };
    let groups = {
        let name = must(std::ffi::CString::new(nobody.name.clone()), "user name");
        let mut g: Vec<u64> = must(nix::unistd::getgrouplist(&name, nobody.gid), "groups")
            .iter()
            .map(|g| u64::from(g.as_raw()))
            .collect();
        g.sort_unstable();
        g.dedup();
        g
    };

    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n11");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec("raised", "exec sleep 30");
    spec.user = "nobody".into();
    spec.limits = [("nofile".to_string(), want)].into();
    // The spec's own value wins over the user's.
    spec.env = [("LOGNAME".to_string(), "from-spec".to_string())].into();
    s.desired(1, vec![assignment("r", 0, &spec)]).await;
    let r = s
        .report_where("r online", |r| is_state(r, "r", pb::InstanceState::Online))
        .await;
    let pid = instance(&r, "r").map_or(0, |i| i.pid);
    reaper.add(pid);
    assert_ne!(pid, 0);
    let want_text = want.to_string();
    assert_eq!(
        nofile_of(pid),
        Some((want_text.clone(), want_text)),
        "/proc/{pid}/limits"
    );
    let uid = u64::from(nobody.uid.as_raw());
    let gid = u64::from(nobody.gid.as_raw());
    assert_eq!(status_numbers(pid, "Uid"), [uid; 4]);
    assert_eq!(status_numbers(pid, "Gid"), [gid; 4]);
    let mut got = status_numbers(pid, "Groups");
    got.sort_unstable();
    assert_eq!(got, groups, "supplementary groups");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for want in [
        format!("HOME={}", nobody.dir.display()),
        "USER=nobody".to_string(),
        "LOGNAME=from-spec".to_string(),
    ] {
        assert!(environ.contains(&want), "{want} not in {environ:?}");
    }
    must(agent.stop().await, "agent result");
}

/// An exec health check runs as the instance's user, with its HOME and USER, not as the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_health_checks_run_as_the_instances_user() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip(Need::Root, "switching users needs root");
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        return skip(Need::Root, "no user nobody on this host");
    };
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n9");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec("probed", "exec sleep 30");
    spec.user = "nobody".into();
    spec.health_check = Some(pb::HealthCheck {
        check_type: "exec".into(),
        command: format!(
            "[ \"$(id -u)\" = {} ] && [ \"$USER\" = nobody ]",
            nobody.uid.as_raw()
        ),
        interval_ms: 200,
        timeout_ms: 2000,
        retries: 1,
        ..Default::default()
    });
    s.desired(1, vec![assignment("q", 0, &spec)]).await;
    // Online only once the check passes, which it does only as nobody.
    let r = s
        .report_where("q online and healthy", |r| {
            is_state(r, "q", pb::InstanceState::Online)
                && instance(r, "q").is_some_and(|i| i.health == pb::HealthState::Healthy as i32)
        })
        .await;
    reaper.add(instance(&r, "q").map_or(0, |i| i.pid));
    must(agent.stop().await, "agent result");
}

/// The instance enters its cwd with its own rights: a directory its user may not enter is
/// refused with a clear message, where the agent (root) could have entered it for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_is_entered_as_the_instances_user() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        return skip(Need::Root, "switching users needs root");
    }
    let reaper = Reaper::default();
    let dir = tempdir();
    let private = dir.path().join("private");
    must(std::fs::create_dir(&private), "mkdir");
    must(
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)),
        "chmod 700",
    );
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n10");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec("walled", "exec sleep 30");
    spec.user = "nobody".into();
    spec.cwd = private.display().to_string();
    let mut open = sh_spec("open", "exec sleep 30");
    open.user = "nobody".into();
    open.cwd = "/tmp".into();
    s.desired(
        1,
        vec![assignment("w", 0, &spec), assignment("o", 0, &open)],
    )
    .await;
    let r = s
        .report_where("o online, w refused", |r| {
            is_state(r, "o", pb::InstanceState::Online)
                && instance(r, "w").is_some_and(|i| i.message.contains("as its user"))
        })
        .await;
    reaper.add(instance(&r, "o").map_or(0, |i| i.pid));
    let w = instance(&r, "w").cloned().unwrap_or_default();
    assert_eq!(
        w.pid, 0,
        "nothing runs in a directory its user cannot enter: {w:?}"
    );
    assert!(w.message.contains("Permission denied"), "{w:?}");
    must(agent.stop().await, "agent result");
}

/// A restart the agent makes (here for a failed health check) says why while it stops the old
/// process: the stop kept the message it found, the previous restart's reason, so the
/// `stopping` event of a memory or health restart named the crash before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_says_why_while_it_stops() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let flag = dir.path().join("sick");
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n11");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    // It ignores SIGTERM, so its stop lasts the whole kill_timeout and a report sees it.
    let mut spec = sh_spec("slow", "trap '' TERM; while :; do sleep 0.2; done");
    spec.kill_timeout_ms = Some(3000);
    spec.health_check = Some(pb::HealthCheck {
        check_type: "exec".into(),
        command: format!("test ! -e {}", flag.display()),
        interval_ms: 200,
        timeout_ms: 2000,
        retries: 1,
        ..Default::default()
    });
    s.desired(1, vec![assignment("h", 0, &spec)]).await;
    let r = s
        .report_where("h online and healthy", |r| {
            instance(r, "h").is_some_and(|i| i.health == pb::HealthState::Healthy as i32)
        })
        .await;
    let first = instance(&r, "h").map_or(0, |i| i.pid);
    reaper.add(first);
    must(std::fs::write(&flag, ""), "write the flag");
    let r = s
        .report_where("h stopping", |r| {
            is_state(r, "h", pb::InstanceState::Stopping)
        })
        .await;
    let stopping = instance(&r, "h").cloned().unwrap_or_default();
    // The checks come once the new process is known, so that a failing one still reaps it.
    must(std::fs::remove_file(&flag), "remove the flag");
    let r = s
        .report_where("h online again with a new pid", |r| {
            instance(r, "h").is_some_and(|i| {
                i.state == pb::InstanceState::Online as i32 && i.pid != 0 && i.pid != first
            })
        })
        .await;
    reaper.add(instance(&r, "h").map_or(0, |i| i.pid));
    let restarted = instance(&r, "h").cloned().unwrap_or_default();
    assert!(
        stopping.message.starts_with("restarting: unhealthy"),
        "{stopping:?}"
    );
    assert!(
        restarted.message.starts_with("restarted: unhealthy"),
        "{restarted:?}"
    );
    // A user's stop does not read as that restart still: the reason goes.
    let mut stop = assignment("h", 0, &spec);
    stop.run = false;
    s.desired(2, vec![stop]).await;
    let r = s
        .report_where("h stopping at the user's word", |r| {
            is_state(r, "h", pb::InstanceState::Stopping)
        })
        .await;
    let stopping = instance(&r, "h").cloned().unwrap_or_default();
    s.report_where("h stopped", |r| {
        is_state(r, "h", pb::InstanceState::Stopped)
    })
    .await;
    assert_eq!(stopping.message, "", "{stopping:?}");
    must(agent.stop().await, "agent result");
}
