//! Node names are unique among connected agents.

use pmcluster_tests::{Cluster, now_ms, wait_until};
use serde_json::Value;

use crate::DEADLINE;

#[test]
fn duplicate_node_name_refused() {
    let mut c = Cluster::start(1).expect("coordinator and node-a start");
    let first = c.agent_idx("node-a").expect("node-a was started");
    let second = c.add_agent("node-a").expect("a second node-a agent spawns");

    let status = wait_until(DEADLINE, "the second node-a agent to exit", || {
        c.agent(second).try_exit().ok_or_else(|| {
            format!(
                "still running; stderr:\n{}",
                c.agent(second).stderr_tail(10)
            )
        })
    });
    let stderr = c.agent(second).stderr();
    assert!(
        !status.success(),
        "the refused agent exits non-zero: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("node-a") && stderr.contains("already connected"),
        "the refused agent says why:\n{stderr}"
    );

    // The first agent is untouched: still running, still the only node-a, still reporting.
    assert!(
        c.agent(first).running(),
        "the first node-a agent still runs"
    );
    let refused_at = now_ms();
    let nodes = wait_until(DEADLINE, "node-a to report after the refusal", || {
        let nodes = c.nodes_json()?;
        let fresh = nodes.len() == 1
            && nodes[0]["name"] == "node-a"
            && nodes[0]["status"] == "ready"
            && nodes[0]["last_heartbeat_ms"].as_i64().unwrap_or(0) > refused_at;
        if fresh {
            Ok(nodes)
        } else {
            Err(Value::Array(nodes).to_string())
        }
    });
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        c.agent(first).running(),
        "the first node-a agent still runs"
    );
}
