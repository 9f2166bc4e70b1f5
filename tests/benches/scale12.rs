//! Issue 2's figure: time from `pmcluster scale web 12` until all 12 instances answer `/health`,
//! across a coordinator and three agents on loopback; median of 5 runs.
//! Needs the release binaries: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench scale12` (or `./scripts/bench.sh`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pmcluster_tests::{Cluster, health};

const RUNS: usize = 5;

fn run_once(c: &Cluster, run: usize) -> Result<Duration, String> {
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

fn main() -> ExitCode {
    let c = match Cluster::start(3) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut times = Vec::new();
    for run in 0..RUNS {
        match run_once(&c, run) {
            Ok(t) => {
                println!(
                    "run {run}: scale web 12 -> 12/12 answering /health in {:.0} ms",
                    t.as_secs_f64() * 1000.0
                );
                times.push(t);
            }
            Err(e) => {
                eprintln!("run {run} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    times.sort();
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "scale12: median {:.0} ms over {RUNS} runs (sorted: {} ms), 3 agents on loopback",
        times[RUNS / 2].as_secs_f64() * 1000.0,
        ms.join(", ")
    );
    ExitCode::SUCCESS
}
