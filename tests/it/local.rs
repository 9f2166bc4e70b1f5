//! `pmcluster up` / `down`: the single-machine default README's first command runs. A local
//! coordinator and agent come up as daemons (idempotently), run an app, and `down` stops them
//! and every instance; state survives `down`/`up`.

use std::path::Path;
use std::process::{Command, Output};

use pmcluster_tests::{Bins, ProcId, free_port_range, wait_until};
use serde_json::Value;

use crate::DEADLINE;

/// Runs the CLI with `home` as its PMCLUSTER_HOME and the coordinator at `url`.
fn pm(cli: &Path, home: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(cli)
        .args(args)
        .env("PMCLUSTER_HOME", home)
        .env("PMCLUSTER_COORDINATOR", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("pmcluster {args:?}: {e}"))
}

#[track_caller]
fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Pid recorded in a pid file `up` wrote, as a process identity.
fn daemon(home: &Path, file: &str) -> Option<ProcId> {
    let pid: u32 = std::fs::read_to_string(home.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    ProcId::of(pid)
}

/// The two online instances of `web`, as `list` shows them, or the list.
fn two_online(cli: &Path, home: &Path, url: &str) -> Result<Vec<ProcId>, String> {
    let out = pm(cli, home, url, &["list", "web", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let online: Vec<ProcId> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["status"] == "online")
        .filter_map(|i| ProcId::of(u32::try_from(i["pid"].as_u64()?).ok()?))
        .collect();
    if online.len() == 2 {
        Ok(online)
    } else {
        Err(list.to_string())
    }
}

/// Ends whatever `up` started, by pid, if the test failed half-way.
struct Down<'a> {
    cli: &'a Path,
    home: &'a Path,
    url: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = pm(self.cli, self.home, self.url, &["down"]);
    }
}

#[test]
fn up_runs_a_local_cluster_and_down_stops_everything() {
    let bins = Bins::locate().expect("binaries built (cargo build --workspace --bins)");
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path();
    let port = free_port_range(1).expect("a free port for the coordinator");
    let app_port = free_port_range(2).expect("free ports for the app");
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cli = bins.cli.as_path();
    let _down = Down {
        cli,
        home,
        url: &url,
    };

    let first = ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up",
    );
    assert!(first.contains("coordinator listening"), "{first}");
    let coordinator = daemon(home, "coordinator.pid").expect("coordinator pid file");
    let agent = daemon(home, "agent.pid").expect("agent pid file");
    // Idempotent: a second `up` starts nothing new.
    ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up again",
    );
    assert_eq!(daemon(home, "coordinator.pid"), Some(coordinator));
    assert_eq!(daemon(home, "agent.pid"), Some(agent));

    let testapp = bins.testapp.display().to_string();
    let ports = format!("{app_port}-{}", app_port + 1);
    ok(
        &pm(
            cli,
            home,
            &url,
            &[
                "start",
                &testapp,
                "--name",
                "web",
                "--instances",
                "2",
                "--port",
                &ports,
            ],
        ),
        "start",
    );
    let instances = wait_until(DEADLINE, "2 online instances", || {
        two_online(cli, home, &url)
    });

    // The daemons' logs are files: plain text, no terminal colour codes.
    for log in ["agent.log", "coordinator.log"] {
        let text = std::fs::read_to_string(home.join(log)).unwrap_or_default();
        assert!(text.contains(" INFO "), "{log} has log lines: {text}");
        assert!(!text.contains('\x1b'), "{log} holds escape codes: {text:?}");
    }

    // `down` stops the agent with its instances, then the coordinator.
    let out = ok(&pm(cli, home, &url, &["down"]), "down");
    assert!(out.contains("stopped agent"), "{out}");
    wait_until(DEADLINE, "daemons and instances gone", || {
        let alive: Vec<u32> = instances
            .iter()
            .chain([&coordinator, &agent])
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });

    // State survives: after `up` the app is back with two instances.
    ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up after down",
    );
    wait_until(DEADLINE, "web back with 2 online", || {
        two_online(cli, home, &url)
    });
    ok(&pm(cli, home, &url, &["down"]), "down again");
}
