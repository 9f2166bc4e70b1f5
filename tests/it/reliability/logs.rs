//! Reliability regressions: see the module doc of `reliability`. Logs: the disk an instance's
//! output may take is bounded by its `log_max_size` and `log_retain`, whatever it writes.

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
