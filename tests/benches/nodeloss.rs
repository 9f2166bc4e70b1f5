//! Issue 14's node-loss figure: the time from a silent host loss (the host frozen, or cut off
//! from the coordinator) until every index it ran is online on the other hosts, with the
//! default settings and with tuned ones. Three agents on test hosts (network namespaces), so it
//! needs root: `cargo bench -p pmcluster-tests --bench nodeloss` (or `./scripts/bench.sh`).
//!
//! The time is measured by the client's view: `list` polled every 100 ms until six instances are
//! online, none on the lost host, each with a live process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pmcluster_tests::{Cluster, Instance, hosts_unavailable};

/// A set of settings: coordinator flags and the app's `--reschedule-after`.
struct Profile {
    name: &'static str,
    coordinator: &'static [&'static str],
    reschedule_after: &'static str,
    runs: usize,
}

const PROFILES: [Profile; 3] = [
    Profile {
        name: "default (heartbeat 1s, timeout 10s, reschedule_after 30s)",
        coordinator: &[],
        reschedule_after: "30s",
        runs: 1,
    },
    Profile {
        name: "tuned (heartbeat 1s, timeout 3s, reschedule_after 2s)",
        coordinator: &["--heartbeat-interval", "1s", "--heartbeat-timeout", "3s"],
        reschedule_after: "2s",
        runs: 3,
    },
    Profile {
        name: "fast (heartbeat 500ms, timeout 2s, reschedule_after 1s)",
        coordinator: &["--heartbeat-interval", "500ms", "--heartbeat-timeout", "2s"],
        reschedule_after: "1s",
        runs: 3,
    },
];

#[derive(Clone, Copy)]
enum Loss {
    Freeze,
    Partition,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Loss::Freeze => "frozen",
            Loss::Partition => "cut off",
        }
    }
}

const INSTANCES: usize = 6;
const LOST: &str = "node-c";

fn wait_for(deadline: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what}: not within {deadline:?}"))
}

fn online_off(c: &Cluster, gone: Option<&str>) -> bool {
    c.instances("web").is_ok_and(|list| {
        list.len() == INSTANCES
            && list.iter().all(Instance::live)
            && list
                .iter()
                .all(|i| gone.is_none() || i.node.as_deref() != gone)
    })
}

fn measure(profile: &Profile, loss: Loss) -> Result<Duration, String> {
    let c = Cluster::start_hosts(3, profile.coordinator).map_err(|e| e.to_string())?;
    let net = c.net().ok_or("no test hosts")?;
    let testapp = c.testapp().display().to_string();
    let count = INSTANCES.to_string();
    let out = c.cli(&[
        "start",
        &testapp,
        "--name",
        "web",
        "--instances",
        &count,
        "--port",
        "auto:4100-4199",
        "--reschedule-after",
        profile.reschedule_after,
        "-e",
        "TESTAPP_BIND=${HOST}",
    ]);
    if !out.success() {
        return Err(format!("start: {out}"));
    }
    wait_for(Duration::from_secs(60), "web online", || {
        online_off(&c, None)
    })?;
    let on_lost = c
        .instances("web")
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|i| i.node.as_deref() == Some(LOST))
        .count();
    if on_lost == 0 {
        return Err(format!("nothing runs on {LOST}"));
    }
    let t0 = Instant::now();
    match loss {
        Loss::Freeze => net.freeze(LOST),
        Loss::Partition => net.partition_from(LOST, &["coordinator"]),
    }
    .map_err(|e| e.to_string())?;
    wait_for(Duration::from_secs(120), "indices back elsewhere", || {
        online_off(&c, Some(LOST))
    })?;
    let took = t0.elapsed();
    // Thawed before the cluster goes, so that its processes can be ended.
    if let Loss::Freeze = loss {
        net.thaw(LOST).map_err(|e| e.to_string())?;
    }
    Ok(took)
}

fn main() -> ExitCode {
    if let Some(reason) = hosts_unavailable() {
        eprintln!("nodeloss: cannot make test hosts here ({reason}); run it as root");
        return ExitCode::FAILURE;
    }
    for profile in &PROFILES {
        for loss in [Loss::Freeze, Loss::Partition] {
            let mut times = Vec::new();
            for run in 0..profile.runs {
                match measure(profile, loss) {
                    Ok(t) => times.push(t),
                    Err(e) => {
                        eprintln!(
                            "nodeloss: {} / {} / run {run}: {e}",
                            profile.name,
                            loss.name()
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
            times.sort();
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.1}", t.as_secs_f64()))
                .collect();
            println!(
                "nodeloss: {}: host {}; {INSTANCES} instances online elsewhere after median \
                 {:.1} s (runs: {} s)",
                profile.name,
                loss.name(),
                times[times.len() / 2].as_secs_f64(),
                all.join(", ")
            );
        }
    }
    ExitCode::SUCCESS
}
