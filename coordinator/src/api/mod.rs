//! gRPC services: thin adapters between the wire and [`Control`]. Requests are converted (and
//! validated) at this boundary, replies converted through `wire`; errors map to status codes in
//! one place. A handler reaches the control only through its service's `control()`, once, first,
//! and only as [`Served`] allows.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::control::{Action, AgentCommand, ApplyCmd, Control, ControlError, ScaleCmd};
use crate::lead::Seat;
use crate::model::{LogChunk, LogsQuery, NodeView, Registration, Report};
use crate::wire;

pub mod access;
pub mod convert;

use convert::target;

/// How long `signal` and `send` wait for the agents' answers.
const HANDOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The server's shutdown: `cancel` fires on SIGTERM/SIGINT, and every task a service spawns is
/// in `tasks`, so the server can wait for them (within its grace) instead of leaving them
/// detached. Long-lived streams (agent sessions, `logs -f`, `events`, endpoints) end on `cancel`:
/// they never end by themselves, and a graceful shutdown waits for every open stream.
#[derive(Clone, Default)]
pub struct Lifecycle {
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

/// The control as a handler reaches it, on an async worker. An async worker must never wait
/// long for the state lock: a write planning thousands of placements holds it for seconds, and
/// a worker waiting as long answers no HTTP/2 ping (agents give up after 3 s) and serves no
/// other call. So a handler gets no `&Control` of its own: it hands a closure to [`Served::read`]
/// or [`Served::write`], which run it where that cannot happen, and calls directly only what
/// never takes the state lock (the methods below that are not async).
pub struct Served {
    control: Arc<Control>,
    life: Lifecycle,
}

impl Served {
    pub fn new(control: Arc<Control>, life: &Lifecycle) -> Served {
        Served {
            control,
            life: life.clone(),
        }
    }

    /// Runs `f` (a control call that only reads): here while the state lock is free, or else on
    /// a blocking thread, as [`Served::write`] does. The hop to a blocking thread costs every
    /// call about 0.05 ms, so only a call that would wait takes it.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, Status> {
        if self.control.state_free() {
            return Ok(f(&self.control)?);
        }
        self.off_workers(f, "read").await
    }

