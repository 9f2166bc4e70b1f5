//! Issue 15 item 5, the seeds' per-instance verbs end to end: `signal` (one instance or all,
//! bad names, unknown targets).

use pmcluster_tests::{Cluster, render, wait_until};

use crate::{DEADLINE, live, wait_online};

/// Waits until `logs APP --instance I` shows `needle`.
#[track_caller]
fn wait_log(c: &Cluster, app: &str, index: u32, needle: &str) {
    let i = index.to_string();
    wait_until(
        DEADLINE,
        &format!("{needle:?} in the logs of {app}[{index}]"),
        || {
            let out = c.try_cli(&["logs", app, "--instance", &i, "--lines", "200"])?;
            if out.stdout.contains(needle) {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );
}

fn log_of(c: &Cluster, app: &str, index: u32) -> String {
    c.cli(&[
        "logs",
        app,
        "--instance",
        &index.to_string(),
        "--lines",
        "200",
    ])
    .assert_ok()
    .stdout
    .clone()
}

/// `signal` reaches the main process of one instance (USR2 by name) or of every instance (by
/// number), which go on running; a bad signal is refused naming `signal`, an unknown app or
/// index is not found.
#[test]
fn signal_reaches_one_instance_or_all() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 2).online().expect("web starts");
    let before = wait_online(&c, "web", 2);

    let out = c.cli(&["signal", "web", "--instance", "1", "USR2"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("web[1]") && out.stdout.contains("SIGUSR2 delivered"),
        "{out}"
    );
    assert!(!out.stdout.contains("web[0]"), "{out}");
    wait_log(&c, "web", 1, "testapp got SIGUSR2");
    assert!(
        !log_of(&c, "web", 0).contains("testapp got SIGUSR2"),
        "web[0] got a signal meant for web[1]"
    );

    // Every instance, by number (12 is SIGUSR2) and as JSON.
    let out = c.cli(&["-o", "json", "signal", "web", "10"]);
    out.assert_ok();
    let v = out.json().expect("signal -o json");
    let delivered: Vec<bool> = v["deliveries"]
        .as_array()
        .map(|a| a.iter().map(|d| d["delivered"] == true).collect())
        .unwrap_or_default();
    assert_eq!(delivered, [true, true], "{v}");
    wait_log(&c, "web", 0, "testapp got SIGUSR1");
    wait_log(&c, "web", 1, "testapp got SIGUSR1");

    // The same processes still run: a signal is not a restart.
    let after = wait_online(&c, "web", 2);
    for (b, a) in before.iter().zip(&after) {
        assert!(live(a) && a.pid == b.pid, "{}", render(&after));
    }

    let bad = c.try_cli(&["signal", "web", "USR9"]).expect("cli runs");
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stderr.contains("signal: \"USR9\""), "{bad}");
    let nope = c.try_cli(&["signal", "nope", "USR2"]).expect("cli runs");
    assert!(nope.assert_failed().contains("not found"), "{nope}");
    let index = c
        .try_cli(&["signal", "web", "--instance", "7", "USR2"])
        .expect("cli runs");
    assert!(index.assert_failed().contains("no instance 7"), "{index}");
}
