//! Which node `up` runs the agent as: the one its data dir belongs to, `--node-name`, or the
//! hostname, and when a rename is asked for.

use std::path::Path;

use crate::error::UsageError;

/// The node name an agent's identity file (`identity.json`) records, if it records one.
pub fn recorded_node_name(identity: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(identity).ok()?;
    value["node_name"]
        .as_str()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The node name `up` runs the agent under, and whether the agent renames its data dir's node to
/// it: the one its data dir already belongs to (the agent refuses any other), else
/// `--node-name`, else `hostname`. A `--node-name` other than the recorded one is refused,
/// saying what to do, unless `rename` (`--rename-node`) and no agent runs: a running agent keeps
/// its name. `running` says the agent runs now.
pub fn choose_node_name(
    flag: Option<&str>,
    recorded: Option<&str>,
    hostname: impl FnOnce() -> String,
    agent_dir: &Path,
    running: bool,
    rename: bool,
) -> Result<(String, bool), UsageError> {
    // Before anything starts: the agent would refuse it only after `up` had started the
    // coordinator.
    if let Some(wanted) = flag
        && let Err(e) = pmcluster_spec::app::validate_node_name(wanted)
    {
        return Err(UsageError::new(format!("--node-name: {}", e.message)));
    }
    let from_host = |hostname: String| match pmcluster_spec::app::validate_node_name(&hostname) {
        Ok(()) => Ok((hostname, false)),
        Err(e) => Err(UsageError::new(format!(
            "this host's name cannot name its node ({}); give the node a name with \
             --node-name NAME",
            e.message
        ))),
    };
    match (flag, recorded) {
        (Some(wanted), Some(node)) if wanted != node && rename && !running => {
            Ok((wanted.to_string(), true))
        }
        (Some(wanted), Some(node)) if wanted != node && rename => Err(UsageError::new(format!(
            "--rename-node: the agent running from this data directory is node {node:?}, and a \
             running agent keeps its name; run `pmcluster down` (it stops the agent and its \
             instances), then `pmcluster up --node-name {wanted} --rename-node`"
        ))),
        (Some(wanted), Some(node)) if wanted != node => {
            let (is, first) = match running {
                true => (
                    "the agent running from this data directory is",
                    "`pmcluster down`, then ",
                ),
                false => ("this data directory's agent is", ""),
            };
            Err(UsageError::new(format!(
                "--node-name {wanted}: {is} node {node:?} (its data dir {} belongs to it, and \
                 an agent keeps its name); leave out --node-name, or give --node-name {node}, to \
                 go on as {node:?}. To rename node {node:?} to {wanted:?} (the cluster moves its \
                 instances to the new name): {first}`pmcluster up --node-name {wanted} \
                 --rename-node`. To run this machine as a new node {wanted:?} instead: \
                 `pmcluster down`, move {} aside, `pmcluster up --node-name {wanted}`, then \
                 `pmcluster nodes forget {node}` so that {node:?}'s instances are placed on \
                 {wanted:?}",
                agent_dir.display(),
                agent_dir.display(),
            )))
        }
        (_, Some(node)) => Ok((node.to_string(), false)),
        (Some(wanted), None) => Ok((wanted.to_string(), false)),
        (None, None) => from_host(hostname()),
    }
}