    /// Runs `f` (a control call that may commit to the store) on a blocking thread: an fsync
    /// must not hold an async worker, and with it every other call and session on that worker.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, Status> {
        self.off_workers(f, "write").await
    }

    /// `f` on a blocking thread of the server's own: tracked, so a shutdown waits for it (within
    /// its grace). A panic in `f` (a bug) fails this call only.
    async fn off_workers<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
        what: &'static str,
    ) -> Result<T, Status> {
        let control = self.control.clone();
        match self.life.tasks.spawn_blocking(move || f(&control)).await {
            Ok(result) => Ok(result?),
            Err(e) => {
                tracing::error!(error = %e, "a {what} failed to run");
                Err(Status::internal(format!(
                    "the coordinator failed this {what}; see its log"
                )))
            }
        }
    }

    /// `f` here if the state lock is free this instant, else `None`: for a poller that may as
    /// well look again at its next round, and so should not wait at all.
    pub fn poll<T>(&self, f: impl FnOnce(&Control) -> T) -> Option<T> {
        self.control.state_free_now().then(|| f(&self.control))
    }

    /// `stream`, ended when the server shuts down or the control retires (this coordinator
    /// stepped down) with [`Served::ended`]'s UNAVAILABLE: a clean end would read as "nothing
    /// more to follow", and a client would stop rather than follow on at the leader. A stream
    /// that ends by itself (an app deleted under `logs -f`) still ends cleanly.
    fn until_over<T: Send + 'static>(
        &self,
        seat: &Arc<Seat>,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> BoxStream<T> {
        let (shutdown, retired, seat) = (
            self.life.cancel.clone(),
            self.control.retired_token(),
            seat.clone(),
        );
        let over = Box::pin(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = retired.cancelled() => {}
            }
            Served::ended(&seat)
        });
        let state = (Box::pin(stream), Some(over));
        Box::pin(futures::stream::unfold(
            state,
            |(mut stream, over)| async move {
                let mut over = over?;
                tokio::select! {
                    biased;
                    status = &mut over => Some((Err(status), (stream, None))),
                    item = stream.next() => item.map(|item| (item, (stream, Some(over)))),
                }
            },
        ))
    }

    /// How a stream ends when its coordinator leaves office or shuts down: UNAVAILABLE, as a
    /// standby refuses, with the leader in its metadata once this one knows it, so that a client
    /// follows on there.
    fn ended(seat: &Seat) -> Status {
        match seat.control() {
            Ok(_) => Status::unavailable("this coordinator is shutting down"),
            Err(refusal) => refusal,
        }
    }

    // What a worker may call directly: none of these takes the state lock (a report waits for
    // it 2 ms at most and is otherwise parked; see `control/parked_tests.rs`).

    pub fn retired_token(&self) -> CancellationToken {
        self.control.retired_token()
    }

    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<crate::model::Event> {
        self.control.subscribe_events()
    }

    pub fn recent_events(&self, app: &str, n: usize) -> Vec<crate::model::Event> {
        self.control.recent_events(app, None, n)
    }

    pub fn forget_command(&self, request_id: u64) {
        self.control.forget_command(request_id);
    }

    pub fn report(&self, node: &str, session_id: u64, report: Report) {
        self.control.report(node, session_id, report);
    }

    pub fn log_chunk(&self, node: &str, chunk: LogChunk) {
        self.control.log_chunk(node, chunk);
    }

    pub fn command_result(&self, node: &str, result: crate::model::CommandResult) {
        self.control.command_result(node, result);
    }

    pub fn list_tokens(&self) -> Vec<crate::model::TokenRecord> {
        self.control.list_tokens()
    }

    /// Ends a session, off the workers: it takes the state lock, and agents dropping their
    /// links at once must not hold every worker.
    pub fn detach(&self, node: String, session_id: u64) {
        let control = self.control.clone();
        self.life
            .tasks
            .spawn_blocking(move || control.detach(&node, session_id));
    }
}

/// The public `Cluster` service.
pub struct ClusterApi {
    pub seat: Arc<Seat>,
    pub life: Lifecycle,
}

impl ClusterApi {
    /// The control this service serves, or why it serves none now. Every handler asks once, at
    /// its start, and nothing else reaches the control.
    fn control(&self) -> Result<Served, Status> {
        Ok(Served::new(self.seat.control()?, &self.life))
    }

    /// `start`, `stop` and a restart of one or every instance.
    async fn act(
        &self,
        control: &Served,
        t: pb::InstanceTarget,
        action: Action,
    ) -> Result<Response<pb::ActionReply>, Status> {
        if t.rolling {
            // Only a restart rolls; a flag that does nothing must not read as if it did.
            return Err(Status::invalid_argument(format!(
                "rolling: only a restart is rolling; leave it out of a {}",
                action.as_str()
            )));
        }
        let (app, index) = target(t);
        let name = app.clone();
        let (affected, changed) = control.write(move |c| c.act(&app, index, action)).await?;
        // What the agent must carry out; a disable or enable only changes the endpoints this
        // coordinator serves, which happens at once.
        let quarantined_nodes = match action {
            Action::Start | Action::Stop | Action::Restart => {
                control
                    .read(move |c| Ok(c.quarantined_holding(&name, index)))
                    .await?
            }
            Action::Disable | Action::Enable => Vec::new(),
        };
        Ok(Response::new(pb::ActionReply {
            affected,
            deployment: None,
            quarantined_nodes,
            changed: Some(changed),
        }))
    }

