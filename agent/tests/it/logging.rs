//! Log modes: timestamps (pipes pumped by the agent) and merged stdout/stderr (one file).

use pmcluster_proto::v1 as pb;

use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::{InProcessAgent, Reaper, assignment, sh_spec, tempdir, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_and_merged_logs() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n7");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let line = "echo to-out; echo to-err >&2; exec sleep 30";
    let mut stamped = sh_spec("stamped", line);
    stamped.log_timestamps = true;
    let mut merged = sh_spec("merged", line);
    merged.merge_logs = true;
    let mut both = sh_spec("both", line);
    both.merge_logs = true;
    both.log_timestamps = true;
    s.desired(
        1,
        vec![
            assignment("s", 0, &stamped),
            assignment("m", 0, &merged),
            assignment("b", 0, &both),
        ],
    )
    .await;
    let r = s
        .report_where("all online", |r| {
            ["s", "m", "b"]
                .iter()
                .all(|id| is_state(r, id, pb::InstanceState::Online))
        })
        .await;
    for id in ["s", "m", "b"] {
        reaper.add(instance(&r, id).map_or(0, |i| i.pid));
    }
    let logs = dir.path().join("logs");
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    wait_until("every line written", || {
        read("stamped-0-out.log").contains("to-out")
            && read("stamped-0-err.log").contains("to-err")
            && read("merged-0-out.log").contains("to-err")
            && read("both-0-out.log").contains("to-err")
            && read("both-0-out.log").contains("to-out")
    })
    .await;
    // "2026-11-23T12:34:56.789Z to-out": an RFC 3339 stamp, then the line.
    let stamped_line = |text: &str, want: &str| {
        text.lines().any(|l| {
            l.ends_with(&format!("Z {want}"))
                && l.len() == 25 + want.len()
                && l.as_bytes()[10] == b'T'
        })
    };
    assert!(
        stamped_line(&read("stamped-0-out.log"), "to-out"),
        "{}",
        read("stamped-0-out.log")
    );
    assert!(stamped_line(&read("stamped-0-err.log"), "to-err"));
    assert!(stamped_line(&read("both-0-out.log"), "to-err"));
    assert_eq!(
        read("merged-0-out.log").lines().count(),
        2,
        "{}",
        read("merged-0-out.log")
    );
    assert!(!logs.join("merged-0-err.log").exists());
    assert!(!logs.join("both-0-err.log").exists());
    assert!(
        !read("merged-0-out.log").contains('Z'),
        "no stamps without log_timestamps"
    );
    must(agent.stop().await, "agent result");
}
