//! Issue 12's figures: what mutual TLS (and the auth layer in front of every call) costs, in one
//! run, plaintext beside TLS, a coordinator and three agents on loopback:
//! - RPC latency: `ListNodes` on one open connection (p50, p99 of 1,000 calls), and a fresh
//!   connection per call (handshake included; median of 100);
//! - `pmcluster list` wall time (a process, a connection, a call; median of 20);
//! - `scale web 12` until all 12 answer `/health` (median of 5).
//!
//! Needs the release binaries: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench tls` (or `./scripts/bench.sh`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_client::ClusterClient;
use pmcluster_tests::{Cluster, TEST_USER, health};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const WARM_CALLS: usize = 1000;
const COLD_CALLS: usize = 100;
const CLI_RUNS: usize = 20;
const SCALE_RUNS: usize = 5;

fn tls_config(c: &Cluster) -> Result<Option<ClientTlsConfig>, String> {
    let Some(pki) = c.pki() else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (cert, key) = pki.pair(&format!("user-{TEST_USER}"));
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&pki.ca())?))
            .identity(Identity::from_pem(read(&cert)?, read(&key)?)),
    ))
}

async fn connect(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| e.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn rpc_latency(c: &Cluster) -> Result<String, String> {
    let tls = tls_config(c)?;
    let url = c.url();
    let mut client = ClusterClient::new(connect(&url, tls.as_ref()).await?);
    let mut warm = Vec::with_capacity(WARM_CALLS);
    for _ in 0..WARM_CALLS {
        let t0 = Instant::now();
        client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        warm.push(t0.elapsed());
    }
    warm.sort();
    let mut cold = Vec::with_capacity(COLD_CALLS);
    for _ in 0..COLD_CALLS {
        let t0 = Instant::now();
        let mut client = ClusterClient::new(connect(&url, tls.as_ref()).await?);
        client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        cold.push(t0.elapsed());
    }
    cold.sort();
    Ok(format!(
        "ListNodes on one connection p50 {:.3} ms, p99 {:.3} ms (n={WARM_CALLS}); new connection \
         + call median {:.2} ms, p99 {:.2} ms (n={COLD_CALLS})",
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99)),
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.99)),
    ))
}

fn cli_latency(c: &Cluster) -> Result<String, String> {
    let mut times = Vec::new();
    for _ in 0..CLI_RUNS {
        let t0 = Instant::now();
        let out = c.cli(&["list"]);
        if !out.success() {
            return Err(out.to_string());
        }
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(format!(
        "pmcluster list wall time median {:.1} ms (n={CLI_RUNS})",
        ms(percentile(&times, 0.5))
    ))
}

fn scale12(c: &Cluster, run: usize) -> Result<Duration, String> {
    let name = format!("web{run}");
    let base = c
        .start_app(&name, 0)
        .ports(12)
        .online()
        .map_err(|e| e.to_string())?
        .base_port;
    let t0 = Instant::now();
    let out = c.cli(&["scale", &name, "12"]);
    if !out.success() {
        return Err(out.to_string());
    }
    let deadline = t0 + Duration::from_secs(60);
    let mut answered = [false; 12];
    while !answered.iter().all(|a| *a) {
        if Instant::now() > deadline {
            return Err(format!("not all answered within 60 s: {answered:?}"));
        }
        for (i, done) in answered.iter_mut().enumerate() {
            if !*done {
                *done = health(base + i as u16)
                    .map(|h| h["instance"] == i.to_string().as_str())
                    .unwrap_or(false);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t0.elapsed();
    let out = c.cli(&["delete", &name]);
    if !out.success() {
        return Err(out.to_string());
    }
    Ok(took)
}

fn measure(mode: &str, c: &Cluster, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    println!("{mode}: {}", rt.block_on(rpc_latency(c))?);
    println!("{mode}: {}", cli_latency(c)?);
    let mut times = Vec::new();
    for run in 0..SCALE_RUNS {
        times.push(scale12(c, run)?);
    }
    times.sort();
    let all: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
    println!(
        "{mode}: scale web 12 -> 12/12 answering /health median {:.0} ms (sorted: {} ms)",
        ms(times[SCALE_RUNS / 2]),
        all.join(", ")
    );
    Ok(())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (mode, start) in [
        ("plaintext", Cluster::start as fn(usize) -> _),
        ("mTLS", Cluster::start_tls),
    ] {
        let c = match start(3) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{mode}: cannot start the cluster: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = measure(mode, &c, &rt) {
            eprintln!("{mode}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