    /// A signal or message for instances: sent through their agents, answered per instance
    /// once every agent answered or [`HANDOUT_WAIT`] passed.
    async fn hand_out(
        &self,
        (app, index, handout): (String, Option<u32>, crate::model::Handout),
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        let control = self.control()?;
        let pending = control
            .read(move |c| c.hand_out(&app, index, &handout))
            .await?;
        let mut deliveries = pending.decided;
        let deadline = tokio::time::Instant::now() + HANDOUT_WAIT;
        for mut wait in pending.waits {
            let answer = match tokio::time::timeout_at(deadline, &mut wait.reply).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(format!(
                    "node {} disconnected before it answered",
                    wait.node
                )),
                Err(_) => {
                    control.forget_command(wait.request_id);
                    Err(format!(
                        "node {} did not answer within {}s",
                        wait.node,
                        HANDOUT_WAIT.as_secs()
                    ))
                }
            };
            match answer {
                Ok(a) => deliveries.extend(wait.deliveries(Some(a), "")),
                Err(why) => deliveries.extend(wait.deliveries(None, &why)),
            }
        }
        deliveries.sort_by_key(|d| (d.index, d.instance_id));
        Ok(Response::new(pb::DeliveryReply {
            deliveries: deliveries.into_iter().map(pb::Delivery::from).collect(),
        }))
    }

    /// A node command that answers with the node.
    async fn node_command(
        &self,
        r: Request<pb::NodeTarget>,
        f: fn(&Control, &str) -> Result<NodeView, ControlError>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let control = self.control()?;
        let node = r.into_inner().node;
        let node = control.write(move |c| f(c, &node)).await?;
        Ok(Response::new(pb::NodeReply {
            node: Some(node.into()),
            unchanged: false,
        }))
    }

    async fn drain_command(
        &self,
        r: Request<pb::NodeTarget>,
        drain: bool,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let control = self.control()?;
        let node = r.into_inner().node;
        let (node, changed) = control.write(move |c| c.set_drain(&node, drain)).await?;
        Ok(Response::new(pb::NodeReply {
            node: Some(node.into()),
            unchanged: !changed,
        }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn apply_app(
        &self,
        r: Request<pb::ApplyAppRequest>,
    ) -> Result<Response<pb::ApplyAppReply>, Status> {
        let control = self.control()?;
        let caller = r.extensions().get::<Caller>().cloned();
        let cmd = ApplyCmd::try_from(r.into_inner())?;
        let applied = control.write(move |c| c.apply_app(cmd)).await?;
        let deployment = applied
            .deployment
            .as_ref()
            .map(|d| wire::deployment(&applied.app, d));
        // The app as it is now (a command right after this one may already show).
        let name = applied.app.clone();
        let app = control.read(move |c| c.get_app(&name)).await.ok();
        Ok(Response::new(pb::ApplyAppReply {
            app: Some(
                app.as_ref()
                    .map(|a| wire::app_shown(a, Caller::sees_env_of(caller.as_ref(), &a.spec.name)))
                    .unwrap_or_default(),
            ),
            created: applied.created,
            changed: applied.changed,
            deployment,
        }))
    }

    async fn get_app(&self, r: Request<pb::GetAppRequest>) -> Result<Response<pb::App>, Status> {
        let control = self.control()?;
        let caller = r.extensions().get::<Caller>().cloned();
        let name = r.into_inner().name;
        let app = control.read(move |c| c.get_app(&name)).await?;
        let env_values = Caller::sees_env_of(caller.as_ref(), &app.spec.name);
        Ok(Response::new(wire::app_shown(&app, env_values)))
    }

    async fn list_apps(
        &self,
        r: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsReply>, Status> {
        let control = self.control()?;
        let caller = r.extensions().get::<Caller>().cloned();
        let r = r.into_inner();
        let (apps, next_page_token) = control
            .read(move |c| c.list_apps_page(r.page_size, &r.page_token))
            .await?;
        Ok(Response::new(pb::ListAppsReply {
            apps: apps
                .iter()
                .map(|a| wire::app_shown(a, Caller::sees_env_of(caller.as_ref(), &a.spec.name)))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_app(
        &self,
        r: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppReply>, Status> {
        let control = self.control()?;
        let name = r.into_inner().name;
        let removed = control.write(move |c| c.delete_app(&name)).await?;
        Ok(Response::new(pb::DeleteAppReply { removed }))
    }

    async fn scale(
        &self,
        r: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleReply>, Status> {
        let control = self.control()?;
        let cmd = ScaleCmd::try_from(r.into_inner())?;
        let scaled = control.write(move |c| c.scale_app(cmd)).await?;
        Ok(Response::new(scaled.into()))
    }

    async fn start(
        &self,
        r: Request<pb::InstanceTarget>,
    ) -> Result<Response<pb::ActionReply>, Status> {
        let control = self.control()?;
        self.act(&control, r.into_inner(), Action::Start).await
    }

    async fn stop(
        &self,
        r: Request<pb::InstanceTarget>,
    ) -> Result<Response<pb::ActionReply>, Status> {
        let control = self.control()?;
        self.act(&control, r.into_inner(), Action::Stop).await
    }

    async fn restart(
        &self,
        r: Request<pb::InstanceTarget>,
    ) -> Result<Response<pb::ActionReply>, Status> {
        let control = self.control()?;
        let t = r.into_inner();
        if !t.rolling {
            return self.act(&control, t, Action::Restart).await;
        }
        if t.index.is_some() {
            return Err(Status::invalid_argument(
                "index: a rolling restart replaces every instance; leave --instance out",
            ));
        }
        let app = t.app.clone();
        let d = control.write(move |c| c.restart_rolling(&t.app)).await?;
        Ok(Response::new(pb::ActionReply {
            affected: d.total,
            deployment: Some(wire::deployment(&app, &d)),
            // A rolling restart places replacements elsewhere rather than waiting for a node.
            quarantined_nodes: Vec::new(),
            changed: Some(d.total),
        }))
    }

    async fn list_instances(
        &self,
        r: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesReply>, Status> {
        let control = self.control()?;
        let r = r.into_inner();
        let (instances, next_page_token) = control
            .read(move |c| c.list_instances_page(&r.app, r.page_size, &r.page_token))
            .await?;
        Ok(Response::new(pb::ListInstancesReply {
            instances: instances.iter().map(pb::Instance::from).collect(),
            next_page_token,
        }))
    }

    async fn list_nodes(
        &self,
        _r: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        let control = self.control()?;
        let nodes = control.read(|c| Ok(c.list_nodes())).await?;
        Ok(Response::new(pb::ListNodesReply {
            nodes: nodes.into_iter().map(pb::Node::from).collect(),
        }))
    }

    async fn drain_node(
        &self,
        r: Request<pb::NodeTarget>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        self.drain_command(r, true).await
    }

    async fn undrain_node(
        &self,
        r: Request<pb::NodeTarget>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        self.drain_command(r, false).await
    }

    async fn adopt_node(
        &self,
        r: Request<pb::NodeTarget>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        let control = self.control()?;
        let node = r.into_inner().node;
        let nodes = control.write(move |c| c.adopt_node(&node)).await?;
        Ok(Response::new(pb::ListNodesReply {
            nodes: nodes.into_iter().map(pb::Node::from).collect(),
        }))
    }

    async fn forget_node(
        &self,
        r: Request<pb::NodeTarget>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        self.node_command(r, Control::forget_node).await
    }

    async fn set_autoscale(
        &self,
        r: Request<pb::SetAutoscaleRequest>,
    ) -> Result<Response<pb::AutoscaleStatus>, Status> {
        let control = self.control()?;
        let r = r.into_inner();
        let policy = match r.policy {
            Some(p) if p.enabled => Some(
                pmcluster_spec::wire::new_autoscale_from_wire(&p).map_err(ControlError::from)?,
            ),
            _ => None,
        };
        let status = control
            .write(move |c| c.set_autoscale(&r.app, policy))
            .await?;
        Ok(Response::new(status.into()))
    }

    async fn get_autoscale(
        &self,
        r: Request<pb::GetAutoscaleRequest>,
    ) -> Result<Response<pb::AutoscaleStatus>, Status> {
        let control = self.control()?;
        let app = r.into_inner().app;
        let status = control.read(move |c| c.get_autoscale(&app)).await?;
        Ok(Response::new(status.into()))
    }

    async fn get_rollout(
        &self,
        r: Request<pb::RolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let control = self.control()?;
        let app = r.into_inner().app;
        let rollouts = control
            .read({
                let app = app.clone();
                move |c| c.rollouts(&app)
            })
            .await?;
        Ok(Response::new(wire::rollout_status(&app, &rollouts)))
    }

    async fn control_rollout(
        &self,
        r: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let control = self.control()?;
        let r = r.into_inner();
        let action = convert::rollout_action(&r)?;
        let app = r.app;
        let d = control
            .write({
                let app = app.clone();
                move |c| c.steer_rollout(&app, action)
            })
            .await?;
        Ok(Response::new(wire::deployment(&app, &d)))
    }

    async fn undo_rollout(
        &self,
        r: Request<pb::UndoRolloutRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let control = self.control()?;
        let r = r.into_inner();
        let app = r.app;
        let d = control
            .write({
                let app = app.clone();
                move |c| c.roll_back(&app, r.to_version)
            })
            .await?;
        Ok(Response::new(wire::deployment(&app, &d)))
    }

    type WatchEndpointsStream = ReceiverStream<Result<pb::Endpoints, Status>>;

    async fn watch_endpoints(
        &self,
        r: Request<pb::WatchEndpointsRequest>,
    ) -> Result<Response<Self::WatchEndpointsStream>, Status> {
        let control = self.control()?;
        let app = r.into_inner().app;
        let first = control
            .read({
                let app = app.clone();
                move |c| c.endpoints(&app)
            })
            .await?;
        let (tx, rx) = mpsc::channel(8);
        let cancel = self.life.cancel.clone();
        let retired = control.retired_token();
        let seat = self.seat.clone();
        self.life.tasks.spawn(async move {
            // Polled: endpoints follow agent reports, which arrive every heartbeat; 100 ms keeps
            // a load balancer within a tenth of a second of the truth at little cost.
            let mut last = first;
            if tx.send(Ok(last.clone().into())).await.is_err() {
                return;
            }
            let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tokio::select! {
                    // As `until_over`: a clean end would tell a watcher there is no more.
                    () = cancel.cancelled() => break,
                    () = retired.cancelled() => break,
                    _ = every.tick() => {}
                }
                if tx.is_closed() {
                    return;
                }
                // A write holding the state for long: the next tick looks again, rather than
                // this task holding its worker.
                let Some(now) = control.poll(|c| c.endpoints(&app)) else {
                    continue;
                };
                match now {
                    Ok(now) if now != last => {
                        if tx.send(Ok(now.clone().into())).await.is_err() {
                            return;
                        }
                        last = now;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Err(Served::ended(&seat))).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn signal(
        &self,
        r: Request<pb::SignalRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        self.hand_out(convert::signal(r.into_inner())?).await
    }

    async fn send_message(
        &self,
        r: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        self.hand_out(convert::message(r.into_inner())?).await
    }

    async fn disable(
        &self,
        r: Request<pb::InstanceTarget>,
    ) -> Result<Response<pb::ActionReply>, Status> {
        let control = self.control()?;
        self.act(&control, r.into_inner(), Action::Disable).await
    }

    async fn enable(
        &self,
        r: Request<pb::InstanceTarget>,
    ) -> Result<Response<pb::ActionReply>, Status> {
        let control = self.control()?;
        self.act(&control, r.into_inner(), Action::Enable).await
    }

    type StreamLogsStream = BoxStream<pb::LogLine>;

    async fn stream_logs(
        &self,
        r: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let control = self.control()?;
        let query = LogsQuery::from(r.into_inner());
        let rx = control.read(move |c| c.stream_logs(&query)).await?;
        let lines = ReceiverStream::new(rx).map(|l| Ok(pb::LogLine::from(l)));
        Ok(Response::new(control.until_over(&self.seat, lines)))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        r: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let control = self.control()?;
        let r = r.into_inner();
        // Subscribe before reading the history, so nothing falls between the two.
        let live = BroadcastStream::new(control.subscribe_events());
        let history = control
            .recent_events(&r.app, r.history as usize)
            .into_iter()
            .map(|e| Ok(pb::Event::from(e)));
        let past = tokio_stream::iter(history);
        if r.no_follow {
            return Ok(Response::new(Box::pin(past)));
        }
        let app = r.app;
        let live = live.filter_map(move |e| match e {
            Ok(ev) if app.is_empty() || ev.app == app => Some(Ok(pb::Event::from(ev))),
            // A lagging watcher skips what it missed rather than failing.
            _ => None,
        });
        let live = control.until_over(&self.seat, live);
        Ok(Response::new(Box::pin(past.chain(live))))
    }
}

/// The `AgentLink` service: one long-lived session per agent.
pub struct AgentLinkApi {
    pub seat: Arc<Seat>,
    pub life: Lifecycle,
    /// Served over mutual TLS: a session must carry the agent certificate of the node it
    /// registers as. (Cluster calls are allowed with any certificate of the cluster CA for
    /// now; per-user roles and tokens are a later step.)
    pub require_agent_cert: bool,
}

impl AgentLinkApi {
    /// As [`ClusterApi::control`]: a session asks once, before it reads its first message.
    fn control(&self) -> Result<Served, Status> {
        Ok(Served::new(self.seat.control()?, &self.life))
    }
}

#[tonic::async_trait]
impl pb::agent_link_server::AgentLink for AgentLinkApi {
    type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        r: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let control = self.control()?;
        let peer = r.remote_addr().map(|a| a.ip());
        let certs = r.peer_certs();
        let mut inbound = r.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before register"))?;
        let Some(Up::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "register: the first message of a session must be register",
            ));
        };
        if self.require_agent_cert {
            check_agent_identity(certs.as_deref().map(Vec::as_slice), &reg.node_name, peer)?;
        }
        let reg = Registration::from(reg);
        let node = reg.node_name.clone();
        let instances = reg.instances.len();
        let attached = control.write(move |c| c.attach(&reg, peer)).await?;
        tracing::info!(node = %node, instances, "agent connected");
        let session_id = attached.session_id;
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.life.cancel.clone();
        let retired = control.retired_token();
        self.life
            .tasks
            .spawn(outbound(attached, tx, cancel.clone()));
        self.life.tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    // Dropping the inbound half with the outbound one lets the HTTP/2 stream,
                    // and so the graceful shutdown, finish.
                    () = cancel.cancelled() => break,
                    // Stepped down: the session closed (retire); the agent goes to the leader.
                    () = retired.cancelled() => break,
                    m = inbound.message() => m,
                };
                match message {
                    Ok(Some(msg)) => match msg.msg {
                        Some(Up::Status(report)) => {
                            control.report(&node, session_id, Report::from(report))
                        }
                        Some(Up::LogChunk(chunk)) => {
                            control.log_chunk(&node, LogChunk::from(chunk))
                        }
                        Some(Up::CommandResult(result)) => {
                            control.command_result(&node, result.into())
                        }
                        Some(Up::Register(_)) | None => {}
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = %node, error = %e, "agent stream error");
                        break;
                    }
                }
            }
            tracing::info!(node = %node, "agent disconnected");
            control.detach(node, session_id);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The node authorizer: an agent registers only as the node its certificate names, so one
/// host's certificate cannot fetch another's desired set (env values included).
fn check_agent_identity(
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    node: &str,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Status> {
    let refuse = |why: String| {
        tracing::warn!(node, ?peer, "agent session refused: {why}");
        Status::permission_denied(why)
    };
    match crate::tls::peer_identity(certs) {
        Ok(pmcluster_pki::Identity::Agent(named)) if named == node => Ok(()),
        Ok(pmcluster_pki::Identity::Agent(named)) => Err(refuse(format!(
            "register: the certificate is for agent {named:?} but the session registers as \
             node {node:?}"
        ))),
        Ok(other) => Err(refuse(format!(
            "register: node {node:?} needs an agent certificate, not {}",
            other.uri()
        ))),
        Err(e) => Err(refuse(format!(
            "register: node {node:?}: no agent identity in the client certificate: {e}"
        ))),
    }
}

/// Feeds one session's outbound stream: `registered`, then every new desired set and command,
/// until the session is closed or the agent goes away. This task holds the only sender of the
/// stream, so its end (with an UNAVAILABLE status when the coordinator closed the session) is
/// the stream's end, and the agent reconnects.
async fn outbound(
    mut a: crate::control::Attached,
    tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    shutdown: CancellationToken,
) {
    let send = |msg: Down| pb::CoordinatorMessage { msg: Some(msg) };
    let registered = Down::Registered(pb::Registered {
        heartbeat_interval_ms: a.heartbeat_interval.as_millis() as u64,
        cluster_id: a.cluster_id.clone(),
        quarantine: a.quarantine.clone(),
        address: a.address.clone(),
    });
    if tx.send(Ok(send(registered))).await.is_err() {
        return;
    }
    a.desired.mark_changed();
    // The last set this stream carried: to an agent that reads deltas, each later set goes as
    // what changed since it, so a write costs the link what it changed, not the node's whole set.
    let mut sent: Option<Arc<crate::model::DesiredSet>> = None;
    loop {
        tokio::select! {
            // A closed session goes first: a set published after it was dropped was not
            // counted as sent to this agent (`NodeRecord::sent_generation`).
            biased;
            _ = a.closed.changed() => {
                // The session was replaced or timed out: end the stream so the agent reconnects.
                let _ = tx.send(Err(Status::unavailable("session closed by the coordinator"))).await;
                return;
            }
            () = shutdown.cancelled() => {
                // The agent keeps its instances and reconnects, to this coordinator's successor.
                let _ = tx.try_send(Err(Status::unavailable("the coordinator is shutting down")));
                return;
            }
            changed = a.desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(set) = a.desired.borrow_and_update().clone() else {
                    continue;
                };
                let wire = match &sent {
                    Some(prev) if a.takes_deltas => crate::wire::desired_delta(prev, &set),
                    _ => pb::DesiredSet::from(set.as_ref()),
                };
                sent = Some(set);
                if tx.send(Ok(send(Down::Desired(wire)))).await.is_err() {
                    return;
                }
            }
            cmd = a.commands.recv() => {
                let msg = match cmd {
                    Some(AgentCommand::Logs(req)) => Down::LogRequest(req.into()),
                    Some(AgentCommand::CancelLogs(request_id)) => {
                        Down::CancelLogs(pb::CancelLogs { request_id })
                    }
                    Some(AgentCommand::Hand(command)) => Down::Command(command.into()),
                    // The session was dropped (replaced or timed out), like `closed` below.
                    None => {
                        let _ = tx.send(Err(Status::unavailable("session closed by the coordinator"))).await;
                        return;
                    }
                };
                if tx.send(Ok(send(msg))).await.is_err() {
                    return;
                }
            }
        }
    }
}
