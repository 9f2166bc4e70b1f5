//! Issue 11, clients: `--coordinator` lists for the CLI and agents, against a fake standby that
//! refuses everything and names the real coordinator as its leader (see `FakeStandby`), and
//! against addresses nothing listens on.

use std::time::{Duration, Instant};

use pmcluster_tests::{CLI_TIMEOUT, Cluster, FakeStandby, wait_until};

use crate::{DEADLINE, wait_online};

/// `http://127.0.0.1:PORT` on a port that was free a moment ago: nothing answers there.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds a loopback port");
    let addr = listener.local_addr().expect("has an address");
    format!("http://{addr}")
}

#[test]
fn cli_reaches_the_leader_through_a_standby_or_a_dead_address() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let standby = FakeStandby::start(Some(&c.url())).expect("fake standby starts");
    let dead = dead_url();
    c.start_app("web", 1).ports(3).online().expect("web starts");

    // The standby first: its refusal names the leader, where the call is retried.
    let list = format!("{},{dead}", standby.url());
    let out = c
        .try_cli_at(&list, &["scale", "web", "3"], CLI_TIMEOUT)
        .expect("the CLI runs");
    out.assert_ok();
    assert!(out.stdout.contains("scaled web: 1 -> 3"), "{out}");
    assert!(standby.refused() >= 1, "the standby was not asked first");
    wait_online(&c, "web", 3);

    // A dead address first: the next URL of the list (the standby, then its leader).
    let list = format!("{dead},{}", standby.url());
    let before = standby.refused();
    let started = Instant::now();
    let out = c
        .try_cli_at(&list, &["list", "web", "-o", "json"], CLI_TIMEOUT)
        .expect("the CLI runs");
    let took = started.elapsed();
    out.assert_ok();
    let listed = out.json().expect("list prints JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{out}");
    assert!(standby.refused() > before, "the standby was not asked");
    eprintln!("list through a dead address and a standby took {took:?}");
}

#[test]
fn cli_names_every_coordinator_it_tried() {
    let c = Cluster::start(0).expect("coordinator starts");
    let (dead1, dead2) = (dead_url(), dead_url());
    // A standby that knows no leader refuses without a hint: the list goes on.
    let lost = FakeStandby::start(None).expect("fake standby starts");
    let list = format!("{dead1},{},{dead2}", lost.url());
    let out = c
        .try_cli_at(&list, &["list"], CLI_TIMEOUT)
        .expect("the CLI runs");
    let err = out.assert_failed();
    assert_eq!(out.code(), Some(1), "{out}");
    // Each named once; those that gave the same answer together ("A and B said: ...").
    for url in [&dead1, lost.url(), &dead2] {
        let named =
            err.matches(&format!("{url}: ")).count() + err.matches(&format!("{url} ")).count();
        assert_eq!(named, 1, "{url} not named once: {err}");
    }
    assert!(
        err.contains("the leader is unknown") && err.contains("cannot reach it"),
        "{err}"
    );

    // A bad item is refused before any dial, naming the flag and the item.
    let out = c
        .try_cli_at(&format!("{dead1},,{dead2}"), &["list"], CLI_TIMEOUT)
        .expect("the CLI runs");
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--coordinator: item 2 of"), "{out}");
}

/// Seconds since midnight of a tracing log line (`2026-01-02T03:04:05.123456Z  INFO ...`).
fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// From the agent's "agent starting" to its registration, by the agent's own log.
fn time_to_register(log: &str, leader: &str) -> Option<Duration> {
    let started = log.lines().find(|l| l.contains("agent starting"))?;
    let registered = log
        .lines()
        .find(|l| l.contains(&format!("registered with the coordinator at {leader}")))?;
    let secs = log_time(registered)? - log_time(started)?;
    Duration::try_from_secs_f64(secs).ok()
}

#[test]
fn agents_reach_the_leader_through_a_standby_without_backoff() {
    let mut c = Cluster::start(0).expect("coordinator starts");
    let standby = FakeStandby::start(Some(&c.url())).expect("fake standby starts");
    let dead = dead_url();
    let a = c
        .add_agent_at("node-a", standby.url())
        .expect("agent a starts");
    let b = c
        .add_agent_at("node-b", &format!("{dead},{}", standby.url()))
        .expect("agent b starts");
    c.wait_ready(&["node-a", "node-b"], DEADLINE)
        .expect("both agents register with the leader");
    assert!(
        standby.refused() >= 2,
        "the standby refused {}",
        standby.refused()
    );
    for (idx, path) in [(a, "standby"), (b, "dead address, standby")] {
        // The node is ready on the coordinator a moment before the agent logs it.
        let what = format!("agent {idx} ({path}) to log its registration");
        let (took, log) = wait_until(DEADLINE, &what, || {
            let log = c.agent(idx).stderr();
            match time_to_register(&log, &c.url()) {
                Some(took) => Ok((took, log)),
                None => Err(log),
            }
        });
        // A backoff says "retrying" or "reconnecting ... in"; neither may come before the leader.
        assert!(
            !log.contains("retrying") && !log.contains("reconnecting"),
            "agent {idx} ({path}) backed off:\n{log}"
        );
        eprintln!("agent via {path}: registered {took:?} after starting");
        // The first backoff alone is 100 ms and a full round of them seconds; following hints
        // is a few dials on loopback.
        assert!(
            took < Duration::from_secs(2),
            "agent {idx} ({path}) took {took:?}:\n{log}"
        );
    }
}
