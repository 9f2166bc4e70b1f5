//! Draining a host whose app has a fixed port range: on separate hosts each index keeps its
//! port number, since its replacement starts on another host while it still holds the port here.
//!
//! "Online" is judged by a real answer: [`Probe`] asks every index's `/health` on every agent
//! host from the client host every 100 ms (not the list, which reflects the agents' reports).

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use pmcluster_tests::{Cluster, render, wait_until};

use super::copies::running;
use super::probe::Probe;
use crate::{DEADLINE, wait_online};

const BASE_PORT: u16 = 4300;
const N: u32 = 6;
const AGENTS: [&str; 3] = ["node-a", "node-b", "node-c"];

/// `web`: the test app bound to its node's address on `4300-4399` (index i on 4300 + i), with
/// an HTTP health check, so that "online" means answering.
fn apply_web(c: &Cluster) {
    let path = c.root().join("web.json");
    let text = serde_json::json!({
        "name": "web",
        "script": c.testapp().display().to_string(),
        "instances": N,
        "port": format!("{BASE_PORT}-4399"),
        // Each start takes a second to listen: a handoff that stopped the old copy on the
        // replacement's start rather than on its first answer would leave a gap the probe sees.
        "env": {
            "TESTAPP_BIND": "${HOST}",
            "TESTAPP_VERSION": "${HOST}",
            "TESTAPP_STARTUP_DELAY_MS": "1000"
        },
        "health_check": {
            "check_type": "http",
            "url": "http://${HOST}:${PORT}/health",
            "interval": "1s",
            "timeout": "1s",
            "retries": 2
        }
    });
    fs::write(&path, text.to_string()).expect("write web.json");
    let file = path.display().to_string();
    c.cli(&["apply", "-f", &file]).assert_ok();
}

/// Lets `ms` milliseconds pass while the probe samples (a watch, not a wait for a condition).
fn pause(ms: u128) {
    let from = Instant::now();
    wait_until(DEADLINE, &format!("{ms} ms of probing"), || {
        if from.elapsed().as_millis() >= ms {
            Ok(())
        } else {
            Err("probing".to_string())
        }
    });
}

#[test]
fn hosts_drain_a_host_with_fixed_ports_leaves_no_index_unanswered() {
    let Some(c) = super::start(3, &[]) else {
        return;
    };
    let test_start = Instant::now();
    let net = c.net().expect("test hosts");
    apply_web(&c);
    let before = wait_online(&c, "web", N as usize);
    let drained = "node-a";
    let on_drained: Vec<u32> = before
        .iter()
        .filter(|i| i.node.as_deref() == Some(drained))
        .map(|i| i.index)
        .collect();
    assert!(
        !on_drained.is_empty(),
        "nothing on {drained}:{}",
        render(&before)
    );
    for i in &before {
        assert_eq!(i.port, Some(BASE_PORT + i.index as u16), "{}", i.json);
    }
    let kept: BTreeMap<u32, (Option<String>, Option<u32>)> = before
        .iter()
        .filter(|i| i.node.as_deref() != Some(drained))
        .map(|i| (i.index, (i.node.clone(), i.pid)))
        .collect();

    let probe = Probe::start(net, &AGENTS, BASE_PORT, N);
    // A second of samples before the drain: an index silent from the start would be the
    // probe's fault, not the drain's.
    pause(1000);
    let t0 = Instant::now();
    let out = c.cli(&["drain", drained]);
    out.assert_ok();
    assert!(out.stdout.contains("draining node-a"), "{out}");
    let hosts = net.netns_paths();
    let after = wait_until(
        DEADLINE,
        "node-a empty, ineligible, its copies gone",
        || {
            let list = c.instances("web")?;
            let nodes = c.nodes_json()?;
            let status = nodes
                .iter()
                .find(|n| n["name"] == drained)
                .map(|n| n["status"].clone())
                .unwrap_or_default();
            let on_a = list
                .iter()
                .filter(|i| i.node.as_deref() == Some(drained))
                .count();
            // The processes themselves, not only the coordinator's records.
            let procs_on_a = running(&hosts, "web")
                .into_values()
                .flatten()
                .filter(|(h, _)| h == drained)
                .count();
            let done = on_a == 0
                && procs_on_a == 0
                && list.len() == N as usize
                && list.iter().all(pmcluster_tests::Instance::live)
                && status == "ineligible";
            if done {
                Ok(list)
            } else {
                Err(format!(
                    "{drained} {status}, {on_a} listed and {procs_on_a} running on it:{}",
                    render(&list)
                ))
            }
        },
    );
    let took = t0.elapsed();
    // A few samples after the end, for a gap right at the last handoff.
    pause(500);
    let answers = probe.finish();
    eprintln!(
        "hosts: drain of {drained} ({} indices) finished after {took:?}; probe: {} samples, \
         hosts per index {:?}",
        on_drained.len(),
        answers.samples,
        answers.hosts
    );
    assert!(answers.samples >= 10, "{answers:?}");
    assert!(
        answers.gaps.is_empty(),
        "an index answered on no host: {:#?}",
        answers.gaps
    );
    for index in &on_drained {
        let now = after
            .iter()
            .find(|i| i.index == *index)
            .expect("the index is listed");
        let node = now.node.clone().unwrap_or_default();
        assert!(node != drained && !node.is_empty(), "{}", now.json);
        assert_eq!(now.port, Some(BASE_PORT + *index as u16), "{}", now.json);
        let seen = answers.hosts.get(index).cloned().unwrap_or_default();
        assert_eq!(
            seen,
            [drained.to_string(), node.clone()],
            "index {index} answered from these hosts in turn"
        );
    }
    for (index, was) in &kept {
        let now = after
            .iter()
            .find(|i| i.index == *index)
            .expect("the index is listed");
        assert_eq!(
            &(now.node.clone(), now.pid),
            was,
            "index {index} was touched"
        );
    }
    eprintln!("hosts: the drain test took {:?}", test_start.elapsed());
}
