//! Issue 9, items 2 and 5: a coordinator that lost its state, or an agent data dir reused under
//! another node name, must never stop the instances that run.

use std::fs;
use std::path::PathBuf;

use pmcluster_tests::{Cluster, Instance, ProcId, render, wait_until};

use crate::{DEADLINE, live, wait_online};

/// Starts `web` (the test app) with `n` instances on fixed ports and waits for them online.
fn start_web(c: &Cluster, n: u16) -> Vec<ProcId> {
    let procs = c.start_app("web", n).online().expect("web starts").procs();
    assert_eq!(
        procs.len(),
        usize::from(n),
        "every instance runs: {procs:?}"
    );
    procs
}

/// `list web` shows exactly these processes, each live; returns the list.
#[track_caller]
fn wait_same_pids(c: &Cluster, procs: &[ProcId], what: &str) -> Vec<Instance> {
    wait_until(DEADLINE, what, || {
        let list = c.instances("web")?;
        let mut pids: Vec<u32> = list.iter().filter_map(|i| i.pid).collect();
        pids.sort_unstable();
        let mut want: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        want.sort_unstable();
        if pids == want && list.len() == procs.len() && list.iter().all(live) {
            Ok(list)
        } else {
            Err(render(&list))
        }
    })
}

fn node_status(c: &Cluster, name: &str) -> Result<(String, String), String> {
    let nodes = c.nodes_json().map_err(|e| e.to_string())?;
    let n = nodes
        .iter()
        .find(|n| n["name"] == name)
        .ok_or_else(|| format!("no node {name} in {nodes:?}"))?;
    Ok((
        n["status"].as_str().unwrap_or_default().to_string(),
        n["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// A coordinator whose state file is gone starts a new cluster. Agents (one restarted, one not)
/// keep every instance, both sides say why, `list` shows what runs, and `nodes adopt --all`
/// makes it the new cluster's without restarting anything.
#[test]
fn issue9_a_lost_state_file_never_stops_instances() {
    let mut c = Cluster::start(2).expect("coordinator and two agents start");
    let procs = start_web(&c, 4);

    c.kill_coordinator().expect("kill -9 the coordinator");
    let state = c.root().join("coordinator").join("state.redb");
    fs::remove_file(&state).expect("delete state.redb");
    // One agent restarts while the coordinator is away, the other keeps running.
    let a = c.agent_idx("node-a").expect("node-a");
    c.agent(a).kill();
    c.restart_agent(a, &[]).expect("restart node-a's agent");
    c.restart_coordinator()
        .expect("a coordinator on an empty store");

    for node in ["node-a", "node-b"] {
        let (status, message) =
            wait_until(
                DEADLINE,
                &format!("{node} quarantined"),
                || match node_status(&c, node)? {
                    (s, m) if s == "quarantined" => Ok((s, m)),
                    other => Err(format!("{other:?}")),
                },
            );
        assert_eq!(status, "quarantined");
        assert!(
            message.contains("belongs to cluster") && message.contains("nodes adopt"),
            "{message}"
        );
    }
    // What runs is listed from the agents' reports, and nothing was stopped.
    let held = wait_same_pids(&c, &procs, "the held instances listed");
    assert!(
        held.iter().all(|i| i.json["message"]
            .as_str()
            .unwrap_or("")
            .contains("not managed")
            && i.json["unmanaged"] == true),
        "{}",
        render(&held)
    );
    // Loud on both sides.
    let coordinator_log = c.coordinator().expect("coordinator").stderr();
    assert!(
        coordinator_log.contains("node quarantined"),
        "{coordinator_log}"
    );
    // node-b may still be reconnecting (its link backs off after the coordinator it had went
    // away), so its side is awaited, not sampled.
    let node_b = c.agent(c.agent_idx("node-b").expect("node-b"));
    wait_until(
        DEADLINE,
        "node-b saying it belongs to another cluster",
        || {
            let log = node_b.stderr();
            if log.contains("belongs to cluster") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );

    let out = c.cli(&["nodes", "adopt", "--all"]);
    out.assert_ok();
    assert!(out.stdout.contains("adopted node-a"), "{out}");
    let after = wait_same_pids(&c, &procs, "the same pids, managed again");
    assert!(
        after.iter().all(|i| i.json["unmanaged"] == false
            && !i.json["message"]
                .as_str()
                .unwrap_or("")
                .contains("not managed")),
        "{}",
        render(&after)
    );
    for node in ["node-a", "node-b"] {
        wait_until(DEADLINE, &format!("{node} ready"), || {
            match node_status(&c, node)? {
                (s, _) if s == "ready" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    // The app is this cluster's now: a scale works and keeps the adopted processes.
    c.cli(&["scale", "web", "3"]).assert_ok();
    let three = wait_online(&c, "web", 3);
    for i in &three {
        assert!(
            procs.iter().any(|p| Some(p.pid) == i.pid),
            "a new process after adoption: {}",
            render(&three)
        );
    }
}

/// One agent running `web` (2), a copy of the coordinator's state file taken, then a restart of
/// `web`: a newer desired set with the same instances, which the copy does not know. Returns
/// the cluster, the state file, the copy and the processes after the restart.
fn copied_then_restarted() -> (Cluster, PathBuf, PathBuf, Vec<ProcId>) {
    let mut c = Cluster::start(1).expect("coordinator and one agent start");
    start_web(&c, 2);
    let state = c.root().join("coordinator").join("state.redb");
    let backup = c.root().join("state.redb.backup");
    c.kill_coordinator().expect("kill -9 the coordinator");
    fs::copy(&state, &backup).expect("copy state.redb");
    c.restart_coordinator()
        .expect("the coordinator on its own state");
    c.cli(&["restart", "web", "--wait"]).assert_ok();
    let procs: Vec<ProcId> = wait_online(&c, "web", 2)
        .iter()
        .filter_map(|i| ProcId::of(i.pid?))
        .collect();
    assert_eq!(procs.len(), 2, "two processes");
    (c, state, backup, procs)
}

/// A coordinator restored from an older copy of its state file knows its nodes only up to an
/// older generation: the agents are quarantined and keep every instance. Rows it has records of
/// say so, and a `restart --wait` that nothing can carry out names the reason when it gives up.
#[test]
fn issue9_a_state_file_restored_from_an_older_copy_says_why_nothing_restarts() {
    let (mut c, state, backup, procs) = copied_then_restarted();

    c.kill_coordinator().expect("kill -9 the coordinator");
    fs::copy(&backup, &state).expect("restore the older copy");
    c.restart_coordinator()
        .expect("the coordinator on the restored copy");
    wait_until(DEADLINE, "node-a quarantined", || {
        match node_status(&c, "node-a")? {
            (s, m) if s == "quarantined" && m.contains("generation") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The copy has records of both: they are this cluster's instances, on a node it cannot
    // reach.
    let listed = wait_same_pids(&c, &procs, "every process listed");
    for i in &listed {
        assert_eq!(i.json["unmanaged"], false, "{}", render(&listed));
        let message = i.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("node node-a is quarantined")
                && message.contains("`pmcluster nodes adopt node-a`"),
            "{}",
            render(&listed)
        );
    }
    let out = c.cli(&["restart", "web", "--wait", "--wait-timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("not up after 2s") && out.stderr.contains("is quarantined"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("node node-a is quarantined: its instances restart once it is adopted"),
        "{out}"
    );
    // Nothing was restarted or stopped: the same processes, listed as waiting for the restart.
    let list = c.instances("web").expect("list web");
    let mut pids: Vec<u32> = list.iter().filter_map(|i| i.pid).collect();
    pids.sort_unstable();
    let mut want: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    want.sort_unstable();
    assert_eq!(pids, want, "{}", render(&list));
    assert!(procs.iter().all(ProcId::alive), "{}", render(&list));
    // Once adopted, the restart asked meanwhile happens: new processes, the old ones gone.
    c.cli(&["nodes", "adopt", "node-a"]).assert_ok();
    wait_restarted(&c, &procs, "web restarted after adoption");
}

/// Once `web` runs under new processes, none of `old`, on both instances.
#[track_caller]
fn wait_restarted(c: &Cluster, old: &[ProcId], what: &str) {
    wait_until(DEADLINE, what, || {
        let list = c.instances("web")?;
        let fresh = list.len() == old.len()
            && list.iter().all(|i| {
                i.status == "online" && i.pid.is_some_and(|pid| old.iter().all(|p| p.pid != pid))
            });
        if fresh && old.iter().all(|p| !p.alive()) {
            Ok(())
        } else {
            Err(render(&list))
        }
    });
}

/// The same restore, with the restart asked while the agent is away and the coordinator
/// restarted after: the restart brings the copy's generation up to the agent's, yet the agent
/// is still ahead of what the store ever sent it, so it is quarantined and keeps its
/// processes. Once adopted, the restart happens, though the agent holds the very epoch the
/// record asks for.
#[test]
fn issue9_a_restart_asked_of_a_restored_store_before_its_agent_returns_happens() {
    let (mut c, state, backup, procs) = copied_then_restarted();

    // The agent goes away (its instances keep running), the store goes back to the copy.
    let a = c.agent_idx("node-a").expect("node-a");
    c.agent(a).kill();
    c.kill_coordinator().expect("kill -9 the coordinator");
    fs::copy(&backup, &state).expect("restore the older copy");
    c.restart_coordinator()
        .expect("the coordinator on the restored copy");
    c.cli(&["restart", "web"]).assert_ok();
    assert!(procs.iter().all(ProcId::alive), "the agent is away");
    // The coordinator restarts before the agent is back: the restart asked is stored.
    c.kill_coordinator().expect("kill -9 the coordinator");
    c.restart_coordinator()
        .expect("the coordinator on the restored copy, again");
    c.restart_agent(a, &[]).expect("node-a's agent again");
    wait_until(DEADLINE, "node-a quarantined", || {
        match node_status(&c, "node-a")? {
            (s, m) if s == "quarantined" && m.contains("sent the node sets only up to") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_same_pids(&c, &procs, "the same processes while quarantined");
    assert!(procs.iter().all(ProcId::alive), "nothing stopped");
    c.cli(&["nodes", "adopt", "node-a"]).assert_ok();
    wait_restarted(&c, &procs, "web restarted once its node is adopted");
    let (status, _) = node_status(&c, "node-a").expect("nodes");
    assert_eq!(status, "ready");
}

/// An agent started on another node's data dir is refused (exit 64, naming the flag), and
/// every instance keeps running; `--rename-node` moves the node's instances to the new name
/// without restarting them, and the old name is gone from `nodes`.
#[test]
fn issue9_a_data_dir_reused_under_another_name_is_refused_or_renamed() {
    let mut c = Cluster::start(1).expect("coordinator and an agent start");
    let procs = start_web(&c, 2);
    let a = c.agent_idx("node-a").expect("node-a");
    let data_dir = c.agent(a).data_dir.clone();
    // The renamed agent records its own cgroup; node-a's, which its instances stay in, is
    // removed at the end from this.
    c.remember_cgroups_of(&data_dir);
    c.agent(a).kill();

    let refused = c
        .add_agent_in("node-z", data_dir.clone(), &[])
        .expect("spawn an agent under another name");
    let status = c
        .agent(refused)
        .wait_exit(DEADLINE)
        .expect("the agent exits");
    assert_eq!(status.code(), Some(64), "{}", c.agent(refused).stderr());
    let err = c.agent(refused).stderr();
    assert!(
        err.contains("--rename-node") && err.contains("node-a"),
        "{err}"
    );
    for p in &procs {
        assert!(p.alive(), "pid {} died at a refused start", p.pid);
    }

    c.add_agent_in("node-z", data_dir, &["--rename-node"])
        .expect("spawn the renaming agent");
    c.wait_ready(&["node-z"], DEADLINE).expect("node-z ready");
    let list = wait_same_pids(&c, &procs, "the same pids on node-z");
    assert!(
        list.iter().all(|i| i.node.as_deref() == Some("node-z")),
        "{}",
        render(&list)
    );
    let nodes = c.nodes_json().expect("nodes");
    assert!(
        !nodes.iter().any(|n| n["name"] == "node-a"),
        "node-a still listed: {nodes:?}"
    );
}

/// Starts `idle` (2 instances of `sleep`, no port) and waits until both run, one on node-b.
fn idle_on_both(c: &Cluster) -> Vec<Instance> {
    c.cli(&[
        "start",
        "sh",
        "--name",
        "idle",
        "--instances",
        "2",
        "--",
        "-c",
        "exec sleep 600",
    ])
    .assert_ok();
    wait_until(DEADLINE, "idle on both nodes", || {
        let list = c.instances("idle")?;
        let on_b = list.iter().any(|i| i.node.as_deref() == Some("node-b"));
        if list.len() == 2 && list.iter().all(live) && on_b {
            Ok(list)
        } else {
            Err(render(&list))
        }
    })
}

/// A node forgotten while its agent was down, whose agent comes back after all: it joins
/// unquarantined, its agent stops the process whose index was placed elsewhere at the forget,
/// and each index runs once. (Before the store kept forgotten names, it was quarantined and the
/// old process ran beside its replacement until an operator adopted the node.)
#[test]
fn a_forgotten_node_that_comes_back_stops_what_runs_elsewhere() {
    let mut c = Cluster::start(2).expect("coordinator and two agents start");
    let on_b = idle_on_both(&c)
        .iter()
        .find(|i| i.node.as_deref() == Some("node-b"))
        .and_then(|i| i.pid)
        .expect("node-b's instance has a pid");
    let old = ProcId::of(on_b).expect("node-b's instance runs");
    c.remember_pids(&[on_b]);

    // kill -9: the agent goes, its instance runs on.
    let b = c.agent_idx("node-b").expect("node-b");
    c.agent(b).kill();
    assert!(old.alive(), "node-b's instance died with its agent");
    let said = wait_until(DEADLINE, "node-b forgotten", || {
        let out = c.cli(&["nodes", "forget", "node-b"]);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.to_string())
        }
    });
    assert!(
        said.contains("its 1 instance rescheduled") && said.contains("the node joins afresh"),
        "{said}"
    );
    let moved = wait_until(DEADLINE, "both instances on node-a", || {
        let list = c.instances("idle")?;
        if list.len() == 2
            && list.iter().all(live)
            && list.iter().all(|i| i.node.as_deref() == Some("node-a"))
        {
            Ok(list)
        } else {
            Err(render(&list))
        }
    });
    let pids: Vec<u32> = moved.iter().filter_map(|i| i.pid).collect();
    c.remember_pids(&pids);
    assert!(
        old.alive(),
        "the forgotten node's process runs while its agent is away"
    );

    c.restart_agent(b, &[])
        .expect("node-b's agent starts again");
    c.wait_ready(&["node-b"], DEADLINE)
        .expect("node-b up, not quarantined");
    wait_until(DEADLINE, "node-b's old process stopped", || {
        if old.alive() {
            Err(format!("{} runs", old.pid))
        } else {
            Ok(())
        }
    });
    let (status, message) = node_status(&c, "node-b").expect("node-b listed");
    assert_eq!(status, "ready", "{message}");
    // The two that run on node-a are untouched; nothing else runs.
    let after = c.instances("idle").expect("list idle");
    let mut now: Vec<u32> = after.iter().filter_map(|i| i.pid).collect();
    now.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(now, want, "{}", render(&after));
    let events = c.cli(&["events", "--no-follow", "--history", "50"]);
    events.assert_ok();
    assert!(
        events.stdout.contains("it had been forgotten")
            && events.stdout.contains("removes the 1 instance it held"),
        "{events}"
    );
}

/// `nodes forget` is refused while the node is connected, and afterwards places its instances
/// elsewhere at once (not after `reschedule_after`), and the node is no longer listed.
#[test]
fn issue9_nodes_forget_removes_a_gone_node() {
    let c = Cluster::start(2).expect("coordinator and two agents start");
    let before = idle_on_both(&c);
    c.remember_pids(&before.iter().filter_map(|i| i.pid).collect::<Vec<_>>());

    let refused = c.cli(&["nodes", "forget", "node-b"]);
    let err = refused.assert_failed();
    assert!(err.contains("connected"), "{err}");

    // Agents in this harness stop their instances on SIGTERM.
    let b = c.agent_idx("node-b").expect("node-b");
    c.agent(b).signal(nix::sys::signal::Signal::SIGTERM);
    c.agent(b)
        .wait_exit(DEADLINE)
        .expect("node-b's agent exits");
    let out = c.cli(&["nodes", "forget", "node-b"]);
    out.assert_ok();
    assert!(out.stdout.contains("forgot node node-b"), "{out}");
    // The default reschedule_after is 30 s; the forgotten node's index moves at once.
    let moved = wait_until(
        std::time::Duration::from_secs(15),
        "both instances on node-a",
        || {
            let list = c.instances("idle")?;
            if list.len() == 2
                && list.iter().all(live)
                && list.iter().all(|i| i.node.as_deref() == Some("node-a"))
            {
                Ok(list)
            } else {
                Err(render(&list))
            }
        },
    );
    c.remember_pids(&moved.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    let nodes = c.nodes_json().expect("nodes");
    assert!(!nodes.iter().any(|n| n["name"] == "node-b"), "{nodes:?}");
}
