//! Issue 15, load-balancer choices: `endpoints -o haproxy --balance roundrobin|leastconn|sticky`
//! behind a real HAProxy kept current by `endpoints --watch` (the balancer of `lb.rs`). For each
//! choice the app is scaled up so that the watcher rewrites the backend and reloads HAProxy; then
//! requests must be served, round robin must reach every instance, and sticky must keep one
//! client on one instance.
//!
//! Needs `haproxy` on PATH (CI installs it and requires it); without it the test is skipped.

use std::collections::BTreeSet;

use pmcluster_tests::{Cluster, http_get, skip, wait_until};

use crate::lb::{Balancer, which};
use crate::{DEADLINE, wait_online};

/// Requests sent per check, each on a new connection.
const REQUESTS: usize = 24;

/// The instance indices that answered `REQUESTS` requests through the balancer, or why not all
/// were served.
fn answers(port: u16) -> Result<Vec<u64>, String> {
    (0..REQUESTS)
        .map(|n| {
            let reply = http_get(port, "/").map_err(|e| format!("request {n}: {e}"))?;
            if reply.status != 200 {
                return Err(format!("request {n}: status {}", reply.status));
            }
            let body: serde_json::Value = reply.json().map_err(|e| format!("request {n}: {e}"))?;
            body["instance"]
                .as_str()
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| format!("request {n}: no instance in {body}"))
        })
        .collect()
}

fn distinct(answers: &[u64]) -> BTreeSet<u64> {
    answers.iter().copied().collect()
}

#[test]
fn haproxy_balances_as_asked() {
    let Some(_) = which("haproxy") else {
        skip("haproxy", "no haproxy on PATH");
        return;
    };
    let c = Cluster::start(2).expect("cluster starts");
    c.start_app("web", 3)
        .auto_ports(20)
        .online()
        .expect("web starts");

    for (policy, algorithm) in [
        ("roundrobin", "roundrobin"),
        ("leastconn", "leastconn"),
        ("sticky", "source"),
    ] {
        let lb = Balancer::start_with(&c, "web", &["--balance", policy]);
        let line = format!("    balance {algorithm}\n");
        assert!(lb.backend().contains(&line), "{policy}:\n{}", lb.backend());

        // A fourth instance: the watcher rewrites the backend, with the same policy, and
        // reloads HAProxy.
        c.cli(&["scale", "web", "4"]).assert_ok();
        wait_online(&c, "web", 4);
        wait_until(DEADLINE, &format!("{policy}: four servers"), || {
            let b = lb.backend();
            if b.matches("    server ").count() == 4 && b.contains(&line) {
                Ok(())
            } else {
                Err(b)
            }
        });
        lb.wait_reloaded(1);

        match policy {
            // Every instance answers, the new one too once HAProxy has reloaded.
            "roundrobin" => wait_until(DEADLINE, "round robin to reach all four", || {
                let seen = distinct(&answers(lb.port)?);
                if seen.len() == 4 {
                    Ok(())
                } else {
                    Err(format!("answered by {seen:?}"))
                }
            }),
            // Served, by more than one instance over the run (sequential requests leave every
            // server at zero connections, so HAProxy rotates among them).
            "leastconn" => wait_until(DEADLINE, "least-connections to serve", || {
                let seen = distinct(&answers(lb.port)?);
                if seen.len() > 1 {
                    Ok(())
                } else {
                    Err(format!("answered by {seen:?}"))
                }
            }),
            // One client, one instance: every request of a run from the same one (round robin
            // above showed that four servers would otherwise share them). While the old worker
            // finishes, a run may still be split, hence the wait.
            _ => {
                let sticky = wait_until(DEADLINE, "one client to keep its instance", || {
                    let seen = distinct(&answers(lb.port)?);
                    if seen.len() == 1 {
                        Ok(seen)
                    } else {
                        Err(format!("answered by {seen:?}"))
                    }
                });
                for _ in 0..3 {
                    let again = answers(lb.port).unwrap_or_else(|e| panic!("sticky: {e}"));
                    assert_eq!(distinct(&again), sticky, "sticky moved: {again:?}");
                }
            }
        }

        drop(lb);
        c.cli(&["scale", "web", "3"]).assert_ok();
        wait_online(&c, "web", 3);
    }
}

#[test]
fn balance_needs_a_load_balancer_format() {
    let c = Cluster::start(1).expect("cluster starts");
    for format in ["table", "json", "yaml"] {
        let out = c
            .try_cli(&["endpoints", "web", "-o", format, "--balance", "sticky"])
            .expect("pmcluster runs");
        assert_eq!(out.code(), Some(2), "{out}");
        assert!(out.stderr.contains("--balance"), "{out}");
        assert!(out.stderr.contains(&format!("-o {format}")), "{out}");
    }
}
