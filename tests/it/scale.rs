//! Issue 2 acceptance: spread over three agents, scale up and down, restart after `kill -9`, and
//! a coordinator crash that starts and stops nothing.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;
use pmcluster_tests::{
    Cluster, Instance, ProcId, free_port_range, health, kill_pid, now_ms, per_node, render,
    wait_until,
};

use crate::{DEADLINE, by_index, live, wait_online};

/// Waits until `GET /health` on the instance's port names its index and pid.
#[track_caller]
fn wait_healthy(inst: &Instance) {
    let port = inst.port.expect("instance has a port");
    let pid = inst.pid.expect("instance has a pid");
    let what = format!(
        "/health of {inst} to answer instance {} pid {pid}",
        inst.index
    );
    let index = inst.index.to_string();
    wait_until(DEADLINE, &what, || {
        let h = health(port)?;
        if h["instance"] == index.as_str() && h["pid"] == pid {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
}

/// Instances that survived a scale on the same node but run as a new process.
fn restarted_by_scale(what: &str, before: &[Instance], after: &[Instance]) -> Option<String> {
    let restarted: Vec<String> = after
        .iter()
        .filter_map(|new| {
            let old = before.iter().find(|o| o.index == new.index)?;
            (old.node == new.node && old.pid != new.pid).then(|| format!("\n  {old}\n   -> {new}"))
        })
        .collect();
    (!restarted.is_empty()).then(|| {
        format!(
            "scale {what} restarted instances it should have left running:{}",
            restarted.concat()
        )
    })
}

fn pids(list: &[Instance]) -> BTreeMap<u32, Option<u32>> {
    list.iter().map(|i| (i.index, i.pid)).collect()
}

#[test]
fn spread_scale_kill_restart() {
    let mut c = Cluster::start(3).expect("coordinator and three agents start");
    let web = c
        .start_app("web", 1)
        .ports(12)
        .online()
        .expect("web starts");
    let (base, one) = (web.base_port, web.instances);
    c.cli(&["scale", "web", "12"]).assert_ok();

    // Twelve online, four per node, instance i on port base+i and answering as itself.
    let twelve = wait_online(&c, "web", 12);
    // Changing the count must leave running instances alone (PM2's scale does). Checked at the
    // end, so that one failure does not hide the rest of the scenario.
    let mut problems = Vec::new();
    problems.extend(restarted_by_scale("1 -> 12", &one, &twelve));
    let counts: Vec<usize> = per_node(&twelve).into_values().collect();
    assert_eq!(
        per_node(&twelve).keys().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"],
        "{}",
        render(&twelve)
    );
    assert_eq!(counts, [4, 4, 4], "{}", render(&twelve));
    for inst in &twelve {
        assert_eq!(inst.port, Some(base + inst.index as u16), "{inst}");
        wait_healthy(inst);
    }
    let removed: Vec<ProcId> = twelve
        .iter()
        .filter(|i| i.index >= 5)
        .filter_map(|i| ProcId::of(i.pid?))
        .collect();
    assert_eq!(
        removed.len(),
        7,
        "every removed instance runs before the scale-down"
    );

    // Down to five: the highest indices go, the rest stays spread.
    c.cli(&["scale", "web", "5"]).assert_ok();
    let five = wait_until(DEADLINE, "5 online instances spread 1/2/2", || {
        let list = c.instances("web")?;
        let mut counts: Vec<usize> = per_node(&list).into_values().collect();
        counts.sort_unstable();
        let indices: Vec<u32> = list.iter().map(|i| i.index).collect();
        if indices == [0, 1, 2, 3, 4] && list.iter().all(live) && counts == [1, 2, 2] {
            Ok(list)
        } else {
            Err(render(&list))
        }
    });
    for inst in &five {
        assert_eq!(inst.port, Some(base + inst.index as u16), "{inst}");
    }
    problems.extend(restarted_by_scale("12 -> 5", &twelve, &five));
    wait_until(DEADLINE, "the removed instances' processes to end", || {
        let alive: Vec<u32> = removed
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });

    // kill -9 of one instance: the agent restarts it in place.
    let victim = by_index(&five, 2).expect("index 2").clone();
    let victim_pid = victim.pid.expect("index 2 has a pid");
    kill_pid(victim_pid, Signal::SIGKILL).expect("kill -9 index 2");
    let restarted = wait_until(DEADLINE, "web[2] online again with a new pid", || {
        let list = c.instances("web")?;
        let i2 = by_index(&list, 2)?;
        if live(i2) && i2.pid != Some(victim_pid) {
            Ok(i2.clone())
        } else {
            Err(render(&list))
        }
    });
    assert_eq!(restarted.port, victim.port, "{restarted}");
    assert_eq!(restarted.node, victim.node, "{restarted}");
    assert!(restarted.restarts >= 1, "{restarted}");
    wait_healthy(&restarted);

    // A coordinator crash starts and stops nothing.
    let before = wait_online(&c, "web", 5);
    c.kill_coordinator().expect("kill -9 the coordinator");
    c.restart_coordinator()
        .expect("the coordinator restarts on the same port with the same data dir");
    let after = wait_until(
        DEADLINE,
        "the restarted coordinator to list the same 5 online instances on ready nodes",
        || {
            let ready = c
                .nodes_json()?
                .iter()
                .filter(|n| n["status"] == "ready")
                .count();
            let list = c.instances("web")?;
            if ready == 3 && list.len() == 5 && list.iter().all(live) {
                Ok(list)
            } else {
                Err(format!("{ready} ready nodes;{}", render(&list)))
            }
        },
    );
    assert_eq!(
        pids(&after),
        pids(&before),
        "no instance may restart because the coordinator did:\nbefore:{}\nafter:{}",
        render(&before),
        render(&after)
    );

    // Let every agent report again after it received its desired set, then check that nothing
    // started behind the list's back: the agents' children are exactly the five listed pids.
    let converged_at = now_ms();
    wait_until(DEADLINE, "every node to report again", || {
        let nodes = c.nodes_json()?;
        let fresh = nodes
            .iter()
            .filter(|n| n["last_heartbeat_ms"].as_i64().unwrap_or(0) > converged_at + 1000)
            .count();
        if fresh == 3 {
            Ok(())
        } else {
            Err(serde_json::Value::Array(nodes).to_string())
        }
    });
    let last = c.instances("web").expect("list after the restart");
    assert_eq!(pids(&last), pids(&before), "{}", render(&last));
    let listed: BTreeSet<u32> = last.iter().filter_map(|i| i.pid).collect();
    let children: BTreeSet<u32> = c.agent_children().into_keys().collect();
    assert_eq!(
        children,
        listed,
        "the agents' child processes must be exactly the listed instances:{}",
        render(&last)
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A scale-down retires a serving instance gracefully: it is listed `draining` and left out of
/// the endpoints for the app's `update.shutdown_delay` while its process still runs, then it is
/// stopped.
#[test]
fn scale_down_drains_for_the_shutdown_delay() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let base = free_port_range(2).expect("two free ports");
    let testapp = c.testapp().display().to_string();
    let path = c.root().join("web.json");
    let spec = serde_json::json!({
        "name": "web", "script": testapp, "instances": 2,
        "port": format!("{base}-{}", base + 1),
        "update": { "shutdown_delay": "8s" }
    });
    std::fs::write(&path, spec.to_string()).expect("write web.json");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    let before = wait_online(&c, "web", 2);
    let leaving =
        ProcId::of(by_index(&before, 1).expect("index 1").pid.expect("pid")).expect("index 1 runs");
    c.cli(&["scale", "web", "1"]).assert_ok();
    wait_until(
        DEADLINE,
        "index 1 draining, still running, no endpoint",
        || {
            let list = c.instances("web")?;
            let one = by_index(&list, 1)?;
            let endpoints = c.cli(&["endpoints", "web", "-o", "json"]).json()?;
            let ports: Vec<u64> = endpoints
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["port"].as_u64()).collect())
                .unwrap_or_default();
            if one.status == "draining" && leaving.alive() && ports == [u64::from(base)] {
                Ok(())
            } else {
                Err(format!("endpoints {ports:?}:{}", render(&list)))
            }
        },
    );
    wait_until(DEADLINE, "index 1 gone after the delay", || {
        let list = c.instances("web")?;
        if list.len() == 1 && !leaving.alive() {
            Ok(())
        } else {
            Err(render(&list))
        }
    });
}

/// `--wait` returns once the instances are up, and fails with the reason when they cannot be:
/// the start of three (all online when it returns), a scale down (the others gone), restarts in
/// place and in waves (the new process online), a program
/// that cannot run (errored), one that exits with autorestart off, one too slow for
/// `--wait-timeout`, and one without a port that keeps crashing (never up for `min_uptime`).
#[test]
fn wait_returns_when_instances_are_up_and_fails_when_they_cannot_be() {
    let c = Cluster::start(2).expect("coordinator and two agents start");
    // Runs the CLI; checks its exit code and a piece of its stdout (exit 0) or stderr.
    let run = |args: &[&str], code: i32, says: &str| {
        let out = c.cli(args);
        assert_eq!(out.code(), Some(code), "{out}");
        let text = if code == 0 { &out.stdout } else { &out.stderr };
        assert!(text.contains(says), "{says:?} missing: {out}");
        out
    };
    let testapp = c.testapp().display().to_string();
    // Picked by the agents: a replacement started beside the one it replaces (a rolling
    // restart) needs a port of its own, and the two test nodes share loopback.
    let base = free_port_range(20).expect("free ports");
    let ports = format!("auto:{base}-{}", base + 19);
    let start3 = [
        "start", &testapp, "--name", "w", "-i", "3", "--port", &ports, "--wait",
    ];
    run(&start3, 0, "w: 3 up after");
    // Up when it returned: no wait here.
    let list = c.instances("w").expect("list");
    assert!(
        list.len() == 3 && list.iter().all(|i| i.status == "online"),
        "{}",
        render(&list)
    );
    // In JSON, one value after the wait, saying how it went.
    let out = run(&["scale", "w", "2", "--wait", "-o", "json"], 0, "");
    let value = out.json().expect("one JSON value");
    assert_eq!(value["wait"]["up"], 2, "{value}");
    run(&["scale", "w", "1", "--wait"], 0, "w: 1 up after");
    let list = c.instances("w").expect("list");
    assert_eq!(list.len(), 1, "{}", render(&list));
    // A restart is up once the new process is up and the old one gone: in place (a new pid),
    // or in waves (a new instance; the old one drains, then stops).
    let pid = |list: &[Instance]| list.first().and_then(|i| i.pid);
    run(&["restart", "w", "--wait"], 0, "w: 1 up after");
    let after = c.instances("w").expect("list");
    assert!(
        pid(&after) != pid(&list) && after.iter().all(|i| i.status == "online"),
        "before:\n{}\nafter:\n{}",
        render(&list),
        render(&after)
    );
    run(&["restart", "w", "--rolling", "--wait"], 0, "w: 1 up after");
    // The replaced instance is gone too, not only joined by its replacement.
    let rolled = c.instances("w").expect("list");
    assert!(
        rolled.len() == 1 && rolled[0].status == "online" && rolled[0].id != after[0].id,
        "before:\n{}\nafter:\n{}",
        render(&after),
        render(&rolled)
    );

    // A program not found may be installed, or found on another node: the agent retries, and
    // --wait waits. A user that does not exist is final.
    let bad = [
        "start",
        "/nonexistent/prog",
        "--name",
        "bad",
        "--wait",
        "--wait-timeout",
        "3s",
    ];
    run(
        &bad,
        1,
        "bad: not up after 3s (0 of 1 up; bad[0] errored: cannot run",
    );
    let config = c.root().join("nouser.json");
    let app = serde_json::json!({"name": "nouser", "script": "sleep", "args": ["100"],
                                 "user": "pmcluster-no-such-user"});
    std::fs::write(&config, serde_json::json!({ "apps": [app] }).to_string())
        .expect("write the config");
    let nouser = "nouser[0] errored: user \"pmcluster-no-such-user\" does not exist on this host";
    run(
        &["apply", "-f", &config.display().to_string(), "--wait"],
        1,
        nouser,
    );
    run(&["start", "nouser", "--wait"], 1, nouser);
    // Restarted, it is launching until its agent tries again, and that attempt's error is final.
    let restart = ["restart", "nouser", "--wait", "--wait-timeout", "20s"];
    run(&restart, 1, nouser);
    // apply --wait: every app of the file, in turn.
    let two = c.root().join("two.json");
    let apps = serde_json::json!({"apps": [
        {"name": "one", "script": "sleep", "args": ["100"]},
        {"name": "two", "script": testapp, "instances": 2, "port": ports},
    ]});
    std::fs::write(&two, apps.to_string()).expect("write the config");
    let out = run(
        &["apply", "-f", &two.display().to_string(), "--wait"],
        0,
        "one: 1 up after ",
    );
    assert!(out.stdout.contains("two: 2 up after"), "{out}");
    let once = [
        "start",
        "sh",
        "--name",
        "once",
        "--no-autorestart",
        "--wait",
        "--",
        "-c",
        "exit 3",
    ];
    run(&once, 1, "once[0] exited and autorestart is off");
    let slow_port = free_port_range(1).expect("a free port").to_string();
    let slow = [
        "start",
        &testapp,
        "--name",
        "slow",
        "--port",
        &slow_port,
        "--env",
        "TESTAPP_STARTUP_DELAY_MS=30000",
        "--wait",
        "--wait-timeout",
        "1s",
    ];
    run(
        &slow,
        1,
        "slow: not up after 1s (0 of 1 up; slow[0] launching",
    );

    // Without a port or a health check, up means it outlived min_uptime (1s by default): a
    // program that keeps crashing never is, one that stays is.
    let flaky = [
        "start",
        "sh",
        "--name",
        "flaky",
        "--wait",
        "--wait-timeout",
        "3s",
        "--",
        "-c",
    ];
    run(
        &[&flaky[..], &["sleep 0.2; exit 1"]].concat(),
        1,
        "flaky: not up after 3s",
    );
    let steady = [
        "start",
        "sh",
        "--name",
        "steady",
        "--wait",
        "--",
        "-c",
        "exec sleep 100",
    ];
    let out = run(&steady, 0, "steady: 1 up after ");
    let took: f64 = out
        .stdout
        .rsplit("up after ")
        .next()
        .and_then(|t| t.trim().trim_end_matches('s').parse().ok())
        .unwrap_or(0.0);
    assert!(took >= 1.0, "up only after min_uptime: {out}");

    // Bad input names the flag.
    run(
        &["scale", "w", "2", "--wait-timeout", "soon"],
        2,
        "--wait-timeout",
    );
}

/// `scale N --wait` down and `delete --wait` return once the processes they remove have ended,
/// not when their records went: the app here takes 2.5 s to stop (a trap on SIGINT and SIGTERM;
/// longer than the 1 s `min_uptime` any `--wait` of a port-less app takes), and until it has,
/// `list` shows it as stopping.
#[test]
fn scale_down_and_delete_wait_for_the_processes_to_end() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let script = c.root().join("slow-stop.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ntrap 'sleep 2.5; exit 0' INT TERM\nwhile :; do sleep 0.1; done\n",
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the script executable");
    let script = script.display().to_string();
    let out = c.cli(&["start", &script, "--name", "slow", "-i", "3", "--wait"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let three = c.instances("slow").expect("list");
    let procs = |list: &[Instance], keep: &dyn Fn(u32) -> bool| -> Vec<ProcId> {
        list.iter()
            .filter(|i| keep(i.index))
            .filter_map(|i| ProcId::of(i.pid?))
            .collect()
    };
    let removed = procs(&three, &|index| index >= 1);
    assert_eq!(removed.len(), 2, "{}", render(&three));
    let alive = |procs: &[ProcId]| -> Vec<u32> {
        procs.iter().filter(|p| p.alive()).map(|p| p.pid).collect()
    };

    let out = c.cli(&["scale", "slow", "1", "--wait"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        alive(&removed),
        Vec::<u32>::new(),
        "scale --wait returned while removed processes ran: {out}"
    );
    let list = c.instances("slow").expect("list");
    assert_eq!(list.len(), 1, "{}", render(&list));

    let last = procs(&list, &|_| true);
    assert_eq!(last.len(), 1, "{}", render(&list));
    // Without --wait, the process is listed as stopping while it ends.
    let out = c.cli(&["delete", "slow"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let listed = c.cli(&["list"]);
    assert!(
        listed.stdout.contains("stopping"),
        "a process still ending is listed: {listed}"
    );
    let out = c.cli(&["start", &script, "--name", "slow2", "-i", "2", "--wait"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let two = procs(&c.instances("slow2").expect("list"), &|_| true);
    assert_eq!(two.len(), 2);
    let out = c.cli(&["delete", "slow2", "--wait"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("slow2: every process ended after"),
        "{out}"
    );
    assert_eq!(
        alive(&two),
        Vec::<u32>::new(),
        "delete --wait returned while processes ran: {out}"
    );

    // Deleted right after a start that did not wait: the agent may not have reported the
    // processes yet, or not even started them. The wait still covers them. Their script has a
    // name of its own, so that its processes are found by it.
    let fresh = c.root().join("slow-stop-fresh.sh");
    std::fs::copy(&script, &fresh).expect("copy the script");
    let fresh = fresh.display().to_string();
    let running = || -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&fresh))
            })
            .collect()
    };
    for round in 0..3 {
        let out = c.cli(&["start", &fresh, "--name", "fresh", "-i", "3"]);
        assert_eq!(out.code(), Some(0), "{out}");
        let out = c.cli(&["delete", "fresh", "--wait"]);
        assert_eq!(out.code(), Some(0), "{out}");
        let left = running();
        assert!(
            left.is_empty(),
            "round {round}: delete --wait right after a start returned while processes ran \
             ({left:?}): {out}"
        );
    }
}

/// `restart --rolling --wait` ends with the rollout it started, not when the instances first
/// look up: on one node with a fixed port the restart goes stop-then-start, so the new process
/// is up at once while the rollout still waits its `min_healthy_time`. A rollout that fails (the
/// new process crash-loops) fails the wait, naming it.
#[test]
fn rolling_restart_wait_ends_with_its_rollout() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let testapp = c.testapp().display().to_string();
    let port = free_port_range(2).expect("free ports");
    let (web_port, flap_port) = (port.to_string(), (port + 1).to_string());
    c.cli(&[
        "start",
        &testapp,
        "--name",
        "web",
        "--port",
        &web_port,
        "--min-healthy-time",
        "2s",
        "--wait",
    ])
    .assert_ok();
    let out = c.cli(&["restart", "web", "--rolling", "--wait"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("web: 1 up after"), "{out}");
    let status = c.cli(&["rollout", "status", "web", "-o", "json"]);
    let status = status.json().expect("rollout status -o json");
    assert_eq!(
        status["state"], "succeeded",
        "--wait returned before: {out}\n{status}"
    );

    // `reload APP` with no change given restarts in waves, as `pm2 reload` does.
    let before = c.instances("web").expect("list");
    let pid = before.first().and_then(|i| i.pid);
    let out = c.cli(&["reload", "web"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("no change given") && out.stdout.contains("rolling restart of web"),
        "{out}"
    );
    // A fixed port and one node: said, since PM2's `reload` means no downtime (a trial).
    assert!(
        out.stderr
            .contains("note: web has fixed ports and one node to run on"),
        "{out}"
    );
    wait_until(DEADLINE, "web's process replaced by the reload", || {
        let now = c.instances("web").map_err(|e| e.to_string())?;
        match now.as_slice() {
            [one] if one.status == "online" && one.pid.is_some() && one.pid != pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // With the only node draining, no new instance can start anywhere: said, since the
    // rollout then only waits (a trial's drain left on during a reload looked like a hang).
    c.cli(&["drain", "node-a"]).assert_ok();
    let out = c.cli(&["restart", "web", "--rolling"]);
    out.assert_ok();
    assert!(
        out.stderr
            .contains("note: no node can take web's new instances now (node-a draining)")
            && out.stderr.contains("undrain one (pmcluster undrain NODE)"),
        "{out}"
    );
    c.cli(&["undrain", "node-a"]).assert_ok();
    let out = c.cli(&["rollout", "status", "web", "--wait"]);
    assert_eq!(
        out.code(),
        Some(0),
        "the restart goes on once undrained: {out}"
    );

    // The first run serves; every later one serves for half a second, then exits 1.
    let mark = c.root().join("flap-ran");
    let script = format!(
        "if [ -e {mark} ]; then timeout 0.5 {testapp}; exit 1; fi; touch {mark}; exec {testapp}",
        mark = mark.display()
    );
    c.cli(&[
        "start", &script, "--shell", "--name", "flap", "--port", &flap_port, "--wait",
    ])
    .assert_ok();
    let out = c.try_cli_timeout(
        &[
            "restart",
            "flap",
            "--rolling",
            "--min-healthy-time",
            "2s",
            "--healthy-deadline",
            "4s",
            "--progress-deadline",
            "6s",
            "--wait",
        ],
        std::time::Duration::from_secs(90),
    );
    let out = out.expect("restart --rolling --wait runs");
    assert_eq!(out.code(), Some(1), "{out}");
    // Auto-rollback is on, but a restart has nothing to roll back to: it fails.
    assert!(
        out.stderr.contains("flap: the rollout of version 1 failed"),
        "{out}"
    );
}
