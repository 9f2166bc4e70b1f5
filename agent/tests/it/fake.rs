//! A throwaway coordinator for the agent's tests: serves `AgentLink/Session` on 127.0.0.1:0 and
//! hands each agent session to the test, which plays the coordinator's part by hand.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub struct FakeCoordinator {
    pub url: String,
    sessions: mpsc::Receiver<Session>,
    /// Sessions still to refuse with ALREADY_EXISTS.
    reject: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Service {
    sessions: mpsc::Sender<Session>,
    reject: Arc<AtomicU32>,
}

/// One agent session, seen from the coordinator.
pub struct Session {
    inbound: Streaming<pb::AgentMessage>,
    outbound: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    /// Log chunks that arrived while the test waited for something else, by request id.
    pub chunks: BTreeMap<u64, Vec<pb::LogChunk>>,
    pub last_report: Option<pb::StatusReport>,
}

#[tonic::async_trait]
impl AgentLink for Service {
    type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let refused = self
            .reject
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Err(Status::already_exists("a node of that name is connected"));
        }
        let (tx, rx) = mpsc::channel(64);
        let session = Session {
            inbound: request.into_inner(),
            outbound: tx,
            chunks: BTreeMap::new(),
            last_report: None,
        };
        self.sessions
            .send(session)
            .await
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl FakeCoordinator {
    pub async fn start() -> FakeCoordinator {
        let listener = must(TcpListener::bind("127.0.0.1:0").await, "bind");
        FakeCoordinator::serve(listener).await
    }

    /// Serves on a listener the test already bound (e.g. a port the agent was told about first).
    pub async fn serve(listener: TcpListener) -> FakeCoordinator {
        let addr: SocketAddr = must(listener.local_addr(), "local addr");
        let (tx, rx) = mpsc::channel(8);
        let reject = Arc::new(AtomicU32::new(0));
        let service = Service {
            sessions: tx,
            reject: Arc::clone(&reject),
        };
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(AgentLinkServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = result {
                eprintln!("fake coordinator: {e}");
            }
        });
        FakeCoordinator {
            url: format!("http://{addr}"),
            sessions: rx,
            reject,
            server,
        }
    }

    /// Refuse the next `n` sessions with ALREADY_EXISTS.
    pub fn reject_next(&self, n: u32) {
        self.reject.store(n, Ordering::SeqCst);
    }

    /// The next agent session and its Register message.
    pub async fn accept(&mut self) -> (Session, pb::Register) {
        let session = match tokio::time::timeout(DEADLINE, self.sessions.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("fake coordinator stopped"),
            Err(_) => panic!("no agent session within {DEADLINE:?}"),
        };
        let mut session = session;
        let register = session
            .wait_for("Register", |m| match m {
                Up::Register(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        (session, register)
    }
}

impl Session {
    pub async fn send(&self, msg: Down) {
        let msg = pb::CoordinatorMessage { msg: Some(msg) };
        must(
            self.outbound.send(Ok(msg)).await.map_err(|_| "closed"),
            "send to agent",
        );
    }

    pub async fn registered(&self, heartbeat_ms: u64) {
        self.send(Down::Registered(pb::Registered {
            heartbeat_interval_ms: heartbeat_ms,
            ..Default::default()
        }))
        .await;
    }

    pub async fn desired(&self, generation: u64, assignments: Vec<pb::Assignment>) {
        self.send(Down::Desired(pb::DesiredSet {
            generation,
            assignments,
            ..Default::default()
        }))
        .await;
    }

    /// A delta on the set of generation `base`: `assignments` added or replaced, `removed` taken
    /// out. The test picks `base`, so it can also send one the agent cannot read.
    pub async fn desired_delta(
        &self,
        generation: u64,
        base: u64,
        assignments: Vec<pb::Assignment>,
        removed: &[&str],
    ) {
        self.send(Down::Desired(pb::DesiredSet {
            generation,
            assignments,
            delta: true,
            base_generation: base,
            removed: removed.iter().map(|id| id.to_string()).collect(),
            ..Default::default()
        }))
        .await;
    }

    /// Waits for the agent to end the session (its stream ends or breaks), reading and dropping
    /// whatever it sends before that.
    pub async fn ended(mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.next()).await {
                Ok(Some(Ok(_))) => continue,
                // An agent dropping its side may show as a reset rather than a clean end.
                Ok(Some(Err(_)) | None) => return,
                Err(_) => panic!("the agent did not end the session within {DEADLINE:?}"),
            }
        }
    }

    /// Ends the session with an error status, as a coordinator going away would.
    pub async fn fail(self, status: Status) {
        let _ = self.outbound.send(Err(status)).await;
    }

    /// Reads agent messages until `f` picks one; keeps log chunks and the last report on the side.
    pub async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&Up) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.inbound.next()).await;
            let msg = match next {
                Ok(Some(Ok(pb::AgentMessage { msg: Some(m) }))) => m,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(status))) => panic!("waiting for {what}: stream failed: {status}"),
                Ok(None) => panic!("waiting for {what}: agent closed the stream"),
                Err(_) => panic!(
                    "waiting for {what}: not seen within {DEADLINE:?}; last report: {:#?}",
                    self.last_report
                ),
            };
            match &msg {
                Up::LogChunk(c) => self.chunks.entry(c.request_id).or_default().push(c.clone()),
                Up::Status(r) => self.last_report = Some(r.clone()),
                Up::Register(_) | Up::CommandResult(_) => {}
            }
            if let Some(t) = f(&msg) {
                return t;
            }
        }
    }

    /// Waits for a status report for which `f` holds.
    pub async fn report_where(
        &mut self,
        what: &str,
        mut f: impl FnMut(&pb::StatusReport) -> bool,
    ) -> pb::StatusReport {
        self.wait_for(what, |m| match m {
            Up::Status(r) if f(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the log chunk of `request_id` that has `eof`, and returns every line of the
    /// request and the error text.
    pub async fn logs_until_eof(&mut self, request_id: u64) -> (Vec<pb::LogLine>, String) {
        let done = |chunks: &BTreeMap<u64, Vec<pb::LogChunk>>| {
            chunks
                .get(&request_id)
                .is_some_and(|cs| cs.iter().any(|c| c.eof))
        };
        if !done(&self.chunks) {
            self.wait_for("log eof", |m| match m {
                Up::LogChunk(c) if c.request_id == request_id && c.eof => Some(()),
                _ => None,
            })
            .await;
        }
        let chunks = self.chunks.remove(&request_id).unwrap_or_default();
        let error = chunks.iter().map(|c| c.error.clone()).collect::<String>();
        let lines = chunks.into_iter().flat_map(|c| c.lines).collect();
        (lines, error)
    }
}

/// An instance's status in a report.
pub fn instance<'a>(report: &'a pb::StatusReport, id: &str) -> Option<&'a pb::InstanceStatus> {
    report.instances.iter().find(|i| i.instance_id == id)
}

pub fn is_state(report: &pb::StatusReport, id: &str, state: pb::InstanceState) -> bool {
    instance(report, id).is_some_and(|i| i.state == state as i32)
}

pub fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}
