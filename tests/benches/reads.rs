//! Issue 14's CLI reads: the wall time of each read verb, as a user runs it (a new `pmcluster`
//! process, its connection and the call), at 4, 12 and 100 instances of the test app on one
//! agent on loopback; the median and the worst of 15 runs each.
//! Needs the release binaries: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench reads` (or `./scripts/bench.sh`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pmcluster_tests::Cluster;

const RUNS: usize = 15;
const SIZES: [u16; 3] = [4, 12, 100];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and worst wall time of `args`, or the failed run.
fn time(c: &Cluster, args: &[&str]) -> Result<(Duration, Duration), String> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let out = c.cli(args);
        let took = t0.elapsed();
        if !out.success() {
            return Err(out.to_string());
        }
        times.push(took);
    }
    times.sort();
    Ok((times[RUNS / 2], times[RUNS - 1]))
}

fn main() -> ExitCode {
    let c = match Cluster::start(1) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("reads: median / worst wall time of {RUNS} runs, one agent on loopback");
    for n in SIZES {
        let app = format!("web{n}");
        if let Err(e) = c.start_app(&app, n).auto_ports(n).online() {
            eprintln!("starting {app} with {n} instances: {e}");
            return ExitCode::FAILURE;
        }
        let verbs: [&[&str]; 7] = [
            &["list"],
            &["list", &app],
            &["info", &app],
            &["endpoints", &app],
            &["nodes"],
            &["apps"],
            &["status"],
        ];
        for args in verbs {
            match time(&c, args) {
                Ok((median, worst)) => println!(
                    "reads: {n:>3} instances: pmcluster {:<22} {:>6.1} ms  (worst {:.1} ms)",
                    args.join(" "),
                    ms(median),
                    ms(worst)
                ),
                Err(e) => {
                    eprintln!("pmcluster {}: {e}", args.join(" "));
                    return ExitCode::FAILURE;
                }
            }
        }
        let out = c.cli(&["delete", &app]);
        if !out.success() {
            eprintln!("{out}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
