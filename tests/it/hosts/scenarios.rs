//! Scenarios across three agent hosts, with the CLI and `curl` on a fourth host: spreading and
//! reaching endpoints, a host that dies and returns, a host cut off from the coordinator.
//!
//! The test app binds `${HOST}` (the node's address) and reports it as its version, so every
//! answer proves the expansion, and that the endpoint is reached across hosts, not on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pmcluster_tests::{CLIENT_HOST, Cluster, Instance, Net, ProcId, per_node, render, wait_until};

use super::copies::{Copies, running};
use crate::{DEADLINE, wait_online};

/// The documented bound (README, "Test hosts") for a returning node's stale copies to stop
/// once it can reach the coordinator again: one agent reconnect (at most the 3 s connect
/// timeout plus the 5 s backoff with its 25 % jitter), registration, and the stop of a program
/// that exits on SIGTERM.
const STALE_BOUND: Duration = Duration::from_secs(15);
/// How long the default settings may take to bring a silent host's indices back elsewhere:
/// the 10 s heartbeat timeout, the 30 s default `reschedule_after`, the start, and slack for
/// two shared cores.
const MOVE_DEADLINE_DEFAULT: Duration = Duration::from_secs(90);
/// The same with `--reschedule-after 2s`.
const MOVE_DEADLINE_TUNED: Duration = Duration::from_secs(45);

