//! Instances that ended for good across an agent restart, and a restart asked of one just as
//! the agent leaves.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;

use crate::binary::{Started, exit_of, lines_in, spawn_agent, start_agent, stderr_of};
use crate::fake::{instance, is_state, must};
use crate::{assignment, sh_spec, wait_until};

/// A restart asked of an instance that ended for good just as the agent detaches is carried
/// out, by this agent or by the next, as for a running one (see
/// `a_restart_asked_as_the_agent_detaches_is_not_lost`): the record left behind must not pair
/// the new restart epoch with the end, or the next agent keeps it ended under the epoch the
/// coordinator asks for, never runs it, and reports the restart as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_an_ended_instance_asked_as_the_agent_detaches_is_not_lost() {
    // Nothing to reap: its processes end on their own.
    let mut st = start_agent("detach-ended", &[]).await;
    let mut once = sh_spec("once", "echo once; exit 0");
    once.autorestart = Some(false);
    let mut a = assignment("once", 0, &once);
    st.session.desired(1, vec![a.clone()]).await;
    st.session
        .report_where("once exited", |r| {
            is_state(r, "once", pb::InstanceState::Exited)
        })
        .await;
    let runs = |data: &Path| lines_in(data, "once-0-out.log", "once");
    assert_eq!(runs(&st.data), 1);

    a.restart_epoch = 1;
    st.detach_with_pending(2, vec![a.clone()]).await;
    // Whichever came first: ended under epoch 0 (the restart is still to do), or under epoch 1
    // only once it ran again; not started under 1, no end.
    let record =
        std::fs::read_to_string(st.data.join("instances").join("once.json")).expect("a record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("a JSON record");
    let (epoch, ended) = (record["restart_epoch"].as_u64(), record.get("ended"));
    match (epoch, ended.is_some()) {
        (Some(0), true) | (Some(1), false) => {}
        // This agent ran it again before it detached.
        (Some(1), true) => wait_until("once ran again", || runs(&st.data) == 2).await,
        _ => panic!("{record}"),
    }

    let mut next = spawn_agent(st.dir.path(), &st.args);
    let (mut s, _) = st.coord.accept().await;
    s.registered(100).await;
    s.desired(3, vec![a]).await;
    s.report_where("once exited under epoch 1", |r| {
        instance(r, "once")
            .is_some_and(|i| i.state == pb::InstanceState::Exited as i32 && i.restart_epoch == 1)
    })
    .await;
    wait_until("once ran again", || runs(&st.data) == 2).await;
    for _ in 0..3 {
        s.report_where("a report", |r| r.generation == 3).await;
    }
    assert_eq!(runs(&st.data), 2, "{}", stderr_of(st.dir.path()));
    next.kill().await.ok();
}

/// `(state, restarts, message, pid)` of an instance in a report or a registration.
fn summary(instances: &[pb::InstanceStatus], id: &str) -> Option<(i32, u32, String, u32)> {
    instances
        .iter()
        .find(|i| i.instance_id == id)
        .map(|i| (i.state, i.restarts, i.message.clone(), i.pid))
}

/// Instances that ended for good (exited with autorestart off, errored after `max_restarts`)
/// are not started again by an agent restarted after a `kill -9`: it reports them as they were
/// (state, message, restarts) and leaves them down through the coordinator's same set; only a
/// restart asked since (a new epoch) runs them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_ended_for_good_stays_so_across_an_agent_restart() {
    // Nothing to reap: every process of theirs ends on its own.
    let Started {
        dir,
        mut coord,
        data,
        args,
        mut agent,
        session: mut s,
    } = start_agent("ended", &["--coordinator-grace", "60s"]).await;
    let mut crashing = sh_spec("cl", "echo dying; exit 1");
    crashing.max_restarts = Some(3);
    crashing.restart_delay_ms = 100;
    let mut once = sh_spec("once", "echo once; exit 0");
    once.autorestart = Some(false);
    let mut set = vec![assignment("cl", 0, &crashing), assignment("once", 0, &once)];
    let ended = |r: &pb::StatusReport| {
        is_state(r, "cl", pb::InstanceState::Errored)
            && is_state(r, "once", pb::InstanceState::Exited)
    };
    s.desired(1, set.clone()).await;
    let r = s.report_where("cl errored, once exited", ended).await;
    let cl = summary(&r.instances, "cl").expect("cl reported");
    let once_was = summary(&r.instances, "once").expect("once reported");
    assert_eq!(cl.1, 3, "{cl:?}");
    assert!(cl.2.starts_with("crashed 4 times"), "{cl:?}");
    assert!(once_was.2.contains("autorestart is off"), "{once_was:?}");
    let logs = || {
        (
            lines_in(&data, "cl-0-out.log", "dying"),
            lines_in(&data, "once-0-out.log", "once"),
        )
    };
    assert_eq!(logs(), (4, 1));

    must(agent.kill().await, "kill -9 the agent");
    let _ = agent.wait().await;
    drop(s);

    // The next agent registers them as they were, and keeps them so through the coordinator's
    // same set and a second of heartbeats (a crash loop restarts every 100-400 ms).
    let mut agent = spawn_agent(dir.path(), &args);
    let (mut s, register) = coord.accept().await;
    assert_eq!(summary(&register.instances, "cl"), Some(cl.clone()));
    assert_eq!(summary(&register.instances, "once"), Some(once_was.clone()));
    s.registered(100).await;
    s.desired(2, set.clone()).await;
    s.report_where("set 2 applied", |r| r.generation == 2).await;
    for _ in 0..10 {
        let r = s.report_where("a report", |r| r.generation == 2).await;
        assert_eq!(summary(&r.instances, "cl"), Some(cl.clone()));
        assert_eq!(summary(&r.instances, "once"), Some(once_was.clone()));
    }
    assert_eq!(logs(), (4, 1), "{}", stderr_of(dir.path()));

    // A restart of both (a new epoch) runs them again: once once more, cl a new crash loop.
    for a in &mut set {
        a.restart_epoch = 1;
    }
    s.desired(3, set).await;
    s.report_where("both ended again under epoch 1", |r| {
        ended(r) && r.instances.iter().filter(|i| i.restart_epoch == 1).count() == 2
    })
    .await;
    wait_until("the restarts ran", || logs() == (8, 2)).await;

    // An agent that detaches (SIGTERM) records them as ended again; the next one keeps them so.
    let r = s.report_where("a report", |r| ended(r)).await;
    let after_restart = summary(&r.instances, "cl").expect("cl reported");
    assert_eq!(after_restart.1, 7, "{after_restart:?}");
    let agent_pid = agent.id().expect("the agent's pid");
    must(
        kill(Pid::from_raw(agent_pid as i32), Signal::SIGTERM),
        "SIGTERM the agent",
    );
    let status = exit_of(&mut agent).await;
    assert_eq!(status.code(), Some(0), "{}", stderr_of(dir.path()));
    drop(s);
    let mut agent = spawn_agent(dir.path(), &args);
    let (_s, register) = coord.accept().await;
    assert_eq!(summary(&register.instances, "cl"), Some(after_restart));
    let once_now = summary(&register.instances, "once").map(|i| i.0);
    assert_eq!(
        once_now,
        Some(pb::InstanceState::Exited as i32),
        "{register:?}"
    );
    agent.kill().await.ok();
}
