//! The fake in-memory `Cluster` server the verb tests run the binary against, and the helpers
//! that run it and check what it printed.
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_server::{Cluster, ClusterServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pmcluster");

#[derive(Default)]
pub(crate) struct State {
    pub(crate) apps: BTreeMap<String, pb::App>,
    /// (app, index) a user stopped.
    pub(crate) stopped: Vec<(String, u32)>,
    /// Every ApplyApp and Restart received, in order, as `ApplyApp APP` / `Restart APP rolling`.
    pub(crate) calls: Vec<String>,
    /// The specs ApplyApp received, in order.
    pub(crate) applied: Vec<pb::AppSpec>,
    /// When set, a rolling restart starts rollout 7, which has failed with this message by the
    /// time anyone asks GetRollout (so the app's current rollout is a finished one).
    pub(crate) rolling_restart_fails: Option<String>,
    /// The quarantined nodes a stop or restart names in its reply.
    pub(crate) quarantined_nodes: Vec<String>,
}

#[derive(Default, Clone)]
pub(crate) struct Fake {
    pub(crate) state: Arc<Mutex<State>>,
}

pub(crate) type Reply<T> = Result<Response<T>, Status>;

pub(crate) fn not_found(app: &str) -> Status {
    Status::not_found(format!("app {app:?} not found"))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Fake {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instances(&self, only: &str) -> Vec<pb::Instance> {
        let state = self.lock();
        let mut out = Vec::new();
        for (name, app) in &state.apps {
            if !only.is_empty() && only != name {
                continue;
            }
            let spec = app.spec.clone().unwrap_or_default();
            let first_port: u32 = spec
                .port
                .split('-')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for index in 0..spec.instances {
                let stopped = state.stopped.contains(&(name.clone(), index));
                out.push(pb::Instance {
                    id: format!("{name}-{index}"),
                    app: name.clone(),
                    index,
                    node: "node-a".into(),
                    host: "127.0.0.1".into(),
                    state: if stopped {
                        pb::InstanceState::Stopped
                    } else {
                        pb::InstanceState::Online
                    } as i32,
                    pid: if stopped { 0 } else { 1000 + index },
                    port: if first_port == 0 {
                        0
                    } else {
                        first_port + index
                    },
                    cpu_percent: 1.5,
                    memory_bytes: 10 << 20,
                    restarts: 0,
                    started_at_ms: if stopped { 0 } else { now_ms() - 5_000 },
                    app_version: app.version,
                    last_exit_code: None,
                    message: String::new(),
                    stopped,
                    health: 0,
                    disabled: false,
                    leak: String::new(),
                    removed: false,
                    unmanaged: false,
                });
            }
        }
        out
    }

    /// A signal or message: every instance of the target that is not stopped gets it.
    fn deliver(&self, app: &str, index: Option<u32>) -> Reply<pb::DeliveryReply> {
        let target = pb::InstanceTarget {
            app: app.to_string(),
            index,
            rolling: false,
        };
        // Checks the app and index as `act` does.
        self.act(target, None)?;
        let state = self.lock();
        let n = state
            .apps
            .get(app)
            .and_then(|a| a.spec.as_ref())
            .map_or(0, |s| s.instances);
        let deliveries = (0..n)
            .filter(|i| index.is_none_or(|x| x == *i))
            .filter(|i| !state.stopped.contains(&(app.to_string(), *i)))
            .map(|i| pb::Delivery {
                index: i,
                instance_id: format!("{app}-{i}"),
                node: "node-a".into(),
                delivered: true,
                error: String::new(),
                unconfirmed: false,
            })
            .collect();
        Ok(Response::new(pb::DeliveryReply { deliveries }))
    }

    fn act(&self, target: pb::InstanceTarget, stop: Option<bool>) -> Reply<pb::ActionReply> {
        let mut state = self.lock();
        let n = state
            .apps
            .get(&target.app)
            .ok_or_else(|| not_found(&target.app))?
            .spec
            .as_ref()
            .map(|s| s.instances)
            .unwrap_or(0);
        let indices: Vec<u32> = match target.index {
            Some(i) if i >= n => {
                return Err(Status::not_found(format!(
                    "app {:?} has no instance {i}",
                    target.app
                )));
            }
            Some(i) => vec![i],
            None => (0..n).collect(),
        };
        let mut changed = 0;
        for i in &indices {
            let key = (target.app.clone(), *i);
            let was = state.stopped.contains(&key);
            match stop {
                Some(true) if !was => state.stopped.push(key),
                Some(false) if was => state.stopped.retain(|k| k != &key),
                // A restart (or a rotation, which the fake does not keep) changes each.
                None => {}
                _ => continue,
            }
            changed += 1;
        }
        Ok(Response::new(pb::ActionReply {
            affected: indices.len() as u32,
            deployment: None,
            quarantined_nodes: state.quarantined_nodes.clone(),
            changed: Some(changed),
        }))
    }
}

/// Rollout 7, the one a rolling restart starts when `rolling_restart_fails` is set: running as
/// the restart answers (no message), failed by the time it is asked for (a message).
fn failed_restart(message: String) -> pb::Deployment {
    let state = if message.is_empty() {
        "running"
    } else {
        "failed"
    };
    pb::Deployment {
        id: 7,
        kind: "restart".to_string(),
        from_version: 1,
        to_version: 1,
        state: state.to_string(),
        message,
        total: 2,
        ..Default::default()
    }
}

pub(crate) type Stream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for Fake {
    async fn apply_app(&self, r: Request<pb::ApplyAppRequest>) -> Reply<pb::ApplyAppReply> {
        let spec = r
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is missing"))?;
        let mut state = self.lock();
        state.calls.push(format!("ApplyApp {}", spec.name));
        state.applied.push(spec.clone());
        let (created, changed, version) = match state.apps.get(&spec.name) {
            None => (true, true, 1),
            Some(app) if app.spec.as_ref() == Some(&spec) => (false, false, app.version),
            Some(app) => (false, true, app.version + 1),
        };
        let app = pb::App {
            spec: Some(spec.clone()),
            version,
            updated_at_ms: now_ms(),
            online: spec.instances,
            pending: 0,
            stopped: 0,
            ..pb::App::default()
        };
        state.apps.insert(spec.name.clone(), app.clone());
        Ok(Response::new(pb::ApplyAppReply {
            app: Some(app),
            created,
            changed,
            deployment: None,
        }))
    }

    async fn get_app(&self, r: Request<pb::GetAppRequest>) -> Reply<pb::App> {
        let name = r.into_inner().name;
        let state = self.lock();
        let app = state.apps.get(&name).ok_or_else(|| not_found(&name))?;
        Ok(Response::new(app.clone()))
    }

    async fn list_apps(&self, _: Request<pb::ListAppsRequest>) -> Reply<pb::ListAppsReply> {
        let apps = self.lock().apps.values().cloned().collect();
        // One page: the fake holds a handful.
        Ok(Response::new(pb::ListAppsReply {
            apps,
            next_page_token: String::new(),
        }))
    }

    async fn delete_app(&self, r: Request<pb::DeleteAppRequest>) -> Reply<pb::DeleteAppReply> {
        let name = r.into_inner().name;
        let app = self
            .lock()
            .apps
            .remove(&name)
            .ok_or_else(|| not_found(&name))?;
        Ok(Response::new(pb::DeleteAppReply {
            removed: app.spec.map(|s| s.instances).unwrap_or(0),
        }))
    }

    async fn scale(&self, r: Request<pb::ScaleRequest>) -> Reply<pb::ScaleReply> {
        let req = r.into_inner();
        let mut state = self.lock();
        let app = state
            .apps
            .get_mut(&req.app)
            .ok_or_else(|| not_found(&req.app))?;
        let spec = app.spec.get_or_insert_default();
        let instances = u32::try_from(req.instances)
            .map_err(|_| Status::invalid_argument("instances: must be 0 or more"))?;
        if spec.port.contains('-') {
            let (a, b) = spec.port.split_once('-').unwrap_or_default();
            let cap = b.parse::<u32>().unwrap_or(0) - a.parse::<u32>().unwrap_or(0) + 1;
            if instances > cap {
                return Err(Status::invalid_argument(format!(
                    "port: {} holds {cap} ports but {instances} instances were asked for",
                    spec.port
                )));
            }
        }
        let previous = spec.instances;
        spec.instances = instances;
        Ok(Response::new(pb::ScaleReply {
            previous,
            instances,
        }))
    }

    async fn start(&self, r: Request<pb::InstanceTarget>) -> Reply<pb::ActionReply> {
        self.act(r.into_inner(), Some(false))
    }

    async fn stop(&self, r: Request<pb::InstanceTarget>) -> Reply<pb::ActionReply> {
        self.act(r.into_inner(), Some(true))
    }

    async fn restart(&self, r: Request<pb::InstanceTarget>) -> Reply<pb::ActionReply> {
        let target = r.into_inner();
        let rolling = if target.rolling { " rolling" } else { "" };
        let fails = {
            let mut state = self.lock();
            state.calls.push(format!("Restart {}{rolling}", target.app));
            state.rolling_restart_fails.clone()
        };
        let rolling = target.rolling;
        let mut reply = self.act(target, None)?;
        if let (true, Some(_)) = (rolling, fails) {
            reply.get_mut().deployment = Some(failed_restart(String::new()));
        }
        Ok(reply)
    }

    async fn signal(&self, r: Request<pb::SignalRequest>) -> Reply<pb::DeliveryReply> {
        let r = r.into_inner();
        self.lock()
            .calls
            .push(format!("Signal {} {}", r.app, r.signal));
        self.deliver(&r.app, r.index)
    }

    async fn send_message(&self, r: Request<pb::SendMessageRequest>) -> Reply<pb::DeliveryReply> {
        let r = r.into_inner();
        self.lock()
            .calls
            .push(format!("SendMessage {} {}", r.app, r.message));
        self.deliver(&r.app, r.index)
    }

    async fn disable(&self, r: Request<pb::InstanceTarget>) -> Reply<pb::ActionReply> {
        self.act(r.into_inner(), None)
    }

    async fn enable(&self, r: Request<pb::InstanceTarget>) -> Reply<pb::ActionReply> {
        self.act(r.into_inner(), None)
    }

    async fn list_instances(
        &self,
        r: Request<pb::ListInstancesRequest>,
    ) -> Reply<pb::ListInstancesReply> {
        let app = r.into_inner().app;
        if !app.is_empty() && !self.lock().apps.contains_key(&app) {
            return Err(not_found(&app));
        }
        Ok(Response::new(pb::ListInstancesReply {
            instances: self.instances(&app),
            next_page_token: String::new(),
        }))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesReply> {
        Ok(Response::new(pb::ListNodesReply {
            nodes: vec![pb::Node {
                name: "node-a".into(),
                status: pb::NodeStatus::Ready as i32,
                labels: [("zone".to_string(), "a".to_string())]
                    .into_iter()
                    .collect(),
                cores: 4,
                memory_bytes: 8 << 30,
                instances: self.instances("").len() as u32,
                last_heartbeat_ms: now_ms(),
                hostname: "host-a".into(),
                agent_version: "0.1.0".into(),
                cpu_percent: 3.0,
                memory_used_bytes: 2 << 30,
                ..Default::default()
            }],
        }))
    }

    async fn drain_node(&self, r: Request<pb::NodeTarget>) -> Reply<pb::NodeReply> {
        let node = r.into_inner().node;
        if node != "node-a" {
            return Err(Status::not_found(format!("node {node:?} not found")));
        }
        Ok(Response::new(pb::NodeReply {
            node: Some(pb::Node {
                name: node,
                status: pb::NodeStatus::Draining as i32,
                ..Default::default()
            }),
            unchanged: false,
        }))
    }

    async fn adopt_node(&self, r: Request<pb::NodeTarget>) -> Reply<pb::ListNodesReply> {
        Ok(Response::new(pb::ListNodesReply {
            nodes: vec![pb::Node {
                name: r.into_inner().node,
                status: pb::NodeStatus::Ready as i32,
                instances: 2,
                ..Default::default()
            }],
        }))
    }

    async fn forget_node(&self, r: Request<pb::NodeTarget>) -> Reply<pb::NodeReply> {
        Err(Status::failed_precondition(format!(
            "node {:?} is connected; stop its agent first",
            r.into_inner().node
        )))
    }

    async fn undrain_node(&self, r: Request<pb::NodeTarget>) -> Reply<pb::NodeReply> {
        Ok(Response::new(pb::NodeReply {
            node: Some(pb::Node {
                name: r.into_inner().node,
                status: pb::NodeStatus::Ready as i32,
                ..Default::default()
            }),
            unchanged: true,
        }))
    }

    async fn set_autoscale(
        &self,
        r: Request<pb::SetAutoscaleRequest>,
    ) -> Reply<pb::AutoscaleStatus> {
        let r = r.into_inner();
        Ok(Response::new(pb::AutoscaleStatus {
            app: r.app,
            policy: r.policy,
            ..Default::default()
        }))
    }

    async fn get_autoscale(
        &self,
        r: Request<pb::GetAutoscaleRequest>,
    ) -> Reply<pb::AutoscaleStatus> {
        Ok(Response::new(pb::AutoscaleStatus {
            app: r.into_inner().app,
            ..Default::default()
        }))
    }

    async fn get_rollout(&self, r: Request<pb::RolloutRequest>) -> Reply<pb::RolloutStatus> {
        let app = r.into_inner().app;
        if !self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apps
            .contains_key(&app)
        {
            return Err(not_found(&app));
        }
        let current = self
            .lock()
            .rolling_restart_fails
            .clone()
            .map(failed_restart);
        Ok(Response::new(pb::RolloutStatus {
            current,
            ..Default::default()
        }))
    }

    async fn control_rollout(
        &self,
        _: Request<pb::ControlRolloutRequest>,
    ) -> Reply<pb::Deployment> {
        Err(Status::invalid_argument("no rollout in progress"))
    }

    async fn undo_rollout(&self, _: Request<pb::UndoRolloutRequest>) -> Reply<pb::Deployment> {
        Err(Status::invalid_argument("no earlier version"))
    }

    type WatchEndpointsStream = Stream<pb::Endpoints>;

    async fn watch_endpoints(
        &self,
        r: Request<pb::WatchEndpointsRequest>,
    ) -> Reply<Self::WatchEndpointsStream> {
        let app = r.into_inner().app;
        let e = pb::Endpoints {
            app: app.clone(),
            endpoints: vec![pb::Endpoint {
                host: "127.0.0.1".into(),
                port: 3000,
                index: 0,
                node: "node-a".into(),
                version: 1,
                instance_id: "0f0e0d0c-0000-4000-8000-000000000000".into(),
            }],
        };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(e)]))))
    }

    type StreamLogsStream = Stream<pb::LogLine>;

    async fn stream_logs(
        &self,
        r: Request<pb::StreamLogsRequest>,
    ) -> Reply<Self::StreamLogsStream> {
        let req = r.into_inner();
        if !self.lock().apps.contains_key(&req.app)
            && !["chatty", "half"].contains(&req.app.as_str())
        {
            return Err(not_found(&req.app));
        }
        let (app, index) = (req.app.clone(), req.index.unwrap_or(0));
        let line = move |stream: pb::LogStream, text: String| pb::LogLine {
            app: app.clone(),
            index,
            node: "node-a".into(),
            stream: stream as i32,
            line: text,
            unread: false,
        };
        if req.app == "half" {
            // One node answered, the other is down: its instance gets the coordinator's notice.
            let notice = pb::LogLine {
                index: 1,
                stream: pb::LogStream::Unspecified as i32,
                line: "[pmcluster] node node-b is not connected: no logs of half[1]".into(),
                unread: true,
                ..line(pb::LogStream::Stdout, String::new())
            };
            let lines = [line(pb::LogStream::Stdout, "hello 0".into()), notice];
            return Ok(Response::new(Box::pin(tokio_stream::iter(lines.map(Ok)))));
        }
        // "chatty" never ends, to check that a closed stdout ends the client quietly.
        let count = if req.app == "chatty" { usize::MAX } else { 1 };
        let lines = (0..count).flat_map(move |n| {
            [
                Ok(line(pb::LogStream::Stdout, format!("hello {n}"))),
                Ok(line(pb::LogStream::Stderr, format!("oops {n}"))),
            ]
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(lines))))
    }

    type WatchEventsStream = Stream<pb::Event>;

    async fn watch_events(
        &self,
        r: Request<pb::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let app = r.into_inner().app;
        // As the coordinator: no events of an app it never had ("gone" was deleted, its events
        // kept).
        if !app.is_empty() && app != "gone" && !self.lock().apps.contains_key(&app) {
            return Ok(Response::new(Box::pin(tokio_stream::empty())));
        }
        let event = pb::Event {
            at_ms: 1_700_000_000_000,
            kind: "instance.state".into(),
            app: if app.is_empty() { "web".into() } else { app },
            node: "node-a".into(),
            index: Some(1),
            message: "online".into(),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(event)]))))
    }
}

