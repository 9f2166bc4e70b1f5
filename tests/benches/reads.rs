//! Issue 14's CLI reads: the wall time of each read verb, as a user runs it (a new `pmcluster`
//! process, its connection and the call), at 4, 12 and 100 instances of the test app on one
//! agent on loopback; the median and the worst of 15 runs each.
//! Needs the release binaries: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench reads` (or `./scripts/bench.sh`).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pmcluster_tests::Cluster;

const RUNS: usize = 15;
const SIZES: [u16; 3] = [4, 12, 100];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and worst wall time of `args`, or the failed run. The CLI is run and waited for
/// directly (the harness's `cli` polls for the exit every 10 ms, which would be the figure).
fn time(cli: &Path, url: &str, args: &[&str]) -> Result<(Duration, Duration), String> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let mut cmd = Command::new(cli);
        if !url.is_empty() {
            cmd.arg("--coordinator").arg(url);
        }
        let out = cmd
            .args(args)
            .env_remove("PMCLUSTER_COORDINATOR")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", cli.display()))?;
        let took = t0.elapsed();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
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
    let cli = match pmcluster_tests::binary(pmcluster_tests::CLI_BIN) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let url = c.url();
    println!("reads: median / worst wall time of {RUNS} runs, one agent on loopback");
    // The floor under any CLI: starting a process that does nothing.
    match time(Path::new("true"), "", &[]) {
        Ok((median, worst)) => println!(
            "reads: anchor: `true` (a process that does nothing) {:.1} ms (worst {:.1} ms)",
            ms(median),
            ms(worst)
        ),
        Err(e) => eprintln!("true: {e}"),
    }
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
            match time(&cli, &url, args) {
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
