//! Issue 2's figure: time from `pmcluster scale web 12` until all 12 instances answer `/health`,
//! across a coordinator and three agents on loopback; median of 5 runs.
//! Needs the release binaries: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench scale12` (or `./scripts/bench.sh`).

use std::process::ExitCode;
use std::time::Duration;

use pmcluster_tests::Cluster;

const RUNS: usize = 5;

fn run_once(c: &Cluster, run: usize) -> Result<Duration, String> {
    pmcluster_tests::bench::scale_to_12_answering(c, &format!("web{run}"))
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
