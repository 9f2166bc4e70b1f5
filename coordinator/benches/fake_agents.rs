//! Control-plane scale: 1,000 in-process fake agents connect to a real coordinator process over
//! gRPC, then one `Scale` takes an app from 0 to 10,000 instances. Measures the time until every
//! fake agent has received its share of the assignments, and the coordinator's peak RSS.
//! Run: `cargo bench -p pmcluster-coordinator --bench fake_agents`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const AGENTS: usize = 1_000;
const INSTANCES: i64 = 10_000;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One fake agent: registers, answers every desired set with a status report claiming each
/// assignment online, and counts the assignments it holds in `held`.
async fn fake_agent(
    url: String,
    name: String,
    held: Arc<AtomicUsize>,
    registered: Arc<AtomicUsize>,
) -> BenchResult<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        msg: Some(Up::Register(pb::Register {
            node_name: name,
            cores: 64,
            memory_bytes: 256 << 30,
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut mine = 0usize;
    while let Some(msg) = inbound.message().await? {
        match msg.msg {
            Some(Down::Registered(_)) => {
                registered.fetch_add(1, Ordering::Relaxed);
            }
            Some(Down::Desired(set)) => {
                let n = set.assignments.len();
                if n >= mine {
                    held.fetch_add(n - mine, Ordering::Relaxed);
                } else {
                    held.fetch_sub(mine - n, Ordering::Relaxed);
                }
                mine = n;
                let instances = set
                    .assignments
                    .iter()
                    .map(|a| pb::InstanceStatus {
                        instance_id: a.instance_id.clone(),
                        state: pb::InstanceState::Online as i32,
                        pid: 1,
                        ..Default::default()
                    })
                    .collect();
                let report = pb::StatusReport {
                    generation: set.generation,
                    instances,
                    host: None,
                };
                tx.send(pb::AgentMessage {
                    msg: Some(Up::Status(report)),
                })
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Kills the coordinator whatever way the bench ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run() -> BenchResult<()> {
    let bin = env!("CARGO_BIN_EXE_pmcluster-coordinator");
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--heartbeat-timeout", "60s"])
        // One app of INSTANCES, over the default cap per app.
        .args(["--max-instances-per-app", &INSTANCES.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = Reap(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .ok_or("no address line")?
        .to_string();
    let url = format!("http://{addr}");
    println!(
        "coordinator pid {pid} on {addr}; RSS at start {} KiB",
        rss_kib(pid, "VmRSS")
    );

    let held = Arc::new(AtomicUsize::new(0));
    let registered = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..AGENTS {
        let (url, held, registered) = (url.clone(), held.clone(), registered.clone());
        agents.spawn(fake_agent(url, format!("fake-{i:04}"), held, registered));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while registered.load(Ordering::Relaxed) < AGENTS {
        if Instant::now() > deadline {
            let mut why = Vec::new();
            while let Some(done) = agents.try_join_next() {
                why.push(match done {
                    Ok(Ok(())) => "a fake agent's session ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                });
            }
            return Err(format!(
                "only {} agents registered: {why:?}",
                registered.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{AGENTS} fake agents registered in {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut cluster = pb::cluster_client::ClusterClient::new(channel);
    cluster
        .apply_app(pb::ApplyAppRequest {
            spec: Some(pb::AppSpec {
                name: "web".into(),
                script: "server".into(),
                instances: 0,
                ..Default::default()
            }),
            keep_instances: false,
        })
        .await?;
    let t0 = Instant::now();
    cluster
        .scale(pb::ScaleRequest {
            app: "web".into(),
            instances: INSTANCES,
        })
        .await?;
    let rpc = t0.elapsed();
    while held.load(Ordering::Relaxed) < INSTANCES as usize {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(
                format!("only {} assignments arrived", held.load(Ordering::Relaxed)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = t0.elapsed();
    // Let the status reports for 10,000 instances land, then read the high-water mark.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut listed = Vec::new();
    let mut page_token = String::new();
    // Paged; bounded in case a token never ends.
    for _ in 0..1000 {
        let reply = cluster
            .list_instances(pb::ListInstancesRequest {
                app: "web".into(),
                page_size: 5000,
                page_token,
            })
            .await?
            .into_inner();
        listed.extend(reply.instances);
        if reply.next_page_token.is_empty() {
            break;
        }
        page_token = reply.next_page_token;
    }
    let online = listed
        .iter()
        .filter(|i| i.state == pb::InstanceState::Online as i32)
        .count();
    println!(
        "scale 0 -> {INSTANCES} over {AGENTS} nodes: Scale RPC returned in {:.0} ms; every assignment delivered in {:.0} ms; {online} reported online",
        rpc.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0
    );
    println!(
        "coordinator peak RSS (VmHWM): {:.1} MiB; now {:.1} MiB",
        rss_kib(pid, "VmHWM") as f64 / 1024.0,
        rss_kib(pid, "VmRSS") as f64 / 1024.0
    );
    agents.abort_all();
    drop(child);
    Ok(())
}

fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("fake_agents bench failed: {e}");
        std::process::exit(1);
    }
}