/// `curl URL` on host `host`: its body, or why it failed.
fn curl(net: &Net, host: &str, url: &str) -> Result<String, String> {
    let mut cmd = net.command(host, "curl").map_err(|e| e.to_string())?;
    let out = cmd
        .args(["-sS", "--fail", "--max-time", "5", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl on {host}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url} on {host}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts `web` (the test app bound to `${HOST}`, ports `auto:4100-4199`) with `n` instances.
fn start_web(c: &Cluster, n: usize, extra: &[&str]) -> Vec<Instance> {
    let testapp = c.testapp().display().to_string();
    let count = n.to_string();
    let mut args = vec![
        "start",
        &testapp,
        "--name",
        "web",
        "--instances",
        &count,
        "--port",
        "auto:4100-4199",
        "-e",
        "TESTAPP_BIND=${HOST}",
        "-e",
        "TESTAPP_VERSION=${HOST}",
    ];
    args.extend(extra);
    c.cli(&args).assert_ok();
    wait_online(c, "web", n)
}

/// Waits until `web` has `n` live instances, none on `gone`; returns how long that took.
fn wait_moved_off(c: &Cluster, n: usize, gone: &str, deadline: Duration) -> Duration {
    let t0 = Instant::now();
    wait_until(deadline, &format!("{n} web online, none on {gone}"), || {
        let list = c.instances("web")?;
        let ok = list.len() == n
            && list.iter().all(Instance::live)
            && list.iter().all(|i| i.node.as_deref() != Some(gone));
        if ok { Ok(()) } else { Err(render(&list)) }
    });
    t0.elapsed()
}

#[test]
fn hosts_scale_web_12_spreads_and_every_endpoint_answers() {
    let Some(c) = super::start(3, &[]) else {
        return;
    };
    let net = c.net().expect("test hosts");
    start_web(&c, 1, &[]);
    c.cli(&["scale", "web", "12"]).assert_ok();
    let list = wait_online(&c, "web", 12);
    let want: BTreeMap<String, usize> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| (n.to_string(), 4))
        .collect();
    assert_eq!(per_node(&list), want, "{}", render(&list));

    let addr = |node: &str| net.addr(node).expect("a node's host").to_string();
    for n in c.nodes_json().expect("nodes") {
        let name = n["name"].as_str().unwrap_or_default();
        assert_eq!(n["address"], addr(name), "node {name}: {n}");
    }
    let mut ports: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for i in &list {
        let node = i.node.clone().unwrap_or_default();
        assert_eq!(i.json["host"], addr(&node), "{}", i.json);
        if let Some(p) = i.port {
            ports.entry(p).or_default().insert(node);
        }
    }
    // Each host has its own port space: the agents pick the lowest free port of the range, so
    // instances on different hosts hold the same numbers, which loopback never allows.
    assert!(
        ports.values().any(|nodes| nodes.len() > 1),
        "no port number is held on two hosts: {ports:?}"
    );

    let endpoints = c
        .cli(&["endpoints", "web", "-o", "json"])
        .assert_ok()
        .json();
    let endpoints = endpoints.expect("endpoints as JSON");
    let endpoints = endpoints.as_array().expect("a list of endpoints");
    assert_eq!(endpoints.len(), 12, "{endpoints:?}");
    for e in endpoints {
        let (host, port) = (e["host"].as_str().unwrap_or_default(), &e["port"]);
        let node = e["node"].as_str().unwrap_or_default();
        assert_eq!(host, addr(node), "{e}");
        let url = format!("http://{host}:{port}/health");
        let body = curl(net, CLIENT_HOST, &url).unwrap_or_else(|e| panic!("{e}"));
        let health: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        // TESTAPP_VERSION=${HOST}: the instance got its node's address.
        assert_eq!(health["version"], host, "{url}: {body}");
        assert_eq!(&health["port"], port, "{url}: {body}");
        let index = e["index"].to_string();
        assert_eq!(health["instance"].as_str(), Some(index.as_str()), "{body}");
    }
}

#[test]
fn hosts_kill_a_host_and_bring_it_back() {
    let Some(mut c) = super::start(3, &[]) else {
        return;
    };
    // Default settings: the figure the README reports.
    start_web(&c, 6, &[]);
    let copies = Copies::start(c.net().expect("test hosts"), "web");
    let net = c.net().expect("test hosts");
    net.kill("node-c").expect("kill node-c");
    let took = wait_moved_off(&c, 6, "node-c", MOVE_DEADLINE_DEFAULT);
    eprintln!("hosts: node-c killed; all 6 indices online elsewhere after {took:?}");
    let down = copies.finish();
    assert!(down.max_copies <= 1, "{down:?}");

    let copies = Copies::start(c.net().expect("test hosts"), "web");
    let idx = c.agent_idx("node-c").expect("node-c");
    c.restart_agent(idx, &[]).expect("node-c's agent again");
    c.wait_ready(&["node-c"], DEADLINE).expect("node-c ready");
    // Watch for a while after its return: it must start nothing that runs elsewhere.
    let watch = Instant::now() + Duration::from_secs(5);
    wait_until(DEADLINE, "the watch after node-c's return", || {
        if Instant::now() >= watch {
            Ok(())
        } else {
            Err("watching".to_string())
        }
    });
    let back = copies.finish();
    eprintln!("hosts: after node-c's return: {back:?}");
    assert!(back.samples > 10, "{back:?}");
    assert!(back.max_copies <= 2, "{back:?}");
    assert!(back.longest_double <= STALE_BOUND, "{back:?}");
    wait_online(&c, "web", 6);
}

#[test]
fn hosts_partition_an_agent_for_30s_then_heal() {
    let Some(c) = super::start(3, &[]) else {
        return;
    };
    let net = c.net().expect("test hosts");
    start_web(&c, 6, &["--reschedule-after", "2s"]);
    let hosts = net.netns_paths();
    // The copies node-c runs now: cut off, they become stale once moved elsewhere.
    let stale: Vec<(u32, ProcId)> = running(&hosts, "web")
        .into_iter()
        .flat_map(|(index, on)| on.into_iter().map(move |(h, p)| (index, h, p)))
        .filter(|(_, h, _)| h == "node-c")
        .map(|(index, _, p)| (index, p))
        .collect();
    assert!(!stale.is_empty(), "nothing runs on node-c");
    let copies = Copies::start(net, "web");

    let t0 = Instant::now();
    net.partition_from("node-c", &["coordinator"])
        .expect("cut node-c off");
    let took = wait_moved_off(&c, 6, "node-c", MOVE_DEADLINE_TUNED);
    eprintln!(
        "hosts: node-c cut off; all 6 indices online elsewhere after {took:?} \
         (--reschedule-after 2s)"
    );
    // The agent works offline: its copies keep running for the whole partition.
    let partition = Duration::from_secs(30);
    wait_until(partition + DEADLINE, "30 s of partition", || {
        if let Some((index, p)) = stale.iter().find(|(_, p)| !p.alive()) {
            panic!(
                "index {index} (pid {}) ended on node-c during the partition",
                p.pid
            );
        }
        if t0.elapsed() >= partition {
            Ok(())
        } else {
            Err("partitioned".to_string())
        }
    });

    net.heal("node-c").expect("heal node-c");
    let healed = Instant::now();
    wait_until(
        STALE_BOUND,
        "node-c's stale copies stopped within the documented bound",
        || {
            let left: Vec<&(u32, ProcId)> = stale.iter().filter(|(_, p)| p.alive()).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "still running on node-c (index, process): {left:?}"
                ))
            }
        },
    );
    eprintln!(
        "hosts: node-c healed; its stale copies stopped after {:?}",
        healed.elapsed()
    );
    let seen = copies.finish();
    eprintln!("hosts: during and after the partition: {seen:?}");
    assert!(seen.max_copies <= 2, "{seen:?}");
    c.wait_ready(&["node-c"], DEADLINE)
        .expect("node-c ready again");
    wait_online(&c, "web", 6);
}

