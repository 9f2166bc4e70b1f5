//! Signals and messages for running instances (`signal`, `send`): one command per node to its
//! agent, and the agents' answers routed back to the caller. Nothing is stored: a handout is
//! for the processes running now, and one that finds no agent says so per instance.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::model::{CommandResult, Delivery, Handout, InstanceCommand};

use super::{AgentCommand, CommandRoute, Control, ControlError, Result, find_app};

/// A handout on its way: what is already decided, and one answer to wait for per node.
#[derive(Debug)]
pub struct Pending {
    pub decided: Vec<Delivery>,
    pub waits: Vec<Wait>,
}

/// The answer of one node's agent, still to come.
#[derive(Debug)]
pub struct Wait {
    pub request_id: u64,
    pub node: String,
    /// Index and id of each instance the command names.
    pub instances: Vec<(u32, Uuid)>,
    pub reply: oneshot::Receiver<CommandResult>,
}

impl Wait {
    /// The deliveries of this node's instances from its answer, or `missing` for each when none
    /// came. An instance the answer leaves out was not delivered.
    pub fn deliveries(&self, answer: Option<CommandResult>, missing: &str) -> Vec<Delivery> {
        self.instances
            .iter()
            .map(|(index, id)| {
                let outcome = match &answer {
                    None => Err(missing.to_string()),
                    Some(a) => a
                        .outcomes
                        .iter()
                        .find(|(named, _)| Uuid::parse_str(named).ok() == Some(*id))
                        .map_or_else(
                            || Err("the agent did not answer for this instance".to_string()),
                            |(_, o)| o.clone(),
                        ),
                };
                Delivery {
                    index: *index,
                    instance_id: *id,
                    node: Some(self.node.clone()),
                    outcome,
                    // The command left; with no answer, whether it was carried out is unknown.
                    unconfirmed: answer.is_none(),
                }
            })
            .collect()
    }
}

impl Control {
    /// Sends `handout` to every instance of the app (or of one index) through their agents.
    /// NOT_FOUND for an unknown app or index.
    pub fn hand_out(&self, app: &str, index: Option<u32>, handout: &Handout) -> Result<Pending> {
        let inner = self.lock();
        let record = find_app(&inner.state, app)?;
        if let Some(i) = index
            && i >= record.spec.instances
        {
            return Err(ControlError::NotFound(format!(
                "app {app:?} has no instance {i}: it has {} (indices 0-{})",
                record.spec.instances,
                record.spec.instances.saturating_sub(1)
            )));
        }
        let mut decided = Vec::new();
        let mut by_node: std::collections::BTreeMap<String, Vec<(u32, Uuid)>> =
            std::collections::BTreeMap::new();
        for inst in inner.state.app_instances(app) {
            // A stopped instance is meant to be down: not a target, as for restart.
            if index.is_some_and(|i| i != inst.index) || inst.stopped {
                continue;
            }
            match &inst.node {
                Some(node) => by_node
                    .entry(node.clone())
                    .or_default()
                    .push((inst.index, inst.id)),
                None => decided.push(Delivery {
                    index: inst.index,
                    instance_id: inst.id,
                    node: None,
                    outcome: Err("pending: not placed on a node".to_string()),
                    unconfirmed: false,
                }),
            }
        }
        let mut waits = Vec::new();
        for (node, instances) in by_node {
            let session = inner
                .nodes
                .get(&node)
                .and_then(|l| l.session.as_ref())
                .filter(|s| s.quarantine.is_none())
                .map(|s| s.commands.clone());
            let undelivered = |why: String| {
                instances
                    .iter()
                    .map(|(index, id)| Delivery {
                        index: *index,
                        instance_id: *id,
                        node: Some(node.clone()),
                        outcome: Err(why.clone()),
                        unconfirmed: false,
                    })
                    .collect::<Vec<_>>()
            };
            let Some(commands) = session else {
                decided.extend(undelivered(format!("node {node} is not connected")));
                continue;
            };
            let request_id = self.ids.fetch_add(1, Ordering::Relaxed);
            let command = InstanceCommand {
                request_id,
                instance_ids: instances.iter().map(|(_, id)| *id).collect(),
                handout: handout.clone(),
            };
            if commands.try_send(AgentCommand::Hand(command)).is_err() {
                decided.extend(undelivered(format!("node {node} is not reading its link")));
                continue;
            }
            let (tx, rx) = oneshot::channel();
            self.command_routes.lock().insert(
                request_id,
                CommandRoute {
                    node: node.clone(),
                    reply: tx,
                },
            );
            waits.push(Wait {
                request_id,
                node,
                instances,
                reply: rx,
            });
        }
        Ok(Pending { decided, waits })
    }

    /// Routes an agent's answer to its caller (an answer from another node is ignored).
    /// Takes only the routes' lock: it runs on the session's async worker.
    pub fn command_result(&self, node: &str, result: CommandResult) {
        let mut routes = self.command_routes.lock();
        if routes
            .get(&result.request_id)
            .is_none_or(|r| r.node != node)
        {
            return;
        }
        if let Some(route) = routes.remove(&result.request_id) {
            // The caller may have given up waiting.
            let _ = route.reply.send(result);
        }
    }

    /// Drops the route of a command whose caller stopped waiting.
    pub fn forget_command(&self, request_id: u64) {
        self.command_routes.lock().remove(&request_id);
    }
}
