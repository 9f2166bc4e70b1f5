//! The test hosts themselves: daemons on their own addresses; kill, freeze, partition and heal
//! do what they say, and only to the host they name.

use std::process::Stdio;

use pmcluster_agent::process::read_stat;
use pmcluster_tests::{CLIENT_HOST, Net, wait_until};

use crate::DEADLINE;

/// Whether a TCP connection from host `from` to `url` gets any answer (even a refusal or an
/// HTTP error): curl's exit code 28 is its timeout, the mark of dropped packets.
fn reachable(net: &Net, from: &str, url: &str) -> bool {
    let Ok(mut cmd) = net.command(from, "curl") else {
        return false;
    };
    let status = cmd
        .args(["-s", "-o", "/dev/null", "--max-time", "1", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    status.is_ok_and(|s| s.code() != Some(28))
}

fn stopped(net: &Net, host: &str) -> Result<bool, String> {
    let pids = net.pids(host).map_err(|e| e.to_string())?;
    if pids.is_empty() {
        return Err(format!("no process on {host}"));
    }
    Ok(pids
        .iter()
        .all(|p| read_stat(p.pid).is_some_and(|s| s.state == 'T')))
}

#[test]
fn hosts_harness_kill_freeze_partition_heal() {
    let Some(c) = super::start(2, &[]) else {
        return;
    };
    let net = c.net().expect("a cluster on test hosts");
    let coordinator = net.addr("coordinator").expect("the coordinator's host");
    assert!(c.url().contains(&coordinator.to_string()), "{}", c.url());
    let addrs: Vec<_> = net.hosts().iter().map(|h| h.addr).collect();
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        addrs.len(),
        "each host its own address: {addrs:?}"
    );

    // The agent's host holds the agent and nothing of the other hosts.
    let agent_a = c.agent(c.agent_idx("node-a").expect("node-a")).pid();
    let on_a: Vec<u32> = net
        .pids("node-a")
        .expect("pids")
        .iter()
        .map(|p| p.pid)
        .collect();
    assert!(
        on_a.contains(&agent_a),
        "{on_a:?} lacks agent pid {agent_a}"
    );
    assert!(net.pids(CLIENT_HOST).expect("pids").is_empty());

    let url = c.url();
    net.freeze("node-a").expect("freeze node-a");
    assert_eq!(stopped(net, "node-a"), Ok(true));
    assert_eq!(stopped(net, "node-b"), Ok(false), "only node-a is frozen");
    net.thaw("node-a").expect("thaw node-a");
    assert_eq!(stopped(net, "node-a"), Ok(false));

    net.partition_from("node-b", &["coordinator"])
        .expect("partition node-b");
    assert!(
        !reachable(net, "node-b", &url),
        "node-b still reaches {url}"
    );
    assert!(reachable(net, CLIENT_HOST, &url), "the client lost {url}");
    net.heal("node-b").expect("heal node-b");
    wait_until(DEADLINE, "node-b reaches the coordinator again", || {
        reachable(net, "node-b", &url)
            .then_some(())
            .ok_or("cut".to_string())
    });

    net.isolate("node-b").expect("isolate node-b");
    let b = format!("http://{}:9/", net.addr("node-b").expect("node-b"));
    assert!(
        !reachable(net, CLIENT_HOST, &b),
        "{b} answers while isolated"
    );
    assert!(!reachable(net, "node-b", &url));
    net.heal("node-b").expect("heal node-b");
    wait_until(DEADLINE, "node-b answers again", || {
        reachable(net, CLIENT_HOST, &b)
            .then_some(())
            .ok_or("cut".to_string())
    });

    net.kill("node-a").expect("kill node-a");
    assert!(net.pids("node-a").expect("pids").is_empty());
    let a = c.agent(c.agent_idx("node-a").expect("node-a"));
    wait_until(DEADLINE, "node-a's agent reaped", || {
        a.try_exit().map(|_| ()).ok_or("running".to_string())
    });
    assert!(c.agent(c.agent_idx("node-b").expect("node-b")).running());
}
