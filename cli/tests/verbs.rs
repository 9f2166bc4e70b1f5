//! The `pmcluster` binary against a fake in-memory `Cluster` server: what each verb prints and
//! which exit code it gives, for successes, coordinator errors and bad input.
//!
//! The fake implements just enough of the contract (apps, instances derived from them, one node,
//! canned logs and events) to exercise the client; the real coordinator has its own tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_server::{Cluster, ClusterServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_pmcluster");

#[derive(Default)]
struct State {
    apps: BTreeMap<String, pb::App>,
    /// (app, index) a user stopped.
    stopped: Vec<(String, u32)>,
    /// Every ApplyApp and Restart received, in order, as `ApplyApp APP` / `Restart APP rolling`.
    calls: Vec<String>,
    /// The specs ApplyApp received, in order.
    applied: Vec<pb::AppSpec>,
}

#[derive(Default, Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
}

type Reply<T> = Result<Response<T>, Status>;

fn not_found(app: &str) -> Status {
    Status::not_found(format!("app {app:?} not found"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
                });
            }
        }
        out
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
        for i in &indices {
            let key = (target.app.clone(), *i);
            match stop {
                Some(true) if !state.stopped.contains(&key) => state.stopped.push(key),
                Some(false) => state.stopped.retain(|k| k != &key),
                _ => {}
            }
        }
        Ok(Response::new(pb::ActionReply {
            affected: indices.len() as u32,
        }))
    }
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

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
        self.lock()
            .calls
            .push(format!("Restart {}{rolling}", target.app));
        self.act(target, None)
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
        Ok(Response::new(pb::RolloutStatus::default()))
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
        if !self.lock().apps.contains_key(&req.app) && req.app != "chatty" {
            return Err(not_found(&req.app));
        }
        let (app, index) = (req.app.clone(), req.index.unwrap_or(0));
        let line = move |stream: pb::LogStream, text: String| pb::LogLine {
            app: app.clone(),
            index,
            node: "node-a".into(),
            stream: stream as i32,
            line: text,
        };
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
async fn serve() -> anyhow::Result<String> {
    Ok(serve_fake().await?.0)
}

