//! The HA pair without etcd: no coordinator leads, and the CLI given both says why once.
//!
//! Without an `etcd` binary this reports a skip (CI installs Debian's `etcd-server` and
//! requires it to run).

use std::time::{Duration, Instant};

use pmcluster_tests::{Etcd, Pair, wait_until};

use crate::DEADLINE;
use crate::ha::TTL;

/// With etcd out (stopped, then killed) no coordinator leads, and the CLI given both says so
/// once, briefly: etcd at its endpoint did not answer, and what to do. Before, the error ran to
/// 700-900 characters: each coordinator's refusal in full, the first one twice (the other,
/// cut off from etcd too, still named it "the leader"), each quoting etcd-client's and tonic's
/// Debug text.
#[test]
fn ha_without_etcd_the_cli_says_so_once_and_briefly() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let mut pair = Pair::start(etcd, 0, &[]).expect("the pair starts");
    pair.wait_leader(DEADLINE).expect("a leader");
    let endpoint = pair.etcd().endpoints().join(",");

    pair.etcd().stop(0).expect("etcd stops");
    let stopped = settled_refusal(&pair, &["list"]);
    // Timed out, or a lease not renewed: etcd did not answer either way.
    check_refusal(&pair, &stopped, &endpoint, "did not answer");
    let scale = settled_refusal(&pair, &["scale", "nothing", "2"]);
    check_refusal(&pair, &scale, &endpoint, "did not answer");
    // `status` answers, with the table, and exits 3: a script can wait for a cluster that serves.
    let status = pair.cluster().try_cli(&["status"]).expect("the CLI runs");
    assert_eq!(status.code(), Some(3), "{status}");
    assert!(status.stdout.contains("UNHEALTHY"), "{status}");
    assert!(
        status.stderr.contains("the cluster cannot serve now")
            && status.stderr.contains("the store is unhealthy"),
        "{status}"
    );

    // etcd back: a coordinator leads again (the election does not stay stuck on it).
    pair.etcd().cont(0).expect("etcd resumes");
    pair.wait_leader(DEADLINE)
        .expect("a leader once etcd answers");
    wait_until(
        DEADLINE,
        "status to exit 0 once a coordinator leads",
        || {
            let out = pair
                .cluster()
                .try_cli(&["status"])
                .map_err(|e| e.to_string())?;
            if out.success() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );

    pair.etcd_mut().kill(0).expect("etcd is killed");
    let killed = settled_refusal(&pair, &["apps"]);
    check_refusal(&pair, &killed, &endpoint, "connection refused");
}

/// How long the CLI's refusal must stay the same to count as settled: longer than the
/// keep-alive period (a quarter of the TTL), by which the two coordinators' views of etcd
/// (lease lapsed, call timed out) may lag each other.
const SETTLE: Duration = Duration::from_secs(TTL.as_secs() / 2);

/// The CLI's error for `args` once it names etcd and has stayed the same for [`SETTLE`]: right
/// after etcd goes, a leader may still be stepping down, and the two coordinators may each be
/// at another step of the election.
fn settled_refusal(pair: &Pair, args: &[&str]) -> String {
    let mut seen: Option<(String, Instant)> = None;
    wait_until(DEADLINE, "the same refusal naming etcd for a while", || {
        let out = pair.cluster().try_cli(args).map_err(|e| e.to_string())?;
        if out.success() {
            seen = None;
            return Err(format!(
                "{args:?} succeeded (a coordinator still leads): {out}"
            ));
        }
        let err = out.stderr.trim().to_string();
        match &seen {
            Some((same, since)) if *same == err && err.contains("etcd") => {
                if since.elapsed() >= SETTLE {
                    return Ok(err);
                }
            }
            _ => seen = Some((err.clone(), Instant::now())),
        }
        Err(err)
    })
}

/// How often `url` appears in `text` as a whole URL (not as the start of a longer port).
fn mentions(text: &str, url: &str) -> usize {
    text.match_indices(url)
        .filter(|(at, _)| !text[at + url.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count()
}

fn check_refusal(pair: &Pair, err: &str, endpoint: &str, detail: &str) {
    eprintln!("without etcd ({} characters): {err}", err.len());
    assert!(err.len() < 400, "too long ({}): {err}", err.len());
    // What the etcd client's errors said before they were described.
    for internal in ["grpc request error", "tonic::", "source:"] {
        assert!(!err.contains(internal), "{internal:?} in: {err}");
    }
    // No coordinator leads, so none is named as the leader.
    assert!(!err.contains("the leader is at"), "{err}");
    // etcd's endpoint and what went wrong, once; each coordinator once.
    assert_eq!(mentions(err, &format!("etcd at {endpoint}")), 1, "{err}");
    assert!(err.contains(detail), "{err}");
    for i in 0..2 {
        assert_eq!(mentions(err, &pair.url(i)), 1, "{err}");
    }
    assert!(
        err.contains("check etcd") && err.contains("`pmcluster status`"),
        "{err}"
    );
}
