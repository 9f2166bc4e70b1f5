//! A restart asked of an instance that ended for good just as the agent leaves (how such
//! instances stay so across an agent restart: `binary::what_ended_for_good_stays_so_...`).

use std::path::Path;

use pmcluster_proto::v1 as pb;

use crate::binary::{lines_in, spawn_agent, start_agent, stderr_of};
use crate::fake::{instance, is_state};
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
