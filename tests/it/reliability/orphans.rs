//! Reliability regressions: see the module doc of `reliability`. Orphans: instances that run
//! while the agent's data dir (its local records) is gone. The coordinator's desired set
//! decides: what it holds is adopted (the same process, never a second copy), the rest stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pmcluster_tests::{Cluster, pid_alive, render, wait_until};
use serde_json::json;

use crate::{DEADLINE, wait_online};

/// Processes (pid, start time) by instance index.
type Copies = BTreeMap<u32, BTreeSet<(u32, u64)>>;

/// Running processes (pid, start time) of app `app` by instance index, from their environment
/// (`PMCLUSTER_APP`, `NODE_APP_INSTANCE`), so that copies the agent does not know are counted too.
fn copies(app: &str) -> Copies {
    let mut by_index = Copies::new();
    let want_app = format!("PMCLUSTER_APP={app}");
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !vars.contains(&want_app.as_bytes()) {
            continue;
        }
        let index = vars.iter().find_map(|v| {
            std::str::from_utf8(v.strip_prefix(b"NODE_APP_INSTANCE=")?)
                .ok()?
                .parse::<u32>()
                .ok()
        });
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rfind(')')
            .map(|close| stat[close + 1..].split_whitespace().collect())
            .unwrap_or_default();
        // fields[0] is field 3 (state), fields[19] field 22 (start time).
        let running = fields.first().is_some_and(|s| *s != "Z" && *s != "X");
        let start = fields.get(19).and_then(|s| s.parse::<u64>().ok());
        if let (Some(index), true, Some(start)) = (index, running, start) {
            by_index.entry(index).or_default().insert((pid, start));
        }
    }
    by_index
}

/// Watches the copies of `app` on its own thread until stopped; returns every copy seen per
/// index and the first moment (if any) an index had more than one.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Copies, Option<String>)>,
}

impl Watch {
    fn start(app: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let app = app.to_string();
        let handle = std::thread::spawn(move || {
            let mut seen = Copies::new();
            let mut duplicate = None;
            // Bounded: stops when asked, and never runs past five minutes.
            let end = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let now = copies(&app);
                for (index, procs) in &now {
                    if procs.len() > 1 && duplicate.is_none() {
                        duplicate = Some(format!("index {index} ran as {procs:?} at once"));
                    }
                    seen.entry(*index)
                        .or_default()
                        .extend(procs.iter().copied());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (seen, duplicate)
        });
        Watch { stop, handle }
    }

    fn finish(self) -> (Copies, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .unwrap_or_else(|_| (BTreeMap::new(), Some("the watch thread panicked".into())))
    }
}

fn apply(c: &Cluster, name: &str, instances: u32) {
    let path = c.root().join(format!("{name}.json"));
    let app = json!({"name": name, "script": "sleep", "args": ["3600"], "instances": instances});
    std::fs::write(&path, json!({ "apps": [app] }).to_string()).expect("write the config");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
}

/// The cgroup2 path of a process (`0::/...`).
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

/// An agent with `agent_args` runs `{prefix}-keep` (2 instances) and `{prefix}-gone`; it is
/// killed with kill -9, `gone` is deleted, its data dir wiped, and it starts again. `gone`'s
/// process must be stopped, and each index of `keep` must keep its one process (adopted: same
/// pid and start time, never a second copy, sampled all along).
fn wiped_data_dir(prefix: &str, agent_args: &[&str], cgroups: bool) {
    let mut c = Cluster::start(0).expect("a coordinator starts");
    let node = c
        .add_agent_with("node-a", agent_args)
        .expect("an agent starts");
    c.wait_ready(&["node-a"], DEADLINE)
        .expect("the agent is ready");
    let (keep, gone) = (format!("{prefix}-keep"), format!("{prefix}-gone"));
    apply(&c, &keep, 2);
    apply(&c, &gone, 1);
    let kept: Vec<u32> = wait_online(&c, &keep, 2)
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    let gone_pid = wait_online(&c, &gone, 1)[0].pid.expect("a pid");
    let in_cgroup = cgroup_of(gone_pid).contains("/pmcluster-node-a");
    assert_eq!(
        in_cgroup,
        cgroups,
        "instance cgroup {:?}; this test needs root and a writable cgroup2 hierarchy",
        cgroup_of(gone_pid)
    );
    let before = copies(&keep);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.values().all(|p| p.len() == 1), "{before:?}");

    let watch = Watch::start(&keep);
    c.agent(node).kill();
    c.cli(&["delete", &gone]).assert_ok();
    let data_dir = c.agent(node).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe the agent's data dir");
    let node = c
        .restart_agent(node, agent_args)
        .expect("the agent starts again");
    c.wait_ready(&["node-a"], DEADLINE)
        .expect("the agent is ready again");

    wait_until(DEADLINE, "the deleted instance stopped", || {
        if pid_alive(gone_pid) {
            Err(format!("pid {gone_pid} still runs"))
        } else {
            Ok(())
        }
    });
    let now: Vec<u32> = wait_online(&c, &keep, 2)
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    assert_eq!(now, kept, "the kept instances were not adopted");
    // A little longer, for a late second copy to show.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (seen, duplicate) = watch.finish();
    assert_eq!(duplicate, None, "a second copy ran");
    assert_eq!(seen, before, "other processes ran for the kept indices");
    let log = c.agent(node).stderr();
    assert!(
        log.contains("adopting an instance of no local record"),
        "{}",
        c.agent(node).stderr_tail(40)
    );
    assert!(
        log.contains("stopping an instance of no local record"),
        "{}",
        c.agent(node).stderr_tail(40)
    );
    let list = c.instances(&keep).expect("list");
    assert!(list.iter().all(crate::live), "{}", render(&list));
}

#[test]
fn issue9_orphans_after_a_wiped_data_dir_are_adopted_or_stopped_with_cgroups() {
    wiped_data_dir("orphan-cg", &[], true);
}

#[test]
fn issue9_orphans_after_a_wiped_data_dir_are_adopted_or_stopped_without_cgroups() {
    wiped_data_dir("orphan-nocg", &["--no-cgroups"], false);
}