/// Serves a fresh fake on a loopback port; returns its address as `host:port`.
pub(crate) async fn serve() -> anyhow::Result<String> {
    Ok(serve_fake().await?.0)
}

/// [`serve`], also returning the fake to look at the requests it received.
pub(crate) async fn serve_fake() -> anyhow::Result<(String, Fake)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fake = Fake::default();
    let server = tonic::transport::Server::builder()
        .add_service(ClusterServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok((addr.to_string(), fake))
}

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) async fn run(addr: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--coordinator")
        .arg(addr)
        .args(args)
        .env_remove("PMCLUSTER_COORDINATOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(stdin.unwrap_or("").as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

/// `check(addr, args, exit code, text stdout must contain, text stderr must contain)`.
pub(crate) async fn check(
    addr: &str,
    args: &[&str],
    code: i32,
    stdout: &str,
    stderr: &str,
) -> anyhow::Result<Run> {
    let got = run(addr, args, None).await?;
    let shown = format!(
        "pmcluster {}\nexit {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        got.code,
        got.stdout,
        got.stderr
    );
    assert_eq!(got.code, code, "{shown}");
    assert!(
        got.stdout.contains(stdout),
        "stdout lacks {stdout:?}\n{shown}"
    );
    assert!(
        got.stderr.contains(stderr),
        "stderr lacks {stderr:?}\n{shown}"
    );
    Ok(got)
}
