//! Issue 11: the HA pair on etcd. Two real coordinators (`--store etcd --lease-ttl 4s`) on the
//! harness's own etcd, real agents given both URLs, the real CLI given both URLs.
//!
//! Without an `etcd` binary these report a skip (CI installs Debian's `etcd-server` and
//! requires them to run).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmcluster_proto::v1 as pb;
use pmcluster_tests::{Etcd, Instance, Pair, wait_until};

use crate::{DEADLINE, wait_online};

/// The lease TTL the pair runs with (the harness passes `--lease-ttl 4s`: long enough that a
/// loaded CI machine does not starve a keep-alive past two thirds of it).
const TTL: Duration = Duration::from_secs(4);

fn pids(list: &[Instance]) -> BTreeMap<u32, u32> {
    list.iter()
        .filter_map(|i| i.pid.map(|p| (i.index, p)))
        .collect()
}

/// A one-shot tokio runtime for the tests' raw gRPC calls.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `Scale` sent straight to `url` (no failover): the status, or the reply.
fn raw_scale(url: &str, app: &str, count: u32) -> Result<(), tonic::Status> {
    rt().block_on(async {
        let mut client = pb::cluster_client::ClusterClient::connect(url.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client
            .scale(pb::ScaleRequest {
                app: app.to_string(),
                instances: i64::from(count),
            })
            .await
            .map(|_| ())
    })
}

#[test]
fn ha_a_standby_refuses_with_the_leaders_url_and_status_shows_both() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let pair = Pair::start(etcd, 1, &[]).expect("the pair and one agent start");
    let leader = pair.wait_leader(DEADLINE).expect("a leader");
    let standby = 1 - leader;

    // Status, from either, names both: one leader, one standby, the agent on the leader.
    let status = pair
        .status(Some(standby))
        .expect("the standby answers status");
    let coordinators = status["coordinators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(coordinators.len(), 2, "{status}");
    let roles: BTreeSet<(String, String)> = coordinators
        .iter()
        .map(|c| {
            (
                c["advertise"].as_str().unwrap_or_default().to_string(),
                c["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(pair.url(leader), "leader".into())),
        "{status}"
    );
    assert!(
        roles.contains(&(pair.url(standby), "standby".into())),
        "{status}"
    );
    assert_eq!(status["store"]["kind"], "etcd", "{status}");
    assert_eq!(status["store"]["healthy"], true, "{status}");

    // A raw call to the standby: UNAVAILABLE, naming the leader in the metadata.
    let refused = raw_scale(&pair.url(standby), "nothing", 1).expect_err("the standby refuses");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let hint = refused
        .metadata()
        .get(pmcluster_proto::LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(hint, Some(pair.url(leader)), "{refused:?}");

    // Its health says NOT_SERVING for the Cluster service; the leader's says SERVING.
    let health = |url: String| {
        rt().block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .expect("a URL")
                .connect()
                .await
                .expect("connects");
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let reply = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "pmcluster.v1.Cluster".into(),
                })
                .await
                .expect("health answers");
            reply.into_inner().status
        })
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    wait_until(DEADLINE, "the standby NOT_SERVING", || {
        let s = health(pair.url(standby));
        if s == ServingStatus::NotServing as i32 {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    });
    assert_eq!(health(pair.url(leader)), ServingStatus::Serving as i32);

    // The CLI given only the standby gets through to the leader.
    let out = pair
        .cluster()
        .try_cli_at(&pair.url(standby), &["nodes", "-o", "json"], DEADLINE)
        .expect("the CLI runs");
    out.assert_ok();
    assert!(out.stdout.contains("node-a"), "{out}");

    // Tokens live in the shared store: one made through the pair works given only the
    // standby (which sends the call to the leader) and keeps its role there.
    let made = pair
        .cluster()
        .try_cli(&["token", "create", "--role", "read", "-o", "json"])
        .expect("the CLI runs");
    let token = made.json().expect("json")["secret"]
        .as_str()
        .expect("a secret")
        .to_string();
    let via_standby = |args: &[&str]| {
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        pair.cluster()
            .try_cli_at(&pair.url(standby), &all, DEADLINE)
            .expect("the CLI runs")
    };
    let me = via_standby(&["whoami"]);
    assert!(me.assert_ok().stdout.contains("(role read)"), "{me}");
    let err = via_standby(&["scale", "nothing", "1"]);
    assert!(err.assert_failed().contains("needs role operate"), "{err}");
}

#[test]
fn ha_kill_9_of_the_leader_during_a_rollout_and_a_scale_loop_restarts_nothing() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let mut pair = Pair::start(etcd, 3, &[]).expect("the pair and three agents start");
    let c = pair.cluster();
    c.start_app("steady", 3).online().expect("steady starts");
    c.start_app("web", 3)
        .auto_ports(12)
        .online()
        .expect("web starts");
    let steady = pids(&wait_online(c, "steady", 3));

    // 1. During a rolling restart of web.
    let first = pair.wait_leader(DEADLINE).expect("a leader");
    // A new version, rolled out one instance at a time, each online 5 s before the next.
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"])
        .assert_ok();
    wait_until(DEADLINE, "the rollout under way", || {
        let v = c
            .cli(&["rollout", "status", "web", "-o", "json"])
            .json()
            .map_err(|e| e.to_string())?;
        if v["state"] == "running" && v["done"].as_u64().is_some_and(|d| d < 3) {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    pair.kill(first);
    let took = pair
        .wait_leads(1 - first, DEADLINE)
        .expect("the standby takes over");
    eprintln!("kill -9 of the leader during a rollout: the standby led after {took:?}");
    // The lease, not an operator, moved the leadership: well within a few TTLs (the figure
    // itself is scripts/bench-ha.sh's to measure).
    assert!(
        took <= TTL * 3,
        "the standby led only after {took:?} (lease TTL {TTL:?})"
    );
    let out = c
        .try_cli_timeout(
            &["rollout", "status", "web", "--wait"],
            Duration::from_secs(180),
        )
        .expect("rollout status runs");
    out.assert_ok();
    wait_online(c, "web", 3);
    assert_eq!(
        pids(&wait_online(c, "steady", 3)),
        steady,
        "an instance of steady was restarted by the failover"
    );

    // 2. During a loop of scale calls: the killed one comes back as the standby first.
    pair.spawn(first).expect("the old leader restarts");
    let second = pair.wait_leader(DEADLINE).expect("a leader");
    assert_eq!(
        second,
        1 - first,
        "a restarted coordinator must not take over"
    );
    let c = pair.cluster();
    c.start_app("looped", 1)
        .ports(8)
        .online()
        .expect("looped starts");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let (cli, urls) = (c.bins().cli.clone(), pair.urls());
    let looper = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            // Bounded: at most 400 calls and 120 s.
            let end = Instant::now() + Duration::from_secs(120);
            for n in 0..400u32 {
                if stop.load(Ordering::Relaxed) || Instant::now() > end {
                    break;
                }
                let count = 1 + n % 8;
                let out = std::process::Command::new(&cli)
                    .args([
                        "--coordinator",
                        &urls,
                        "scale",
                        "looped",
                        &count.to_string(),
                    ])
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    acked.lock().unwrap_or_else(|e| e.into_inner()).push(count);
                }
            }
        })
    };
    wait_until(DEADLINE, "a few acknowledged scales", || {
        let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n >= 5 { Ok(()) } else { Err(format!("{n}")) }
    });
    pair.kill(second);
    pair.wait_leads(first, DEADLINE)
        .expect("the other takes over");
    let before = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    wait_until(DEADLINE, "scales acknowledged by the new leader", || {
        let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n >= before + 5 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = looper.join();
    let last = *acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .expect("scales were acknowledged");
    // Every acknowledged write is there: the last one holds.
    let c = pair.cluster();
    wait_online(c, "looped", last as usize);
    assert_eq!(
        pids(&wait_online(c, "steady", 3)),
        steady,
        "an instance of steady was restarted by the second failover"
    );
}

/// Every (app, index) with more than one live process among the agents' children.
fn doubled(pair: &Pair) -> Vec<String> {
    let mut seen: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
    for pid in pair.cluster().agent_children().into_keys() {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        if let (Some(app), Some(index)) = (vars.get("PMCLUSTER_APP"), vars.get("NODE_APP_INSTANCE"))
        {
            seen.entry((app.clone(), index.clone()))
                .or_default()
                .push(pid);
        }
    }
    seen.into_iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|((app, index), pids)| format!("{app}[{index}] runs as {pids:?}"))
        .collect()
}

#[test]
fn ha_a_leader_stopped_past_its_lease_steps_down_and_its_writes_are_refused() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let pair = Pair::start(etcd, 2, &[]).expect("the pair and two agents start");
    let c = pair.cluster();
    c.start_app("s", 4).ports(8).online().expect("s starts");
    let before = pids(&wait_online(c, "s", 4));
    let old = pair.wait_leader(DEADLINE).expect("a leader");

    // Sample, every 100 ms, that no index runs twice.
    let violations = std::sync::Mutex::new(Vec::new());
    let samples = std::sync::atomic::AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let end = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Relaxed) && Instant::now() < end {
                let twice = doubled(&pair);
                samples.fetch_add(1, Ordering::Relaxed);
                if !twice.is_empty() {
                    violations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(twice);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        pair.signal(old, Signal::SIGSTOP);
        let took = pair.wait_leads(1 - old, DEADLINE);
        // A write through both URLs lands on the new leader while the old one is frozen.
        let scaled = took.is_ok()
            && match c.try_cli(&["scale", "s", "5"]) {
                Ok(o) if o.success() => true,
                other => {
                    eprintln!("scale while the old leader is stopped: {other:?}");
                    false
                }
            };
        pair.signal(old, Signal::SIGCONT);
        // Straight to the old leader, right after it wakes: every write is refused (by the
        // fence, or by the standby it became), none lands.
        let mut refused = 0;
        for _ in 0..5 {
            match raw_scale(&pair.url(old), "s", 9) {
                Err(s) if s.code() == tonic::Code::Unavailable => refused += 1,
                other => eprintln!("a write to the stopped leader: {other:?}"),
            }
        }
        eprintln!("writes to the old leader after SIGCONT: {refused} of 5 refused");
        done.store(true, Ordering::Relaxed);
        took.expect("the standby takes over while the leader is stopped");
        assert!(
            scaled,
            "a scale through both URLs failed while the old leader was stopped"
        );
        assert_eq!(refused, 5, "the deposed leader accepted writes");
    });
    let v = violations.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(v.is_empty(), "an index ran twice: {v:?}");
    assert!(samples.into_inner() > 5, "too few samples");
    wait_until(DEADLINE, "the old leader saying it stepped down", || {
        let log = pair.stderr(old);
        if log.contains("stepping down") {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
    assert_eq!(
        pair.leader(),
        Some(1 - old),
        "the old leader took over again"
    );
    let after = wait_online(c, "s", 5);
    for (index, pid) in &before {
        assert_eq!(
            pids(&after).get(index),
            Some(pid),
            "s[{index}] was restarted"
        );
    }
}

#[test]
fn ha_without_etcd_quorum_writes_are_refused_and_instances_keep_running() {
    let Some(etcd) = Etcd::cluster_or_skip(3) else {
        return;
    };
    let mut pair = Pair::start(etcd, 1, &[]).expect("the pair and one agent start");
    pair.cluster()
        .start_app("q", 2)
        .ports(4)
        .online()
        .expect("q starts");
    let before = pids(&wait_online(pair.cluster(), "q", 2));

    pair.etcd_mut().kill(1).expect("member 1 stops");
    pair.etcd_mut().kill(2).expect("member 2 stops");
    wait_until(DEADLINE, "writes refused with a clear error", || {
        let out = pair
            .cluster()
            .try_cli(&["scale", "q", "3"])
            .map_err(|e| e.to_string())?;
        if !out.success() {
            Ok(out.stderr)
        } else {
            Err(format!("accepted: {out}"))
        }
    });
    let out = pair
        .cluster()
        .try_cli(&["scale", "q", "3"])
        .expect("the CLI runs");
    let err = out.assert_failed();
    assert!(
        err.contains("etcd") || err.contains("no leader") || err.contains("standby"),
        "the refusal does not say why: {err}"
    );
    // The agent keeps every instance running meanwhile.
    for pid in before.values() {
        assert!(pmcluster_tests::pid_alive(*pid), "instance pid {pid} died");
    }

    pair.etcd_mut().restart(1).expect("member 1 returns");
    pair.etcd_mut().restart(2).expect("member 2 returns");
    wait_until(Duration::from_secs(60), "writes accepted again", || {
        let out = pair
            .cluster()
            .try_cli(&["scale", "q", "3"])
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    let after = pids(&wait_online(pair.cluster(), "q", 3));
    for (index, pid) in &before {
        assert_eq!(after.get(index), Some(pid), "q[{index}] was restarted");
    }
}

#[test]
fn ha_sigterm_of_the_leader_hands_over_at_once() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let pair = Pair::start(etcd, 1, &[]).expect("the pair and one agent start");
    pair.cluster()
        .start_app("t", 2)
        .ports(4)
        .online()
        .expect("t starts");
    let before = pids(&wait_online(pair.cluster(), "t", 2));
    let leader = pair.wait_leader(DEADLINE).expect("a leader");
    pair.signal(leader, Signal::SIGTERM);
    let took = pair
        .wait_leads(1 - leader, DEADLINE)
        .expect("the standby takes over");
    eprintln!("SIGTERM of the leader: the standby led after {took:?}");
    // The leader resigned instead of letting its lease run out. The bound is 0.5 s;
    // this is measured with status polls, so it includes their own time (scripts/bench-ha.sh
    // times it to the first accepted write).
    assert!(
        took < Duration::from_millis(500),
        "handover took {took:?}; a resignation should hand over at once"
    );
    let c = pair.cluster();
    c.cli(&["scale", "t", "3"]).assert_ok();
    let after = pids(&wait_online(c, "t", 3));
    for (index, pid) in &before {
        assert_eq!(after.get(index), Some(pid), "t[{index}] was restarted");
    }
}
