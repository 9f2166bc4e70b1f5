//! The HA pair across test hosts: etcd on a host of its own, each coordinator on its own host,
//! three agent hosts, the CLI on the client host. The leader's host loses etcd only (it still
//! reaches the agents, the standby and the client): its lease runs out, the standby takes over,
//! the old leader steps down, the agents follow, and nothing that runs is restarted or moved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmcluster_tests::{
    CLIENT_HOST, Etcd, Instance, NODE_NAMES, Net, Pair, hosts_unavailable, render, skip, wait_until,
};

use crate::{DEADLINE, wait_online};

/// The pair's lease TTL (`--lease-ttl 4s`, as the harness starts it).
const TTL: Duration = Duration::from_secs(4);
/// The bound for the standby to take over: three lease TTLs, and slack for two shared cores.
const TAKEOVER_BOUND: Duration = Duration::from_secs(3 * 4 + 5);
const COORDINATORS: [&str; 2] = ["coord-a", "coord-b"];

/// Index -> (node, pid) of each listed instance.
fn placement(list: &[Instance]) -> BTreeMap<u32, (Option<String>, Option<u32>)> {
    list.iter()
        .map(|i| (i.index, (i.node.clone(), i.pid)))
        .collect()
}

/// Coordinator `i`'s own role and the agents it says are connected to it.
fn role(pair: &Pair, i: usize) -> Result<(String, u64), String> {
    let v = pair.status(Some(i)).map_err(|e| e.to_string())?;
    let me = v["coordinators"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["answered"] == true))
        .cloned()
        .ok_or_else(|| v.to_string())?;
    let role = me["role"].as_str().unwrap_or_default().to_string();
    Ok((role, me["agents_connected"].as_u64().unwrap_or(0)))
}

#[test]
fn hosts_ha_leader_cut_off_from_etcd_hands_over_and_nothing_restarts() {
    if let Some(reason) = hosts_unavailable() {
        skip("root", &reason);
        return;
    }
    let test_start = Instant::now();
    let mut names = vec!["etcd"];
    names.extend(COORDINATORS);
    names.extend(&NODE_NAMES[..3]);
    names.push(CLIENT_HOST);
    let net = Arc::new(Net::create(&names).expect("the test hosts"));
    let Some(etcd) = Etcd::single_on_or_skip(Arc::clone(&net), "etcd") else {
        return;
    };
    let pair = Pair::start_hosts(etcd, Arc::clone(&net), COORDINATORS, 3, &[])
        .expect("the pair and three agents start on their hosts");
    let c = pair.cluster();
    c.start_app("web", 6).ports(8).online().expect("web starts");
    let before = placement(&wait_online(c, "web", 6));
    let old = pair.wait_leader(DEADLINE).expect("a leader");
    let new = 1 - old;
    let old_host = pair.host(old).expect("the leader's host").to_string();
    wait_until(DEADLINE, "the three agents on the leader", || {
        let (r, agents) = role(&pair, old)?;
        if r == "leader" && agents == 3 {
            Ok(())
        } else {
            Err(format!("{r}, {agents} agents"))
        }
    });

    // Only etcd is cut off: the old leader still reaches the agents, the standby, the client.
    let t0 = Instant::now();
    net.partition_from(&old_host, &["etcd"])
        .expect("cut the leader's host off from etcd");
    // Both asked in each round, so that the moment each changed is known to within a round.
    let mut led_at = None;
    let mut stepped_at: Option<(Duration, String)> = None;
    let mut both_leading = 0;
    wait_until(
        TAKEOVER_BOUND,
        "the standby leading, the old leader not",
        || {
            let new_role = role(&pair, new);
            // Not answering status as a leader is not serving either.
            let old_role = role(&pair, old).unwrap_or_else(|e| (format!("no answer: {e}"), 0));
            let at = t0.elapsed();
            let new_leads = new_role.as_ref().is_ok_and(|(r, _)| r == "leader");
            let old_leads = old_role.0 == "leader";
            if new_leads && led_at.is_none() {
                led_at = Some(at);
            }
            if !old_leads && stepped_at.is_none() {
                stepped_at = Some((at, old_role.0.clone()));
            }
            if new_leads && old_leads {
                both_leading += 1;
            }
            if led_at.is_some() && stepped_at.is_some() {
                Ok(())
            } else {
                Err(format!("standby: {new_role:?}; old leader: {old_role:?}"))
            }
        },
    );
    let took = led_at.expect("the standby led");
    let (stepped, how) = stepped_at.expect("the old leader stepped down");
    eprintln!(
        "hosts: leader {} cut off from etcd; the standby led after {took:?} (lease TTL {TTL:?}); \
         the old leader stopped saying leader after {stepped:?} ({how}); rounds in which both \
         said leader: {both_leading}",
        pair.url(old)
    );
    // The old leader stops leading when it cannot renew, before etcd lets the lease go.
    assert_eq!(both_leading, 0, "both coordinators said leader at once");
    let followed = wait_until(DEADLINE, "the agents on the new leader", || {
        let (r, agents) = role(&pair, new)?;
        if r == "leader" && agents == 3 {
            Ok(t0.elapsed())
        } else {
            Err(format!("{r}, {agents} agents"))
        }
    });
    eprintln!("hosts: all 3 agents on the new leader after {followed:?}");
    c.wait_ready(&NODE_NAMES[..3], DEADLINE)
        .expect("every node ready on the new leader");
    let after = wait_online(c, "web", 6);
    assert_eq!(
        placement(&after),
        before,
        "an instance was restarted or moved by the failover:{}",
        render(&after)
    );

    // A write through the CLI given both URLs lands on the new leader.
    c.cli(&["scale", "web", "7"]).assert_ok();
    let seven = wait_online(c, "web", 7);
    let kept: BTreeMap<_, _> = placement(&seven)
        .into_iter()
        .filter(|(i, _)| *i < 6)
        .collect();
    assert_eq!(kept, before, "the scale touched a running instance");

    // Healed: the old leader finds the lease held and stays standby.
    net.heal(&old_host).expect("heal the old leader's host");
    let healed = Instant::now();
    wait_until(
        DEADLINE + 3 * TTL,
        "three lease TTLs after the heal",
        || {
            if let Ok((r, _)) = role(&pair, old)
                && r == "leader"
            {
                panic!("the old leader took over again after the heal");
            }
            if healed.elapsed() >= 3 * TTL {
                Ok(())
            } else {
                Err("watching".to_string())
            }
        },
    );
    let (r, _) = role(&pair, old).expect("the old leader answers status once healed");
    assert_eq!(r, "standby", "the old leader after the heal");
    assert_eq!(pair.leader(), Some(new));
    c.cli(&["scale", "web", "6"]).assert_ok();
    let six = wait_online(c, "web", 6);
    assert_eq!(placement(&six), before, "after the heal");
    let via_old = c
        .try_cli_at(&pair.url(old), &["nodes", "-o", "json"], DEADLINE)
        .expect("the CLI runs");
    via_old.assert_ok();
    eprintln!("hosts: the HA test took {:?}", test_start.elapsed());
}
