//! What a person should know of the cluster's nodes before a rollout runs, said on stderr
//! beside what `reload` and `restart --rolling` print.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use pmcluster_spec::app::PortSpec;

use crate::failover::{Conn, call};
use crate::output;

/// What a person should know of the nodes before a rollout of `app` (to `spec`) runs. Only the
/// nodes its placement constraints allow count.
/// - With none ready, no replacement can start: the rollout waits, then fails at its
///   `progress_deadline`. A drain left on during a `reload` looked like a hang.
/// - With fixed ports and one ready node, each instance is replaced stop-then-start: a
///   replacement never shares a node with the instance that holds its port. A trial's `reload`
///   (PM2's word for "without downtime") dropped requests, unsaid.
pub(super) async fn rollout_note(conn: &mut Conn, app: &str, spec: &AppSpec) -> Option<String> {
    let nodes = call!(conn, list_nodes, pb::ListNodesRequest {})
        .await
        .ok()?;
    let labels = |n: &pb::Node| n.labels.clone().into_iter().collect();
    let fitting: Vec<&pb::Node> = (nodes.nodes.iter())
        .filter(|n| {
            let labels = labels(n);
            spec.placement
                .constraints
                .iter()
                .all(|c| c.matches(&labels))
        })
        .collect();
    let ready = (fitting.iter())
        .filter(|n| n.status == pb::NodeStatus::Ready as i32)
        .count();
    if ready == 0 {
        return Some(no_ready_note(app, &nodes.nodes, &fitting));
    }
    if !matches!(spec.port, PortSpec::Single(_) | PortSpec::Range(..)) || ready > 1 {
        return None;
    }
    Some(format!(
        "note: {app} has fixed ports and one node to run on, so each instance is stopped \
         before its replacement starts (a short gap per instance); `auto:` ports (with \
         `pmcluster endpoints {app}` for the load balancer) give updates without downtime"
    ))
}

/// [`rollout_note`] when none of the `fitting` nodes (of `all`) is ready: which are not, and
/// what would make one ready, for the statuses there are.
fn no_ready_note(app: &str, all: &[pb::Node], fitting: &[&pb::Node]) -> String {
    let start = format!("note: no node can take {app}'s new instances now");
    let end = "the rollout waits, and fails at its progress_deadline unless one can";
    if fitting.is_empty() {
        let why = match all.is_empty() {
            true => "no node has joined",
            false => "no node matches its placement constraints",
        };
        return format!("{start} ({why}); {end}");
    }
    let mut seen: Vec<String> = (fitting.iter().take(3))
        .map(|n| format!("{} {}", n.name, output::node_status_name(n.status)))
        .collect();
    if fitting.len() > 3 {
        seen.push(format!("{} more", fitting.len() - 3));
    }
    let has = |s: pb::NodeStatus| fitting.iter().any(|n| n.status == s as i32);
    let mut ways = Vec::new();
    if has(pb::NodeStatus::Draining) || has(pb::NodeStatus::Ineligible) {
        ways.push("undrain one (pmcluster undrain NODE)");
    }
    if has(pb::NodeStatus::Quarantined) {
        ways.push("adopt one (pmcluster nodes adopt NODE)");
    }
    if has(pb::NodeStatus::Down) || has(pb::NodeStatus::Reconnecting) {
        ways.push("wait for a node down or reconnecting to come back");
    }
    let ways = match ways.is_empty() {
        true => String::new(),
        false => format!(": {}", ways.join(", or ")),
    };
    format!("{start} ({}); {end}{ways}", seen.join(", "))
}
