//! An HA pair's failover under the CLI's long-lived verbs: `logs -f` and `events -f` follow on
//! at the new leader, and `--wait` waits the takeover out, after a kill -9 of the leader and
//! after a graceful SIGTERM step-down. Real coordinators on the harness's etcd, as in `ha.rs`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_tests::{Cluster, Etcd, Pair, http_get, wait_for, wait_until};

use crate::{DEADLINE, wait_online};

/// A CLI run in the background with its output in files; killed (by its own pid) on drop.
struct Background {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    fn start(c: &Cluster, name: &str, args: &[&str]) -> Background {
        let out = c.root().join(format!("{name}.out"));
        let err = c.root().join(format!("{name}.err"));
        let child = Command::new(&c.bins().cli)
            .arg("--coordinator")
            .arg(c.url())
            .args(args)
            .env_remove("PMCLUSTER_COORDINATOR")
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create the output file"))
            .stderr(File::create(&err).expect("create the error file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning pmcluster {args:?}: {e}"));
        Background { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    #[track_caller]
    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{what} ended ({status}); stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Waits for the exit and asserts it is 0.
    #[track_caller]
    fn assert_exits_ok(&mut self, what: &str, timeout: Duration) {
        let status = wait_until(timeout, &format!("{what} to exit"), || {
            self.exited().ok_or_else(|| self.stderr())
        });
        assert!(
            status.success(),
            "{what} exited with {status}; stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After a failover: both followers say they reconnected (`reconnects` times in all), still
/// run, and print what comes after it: log line `line {n}` and a restart's event.
fn follows_on(
    c: &Cluster,
    port: u16,
    logs: &mut Background,
    events: &mut Background,
    reconnects: usize,
    n: u32,
) {
    for (f, what) in [(&mut *logs, "logs -f"), (&mut *events, "events -f")] {
        wait_until(DEADLINE, &format!("{what} to reconnect"), || {
            f.assert_running(what);
            let err = f.stderr();
            if err.matches("reconnected to the coordinator").count() >= reconnects {
                Ok(())
            } else {
                Err(err)
            }
        });
    }
    // Asked again until it shows: the agent ships its lines to the new leader once its own
    // session there is up, which the followers' reconnection does not wait for.
    wait_until(
        DEADLINE,
        "a line written after the failover in logs -f",
        || {
            logs.assert_running("logs -f");
            http_get(port, &format!("/log?n={n}")).map_err(|e| e.to_string())?;
            let out = logs.stdout();
            if out.contains(&format!("line {n}\n")) {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    let before = events.stdout().matches("restart web").count();
    c.cli(&["restart", "web"]).assert_ok();
    wait_until(DEADLINE, "an event after the failover in events -f", || {
        events.assert_running("events -f");
        let out = events.stdout();
        if out.matches("restart web").count() > before {
            Ok(())
        } else {
            Err(out)
        }
    });
    logs.assert_running("logs -f");
    events.assert_running("events -f");
}

#[test]
fn ha_follow_logs_and_events_survive_a_kill_9_and_a_sigterm_of_the_leader() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let mut pair = Pair::start(etcd, 1, &[]).expect("the pair and one agent start");
    let web = pair
        .cluster()
        .start_app("web", 1)
        .online()
        .expect("web starts");
    let port = web.base_port;
    let first = pair.wait_leader(DEADLINE).expect("a leader");
    let (mut logs, mut events) = {
        let c = pair.cluster();
        let logs = Background::start(c, "logs", &["logs", "web", "-f"]);
        let events = Background::start(c, "events", &["events", "-f"]);
        (logs, events)
    };
    http_get(port, "/log?n=2").expect("two lines");
    wait_for(DEADLINE, "the first lines in logs -f", || {
        logs.stdout().contains("line 2\n")
    });

    // 1. kill -9: the connections break under both streams.
    pair.kill(first);
    pair.wait_leads(1 - first, DEADLINE)
        .expect("the standby takes over");
    follows_on(pair.cluster(), port, &mut logs, &mut events, 1, 5);

    // 2. SIGTERM: the leader steps down and ends both streams (the killed one is back first, as
    // the standby that takes over).
    pair.spawn(first).expect("the old leader restarts");
    wait_for(DEADLINE, "the restarted coordinator to answer", || {
        pair.status(Some(first)).is_ok()
    });
    pair.signal(1 - first, Signal::SIGTERM);
    pair.wait_leads(first, DEADLINE)
        .expect("the restarted one takes over");
    follows_on(pair.cluster(), port, &mut logs, &mut events, 2, 8);
    wait_online(pair.cluster(), "web", 1);
}

#[test]
fn ha_follow_a_wait_started_before_a_kill_9_of_the_leader_waits_it_out() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let pair = Pair::start(etcd, 1, &[]).expect("the pair and one agent start");
    let c = pair.cluster();
    c.start_app("web", 3)
        .auto_ports(12)
        .online()
        .expect("web starts");
    let leader = pair.wait_leader(DEADLINE).expect("a leader");
    // Waves of one, each online a few seconds before the next: the rollout outlasts the
    // takeover.
    let mut restart = Background::start(c, "restart", &["restart", "web", "--rolling", "--wait"]);
    // The restart was made (its line comes before the wait): only the wait's looks are left.
    wait_until(DEADLINE, "the rolling restart to be made", || {
        restart.assert_running("restart --rolling --wait");
        let out = restart.stdout();
        if out.contains("rolling restart of web") {
            Ok(())
        } else {
            Err(format!("{out}{}", restart.stderr()))
        }
    });
    let mut status = Background::start(c, "status", &["rollout", "status", "web", "--wait"]);
    // Without a terminal it prints a line per step: the first says it is under way.
    wait_until(
        DEADLINE,
        "rollout status --wait to follow the rollout",
        || {
            status.assert_running("rollout status --wait");
            let out = status.stdout();
            if out.is_empty() {
                Err(status.stderr())
            } else {
                Ok(())
            }
        },
    );
    pair.kill(leader);
    pair.wait_leads(1 - leader, DEADLINE)
        .expect("the standby takes over");
    let long = Duration::from_secs(180);
    restart.assert_exits_ok("restart --rolling --wait", long);
    status.assert_exits_ok("rollout status --wait", long);
    wait_online(c, "web", 3);
}
