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

/// Crashes restarted at once: every line of one process comes before the first of the next,
/// whole, even when the old pump still had output to write as its process ended (a restart
/// waits for it, see `logs::pump::drained`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_at_once_keeps_the_old_process_lines_first() {
    const RUNS: u32 = 10;
    const LINES: u32 = 30_000;
    let reaper = Reaper::default();
    let dir = tempdir();
    let count = dir.path().join("count");
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n8");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    // Each run writes LINES lines (about 1.2 MB stamped, more than the pipe holds) and crashes,
    // the last one stays. A 1 ms `min_uptime` makes every crash a stable one, restarted at once
    // (no backoff). Stamping every line keeps the old pump busy after its process ended.
    let line = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
         seq -f \"run $n line %g\" {LINES}; echo \"run $n bye\"; \
         [ $n -ge {RUNS} ] && exec sleep 30; exit 1",
        c = count.display()
    );
    let mut spec = sh_spec("order", &line);
    spec.log_timestamps = true;
    spec.min_uptime_ms = Some(1);
    // One file, never rotated, to read back whole.
    spec.log_max_bytes = Some(0);
    s.desired(1, vec![assignment("o", 0, &spec)]).await;
    let r = s
        .report_where("the last run online", |r| {
            is_state(r, "o", pb::InstanceState::Online)
                && instance(r, "o").is_some_and(|i| i.restarts == RUNS - 1)
        })
        .await;
    reaper.add(instance(&r, "o").map_or(0, |i| i.pid));
    let out = dir.path().join("logs").join("order-0-out.log");
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let last = format!("Z run {RUNS} bye");
    wait_until("the last run's last line", || read().contains(&last)).await;
    let text = read();
    let runs: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split_once("Z run ")?.1.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        runs.len(),
        (RUNS * (LINES + 1)) as usize,
        "every line once, whole"
    );
    assert!(
        runs.windows(2).all(|w| w[0] <= w[1]),
        "a line of an earlier run after one of a later run"
    );
    for n in 1..=RUNS {
        assert!(
            text.contains(&format!("Z run {n} bye\n")),
            "run {n}'s last line"
        );
    }
    must(agent.stop().await, "agent result");
}
