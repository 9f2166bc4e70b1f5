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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, status: pb::NodeStatus) -> pb::Node {
        pb::Node {
            name: name.into(),
            status: status as i32,
            ..pb::Node::default()
        }
    }

    #[test]
    fn the_no_ready_note_names_the_nodes_and_the_ways_out_they_have() {
        use pb::NodeStatus::{Down, Draining, Quarantined, Reconnecting};
        let note = |all: &[pb::Node], fitting: &[usize]| {
            let fitting: Vec<&pb::Node> = fitting.iter().map(|i| &all[*i]).collect();
            no_ready_note("web", all, &fitting)
        };
        let start = "note: no node can take web's new instances now";
        let end = "the rollout waits, and fails at its progress_deadline unless one can";
        assert_eq!(
            note(&[], &[]),
            format!("{start} (no node has joined); {end}")
        );
        let a = [node("a", Draining), node("b", Down)];
        assert_eq!(
            note(&a, &[]),
            format!("{start} (no node matches its placement constraints); {end}")
        );
        assert_eq!(
            note(&a, &[0, 1]),
            format!(
                "{start} (a draining, b down); {end}: undrain one (pmcluster undrain NODE), or \
                 wait for a node down or reconnecting to come back"
            )
        );
        let q = [node("q", Quarantined), node("r", Reconnecting)];
        assert_eq!(
            note(&q, &[0]),
            format!("{start} (q quarantined); {end}: adopt one (pmcluster nodes adopt NODE)")
        );
        let many: Vec<pb::Node> = (0..5).map(|i| node(&format!("n{i}"), Down)).collect();
        assert!(
            note(&many, &[0, 1, 2, 3, 4]).contains("(n0 down, n1 down, n2 down, 2 more)"),
            "{}",
            note(&many, &[0, 1, 2, 3, 4])
        );
    }
}
