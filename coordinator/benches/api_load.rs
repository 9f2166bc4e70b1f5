//! Issue 14's API round trips, on loopback against the release coordinator with fake agents
//! (in this process, over real gRPC, reporting every second as agents do):
//! 1. a unary call (`ListNodes`) 2,000 times in a row on one connection: p50, p99;
//! 2. `Scale` -> the agent's desired set: an app of 30 on 3 agents scaled 30 -> 31 -> 30, 200
//!    times; the time from sending `Scale` to the agent receiving the set that holds the change;
//! 3. 20 clients, each on its own connection, calling `list web` and `scale web` (90 <-> 91) in
//!    a closed loop for 30 s: p50, p99 and the coordinator's CPU;
//! 4. creating apps (one instance each) from 4 clients, then from 20: apps per second and p99,
//!    until 10,000 apps or 60 s.
//!
//! Run: `cargo bench -p pmcluster-coordinator --bench api_load` (`API_LOAD_SECS=N` changes the
//! 30 s of part 3).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    AgentProbe, BenchResult, TICKS_PER_SECOND, cluster_client, cpu_ticks, env_or, fake_agent,
    start_coordinator, summary,
};
use pmcluster_proto::v1 as pb;

type Client = pb::cluster_client::ClusterClient<tonic::transport::Channel>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn app(name: &str, instances: u32) -> pb::ApplyAppRequest {
    pb::ApplyAppRequest {
        spec: Some(pb::AppSpec {
            name: name.into(),
            script: "server".into(),
            instances,
            ..Default::default()
        }),
        keep_instances: false,
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn unary(c: &mut Client) -> BenchResult<()> {
    let mut times = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        c.list_nodes(pb::ListNodesRequest {}).await?;
        times.push(ms(t.elapsed()));
    }
    summary("unary ListNodes (3 nodes), one after another", times);
    Ok(())
}

/// When the first desired set any agent received after `since` arrived.
fn delivered(probes: &[Arc<AgentProbe>], since: Instant) -> Option<Instant> {
    probes
        .iter()
        .filter_map(|p| {
            let r = p.received.lock().ok()?;
            r.iter()
                .filter(|(_, _, at)| *at >= since)
                .map(|(_, _, at)| *at)
                .min()
        })
        .min()
}

async fn scale_to_agent(c: &mut Client, probes: &[Arc<AgentProbe>]) -> BenchResult<()> {
    c.apply_app(app("fan", 30)).await?;
    wait_for("30 fan assignments", || {
        probes
            .iter()
            .map(|p| p.held.load(Ordering::Relaxed))
            .sum::<usize>()
            >= 120
    })
    .await?;
    for p in probes {
        p.record.store(true, Ordering::Relaxed);
    }
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for n in 0..400 {
        let target = if n % 2 == 0 { 31 } else { 30 };
        let sent = Instant::now();
        c.scale(pb::ScaleRequest {
            app: "fan".into(),
            instances: target,
            relative: false,
        })
        .await?;
        let mut at = None;
        wait_for("the desired set", || {
            at = delivered(probes, sent);
            at.is_some()
        })
        .await?;
        let took = at.map_or(0.0, |a| ms(a.duration_since(sent)));
        if target == 31 {
            up.push(took)
        } else {
            down.push(took)
        }
    }
    for p in probes {
        p.record.store(false, Ordering::Relaxed);
    }
    summary("Scale -> desired set at the agent, one more instance", up);
    summary("Scale -> desired set at the agent, one fewer", down);
    Ok(())
}

async fn clients(url: &str, pid: u32, length: Duration) -> BenchResult<()> {
    let mut c = cluster_client(url).await?;
    c.apply_app(app("web", 90)).await?;
    let stop = Instant::now() + length;
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20u32 {
        let url = url.to_string();
        tasks.spawn(async move {
            let mut c = cluster_client(&url).await?;
            let (mut lists, mut scales) = (Vec::new(), Vec::new());
            let mut k = n;
            while Instant::now() < stop {
                let t = Instant::now();
                let listed = c
                    .list_instances(pb::ListInstancesRequest {
                        app: "web".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .instances
                    .len();
                lists.push(ms(t.elapsed()));
                if listed < 90 {
                    return Err(format!("list web gave {listed}").into());
                }
                let t = Instant::now();
                c.scale(pb::ScaleRequest {
                    app: "web".into(),
                    instances: 90 + i64::from(k % 2),
                    relative: false,
                })
                .await?;
                scales.push(ms(t.elapsed()));
                k += 1;
            }
            BenchResult::Ok((lists, scales))
        });
    }
    let (mut lists, mut scales) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (l, s) = done??;
        lists.extend(l);
        scales.extend(s);
    }
    let cores = (cpu_ticks(pid) - c0) as f64 / TICKS_PER_SECOND / t0.elapsed().as_secs_f64();
    println!(
        "20 clients, closed loop, {:.0} s: {} calls ({:.0}/s); coordinator CPU {cores:.2} cores",
        t0.elapsed().as_secs_f64(),
        lists.len() + scales.len(),
        (lists.len() + scales.len()) as f64 / t0.elapsed().as_secs_f64()
    );
    summary("list web (90 instances on 3 agents)", lists);
    summary("scale web (90 <-> 91)", scales);
    Ok(())
}

async fn creates(url: &str, n_clients: usize, prefix: &str) -> BenchResult<()> {
    let total = 10_000usize;
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_secs(60);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n_clients {
        let (url, next, prefix) = (url.to_string(), next.clone(), prefix.to_string());
        tasks.spawn(async move {
            let mut c = cluster_client(&url).await?;
            let mut times = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > stop {
                    return BenchResult::Ok(times);
                }
                let t = Instant::now();
                c.apply_app(app(&format!("{prefix}-{n:05}"), 1)).await?;
                times.push(ms(t.elapsed()));
            }
        });
    }
    let mut times = Vec::new();
    while let Some(done) = tasks.join_next().await {
        times.extend(done??);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "created {} apps of one instance from {n_clients} clients in {secs:.1} s: {:.0} apps/s",
        times.len(),
        times.len() as f64 / secs
    );
    summary(&format!("ApplyApp (new app), {n_clients} clients"), times);
    Ok(())
}

async fn run() -> BenchResult<()> {
    let length = Duration::from_secs(env_or("API_LOAD_SECS", 30)?);
    let dir = tempfile::tempdir()?;
    let (child, pid, url) =
        start_coordinator(dir.path(), &["--write-rate", "0", "--max-apps", "25000"])?;
    let mut agents = tokio::task::JoinSet::new();
    let probes: Vec<Arc<AgentProbe>> = (0..3).map(|_| Arc::new(AgentProbe::default())).collect();
    for (i, p) in probes.iter().enumerate() {
        p.sustain.store(true, Ordering::Relaxed);
        agents.spawn(fake_agent(url.clone(), format!("node-{i}"), p.clone()));
    }
    wait_for("3 agents", || {
        probes
            .iter()
            .all(|p| p.registered.load(Ordering::Relaxed) == 1)
    })
    .await?;
    let mut c = cluster_client(&url).await?;
    unary(&mut c).await?;
    // 90 instances elsewhere first, so that the fan's sets are not trivially small.
    c.apply_app(app("base", 90)).await?;
    scale_to_agent(&mut c, &probes).await?;
    clients(&url, pid, length).await?;
    creates(&url, 4, "four").await?;
    creates(&url, 20, "twenty").await?;
    agents.abort_all();
    drop(child);
    Ok(())
}

fn main() {
    common::main("api_load", run());
}