/// [`serve`], also returning the fake to look at the requests it received.
async fn serve_fake() -> anyhow::Result<(String, Fake)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fake = Fake::default();
    let server = tonic::transport::Server::builder()
        .add_service(ClusterServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok((addr.to_string(), fake))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(addr: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
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
async fn check(
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

#[tokio::test]
async fn app_lifecycle() -> anyhow::Result<()> {
    let a = &serve().await?;
    let start = [
        "start",
        "node server.js",
        "--name",
        "web",
        "-i",
        "2",
        "--port",
        "3000-3001",
    ];
    check(
        a,
        &start,
        0,
        "started app web: 2 instances (version 1)\n",
        "",
    )
    .await?;
    check(
        a,
        &start,
        0,
        "started app web: 2 instances (version 1, spec unchanged)",
        "",
    )
    .await?;
    check(a, &["list"], 0, "APP  INDEX  NODE", "").await?;
    let listed = check(a, &["ls", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json[1]["port"], 3001);
    assert_eq!(json[1]["status"], "online");
    assert_eq!(json[1]["index"], 1);
    // The coordinator refuses the count: INVALID_ARGUMENT is bad input, exit 2.
    check(
        a,
        &["scale", "web", "4"],
        2,
        "",
        "error: port: 3000-3001 holds 2 ports",
    )
    .await?;
    check(a, &["scale", "web", "1"], 0, "scaled web: 2 -> 1\n", "").await?;
    check(
        a,
        &["stop", "web", "--instance", "0"],
        0,
        "stopped web[0]\n",
        "",
    )
    .await?;
    check(a, &["ps"], 0, "stopped", "").await?;
    check(a, &["start", "web"], 0, "started 1 instance of web\n", "").await?;
    check(
        a,
        &["restart", "web"],
        0,
        "restarted 1 instance of web\n",
        "",
    )
    .await?;
    check(a, &["info", "web"], 0, "version:       1", "").await?;
    let info = check(a, &["describe", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&info.stdout)?;
    assert_eq!(json["app"]["spec"]["port"], "3000-3001", "{json}");
    assert_eq!(json["instances"][0]["app"], "web", "{json}");
    check(a, &["apps"], 0, "web        1     2/1", "").await?;
    check(a, &["nodes"], 0, "node-a  ready", "").await?;
    check(
        a,
        &["logs", "web"],
        0,
        "web[0] | hello 0\nweb[0] err| oops 0\n",
        "",
    )
    .await?;
    check(a, &["logs", "web", "--raw"], 0, "hello 0\noops 0\n", "").await?;
    check(a, &["events"], 0, "instance.state   web[1]", "").await?;
    // A derived name must not replace an unrelated app of that name.
    check(
        a,
        &["start", "web --other"],
        2,
        "",
        "an app named \"web\" already exists",
    )
    .await?;
    check(
        a,
        &["delete", "web"],
        0,
        "deleted web: 1 instance removed\n",
        "",
    )
    .await?;
    check(a, &["list"], 0, "no instances; start one with", "").await?;
    check(a, &["list", "-o", "json"], 0, "[]", "").await?;
    Ok(())
}

#[tokio::test]
async fn coordinator_errors() -> anyhow::Result<()> {
    let a = &serve().await?;
    check(
        a,
        &["stop", "nope"],
        1,
        "",
        "error: app \"nope\" not found\n",
    )
    .await?;
    check(a, &["info", "nope"], 1, "", "app \"nope\" not found").await?;
    check(
        a,
        &["start", "nope"],
        1,
        "",
        "give it a name: pmcluster start nope --name NAME",
    )
    .await?;
    check(a, &["logs", "nope"], 1, "", "app \"nope\" not found").await?;
    // Bad input never reaches the coordinator.
    check(
        a,
        &["scale", "web", "-1"],
        2,
        "",
        "invalid instance count \"-1\"",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn apply_validates_everything_before_sending() -> anyhow::Result<()> {
    let a = &serve().await?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("apps.yaml");
    std::fs::write(
        &good,
        "apps:\n  - name: web\n    script: node\n    args: [server.js]\n    instances: 4\n    port: 3000-3003\n  - name: worker\n    script: python\n",
    )?;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"apps": [{"name": "api", "script": "node"}, {"name": "w2", "script": "x", "port": "30x0"}]}"#,
    )?;
    let bad_path = bad.to_string_lossy().into_owned();
    check(
        a,
        &["apply", "-f", &bad_path],
        2,
        "",
        "app \"w2\": port: \"30x0\" is not a port number",
    )
    .await?;
    check(a, &["apps"], 0, "no apps", "").await?;
    let good_path = good.to_string_lossy().into_owned();
    check(
        a,
        &["apply", "-f", &good_path],
        0,
        "web: created (version 1, 4 instances)\nworker: created (version 1, 1 instance)\n",
        "",
    )
    .await?;
    check(
        a,
        &["apply", "-f", &good_path],
        0,
        "web: unchanged (version 1)\n",
        "",
    )
    .await?;
    let from_stdin = run(
        a,
        &["apply", "-f", "-", "--format", "toml"],
        Some("name = \"web\"\nscript = \"node\"\nargs = [\"server.js\"]\ninstances = 2\nport = \"3000-3003\"\n"),
    )
    .await?;
    assert_eq!(from_stdin.code, 0, "{}", from_stdin.stderr);
    assert_eq!(
        from_stdin.stdout,
        "web: configured (version 2, 2 instances)\n"
    );
    check(
        a,
        &["apply", "-f", "/no/such/file.json"],
        2,
        "",
        "cannot read /no/such/file.json",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn closed_stdout_exits_zero() -> anyhow::Result<()> {
    let a = serve().await?;
    let bin = BIN.to_string();
    // Blocking I/O on purpose: read one line, then close the pipe under a writing client.
    let code = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i32>> {
        let mut child = std::process::Command::new(bin)
            .args(["--coordinator", &a, "logs", "chatty", "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        assert_eq!(first, "chatty[0] | hello 0\n");
        // The reader is dropped here, closing the pipe.
        Ok(child.wait()?.code())
    })
    .await??;
    assert_eq!(code, Some(0));
    Ok(())
}

#[tokio::test]
async fn unreachable_coordinator() -> anyhow::Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let got = check(
        &addr,
        &["list"],
        1,
        "",
        "cannot reach the coordinator at http://",
    )
    .await?;
    assert!(
        got.stderr.contains("start a local one with 'pmcluster up'"),
        "{}",
        got.stderr
    );
    Ok(())
}

/// The update-policy flags of `start`, `reload` and `restart --rolling`: what the coordinator
/// receives, and that a refused flag sends nothing.
#[tokio::test]
async fn update_policy_flags() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    let calls = |fake: &Fake| std::mem::take(&mut fake.lock().calls);
    let last_spec = |fake: &Fake| fake.lock().applied.last().cloned().unwrap_or_default();

    check(
        a,
        &[
            "start",
            "node s.js --a --b --c",
            "--name",
            "web",
            "-i",
            "2",
            "--max-surge",
            "2",
            "--max-unavailable",
            "1",
            "--min-healthy-time",
            "2s",
            "--healthy-deadline",
            "1m",
            "--progress-deadline",
            "3m",
            "--no-auto-rollback",
            "--canary",
            "1",
            "--shutdown-delay",
            "500ms",
        ],
        0,
        "started app web: 2 instances (version 1)",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    let started = last_spec(&fake);
    assert_eq!(
        started.update,
        Some(pb::UpdatePolicy {
            max_surge: Some(2),
            max_unavailable: Some(1),
            min_healthy_time_ms: Some(2_000),
            healthy_deadline_ms: Some(60_000),
            progress_deadline_ms: Some(180_000),
            auto_rollback: Some(false),
            canary: 1,
            shutdown_delay_ms: 500,
        })
    );

    // restart --rolling with flags: the policy first (the same spec otherwise), then the restart.
    let out = check(
        a,
        &[
            "restart",
            "web",
            "--rolling",
            "--max-surge",
            "3",
            "--auto-rollback",
            "true",
            "--shutdown-delay",
            "2s",
        ],
        0,
        "web: update policy changed: max_surge 2 -> 3, auto_rollback false -> true, \
         shutdown_delay 500ms -> 2s\nrolling restart of web: 2 instances",
        "",
    )
    .await?;
    assert!(!out.stdout.contains("version"), "{}", out.stdout);
    assert_eq!(calls(&fake), ["ApplyApp web", "Restart web rolling"]);
    let restarted = last_spec(&fake);
    let policy = restarted.update.unwrap_or_default();
    assert_eq!(
        (
            policy.max_surge,
            policy.auto_rollback,
            policy.shutdown_delay_ms
        ),
        (Some(3), Some(true), 2_000)
    );
    assert_eq!(
        pb::AppSpec {
            update: None,
            ..restarted
        },
        pb::AppSpec {
            update: None,
            ..started
        },
        "only the policy changes"
    );

    // The same values again, or no flags: no ApplyApp.
    check(
        a,
        &["restart", "web", "--rolling", "--max-surge", "3"],
        0,
        "rolling restart of web",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["Restart web rolling"]);
    let json = check(a, &["restart", "web", "--rolling", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["update"], serde_json::Value::Null, "{json}");
    assert_eq!(calls(&fake), ["Restart web rolling"]);
    let json = check(
        a,
        &["restart", "web", "--rolling", "--canary", "0", "-o", "json"],
        0,
        "",
        "",
    )
    .await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["update"]["canary"], 0, "{json}");
    assert_eq!(json["update"]["shutdown_delay_ms"], 2_000, "{json}");
    assert_eq!(calls(&fake), ["ApplyApp web", "Restart web rolling"]);

    // reload with flags only: a policy change, shown in the diff, restarting nothing.
    check(
        a,
        &["reload", "web", "--canary", "2", "--yes"],
        0,
        "-     \"canary\": 0,\n  +     \"canary\": 2,",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    assert_eq!(last_spec(&fake).update.map(|u| u.canary), Some(2));

    // reload with a new spec and flags: one ApplyApp with both.
    check(
        a,
        &[
            "reload",
            "web",
            "--set",
            "env.V=2",
            "--max-unavailable",
            "0",
            "--yes",
        ],
        0,
        "+     \"V\": \"2\"",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    let spec = last_spec(&fake);
    assert_eq!(spec.env.get("V").map(String::as_str), Some("2"));
    assert_eq!(spec.update.and_then(|u| u.max_unavailable), Some(0));

    // Refused: exit 2, the flag named, nothing applied or restarted.
    let refused: &[(&[&str], &str)] = &[
        (
            &["restart", "web", "--rolling", "--max-surge", "-1"],
            "error: --max-surge: \"-1\" is negative",
        ),
        (
            &["restart", "web", "--rolling", "--max-unavailable", "x"],
            "error: --max-unavailable: \"x\" is not a whole number",
        ),
        (
            &["restart", "web", "--rolling", "--min-healthy-time", "soon"],
            "error: --min-healthy-time: \"soon\" is not a duration",
        ),
        (
            &["restart", "web", "--rolling", "--max-surge", "0"],
            "error: --max-surge: max_surge and max_unavailable would both be 0",
        ),
        (
            &[
                "reload",
                "web",
                "--max-surge",
                "0",
                "--max-unavailable",
                "0",
                "--yes",
            ],
            "error: --max-surge, --max-unavailable: max_surge and max_unavailable would both be 0",
        ),
        (
            &["reload", "web", "--healthy-deadline", "1s", "--yes"],
            "error: --healthy-deadline: healthy_deadline (1s) must be longer than \
             min_healthy_time (2s)",
        ),
        (
            &["reload", "web", "--auto-rollback", "maybe", "--yes"],
            "error: --auto-rollback: \"maybe\" is not true or false",
        ),
        (
            &[
                "reload",
                "web",
                "--set",
                "update.canary=1",
                "--canary",
                "3",
                "--yes",
            ],
            "error: --canary: also given as --set update.canary",
        ),
        (
            &["restart", "web", "--shutdown-delay", "1s"],
            "error: --shutdown-delay: only with --rolling",
        ),
        (
            &[
                "start",
                "node s.js",
                "--name",
                "w2",
                "--progress-deadline",
                "1m",
            ],
            "error: --progress-deadline: progress_deadline (1m) must be at least \
             healthy_deadline (5m)",
        ),
        (
            &[
                "restart",
                "web",
                "--rolling",
                "--auto-rollback",
                "false",
                "--no-auto-rollback",
            ],
            "cannot be used with",
        ),
    ];
    for (args, stderr) in refused {
        check(a, args, 2, "", stderr).await?;
        assert!(calls(&fake).is_empty(), "pmcluster {}", args.join(" "));
    }
    Ok(())
}

/// A reordering of `args` is a change: the diff shows it and the reload applies it.
#[tokio::test]
async fn reload_sees_reordered_args() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    check(
        a,
        &["start", "node s.js --a --b --c", "--name", "web"],
        0,
        "started app web",
        "",
    )
    .await?;
    let out = check(
        a,
        &[
            "reload",
            "web",
            "--set",
            r#"args=["s.js","--b","--a","--c"]"#,
            "--yes",
        ],
        0,
        "web version 1 -> changes:\n",
        "",
    )
    .await?;
    assert!(
        out.stdout.contains("\n  -     \"--a\",\n") && out.stdout.contains("\n  +     \"--a\",\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("nothing to change"), "{}", out.stdout);
    let args = fake.lock().applied.last().map(|s| s.args.clone());
    assert_eq!(
        args,
        Some(vec![
            "s.js".into(),
            "--b".into(),
            "--a".into(),
            "--c".into()
        ])
    );
    // The same order again: nothing to change, nothing sent.
    check(
        a,
        &[
            "reload",
            "web",
            "--set",
            r#"args=["s.js","--b","--a","--c"]"#,
            "--yes",
        ],
        0,
        "web: nothing to change (version 2)",
        "",
    )
    .await?;
    assert_eq!(fake.lock().applied.len(), 2);
    Ok(())
}
