//! What the coordinator benches share: starting the release coordinator, fake agents over real
//! gRPC, /proc figures of a process, percentiles.

#![allow(dead_code)] // each bench uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn env_or(name: &str, default: u64) -> BenchResult<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

pub fn rss_kib(pid: u32, field: &str) -> u64 {
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

/// Kills the coordinator whatever way the bench ends.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the coordinator this bench was built with on a free loopback port, with a fresh data
/// dir and `args`; returns it (killed on drop), its pid and its URL.
pub fn start_coordinator(dir: &std::path::Path, args: &[&str]) -> BenchResult<(Reap, u32, String)> {
    let bin = env!("CARGO_BIN_EXE_pmcluster-coordinator");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
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
    Ok((child, pid, format!("http://{addr}")))
}

pub async fn cluster_client(
    url: &str,
) -> BenchResult<pb::cluster_client::ClusterClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(pb::cluster_client::ClusterClient::new(channel))
}

/// What a fake agent shares with the bench: counters, and when it received each generation.
#[derive(Default)]
pub struct AgentProbe {
    pub held: AtomicUsize,
    pub registered: AtomicUsize,
    pub sustain: AtomicBool,
    /// (generation, assignments, when) of every desired set received, if recording.
    pub received: std::sync::Mutex<Vec<(u64, usize, std::time::Instant)>>,
    pub record: AtomicBool,
}

/// One fake agent: registers, answers every desired set with a status report claiming each
/// assignment online, counts the assignments it holds in `held`, and once `sustain` is set
/// reports them all again every heartbeat interval, as a real agent does. Thousands connect at
/// once, so a connection refused or reset before the agent registered is tried again half a
/// second later, as a real agent's reconnect loop does, for up to a minute.
pub async fn fake_agent(url: String, name: String, probe: Arc<AgentProbe>) -> BenchResult<()> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)?.tcp_nodelay(true);
    // The real agent's link settings (`agent/src/link/mod.rs`): its HTTP/2 pings every 2 s are
    // part of what 1,000 agents cost the coordinator. `FAKE_AGENTS_PINGS=0` leaves them out, to
    // measure them.
    if env_or("FAKE_AGENTS_PINGS", 1)? != 0 {
        endpoint = endpoint
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
    }
    let mut tries = 0u32;
    loop {
        let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        match session(&endpoint, &name, &probe, &registered).await {
            Err(_) if !registered.load(Ordering::Relaxed) && tries < 120 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

async fn session(
    endpoint: &tonic::transport::Endpoint,
    name: &str,
    probe: &AgentProbe,
    registered: &std::sync::atomic::AtomicBool,
) -> BenchResult<()> {
    let channel = endpoint.connect().await?;
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        msg: Some(Up::Register(pb::Register {
            node_name: name.to_string(),
            cores: 64,
            memory_bytes: 256 << 30,
            // As a real agent: sets after the first come as deltas.
            takes_deltas: true,
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut held: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut assignments: Vec<String> = Vec::new();
    let mut generation = 0;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        let coalesced = async {
            match report_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = coalesced => {
                report_at = None;
                tx.send(report(generation, &assignments, round)).await?;
            }
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                match msg.msg {
                    Some(Down::Registered(r)) => {
                        registered.store(true, Ordering::Relaxed);
                        probe.registered.fetch_add(1, Ordering::Relaxed);
                        let every = Duration::from_millis(r.heartbeat_interval_ms.max(100));
                        heartbeat = tokio::time::interval(every);
                    }
                    Some(Down::Desired(set)) => {
                        if set.delta {
                            if set.base_generation != generation {
                                return Err(format!(
                                    "{name}: a delta on generation {} after generation {generation}",
                                    set.base_generation
                                )
                                .into());
                            }
                            for id in &set.removed {
                                held.remove(id);
                            }
                        } else {
                            held.clear();
                        }
                        held.extend(set.assignments.into_iter().map(|a| a.instance_id));
                        if probe.record.load(Ordering::Relaxed) {
                            let at = std::time::Instant::now();
                            if let Ok(mut r) = probe.received.lock() {
                                r.push((set.generation, held.len(), at));
                            }
                        }
                        let (n, mine) = (held.len(), assignments.len());
                        if n >= mine {
                            probe.held.fetch_add(n - mine, Ordering::Relaxed);
                        } else {
                            probe.held.fetch_sub(mine - n, Ordering::Relaxed);
                        }
                        assignments = held.iter().cloned().collect();
                        generation = set.generation;
                        // As a real agent: the changes of a burst of sets go out in one
                        // report, at most 20 ms after the first (the agent's COALESCE).
                        report_at.get_or_insert(
                            tokio::time::Instant::now() + Duration::from_millis(20),
                        );
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                // Before the sustained phase, a bare heartbeat (no instances), as an idle agent
                // sends: the coordinator must hear from every agent within its timeout while
                // thousands register, and the setup figures stay free of report load.
                if probe.sustain.load(Ordering::Relaxed) {
                    round += 1;
                    tx.send(report(generation, &assignments, round)).await?;
                } else {
                    tx.send(report(generation, &[], round)).await?;
                }
            }
        }
    }
}

/// A status report of every held instance online, with figures that move from round to round
/// (a report of unchanged figures could be cheaper than a real one). Within a round they stay,
/// as a real agent's do between its samples (once a second): the reports a change brings in
/// between carry every other instance as the last one did. An instance's pid and port are its
/// own, whatever the others around it.
pub fn report(generation: u64, ids: &[String], round: u64) -> pb::AgentMessage {
    let instances = ids
        .iter()
        .map(|id| {
            (
                id,
                id.bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b)),
            )
        })
        .map(|(id, n)| pb::InstanceStatus {
            instance_id: id.clone(),
            state: pb::InstanceState::Online as i32,
            pid: 1000 + n % 30_000,
            port: 3000 + n % 20_000,
            cpu_percent: ((round + u64::from(n)) % 100) as f64 / 3.0,
            memory_bytes: (50 << 20) + ((round * 4096) % (1 << 20)),
            started_at_ms: 1_700_000_000_000,
            ..Default::default()
        })
        .collect();
    pb::AgentMessage {
        msg: Some(Up::Status(pb::StatusReport {
            generation,
            instances,
            host: Some(pb::HostMetrics {
                cpu_percent: (round % 50) as f64,
                memory_used_bytes: 8 << 30,
                memory_total_bytes: 256 << 30,
                load1: 1.0,
                cores: 64,
            }),
        })),
    }
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command (which may hold spaces) end with ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// /proc reports CPU times in USER_HZ, which the kernel's ABI fixes at 100 on Linux whatever its
/// internal tick.
pub const TICKS_PER_SECOND: f64 = 100.0;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {name}: {} calls, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// Runs a bench's `run` on a tokio runtime; exits 1 with its error.
pub fn main(name: &str, run: impl std::future::Future<Output = BenchResult<()>>) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run) {
        eprintln!("{name} bench failed: {e}");
        std::process::exit(1);
    }
}
