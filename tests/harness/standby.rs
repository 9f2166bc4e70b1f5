//! A fake standby coordinator: a tonic server that refuses every `pmcluster.v1.Cluster` call and
//! every `AgentLink` session as a standby of an HA pair does (gRPC `UNAVAILABLE`, the leader's
//! URL in `pmcluster-leader` metadata), so that client failover is tested without an HA pair.
//!
//! It serves on a loopback port of its own, from a thread with its own runtime, until dropped.

use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use pmcluster_proto::LEADER_METADATA;
use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
use pmcluster_proto::v1::cluster_server::{Cluster, ClusterServer};
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, io_err, unexpected};

/// A running fake standby; stops when dropped.
pub struct FakeStandby {
    url: String,
    refused: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeStandby {
    /// Serves on a free loopback port, naming `leader` in every refusal (no hint when `None`,
    /// as a standby that knows no leader).
    pub fn start(leader: Option<&str>) -> Result<FakeStandby, Error> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the fake standby"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading the fake standby's address"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("setting up the fake standby's listener"))?;
        let refuser = Refuser {
            leader: leader.map(str::to_string),
            refused: Arc::new(AtomicU64::new(0)),
        };
        let refused = Arc::clone(&refuser.refused);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting the fake standby's runtime"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-standby".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fake standby: {e}");
                            return;
                        }
                    };
                    let served = tonic::transport::Server::builder()
                        .add_service(ClusterServer::new(refuser.clone()))
                        .add_service(AgentLinkServer::new(refuser))
                        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        eprintln!("fake standby: {e}");
                    }
                });
            })
            .map_err(|e| unexpected("starting the fake standby", e.to_string()))?;
        Ok(FakeStandby {
            url: format!("http://{addr}"),
            refused,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls and sessions refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FakeStandby {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Refuser {
    leader: Option<String>,
    refused: Arc<AtomicU64>,
}

impl Refuser {
    /// The refusal of a standby, in the words of the HA design.
    fn refuse(&self) -> Status {
        self.refused.fetch_add(1, Ordering::SeqCst);
        let Some(leader) = &self.leader else {
            return Status::unavailable("this coordinator is a standby; the leader is unknown");
        };
        let mut status = Status::unavailable(format!(
            "this coordinator is a standby; the leader is at {leader}"
        ));
        match leader.parse() {
            Ok(value) => {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            Err(e) => eprintln!("fake standby: leader {leader:?} is no metadata value: {e}"),
        }
        status
    }
}

type Reply<T> = Result<Response<T>, Status>;
type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// The `Cluster` impl: each listed unary method refuses. A macro around the whole impl, so that
/// `async_trait` sees the methods it generates.
macro_rules! refusing_cluster {
    ($($method:ident($request:ty) -> $reply:ty;)*) => {
        #[tonic::async_trait]
        impl Cluster for Refuser {
            $(
                async fn $method(&self, _: Request<$request>) -> Reply<$reply> {
                    Err(self.refuse())
                }
            )*

            type StreamLogsStream = Stream<pb::LogLine>;
            async fn stream_logs(
                &self,
                _: Request<pb::StreamLogsRequest>,
            ) -> Reply<Self::StreamLogsStream> {
                Err(self.refuse())
            }

            type WatchEventsStream = Stream<pb::Event>;
            async fn watch_events(
                &self,
                _: Request<pb::WatchEventsRequest>,
            ) -> Reply<Self::WatchEventsStream> {
                Err(self.refuse())
            }

            type WatchEndpointsStream = Stream<pb::Endpoints>;
            async fn watch_endpoints(
                &self,
                _: Request<pb::WatchEndpointsRequest>,
            ) -> Reply<Self::WatchEndpointsStream> {
                Err(self.refuse())
            }
        }
    };
}

refusing_cluster! {
    apply_app(pb::ApplyAppRequest) -> pb::ApplyAppReply;
    get_app(pb::GetAppRequest) -> pb::App;
    list_apps(pb::ListAppsRequest) -> pb::ListAppsReply;
    delete_app(pb::DeleteAppRequest) -> pb::DeleteAppReply;
    scale(pb::ScaleRequest) -> pb::ScaleReply;
    start(pb::InstanceTarget) -> pb::ActionReply;
    stop(pb::InstanceTarget) -> pb::ActionReply;
    restart(pb::InstanceTarget) -> pb::ActionReply;
    list_instances(pb::ListInstancesRequest) -> pb::ListInstancesReply;
    list_nodes(pb::ListNodesRequest) -> pb::ListNodesReply;
    drain_node(pb::NodeTarget) -> pb::NodeReply;
    undrain_node(pb::NodeTarget) -> pb::NodeReply;
    adopt_node(pb::NodeTarget) -> pb::ListNodesReply;
    forget_node(pb::NodeTarget) -> pb::NodeReply;
    set_autoscale(pb::SetAutoscaleRequest) -> pb::AutoscaleStatus;
    get_autoscale(pb::GetAutoscaleRequest) -> pb::AutoscaleStatus;
    get_rollout(pb::RolloutRequest) -> pb::RolloutStatus;
    control_rollout(pb::ControlRolloutRequest) -> pb::Deployment;
    undo_rollout(pb::UndoRolloutRequest) -> pb::Deployment;
    signal(pb::SignalRequest) -> pb::DeliveryReply;
    send_message(pb::SendMessageRequest) -> pb::DeliveryReply;
    disable(pb::InstanceTarget) -> pb::ActionReply;
    enable(pb::InstanceTarget) -> pb::ActionReply;
}

#[tonic::async_trait]
impl AgentLink for Refuser {
    type SessionStream = Stream<pb::CoordinatorMessage>;
    async fn session(&self, _: Request<Streaming<pb::AgentMessage>>) -> Reply<Self::SessionStream> {
        Err(self.refuse())
    }
}
