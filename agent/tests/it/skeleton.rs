//! The walking skeleton: register, run a desired set, restart a killed instance, serve logs,
//! remove, stop/start/restart, spawn errors, ports.

use std::net::TcpListener;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;

use crate::fake::{FakeCoordinator, instance, is_state, must};
use crate::{InProcessAgent, Reaper, alive, assignment, group_alive, sh_spec, tempdir, wait_until};

const ONLINE: pb::InstanceState = pb::InstanceState::Online;

fn pid_of(report: &pb::StatusReport, id: &str) -> u32 {
    instance(report, id).map_or(0, |i| i.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_skeleton() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n1");
    let (mut s, register) = coord.accept().await;
    assert_eq!(register.node_name, "n1");
    assert_eq!(register.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(register.generation, 0);
    assert!(register.instances.is_empty());
    assert!(register.cores >= 1 && register.memory_bytes > 0);
    assert_eq!(register.labels.get("zone").map(String::as_str), Some("a"));
    s.registered(200).await;

    // Two instances; the shell stays the group leader and keeps forking `sleep`, so killing it
    // also tests that its leftovers go with it.
    let spec = sh_spec(
        "ticker",
        "echo hi from $PMCLUSTER_INSTANCE_ID; echo oops >&2; while :; do echo tick; sleep 0.2; done",
    );
    s.desired(
        1,
        vec![assignment("a", 0, &spec), assignment("b", 1, &spec)],
    )
    .await;
    let r = s
        .report_where("a and b online", |r| {
            r.generation == 1
                && is_state(r, "a", ONLINE)
                && is_state(r, "b", ONLINE)
                && pid_of(r, "a") != 0
                && pid_of(r, "b") != 0
        })
        .await;
    let (pid_a, pid_b) = (pid_of(&r, "a"), pid_of(&r, "b"));
    reaper.add(pid_a);
    reaper.add(pid_b);
    assert!(
        r.host
            .is_some_and(|h| h.cores >= 1 && h.memory_total_bytes > 0)
    );

    // kill -9 brings it back at once, counted as a restart.
    must(
        kill(Pid::from_raw(pid_a as i32), Signal::SIGKILL),
        "kill -9",
    );
    let r = s
        .report_where("a restarted", |r| {
            instance(r, "a").is_some_and(|i| {
                i.state == ONLINE as i32 && i.pid != 0 && i.pid != pid_a && i.restarts == 1
            })
        })
        .await;
    let pid_a2 = pid_of(&r, "a");
    reaper.add(pid_a2);
    wait_until("the killed instance's group is gone", || {
        !group_alive(pid_a)
    })
    .await;
    assert_eq!(
        instance(&r, "b").map(|i| (i.pid, i.restarts)),
        Some((pid_b, 0))
    );

    // Logs: history of both streams, labelled. "Online" comes at spawn, before the new process
    // has printed its first line, so ask again until its hi is in (request ids from 100 on,
    // apart from the ones below).
    let deadline = tokio::time::Instant::now() + crate::fake::DEADLINE;
    let mut request_id = 100;
    let lines = loop {
        s.send(Down::LogRequest(pb::LogRequest {
            request_id,
            instance_ids: vec!["a".into()],
            lines: 1000,
            follow: false,
            no_history: false,
        }))
        .await;
        let (lines, error) = s.logs_until_eof(request_id).await;
        assert_eq!(error, "");
        let his = lines.iter().filter(|l| l.line == "hi from 0").count();
        if his >= 2 || tokio::time::Instant::now() >= deadline {
            break lines;
        }
        request_id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let his: Vec<&pb::LogLine> = lines.iter().filter(|l| l.line == "hi from 0").collect();
    assert_eq!(his.len(), 2, "one hi per start: {lines:?}");
    assert!(his.iter().all(|l| l.app == "ticker"
        && l.index == 0
        && l.node == "n1"
        && l.stream == pb::LogStream::Stdout as i32));
    assert!(
        lines
            .iter()
            .any(|l| l.line == "oops" && l.stream == pb::LogStream::Stderr as i32)
    );
    // Default of 20 lines per stream.
    s.send(Down::LogRequest(pb::LogRequest {
        request_id: 2,
        instance_ids: vec!["b".into()],
        lines: 0,
        follow: false,
        no_history: false,
    }))
    .await;
    let (lines, _) = s.logs_until_eof(2).await;
    assert!(!lines.is_empty() && lines.len() <= 40, "{}", lines.len());

    // Unknown instance.
    s.send(Down::LogRequest(pb::LogRequest {
        request_id: 3,
        instance_ids: vec!["nope".into()],
        lines: 5,
        follow: false,
        no_history: false,
    }))
    .await;
    let (lines, error) = s.logs_until_eof(3).await;
    assert!(lines.is_empty());
    assert!(
        error.contains("unknown instance") && error.contains("nope"),
        "{error}"
    );

    // Follow: history, then new lines as they are written, until cancelled.
    s.send(Down::LogRequest(pb::LogRequest {
        request_id: 4,
        instance_ids: vec!["b".into()],
        lines: 1,
        follow: true,
        no_history: false,
    }))
    .await;
    let mut chunks = 0;
    s.wait_for("followed lines", |m| {
        if let Up::LogChunk(c) = m
            && c.request_id == 4
        {
            assert!(!c.eof, "follow ended early: {c:?}");
            if c.lines.iter().any(|l| l.line == "tick") {
                chunks += 1;
            }
        }
        (chunks >= 3).then_some(())
    })
    .await;
    s.send(Down::CancelLogs(pb::CancelLogs { request_id: 4 }))
        .await;
    let (_, error) = s.logs_until_eof(4).await;
    assert_eq!(error, "");

    // Leaving the set: stopped and forgotten.
    s.desired(2, vec![assignment("b", 1, &spec)]).await;
    s.report_where("a gone", |r| {
        r.generation == 2 && instance(r, "a").is_none()
    })
    .await;
    assert!(!alive(pid_a2), "removed instance's process is gone");
    wait_until("removed instance's group is gone", || !group_alive(pid_a2)).await;

    // A stale set changes nothing.
    s.desired(
        1,
        vec![assignment("a", 0, &spec), assignment("b", 1, &spec)],
    )
    .await;
    let mut reports = 0;
    s.report_where("three reports after the stale set", |r| {
        assert_eq!(r.generation, 2);
        assert!(instance(r, "a").is_none(), "stale set applied: {r:?}");
        reports += 1;
        reports >= 3
    })
    .await;

    // Agent shutdown stops everything.
    must(agent.stop().await, "agent result");
    assert!(!alive(pid_b));
    wait_until("b's group is gone", || !group_alive(pid_b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_and_errors() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n2");
    let (mut s, _) = coord.accept().await;
    s.registered(0).await;
    let spec = sh_spec("sleeper", "exec sleep 30");
    let mut b = assignment("b", 0, &spec);

    // Created stopped: reported STOPPED, nothing runs.
    b.run = false;
    s.desired(1, vec![b.clone()]).await;
    s.report_where("b stopped", |r| {
        is_state(r, "b", pb::InstanceState::Stopped) && pid_of(r, "b") == 0
    })
    .await;

    b.run = true;
    s.desired(2, vec![b.clone()]).await;
    let r = s
        .report_where("b online", |r| {
            is_state(r, "b", ONLINE) && pid_of(r, "b") != 0
        })
        .await;
    let pid1 = pid_of(&r, "b");
    reaper.add(pid1);

    // Re-applying the same generation is idempotent.
    s.desired(2, vec![b.clone()]).await;
    // Stop it.
    b.run = false;
    s.desired(3, vec![b.clone()]).await;
    let r = s
        .report_where("b stopped again", |r| {
            r.generation == 3 && is_state(r, "b", pb::InstanceState::Stopped)
        })
        .await;
    assert_eq!(pid_of(&r, "b"), 0);
    assert!(!alive(pid1), "stopped instance's process is gone");

    // Start it.
    b.run = true;
    s.desired(4, vec![b.clone()]).await;
    let r = s
        .report_where("b online after start", |r| {
            is_state(r, "b", ONLINE) && pid_of(r, "b") != 0
        })
        .await;
    let pid2 = pid_of(&r, "b");
    reaper.add(pid2);
    assert_ne!(pid1, pid2);

    // Restart via the epoch.
    b.restart_epoch = 1;
    s.desired(5, vec![b.clone()]).await;
    let r = s
        .report_where("b restarted by epoch", |r| {
            instance(r, "b").is_some_and(|i| {
                i.state == ONLINE as i32 && i.restart_epoch == 1 && i.pid != 0 && i.pid != pid2
            })
        })
        .await;
    let pid3 = pid_of(&r, "b");
    reaper.add(pid3);
    assert!(!alive(pid2));

    // A new version number alone keeps the process (a rollback to the process it runs)...
    b.app_version = 2;
    s.desired(6, vec![b.clone()]).await;
    s.report_where("set 6 applied, b kept", |r| {
        r.generation >= 6 && is_state(r, "b", ONLINE) && pid_of(r, "b") == pid3
    })
    .await;
    // ... and a new version with another process restarts it.
    b.app_version = 3;
    b.spec = Some(sh_spec("sleeper", "exec sleep 31"));
    s.desired(7, vec![b.clone()]).await;
    let r = s
        .report_where("b restarted by a new process", |r| {
            is_state(r, "b", ONLINE) && pid_of(r, "b") != pid3 && pid_of(r, "b") != 0
        })
        .await;
    reaper.add(pid_of(&r, "b"));
    assert!(!alive(pid3));

    // A program that cannot run: ERRORED with a clear message, the others unaffected.
    let bad = pb::AppSpec {
        name: "typo".into(),
        script: "pmcluster-no-such-program".into(),
        instances: 1,
        ..Default::default()
    };
    let invalid = pb::AppSpec {
        name: "invalid".into(),
        ..Default::default()
    };
    s.desired(
        8,
        vec![
            b.clone(),
            assignment("c", 0, &bad),
            assignment("d", 0, &invalid),
        ],
    )
    .await;
    let r = s
        .report_where("c and d errored", |r| {
            is_state(r, "c", pb::InstanceState::Errored)
                && is_state(r, "d", pb::InstanceState::Errored)
        })
        .await;
    let c = instance(&r, "c")
        .map(|i| i.message.clone())
        .unwrap_or_default();
    // The reason, then when the agent tries again.
    assert!(
        c.starts_with(
            "cannot run \"pmcluster-no-such-program\": No such file or directory; retrying in"
        ),
        "{c}"
    );
    let d = instance(&r, "d")
        .map(|i| i.message.clone())
        .unwrap_or_default();
    assert!(d.contains("script"), "{d}");
    assert!(is_state(&r, "b", ONLINE));

    must(agent.stop().await, "agent result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_fixed_and_auto() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n3");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;

    // Fixed port: LAUNCHING until something listens on it, then ONLINE.
    let fixed_port = {
        let l = must(TcpListener::bind("127.0.0.1:0"), "bind");
        must(l.local_addr(), "addr").port()
    };
    let mut fixed_spec = sh_spec("fixed", "echo port=$PORT; exec sleep 30");
    fixed_spec.port = fixed_port.to_string();
    let mut fixed = assignment("f", 0, &fixed_spec);
    fixed.port = u32::from(fixed_port);

    // Auto: the range's first port is busy, so the agent must pick another.
    let busy = must(TcpListener::bind("127.0.0.1:0"), "bind");
    let busy_port = must(busy.local_addr(), "addr").port();
    let hi = busy_port.saturating_add(40);
    let mut auto_spec = sh_spec("auto", "echo port=$PORT; exec sleep 30");
    auto_spec.port = format!("auto:{busy_port}-{hi}");
    let auto = assignment("u", 0, &auto_spec);

    s.desired(1, vec![fixed, auto]).await;
    let r = s
        .report_where("both launching with ports", |r| {
            // Started (a pid): a start still waiting for its port is launching too.
            is_state(r, "f", pb::InstanceState::Launching)
                && instance(r, "f").is_some_and(|i| i.pid != 0)
                && is_state(r, "u", pb::InstanceState::Launching)
                && instance(r, "u").is_some_and(|i| i.port != 0 && i.pid != 0)
        })
        .await;
    reaper.add(pid_of(&r, "f"));
    reaper.add(pid_of(&r, "u"));
    assert_eq!(
        instance(&r, "f").map(|i| i.port),
        Some(u32::from(fixed_port))
    );
    let auto_port = instance(&r, "u").map_or(0, |i| i.port);
    assert!(
        auto_port > u32::from(busy_port) && auto_port <= u32::from(hi),
        "auto port {auto_port} for range {busy_port}-{hi}"
    );

    // Something listens: ONLINE.
    let _fixed_listener = must(TcpListener::bind(("127.0.0.1", fixed_port)), "bind fixed");
    let _auto_listener = must(
        TcpListener::bind(("127.0.0.1", auto_port as u16)),
        "bind auto",
    );
    s.report_where("both online", |r| {
        is_state(r, "f", ONLINE) && is_state(r, "u", ONLINE)
    })
    .await;

    // The instance saw its port in $PORT.
    s.send(Down::LogRequest(pb::LogRequest {
        request_id: 9,
        instance_ids: vec!["f".into(), "u".into()],
        lines: 5,
        follow: false,
        no_history: false,
    }))
    .await;
    let (lines, error) = s.logs_until_eof(9).await;
    assert_eq!(error, "");
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert!(
        texts.contains(&format!("port={fixed_port}").as_str()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&format!("port={auto_port}").as_str()),
        "{texts:?}"
    );
    drop(busy);

    must(agent.stop().await, "agent result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_and_autorestart_off_stays_down() {
    let dir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n5");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let crasher = sh_spec("crasher", "exit 3");
    let mut once = sh_spec("once", "exit 4");
    once.autorestart = Some(false);
    let started = tokio::time::Instant::now();
    s.desired(
        1,
        vec![assignment("c", 0, &crasher), assignment("o", 0, &once)],
    )
    .await;
    let r = s
        .report_where("c restarted 4 times, o down for good", |r| {
            instance(r, "c").is_some_and(|i| i.restarts >= 4 && i.last_exit_code == Some(3))
                && is_state(r, "o", pb::InstanceState::Exited)
        })
        .await;
    // Without backoff a crash loop restarts hundreds of times a second; with it, 4 restarts take
    // at least 0 + 100 + 200 ms of waiting.
    let restarts = instance(&r, "c").map_or(0, |i| i.restarts);
    assert!(
        restarts < 20,
        "{restarts} restarts in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let o = instance(&r, "o").cloned().unwrap_or_default();
    assert_eq!(o.last_exit_code, Some(4));
    assert_eq!(o.restarts, 0);
    assert_eq!(o.message, "exited with code 4; autorestart is off");
    must(agent.stop().await, "agent result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_cwd_and_log_chunks() {
    let reaper = Reaper::default();
    let dir = tempdir();
    let workdir = tempdir();
    let mut coord = FakeCoordinator::start().await;
    let agent = InProcessAgent::start(&coord.url, dir.path(), "n6");
    let (mut s, _) = coord.accept().await;
    s.registered(100).await;
    let mut spec = sh_spec(
        "chatty",
        "echo cwd=$(pwd); echo env=$GREETING/$PMCLUSTER_INSTANCE_ID/$NODE_APP_INSTANCE/$PMCLUSTER_APP; \
         i=0; while [ $i -lt 1200 ]; do echo line $i; i=$((i+1)); done; exec sleep 30",
    );
    spec.cwd = workdir.path().to_string_lossy().into_owned();
    spec.env
        .insert("GREETING".into(), "hello-${INSTANCE_ID}".into());
    spec.instances = 3;
    let mut nowhere = sh_spec("nowhere", "exec sleep 30");
    nowhere.cwd = "/nonexistent/pmcluster-cwd".into();
    s.desired(
        1,
        vec![assignment("w", 2, &spec), assignment("x", 0, &nowhere)],
    )
    .await;
    let r = s
        .report_where("w online, x errored", |r| {
            is_state(r, "w", ONLINE) && is_state(r, "x", pb::InstanceState::Errored)
        })
        .await;
    reaper.add(pid_of(&r, "w"));
    let x = instance(&r, "x")
        .map(|i| i.message.clone())
        .unwrap_or_default();
    assert!(
        x.starts_with("cwd \"/nonexistent/pmcluster-cwd\": No such file or directory; retrying in"),
        "{x}"
    );

    // Ask until the whole output is there (the instance may still be writing).
    let deadline = tokio::time::Instant::now() + crate::fake::DEADLINE;
    let mut request_id = 100;
    let lines = loop {
        request_id += 1;
        s.send(Down::LogRequest(pb::LogRequest {
            request_id,
            instance_ids: vec!["w".into()],
            lines: 1100,
            follow: false,
            no_history: false,
        }))
        .await;
        let mut sizes = Vec::new();
        s.wait_for("log chunks", |m| match m {
            Up::LogChunk(c) if c.request_id == request_id => {
                sizes.push(c.lines.len());
                c.eof.then_some(())
            }
            _ => None,
        })
        .await;
        assert!(sizes.iter().all(|n| *n <= 500), "chunk sizes {sizes:?}");
        let (lines, error) = s.logs_until_eof(request_id).await;
        assert_eq!(error, "");
        assert_eq!(lines.len(), sizes.iter().sum::<usize>());
        if lines.iter().any(|l| l.line == "line 1199") {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "output never completed"
        );
    };
    // 1100 stdout lines asked for: the last 1100 of 1202.
    assert_eq!(lines.len(), 1100);
    assert_eq!(lines.first().map(|l| l.line.as_str()), Some("line 100"));
    let cwd = must(workdir.path().canonicalize(), "canonicalize");
    // The first two lines fell out of the window; read them with a bigger one.
    request_id += 1;
    s.send(Down::LogRequest(pb::LogRequest {
        request_id,
        instance_ids: vec!["w".into()],
        lines: 2000,
        follow: false,
        no_history: false,
    }))
    .await;
    let (all, _) = s.logs_until_eof(request_id).await;
    let texts: Vec<&str> = all.iter().map(|l| l.line.as_str()).collect();
    assert!(
        texts.contains(&format!("cwd={}", cwd.display()).as_str()),
        "{:?}",
        &texts[..3]
    );
    assert!(
        texts.contains(&"env=hello-2/2/2/chatty"),
        "{:?}",
        &texts[..3]
    );
    must(agent.stop().await, "agent result");
}
