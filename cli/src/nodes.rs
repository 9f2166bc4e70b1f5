//! The node verbs: `nodes`, `nodes adopt`, `nodes forget`, `topology`, `drain` and `undrain`.

use pmcluster_proto::v1 as pb;

use crate::args::{AdoptArgs, NodeArg, TopologyArgs};
use crate::commands::{Ctx, list_instances, plural};
use crate::failover::call;
use crate::output;

/// `nodes`.
pub async fn nodes(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let nodes = call!(conn, list_nodes, pb::ListNodesRequest {})
        .await?
        .nodes;
    if ctx.structured() {
        return ctx.value(&output::nodes_json(&nodes));
    }
    if nodes.is_empty() {
        return ctx.line(output::NO_NODES);
    }
    ctx.text(&output::nodes_table(&nodes, output::now_ms()))?;
    for n in nodes.iter().filter(|n| !n.message.is_empty()) {
        ctx.line(&format!(
            "{} is {}: {}",
            n.name,
            output::node_status_name(n.status),
            n.message
        ))?;
    }
    Ok(())
}

/// `nodes adopt NODE|--all`.
pub async fn adopt(args: AdoptArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let target = pb::NodeTarget {
        node: args.node.unwrap_or_default(),
    };
    let nodes = call!(conn, adopt_node, target).await?.nodes;
    if ctx.structured() {
        return ctx.value(&output::nodes_json(&nodes));
    }
    for n in &nodes {
        ctx.line(&format!(
            "adopted {}: {} now this cluster's (status {})",
            n.name,
            plural(n.instances, "instance"),
            output::node_status_name(n.status)
        ))?;
        if !n.message.is_empty() {
            ctx.line(&format!("  {}", n.message))?;
        }
    }
    Ok(())
}

/// `nodes forget NODE`.
pub async fn forget(args: NodeArg, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let target = pb::NodeTarget {
        node: args.node.clone(),
    };
    let node = call!(conn, forget_node, target)
        .await?
        .node
        .unwrap_or_default();
    if ctx.structured() {
        return ctx.value(&output::node_json(&node));
    }
    let moved = match node.instances {
        0 => String::new(),
        n => format!(
            "; its {} rescheduled on the other nodes (see: pmcluster list)",
            plural(n, "instance")
        ),
    };
    ctx.line(&format!(
        "forgot node {}{moved}; if its agent comes back, the node joins afresh and its agent \
         stops what it still runs",
        args.node,
    ))
}

/// `topology [APP]`: nodes with their instances as a tree.
pub async fn topology(args: TopologyArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let nodes = call!(conn, list_nodes, pb::ListNodesRequest {})
        .await?
        .nodes;
    let app = args.app.unwrap_or_default();
    // Placements, as `nodes` counts them: a removed instance's process still ending is none.
    let mut instances = list_instances(&mut conn, &app).await?;
    instances.retain(|i| !i.removed);
    if ctx.structured() {
        return ctx.value(&output::topology_json(&nodes, &instances));
    }
    ctx.text(&output::topology_text(&nodes, &instances))
}

/// `drain NODE` / `undrain NODE`.
pub async fn drain(args: NodeArg, drain: bool, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let target = pb::NodeTarget {
        node: args.node.clone(),
    };
    let reply = if drain {
        call!(conn, drain_node, target).await?
    } else {
        call!(conn, undrain_node, target).await?
    };
    if ctx.structured() {
        return ctx.value(&output::node_json(&reply.node.unwrap_or_default()));
    }
    ctx.line(&drain_line(&args.node, drain, &reply))
}

/// What `drain` / `undrain` did: an undrain of a node that was not drained (or a second drain)
/// wrote nothing, and saying "eligible again" would suggest it had been kept from scheduling.
fn drain_line(name: &str, drain: bool, reply: &pb::NodeReply) -> String {
    let node = reply.node.clone().unwrap_or_default();
    let status = output::node_status_name(node.status);
    let to_move = plural(node.instances, "instance");
    match (drain, reply.unchanged) {
        (true, false) => format!(
            "draining {name}: {to_move} to move, one at a time, each once its replacement is online or its app's update.healthy_deadline has passed (status {status}); watch with: pmcluster nodes"
        ),
        (true, true) => format!(
            "{name} is draining already; nothing changed ({to_move} still to move; watch with: pmcluster nodes)"
        ),
        (false, false) => format!("{name} is eligible again (status {status})"),
        (false, true) => format!("{name} is not drained; nothing changed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: pb::NodeStatus, instances: u32, unchanged: bool) -> pb::NodeReply {
        pb::NodeReply {
            node: Some(pb::Node {
                name: "n2".into(),
                status: status as i32,
                instances,
                ..pb::Node::default()
            }),
            unchanged,
        }
    }

    #[test]
    fn drain_and_undrain_say_when_nothing_changed() {
        use pb::NodeStatus::{Draining, Ready};
        assert_eq!(
            drain_line("n2", false, &reply(Ready, 2, true)),
            "n2 is not drained; nothing changed"
        );
        assert_eq!(
            drain_line("n2", false, &reply(Ready, 2, false)),
            "n2 is eligible again (status ready)"
        );
        assert_eq!(
            drain_line("n2", true, &reply(Draining, 1, true)),
            "n2 is draining already; nothing changed (1 instance still to move; watch with: \
             pmcluster nodes)"
        );
        assert!(
            drain_line("n2", true, &reply(Draining, 2, false))
                .starts_with("draining n2: 2 instances to move, one at a time"),
        );
    }
}
