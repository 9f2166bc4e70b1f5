//! Control-plane scale: 1,000 in-process fake agents connect to a real coordinator process over
//! gRPC, then one `Scale` takes an app from 0 to 10,000 instances. Measures the time until every
//! fake agent has received its share of the assignments, and the coordinator's peak RSS.
//! Run: `cargo bench -p pmcluster-coordinator --bench fake_agents`.
//!
//! Sustained (`FAKE_AGENTS_SUSTAIN_SECS=600`): after the scale, every agent reports all its
//! instances at the coordinator's heartbeat interval (1 s) with changing CPU and memory figures,
//! while one client calls `list` (an app of 20) and `scale` (that app, 20 <-> 22) in a loop and
//! lists the whole big app every 5 s. Prints the coordinator's CPU (average and worst 10 s), its
//! RSS, and the calls' percentiles. `FAKE_AGENTS=N` and `FAKE_AGENTS_INSTANCES=N` change the
//! size (the runs: 1,000 x 20 and 5,000 x 20). Each fake agent keeps its connection
//! alive with HTTP/2 pings every 2 s, as the real agent does; `FAKE_AGENTS_PINGS=0` leaves them
//! out.
//!
//! CLI reads (`FAKE_AGENTS_CLI_READS=1`, for example with `FAKE_AGENTS=100
//! FAKE_AGENTS_INSTANCES=10000`): once every agent reports its instances, the wall time of each
//! read verb of the release `pmcluster` binary (built beside the coordinator: `cargo build
//! --release --bins`), as a user runs it: a new process, its connection and its calls, output
//! read to the end. Median and worst of 15 runs each.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    AgentProbe, BenchResult, TICKS_PER_SECOND, cluster_client, cpu_ticks, env_or, fake_agent,
    rss_kib, start_coordinator, summary,
};
use pmcluster_proto::v1 as pb;

/// Why the fake agents that ended did, by distinct cause: thousands fail the same few ways.
fn ended(
    agents: &mut tokio::task::JoinSet<BenchResult<()>>,
) -> std::collections::BTreeMap<String, usize> {
    let mut why = std::collections::BTreeMap::<String, usize>::new();
    while let Some(done) = agents.try_join_next() {
        let cause = match done {
            Ok(Ok(())) => "a fake agent's session ended".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        *why.entry(cause).or_default() += 1;
    }
    why
}

async fn run() -> BenchResult<()> {
    let agents_n = env_or("FAKE_AGENTS", 1_000)? as usize;
    let instances_n = env_or("FAKE_AGENTS_INSTANCES", 10_000)? as i64;
    let sustain_secs = env_or("FAKE_AGENTS_SUSTAIN_SECS", 0)?;
    let dir = tempfile::tempdir()?;
    // One app of all the instances, over the default cap per app.
    let most = instances_n.to_string();
    let (child, pid, url) = start_coordinator(
        dir.path(),
        &[
            "--heartbeat-timeout",
            "60s",
            "--max-instances-per-app",
            &most,
        ],
    )?;
    println!(
        "coordinator pid {pid} on {url}; RSS at start {} KiB",
        rss_kib(pid, "VmRSS")
    );

    let probe = Arc::new(AgentProbe::default());
    let start = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..agents_n {
        agents.spawn(fake_agent(
            url.clone(),
            format!("fake-{i:04}"),
            probe.clone(),
        ));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while probe.registered.load(Ordering::Relaxed) < agents_n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} agents registered: {:?}",
                probe.registered.load(Ordering::Relaxed),
                ended(&mut agents)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{agents_n} fake agents registered in {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let mut cluster = cluster_client(&url).await?;
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
            instances: instances_n,
            relative: false,
        })
        .await?;
    let rpc = t0.elapsed();
    while probe.held.load(Ordering::Relaxed) < instances_n as usize {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} assignments arrived; agents ended: {:?}",
                probe.held.load(Ordering::Relaxed),
                ended(&mut agents)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = t0.elapsed();
    // Let the status reports for 10,000 instances land, then read the high-water mark.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, online) = list_all(&mut cluster, "web").await?;
    println!(
        "scale 0 -> {instances_n} over {agents_n} nodes: Scale RPC returned in {:.0} ms; every assignment delivered in {:.0} ms; {online} reported online",
        rpc.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0
    );
    println!(
        "coordinator peak RSS (VmHWM): {:.1} MiB; now {:.1} MiB",
        rss_kib(pid, "VmHWM") as f64 / 1024.0,
        rss_kib(pid, "VmRSS") as f64 / 1024.0
    );
    if env_or("FAKE_AGENTS_CLI_READS", 0)? != 0 {
        probe.sustain.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, online) = list_all(&mut cluster, "web").await?;
            if online >= instances_n as usize {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("only {online} of {instances_n} instances came online").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cli_reads(&url, instances_n)?;
    }
    if sustain_secs > 0 {
        sustained(
            &mut cluster,
            pid,
            &probe.sustain,
            Duration::from_secs(sustain_secs),
        )
        .await?;
    }
    agents.abort_all();
    drop(child);
    Ok(())
}

