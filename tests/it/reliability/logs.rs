//! Reliability regressions: see the module doc of `reliability`. Logs: the disk an instance's
//! output may take is bounded by its `log_max_size` and `log_retain`, whatever it writes, and
//! however many pumps write its files.

use std::path::Path;
use std::time::{Duration, Instant};

use pmcluster_tests::{Cluster, render, wait_until};
use serde_json::json;

use crate::{DEADLINE, live};

/// Bytes of every file in `dir`, and a listing for messages.
fn dir_bytes(dir: &Path) -> (u64, String) {
    let mut total = 0;
    let mut listing = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let len = entry.metadata().map_or(0, |m| m.len());
        total += len;
        listing.push(format!("{} {len}", entry.file_name().to_string_lossy()));
    }
    listing.sort();
    (total, listing.join(", "))
}

/// `yes` writes as fast as the disk takes it, for 20 s, without timestamps (the instance's
/// output used to go straight into its files, rotated by copy and truncate once a second: files
/// grew to many times `log_max_size`). Sampled all along: the instance's log directory never
/// holds more than `log_max_size × (log_retain + 1)` plus one pump buffer, the flood goes on
/// (same pid, rotation keeps happening), and `logs --lines` still reads it back.
#[test]
fn issue9_plain_logs_stay_within_log_max_size_times_retain_plus_one() {
    const MAX: u64 = 256 * 1024;
    const RETAIN: u64 = 2;
    // What one write of the pump may carry (a read of its pipe).
    const BUFFER: u64 = 64 * 1024;
    const FLOOD: Duration = Duration::from_secs(20);
    let bound = MAX * (RETAIN + 1) + BUFFER;

    let c = Cluster::start(1).expect("coordinator and an agent start");
    let path = c.root().join("flood.json");
    let app = json!({"name": "flood", "script": "yes", "args": ["flood-line"],
                     "log_max_size": "256K", "log_retain": RETAIN});
    std::fs::write(&path, json!({ "apps": [app] }).to_string()).expect("write the config");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    let pid = wait_until(DEADLINE, "flood online", || {
        let list = c.instances("flood")?;
        match list.first() {
            Some(i) if live(i) => Ok(i.pid),
            _ => Err(render(&list)),
        }
    });
    let logs = c.agent(0).data_dir.join("logs");
    let oldest = logs.join(format!("flood-0-out.log.{RETAIN}"));

    let start = Instant::now();
    let (mut samples, mut most) = (0u32, 0u64);
    let mut oldest_inodes = std::collections::BTreeSet::new();
    while start.elapsed() < FLOOD {
        let (total, listing) = dir_bytes(&logs);
        samples += 1;
        most = most.max(total);
        // Fails at the first sample over the bound: without the bound, the flood would fill the
        // disk for the rest of the 20 s.
        assert!(
            total <= bound,
            "{total} bytes under the log dir after {:?}, bound {bound}: {listing}",
            start.elapsed()
        );
        if let Ok(meta) = std::fs::metadata(&oldest) {
            oldest_inodes.insert(std::os::unix::fs::MetadataExt::ino(&meta));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{samples} samples over {FLOOD:?}, at most {most} bytes (bound {bound})");
    assert!(
        oldest_inodes.len() >= 3,
        "the flood did not keep rotating: {} different .{RETAIN} files seen",
        oldest_inodes.len()
    );
    let now = c.instances("flood").expect("list");
    assert_eq!(now.first().map(|i| i.pid), Some(pid), "{}", render(&now));

    // Its output still reads back, the last lines whole.
    let out = c.cli(&["logs", "flood", "--lines", "5"]);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("flood-line"))
        .collect();
    // Five complete lines, plus the line being written when it was read (shown as PM2 shows
    // it), which under `yes` may already read "flood-line" in full.
    assert!((5..=6).contains(&lines.len()), "{out}");
    assert!(lines.iter().all(|l| l.ends_with("flood-line")), "{out}");
}

/// A rolling update runs index 0's new process beside the old one, and both processes' pumps
/// write `web-0-out.log`. Both flood at once, while the files rotate every few milliseconds: no
/// file passes `log_max_size` (each pump used to count only its own bytes, so the two made files
/// of about twice the limit), and with room for every rotated file all the bytes both wrote are
/// there, once (a pump used to go on writing into the file the other had rotated, and two
/// rotating at once shifted the kept files twice). Bytes, not lines: two pumps may still
/// interleave the pieces of two lines that their pipes' reads cut (see the agent's `LogWriter`),
/// which the pump's unit tests keep out by writing whole lines.
#[test]
fn both_pumps_of_a_rolling_update_share_the_bound_and_keep_every_byte() {
    const MAX: u64 = 8 * 1024;
    const LINES: u32 = 20_000;
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let base = pmcluster_tests::free_port_range(10).expect("free ports");
    let path = c.root().join("web.json");
    // `line N\n` is at most 11 bytes: both floods fill about 50 files, all kept.
    let app = json!({"name": "web", "script": c.testapp().display().to_string(),
                     "port": format!("auto:{base}-{}", base + 9),
                     "env": {"TESTAPP_VERSION": "v1"},
                     "log_max_size": "8K", "log_retain": 400,
                     "update": {"max_surge": 1, "min_healthy_time": "30s"}});
    std::fs::write(&path, json!({ "apps": [app] }).to_string()).expect("write the config");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    let old = crate::wait_online(&c, "web", 1);
    let logs = c.agent(0).data_dir.join("logs");
    let (before, _) = out_files(&logs, MAX);
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"])
        .assert_ok();
    let ports = wait_until(DEADLINE, "the old and the new process of index 0", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        let ports: Vec<u16> = list
            .iter()
            .filter(|i| live(i))
            .filter_map(|i| i.port)
            .collect();
        match ports.as_slice() {
            [a, b] if list.iter().any(|i| i.id == old[0].id) => Ok([*a, *b]),
            _ => Err(render(&list)),
        }
    });
    // Anything the new process printed at its start is in the files before the floods.
    let (quiet, _) = out_files(&logs, MAX);
    let floods: Vec<_> = ports
        .into_iter()
        .map(|port| {
            std::thread::spawn(move || {
                pmcluster_tests::http_get(port, &format!("/log?n={LINES}"))
                    .map(|reply| reply.status)
            })
        })
        .collect();
    for flood in floods {
        let status = flood.join().expect("flood thread");
        assert!(matches!(status, Ok(200)), "{status:?}");
    }
    let flood_bytes: u64 = (1..=LINES)
        .map(|i| format!("line {i}\n").len() as u64)
        .sum();
    let want = quiet + 2 * flood_bytes;
    // The pumps may still be writing what the pipes hold after the replies; a listing taken
    // during a rotation may count a file twice or miss one, so it is taken until it adds up.
    let over = wait_until(DEADLINE, "both floods in the files", || {
        let (total, over) = out_files(&logs, MAX);
        if total == want {
            Ok(over)
        } else {
            Err(format!(
                "{total} bytes, want {want} ({before} before the update)"
            ))
        }
    });
    assert!(over.is_empty(), "files over {MAX} bytes: {over:?}");
    assert!(
        !logs.join("web-0-out.log.400").exists(),
        "every rotated file should have been kept"
    );
}

