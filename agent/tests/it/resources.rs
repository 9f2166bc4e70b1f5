//! Resource rules applied before the program runs: CPU affinity, rlimits and the user and group
//! to run as; a restart policy that gives up; and a process tree's memory in the reports.

use pmcluster_proto::v1 as pb;

use crate::fake::{FakeCoordinator, instance, is_state, must};
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
        "crashed 3 times within 60s (last: exited with code 1); restart it with: pmcluster \
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
