//! Answers the coordinator's instance commands (`pmcluster signal`, `pmcluster send`): a signal
//! to each named instance's main process, or one line to the message socket it listens on
//! (`PMCLUSTER_MESSAGES`), then one `CommandResult` saying, per instance, what became of it.
//!
//! The signal goes to the main process only, not its group: an app that forks workers decides
//! itself what a signal means for them (as a reload does), and the stop path already owns the
//! group-wide signals.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::instance_command::Action;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::model::{InstanceId, InstanceState};
use crate::process::to_pid;
use crate::state::Agent;

/// How long one message may take to reach an instance (connect and write).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// The instance commands of one link session. Dropping it aborts every task.
pub(crate) struct Handouts {
    agent: Arc<Agent>,
    out: mpsc::Sender<pb::AgentMessage>,
    tasks: JoinSet<()>,
}

impl Handouts {
    pub fn new(agent: Arc<Agent>, out: mpsc::Sender<pb::AgentMessage>) -> Handouts {
        Handouts {
            agent,
            out,
            tasks: JoinSet::new(),
        }
    }

    /// Starts carrying out one command; its result goes out when every instance is done.
    pub fn start(&mut self, command: pb::InstanceCommand) {
        let agent = Arc::clone(&self.agent);
        let out = self.out.clone();
        self.tasks.spawn(async move {
            let mut outcomes = Vec::with_capacity(command.instance_ids.len());
            for raw in &command.instance_ids {
                let id = InstanceId::new(raw);
                let outcome = match &command.action {
                    Some(Action::Signal(name)) => signal(&agent, &id, name),
                    Some(Action::Message(text)) => message(&agent, &id, text).await,
                    None => Err("the coordinator sent no action".to_string()),
                };
                if let Err(why) = &outcome {
                    tracing::info!(instance = %raw, "instance command not delivered: {why}");
                }
                outcomes.push(pb::CommandOutcome {
                    instance_id: raw.clone(),
                    delivered: outcome.is_ok(),
                    error: outcome.err().unwrap_or_default(),
                });
            }
            let result = pb::CommandResult {
                request_id: command.request_id,
                outcomes,
            };
            // The session may have ended meanwhile: the coordinator tells its caller so.
            let _ = out
                .send(pb::AgentMessage {
                    msg: Some(Up::CommandResult(result)),
                })
                .await;
        });
    }

    /// Waits for a task to finish; pending forever when there is none.
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!("instance command task failed: {e}"),
            None => std::future::pending().await,
        }
    }
}

/// The main process of a running instance.
fn running_pid(agent: &Agent, id: &InstanceId) -> Result<u32, String> {
    let status = agent
        .state
        .status(id)
        .ok_or_else(|| "this agent does not run the instance".to_string())?;
    let running = matches!(
        status.state,
        InstanceState::Launching | InstanceState::Online
    );
    status
        .pid
        .filter(|_| running)
        .ok_or_else(|| format!("not running ({:?})", status.state).to_lowercase())
}

fn signal(agent: &Agent, id: &InstanceId, name: &str) -> Result<(), String> {
    let signal = Signal::from_str(name).map_err(|_| format!("this host knows no {name}"))?;
    let pid = running_pid(agent, id)?;
    kill(to_pid(pid), signal).map_err(|e| format!("cannot send {name} to pid {pid}: {e}"))?;
    tracing::info!(instance = %id.as_str(), pid, "sent {name}");
    Ok(())
}

/// The user or group the instance's spec runs it as (`user web`, `group www`), if any.
fn runs_as(agent: &Agent, id: &InstanceId) -> Option<String> {
    let inner = agent.state.lock();
    let target = inner.instances.get(id)?.target.borrow();
    let s = &target.assignment.spec.as_ref().ok()?.supervision;
    match (&s.user, &s.group) {
        (Some(user), _) => Some(format!("user {user}")),
        (None, Some(group)) => Some(format!("group {group}")),
        (None, None) => None,
    }
}

async fn message(agent: &Agent, id: &InstanceId, text: &str) -> Result<(), String> {
    running_pid(agent, id)?;
    let path = agent
        .message_socket(id)
        .ok_or_else(|| "the instance id is not a plain name".to_string())?;
    let deliver = async {
        let mut stream =
            tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        match runs_as(agent, id) {
                            // See `launch`: the socket is in the agent's private data dir.
                            Some(who) => format!(
                                "the instance runs as {who}, and such an instance gets no \
                                 message socket (PMCLUSTER_MESSAGES): it could not reach the \
                                 agent's private directory; use signal instead"
                            ),
                            None => "the instance does not listen on its message socket \
                                     (PMCLUSTER_MESSAGES)"
                                .to_string(),
                        }
                    }
                    _ => format!("cannot reach its message socket: {e}"),
                })?;
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| format!("writing to its message socket: {e}"))?;
        stream
            .shutdown()
            .await
            .map_err(|e| format!("closing its message socket: {e}"))
    };
    tokio::time::timeout(MESSAGE_TIMEOUT, deliver)
        .await
        .map_err(|_| {
            format!(
                "its message socket took more than {}s",
                MESSAGE_TIMEOUT.as_secs()
            )
        })?
}