/// The wall time of each CLI read verb against the cluster, median and worst of 15 runs.
fn cli_reads(url: &str, instances: i64) -> BenchResult<()> {
    const RUNS: usize = 15;
    let coordinator = std::path::PathBuf::from(env!("CARGO_BIN_EXE_pmcluster-coordinator"));
    let cli = coordinator.with_file_name("pmcluster");
    if !cli.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release --bins`",
            cli.display()
        )
        .into());
    }
    let verbs: [&[&str]; 7] = [
        &["list"],
        &["list", "web"],
        &["info", "web"],
        &["endpoints", "web"],
        &["nodes"],
        &["apps"],
        &["status"],
    ];
    for args in verbs {
        let mut times = Vec::with_capacity(RUNS);
        let mut bytes = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let out = std::process::Command::new(&cli)
                .arg("--coordinator")
                .arg(url)
                .args(args)
                .env_remove("PMCLUSTER_COORDINATOR")
                .stdin(std::process::Stdio::null())
                .output()?;
            let took = t.elapsed().as_secs_f64() * 1000.0;
            if !out.status.success() {
                return Err(format!(
                    "pmcluster {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            bytes = out.stdout.len();
            times.push(took);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "cli reads at {instances} instances: pmcluster {:<14} {:>7.1} ms  (worst {:.1} ms, {} KiB of output)",
            args.join(" "),
            times[RUNS / 2],
            times[RUNS - 1],
            bytes / 1024
        );
    }
    Ok(())
}

/// How many instances of `app` there are, and how many of them are online.
async fn list_all(
    cluster: &mut pb::cluster_client::ClusterClient<tonic::transport::Channel>,
    app: &str,
) -> BenchResult<(usize, usize)> {
    let (mut n, mut online) = (0, 0);
    let mut page_token = String::new();
    // Paged; bounded in case a token never ends.
    for _ in 0..1000 {
        let reply = cluster
            .list_instances(pb::ListInstancesRequest {
                app: app.into(),
                page_size: 5000,
                page_token,
            })
            .await?
            .into_inner();
        n += reply.instances.len();
        online += reply
            .instances
            .iter()
            .filter(|i| i.state == pb::InstanceState::Online as i32)
            .count();
        if reply.next_page_token.is_empty() {
            break;
        }
        page_token = reply.next_page_token;
    }
    Ok((n, online))
}

/// Every agent reports every second while one client lists and scales in a loop; bounded by
/// `length`, and the client waits 50 ms between calls (a person or a script, not a flood).
async fn sustained(
    cluster: &mut pb::cluster_client::ClusterClient<tonic::transport::Channel>,
    pid: u32,
    sustain: &AtomicBool,
    length: Duration,
) -> BenchResult<()> {
    cluster
        .apply_app(pb::ApplyAppRequest {
            spec: Some(pb::AppSpec {
                name: "api".into(),
                script: "server".into(),
                instances: 20,
                ..Default::default()
            }),
            keep_instances: false,
        })
        .await?;
    sustain.store(true, Ordering::Relaxed);
    // Let the first round of reports spread over the second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hz = TICKS_PER_SECOND;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    let mut window = (t0, c0);
    let mut worst_window = 0.0f64;
    let mut peak_rss = 0u64;
    let (mut lists, mut scales, mut big_lists) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_big = t0;
    let mut up = true;
    while t0.elapsed() < length {
        let t = Instant::now();
        let n = cluster
            .list_instances(pb::ListInstancesRequest {
                app: "api".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .instances
            .len();
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
        if n < 20 {
            return Err(format!("list api gave {n} instances").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        cluster
            .scale(pb::ScaleRequest {
                app: "api".into(),
                instances: if up { 22 } else { 20 },
                relative: false,
            })
            .await?;
        scales.push(t.elapsed().as_secs_f64() * 1000.0);
        up = !up;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_big.elapsed() >= Duration::from_secs(5) {
            last_big = Instant::now();
            let t = Instant::now();
            list_all(cluster, "web").await?;
            big_lists.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        if window.0.elapsed() >= Duration::from_secs(10) {
            let ticks = cpu_ticks(pid);
            let cores = (ticks - window.1) as f64 / hz / window.0.elapsed().as_secs_f64();
            worst_window = worst_window.max(cores);
            window = (Instant::now(), ticks);
            peak_rss = peak_rss.max(rss_kib(pid, "VmRSS"));
        }
    }
    let cores = (cpu_ticks(pid) - c0) as f64 / hz / t0.elapsed().as_secs_f64();
    println!(
        "sustained {:.0} s, every agent reporting every second: coordinator CPU {:.2} cores on average (worst 10 s: {:.2}); RSS {:.1} MiB now, {:.1} MiB at most (sampled), VmHWM {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        cores,
        worst_window,
        rss_kib(pid, "VmRSS") as f64 / 1024.0,
        peak_rss.max(rss_kib(pid, "VmRSS")) as f64 / 1024.0,
        rss_kib(pid, "VmHWM") as f64 / 1024.0,
    );
    summary("list api (20 instances)", lists);
    summary("scale api (20 <-> 22)", scales);
    summary(
        "list web (every instance, pages of 5000, every 5 s)",
        big_lists,
    );
    Ok(())
}

fn main() {
    common::main("fake_agents", run());
}
