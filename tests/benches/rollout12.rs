//! Issue 5's figure: a rollout of 12 instances behind HAProxy — total time against its lower
//! bound (waves x min_healthy_time) and the failed-request count — for max_surge 1 and 3.
//! Needs release binaries and haproxy: `cargo build --release --bins`, then
//! `cargo bench -p pmcluster-tests --bench rollout12` (or `./scripts/bench.sh`).

#[allow(dead_code)]
#[path = "../it/lb.rs"]
mod lb;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pmcluster_tests::{Cluster, free_port_range, wait_until};

fn run(c: &Cluster, surge: u32, testapp: &str) -> Result<String, String> {
    let base = free_port_range(80).map_err(|e| e.to_string())?;
    let app = format!("web{surge}");
    let min_healthy_s = 1.0;
    let spec = serde_json::json!({
        "name": app, "script": testapp, "instances": 12,
        "port": format!("auto:{base}-{}", base + 79),
        "env": {"TESTAPP_VERSION": "v1"},
        "update": {"max_surge": surge, "min_healthy_time": "1s", "shutdown_delay": "500ms"}
    });
    let file = c.root().join(format!("{app}.json"));
    std::fs::write(&file, spec.to_string()).map_err(|e| e.to_string())?;
    let out = c.cli(&["apply", "-f", &file.display().to_string()]);
    if !out.success() {
        return Err(out.to_string());
    }
    wait_until(Duration::from_secs(60), "12 online", || {
        let l = c.instances(&app)?;
        if l.len() == 12 && l.iter().all(|i| i.online()) {
            Ok(())
        } else {
            Err(format!("{}", l.len()))
        }
    });
    let balancer = lb::Balancer::start(c, &app);
    wait_until(Duration::from_secs(30), "12 servers in the backend", || {
        let b = balancer.backend();
        if b.matches("    server ").count() == 12 {
            Ok(())
        } else {
            Err(b)
        }
    });
    let load = lb::Load::start(balancer.port);
    let t0 = Instant::now();
    let out = c.cli(&["reload", &app, "--set", "env.TESTAPP_VERSION=v2", "--yes"]);
    if !out.success() {
        return Err(out.to_string());
    }
    let out = c
        .try_cli_timeout(
            &["rollout", "status", &app, "--wait"],
            Duration::from_secs(300),
        )
        .map_err(|e| e.to_string())?;
    let took = t0.elapsed().as_secs_f64();
    if !out.success() {
        return Err(out.to_string());
    }
    lb::wait_all_answers(balancer.port, "v2");
    let (n, failures, versions) = load.finish();
    let waves = 12_u32.div_ceil(surge);
    let bound = f64::from(waves) * min_healthy_s;
    Ok(format!(
        "rollout of 12 (max_surge {surge}): {took:.1} s; lower bound {waves} waves x {min_healthy_s:.0} s = {bound:.0} s \
         (x{:.2}); {n} requests through HAProxy, {} failed; by version {versions:?}",
        took / bound,
        failures.len()
    ))
}

fn main() -> ExitCode {
    let c = match Cluster::start(3) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let testapp = c.testapp().display().to_string();
    for surge in [1, 3] {
        match run(&c, surge, &testapp) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("rollout12 (max_surge {surge}) failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