/// The bytes of index 0's stdout files in `logs`, and those over `max` (name and size).
fn out_files(logs: &Path, max: u64) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut over = Vec::new();
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("web-0-out.log") {
            continue;
        }
        let len = entry.metadata().map_or(0, |m| m.len());
        total += len;
        if len > max {
            over.push(format!("{name} {len}"));
        }
    }
    (total, over)
}

/// The daemons' own logs: a coordinator and an agent whose stderr nobody reads any more (a
/// restarted journal, `| head`), at the debug level so that every call writes lines that fail.
/// Both used to panic at their first such line (exit 101), and the agent left its cgroup behind.
/// Now they drop the lines and go on: the cluster starts, runs an app, scales it and stops it.
#[test]
fn daemons_whose_log_reader_is_gone_keep_serving() {
    let c = Cluster::start_logs_unread(1).expect("a cluster that logs to a closed pipe starts");
    let web = c.start_app("web", 2).ports(3).online().expect("web starts");
    assert_eq!(web.procs().len(), 2, "{}", render(&web.instances));
    c.cli(&["scale", "web", "3"]).assert_ok();
    c.wait_online("web", 3)
        .expect("a third instance comes online");
    c.cli(&["stop", "web"]).assert_ok();
    wait_until(DEADLINE, "web stopped", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        match list.iter().all(|i| i.pid.is_none()) {
            true => Ok(()),
            false => Err(render(&list)),
        }
    });
    let coordinator = c.coordinator().expect("the cluster runs its coordinator");
    for daemon in std::iter::once(coordinator).chain(c.agents()) {
        assert!(
            daemon.running(),
            "{} exited ({:?}) while its log reader was gone",
            daemon.name,
            daemon.try_exit()
        );
    }
}
