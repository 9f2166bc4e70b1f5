//! The link: an unreachable coordinator at startup, a lost session, ALREADY_EXISTS while
//! reconnecting, a delta desired set it cannot read; the instances run on through all of it.

use std::time::Duration;

use pmcluster_proto::v1 as pb;
use tokio::net::TcpListener;

use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::{InProcessAgent, Reaper, alive, assignment, group_alive, sh_spec, tempdir, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_keeps_instances_running() {
    let reaper = Reaper::default();
    let dir = tempdir();
    // A port with nothing behind it yet: the agent starts before its coordinator.
    let addr = {
        let l = must(std::net::TcpListener::bind("127.0.0.1:0"), "bind");
        must(l.local_addr(), "addr")
    };
    let agent = InProcessAgent::start(&format!("http://{addr}"), dir.path(), "n4");
    // Not needed for correctness: only makes it likely the agent has failed to connect at least
    // once before the coordinator comes up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = must(TcpListener::bind(addr).await, "bind coordinator");
    let mut coord = FakeCoordinator::serve(listener).await;

    let (mut s, register) = coord.accept().await;
    assert_eq!(register.generation, 0);
    s.registered(100).await;
    let spec = sh_spec("steady", "exec sleep 30");
    s.desired(1, vec![assignment("a", 0, &spec)]).await;
    let r = s
        .report_where("a online", |r| {
            is_state(r, "a", pb::InstanceState::Online)
                && instance(r, "a").is_some_and(|i| i.pid != 0)
        })
        .await;
    let pid = instance(&r, "a").map_or(0, |i| i.pid);
    reaper.add(pid);

    // The coordinator goes away; when the agent comes back, the coordinator first claims the
    // name is still connected (the old session closing), which the agent must retry.
    coord.reject_next(1);
    s.fail(tonic::Status::unavailable("coordinator restarting"))
        .await;
    let (mut s2, register) = coord.accept().await;
    assert_eq!(register.generation, 1);
    let again = register
        .instances
        .iter()
        .find(|i| i.instance_id == "a")
        .map(|i| (i.pid, i.state));
    assert_eq!(again, Some((pid, pb::InstanceState::Online as i32)));
    assert!(alive(pid), "the instance ran on while the link was down");

    s2.registered(100).await;
    s2.report_where("a still online", |r| {
        r.generation == 1 && instance(r, "a").is_some_and(|i| i.pid == pid)
    })
    .await;
    must(agent.stop().await, "agent result");
    assert!(!alive(pid));
}

/// A leader stepping down ends the session with UNAVAILABLE naming the new leader, which is not
/// even in the agent's `--coordinator`: the agent dials it at once and registers there, and the
/// instance runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_leader_stepping_down() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut old = FakeCoordinator::start().await;
    let mut new = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&old.url, dir.path(), "n5");

    let (mut s, _) = old.accept().await;
    s.registered(100).await;
    let spec = sh_spec("steady", "exec sleep 30");
    s.desired(1, vec![assignment("a", 0, &spec)]).await;
    let r = s
        .report_where("a online", |r| {
            is_state(r, "a", pb::InstanceState::Online)
                && instance(r, "a").is_some_and(|i| i.pid != 0)
        })
        .await;
    let pid = instance(&r, "a").map_or(0, |i| i.pid);
    reaper.add(pid);

    let mut step_down = tonic::Status::unavailable("this coordinator is a standby now");
    let leader = must(new.url.parse(), "the URL is a metadata value");
    step_down
        .metadata_mut()
        .insert(pmcluster_proto::LEADER_METADATA, leader);
    let stepped = std::time::Instant::now();
    s.fail(step_down).await;
    let (s2, register) = new.accept().await;
    let took = stepped.elapsed();
    eprintln!("registered with the new leader {took:?} after the step-down");
    let again = register
        .instances
        .iter()
        .find(|i| i.instance_id == "a")
        .map(|i| i.pid);
    assert_eq!(again, Some(pid));
    assert!(alive(pid), "the instance ran on through the step-down");
    s2.registered(100).await;
    must(agent.stop().await, "agent result");
}

/// The ids a report lists, in id order.
fn ids(report: &pb::StatusReport) -> Vec<&str> {
    let mut ids: Vec<&str> = report
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    ids.sort_unstable();
    ids
}

fn online_pid(report: &pb::StatusReport, id: &str) -> Option<u32> {
    instance(report, id)
        .filter(|i| i.state == pb::InstanceState::Online as i32 && i.pid != 0)
        .map(|i| i.pid)
}

/// Desired sets sent as deltas are applied as the whole sets they stand for; a delta on a base
/// the agent's session did not have ends the session, and the instances run on through the
/// reconnect without the unreadable delta applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_delta_sets_and_reconnects_on_a_wrong_base() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n6");

    let (mut s, register) = coord.accept().await;
    assert!(register.takes_deltas, "the agent says it reads deltas");
    s.registered(100).await;
    let spec = sh_spec("steady", "exec sleep 30");
    s.desired(
        1,
        vec![assignment("a", 0, &spec), assignment("b", 1, &spec)],
    )
    .await;
    let r = s
        .report_where("a and b online", |r| {
            r.generation == 1 && online_pid(r, "a").is_some() && online_pid(r, "b").is_some()
        })
        .await;
    let pid_a = online_pid(&r, "a").unwrap_or(0);
    let pid_b = online_pid(&r, "b").unwrap_or(0);
    reaper.add(pid_a);
    reaper.add(pid_b);

    // On generation 1: c joins, a leaves, b is untouched.
    s.desired_delta(2, 1, vec![assignment("c", 2, &spec)], &["a"])
        .await;
    let r = s
        .report_where("exactly b and c online", |r| {
            r.generation == 2 && ids(r) == ["b", "c"] && online_pid(r, "c").is_some()
        })
        .await;
    let pid_c = online_pid(&r, "c").unwrap_or(0);
    reaper.add(pid_c);
    assert_eq!(online_pid(&r, "b"), Some(pid_b), "b kept its process");
    wait_until("a's group is gone", || !group_alive(pid_a)).await;

    // A delta on generation 3, which this session never carried.
    s.desired_delta(4, 3, vec![assignment("d", 3, &spec)], &["b"])
        .await;
    s.ended().await;
    let (mut s2, register) = coord.accept().await;
    assert!(register.takes_deltas);
    assert_eq!(
        register.generation, 2,
        "the unreadable delta was not applied"
    );
    let mut running: Vec<(&str, u32)> = register
        .instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i.pid))
        .collect();
    running.sort_unstable();
    assert_eq!(running, [("b", pid_b), ("c", pid_c)]);
    assert!(
        alive(pid_b) && alive(pid_c),
        "b and c ran on through the reconnect"
    );

    s2.registered(100).await;
    s2.report_where("b and c still online, nothing else", |r| {
        r.generation == 2
            && ids(r) == ["b", "c"]
            && online_pid(r, "b") == Some(pid_b)
            && online_pid(r, "c") == Some(pid_c)
    })
    .await;
    must(agent.stop().await, "agent result");
    assert!(!alive(pid_b) && !alive(pid_c));
}
