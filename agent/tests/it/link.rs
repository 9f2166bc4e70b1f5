//! The link: an unreachable coordinator at startup, a lost session, ALREADY_EXISTS while
//! reconnecting; the instances run on through all of it.

use std::time::Duration;

use pmcluster_proto::v1 as pb;
use tokio::net::TcpListener;

use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::{InProcessAgent, Reaper, alive, assignment, sh_spec, tempdir};

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
