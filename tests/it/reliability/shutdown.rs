//! Reliability regressions: see the module doc of `reliability`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmcluster_tests::{Cluster, pid_alive, render, wait_until};

use crate::{DEADLINE, live};

/// Issue 9, item 4: SIGTERM used to close the API port and then wait for the agents' session
/// streams, which never end, so the coordinator stayed until the last agent left and its
/// replacement could not open the store ("Database already open").
#[test]
fn issue9_sigterm_exits_within_grace_with_agents_connected() {
    let mut c = Cluster::start_with(2, &["--shutdown-grace", "3s"])
        .expect("coordinator and two agents start");
    let before: BTreeMap<u32, u32> = c.start_app("web", 4).online().expect("web starts").pids();
    assert_eq!(before.len(), 4, "every instance has a pid: {before:?}");
    // A follower of events is a stream that never ends by itself either: it must not hold the
    // shutdown.
    let follower = Follower::start(&c, &["events"]);
    let coordinator = c.coordinator().expect("the coordinator runs");
    let asked = Instant::now();
    coordinator.signal(Signal::SIGTERM);
    // The grace is 3 s and sessions close at once; 15 s leaves room for a loaded machine.
    let status = coordinator
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the coordinator still runs 15 s after SIGTERM with agents connected:{}",
                c.tails()
            )
        });
    let took = asked.elapsed();
    assert!(
        status.success(),
        "SIGTERM is a normal stop: {status}{}",
        c.tails()
    );
    eprintln!("coordinator exited {took:?} after SIGTERM");
    drop(follower);
    for (index, pid) in &before {
        assert!(
            pid_alive(*pid),
            "web[{index}] (pid {pid}) died with the coordinator"
        );
    }
    // The replacement opens the same store at once, the agents re-register, and the instances
    // are listed with the pids they had.
    c.restart_coordinator()
        .expect("a new coordinator opens the same data dir right after");
    c.wait_ready(&["node-a", "node-b"], DEADLINE)
        .expect("the agents register with the new coordinator");
    wait_until(
        DEADLINE,
        "the same pids online under the new coordinator",
        || {
            let list = c.instances("web")?;
            let now: BTreeMap<u32, u32> = list
                .iter()
                .filter(|i| live(i))
                .filter_map(|i| Some((i.index, i.pid?)))
                .collect();
            if now == before {
                Ok(())
            } else {
                Err(format!("want {before:?}, have:{}", render(&list)))
            }
        },
    );
}

/// A CLI call that follows a stream, killed (by its pid) and reaped when dropped.
struct Follower(Child);

impl Follower {
    fn start(c: &Cluster, args: &[&str]) -> Follower {
        let child = Command::new(&c.bins().cli)
            .arg("--coordinator")
            .arg(c.url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning pmcluster {args:?}: {e}"));
        Follower(child)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