#[test]
fn hosts_an_advertised_address_is_what_list_and_endpoints_show() {
    let Some(mut c) = super::start(1, &[]) else {
        return;
    };
    // A host name nothing resolves: it is shown and expanded, never dialled.
    const ADVERTISED: &str = "node-a.hosts.test";
    c.net()
        .expect("test hosts")
        .kill("node-a")
        .expect("kill node-a");
    let idx = c.agent_idx("node-a").expect("node-a");
    c.restart_agent(idx, &["--advertise-address", ADVERTISED])
        .expect("node-a's agent, advertising");
    c.wait_ready(&["node-a"], DEADLINE).expect("node-a ready");
    let testapp = c.testapp().display().to_string();
    let args = [
        "start",
        &testapp,
        "--name",
        "web",
        "--instances",
        "2",
        "--port",
        "auto:4100-4199",
        "-e",
        "TESTAPP_VERSION=${HOST}",
    ];
    c.cli(&args).assert_ok();
    let list = wait_online(&c, "web", 2);
    let nodes = c.nodes_json().expect("nodes");
    assert_eq!(nodes[0]["address"], ADVERTISED, "{nodes:?}");
    for i in &list {
        assert_eq!(i.json["host"], ADVERTISED, "{}", i.json);
        // The app binds loopback here; ask it from its own host what ${HOST} became.
        let port = i.port.expect("a port");
        let body = curl(
            c.net().expect("test hosts"),
            "node-a",
            &format!("http://127.0.0.1:{port}/health"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            body.contains(&format!("\"version\":\"{ADVERTISED}\"")),
            "{body}"
        );
    }
    let endpoints = c
        .cli(&["endpoints", "web", "-o", "json"])
        .assert_ok()
        .json();
    let endpoints = endpoints.expect("endpoints as JSON");
    let hosts: Vec<&str> = endpoints
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["host"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(hosts, [ADVERTISED, ADVERTISED], "{endpoints}");
}

#[test]
fn hosts_freeze_a_host_with_default_settings_then_thaw() {
    let Some(c) = super::start(3, &[]) else {
        return;
    };
    let net = c.net().expect("test hosts");
    start_web(&c, 6, &[]);
    let hosts = net.netns_paths();
    let stale: Vec<ProcId> = running(&hosts, "web")
        .into_values()
        .flatten()
        .filter(|(h, _)| h == "node-c")
        .map(|(_, p)| p)
        .collect();
    assert!(!stale.is_empty(), "nothing runs on node-c");
    let copies = Copies::start(net, "web");
    // A silent loss: nothing closes a connection, the host just stops answering.
    net.freeze("node-c").expect("freeze node-c");
    let took = wait_moved_off(&c, 6, "node-c", MOVE_DEADLINE_DEFAULT);
    eprintln!("hosts: node-c frozen; all 6 indices online elsewhere after {took:?} (defaults)");
    net.thaw("node-c").expect("thaw node-c");
    let thawed = Instant::now();
    wait_until(
        STALE_BOUND,
        "node-c's stale copies stopped within the documented bound",
        || {
            let left: Vec<&ProcId> = stale.iter().filter(|p| p.alive()).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running on node-c: {left:?}"))
            }
        },
    );
    eprintln!(
        "hosts: node-c thawed; its stale copies stopped after {:?}",
        thawed.elapsed()
    );
    let seen = copies.finish();
    eprintln!("hosts: during and after the freeze: {seen:?}");
    assert!(seen.max_copies <= 2, "{seen:?}");
    wait_online(&c, "web", 6);
}
