//! Reliability regressions: see the module doc of `reliability`. The coordinator's state file
//! (item 8): whatever is wrong with it, the coordinator exits 64 with an error that names the
//! file and says what to do, instead of panicking (exit 101) or starting on something else.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_tests::{Cluster, poll_until};

/// Long enough for a debug coordinator to open (and check) a small store and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// What the coordinator must say about every unusable state file.
const WHAT_NEXT: &str = "restore it from a backup, or move it aside to start an empty cluster";

/// A coordinator this test started, killed by pid if it outlives the test.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the coordinator on `data_dir` (as `uid`, when given) until it exits; returns its status
/// and stderr. A coordinator that starts serving instead fails the test.
fn run_coordinator(c: &Cluster, data_dir: &Path, uid: Option<u32>) -> (ExitStatus, String) {
    let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
    let stderr_path = c.root().join(format!("{name}.stderr.log"));
    let stderr = fs::File::create(&stderr_path).expect("create the stderr log");
    let mut cmd = Command::new(&c.bins().coordinator);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("PMCLUSTER_LISTEN")
        .env_remove("PMCLUSTER_DATA_DIR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut started = Started(cmd.spawn().expect("spawn the coordinator"));
    let status = poll_until(EXIT_DEADLINE, "the coordinator to exit", || {
        started
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| fs::read_to_string(&stderr_path).unwrap_or_default())
    })
    .unwrap_or_else(|e| {
        panic!(
            "the coordinator on {} kept running: {e}",
            data_dir.display()
        )
    });
    (status, fs::read_to_string(&stderr_path).unwrap_or_default())
}

#[track_caller]
fn assert_refused(status: ExitStatus, stderr: &str, names: &Path, says: &[&str]) {
    assert_eq!(status.code(), Some(64), "{status}: {stderr}");
    assert!(
        stderr.contains(&names.display().to_string()),
        "should name {}: {stderr}",
        names.display()
    );
    for words in says {
        assert!(stderr.contains(words), "should say {words:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

/// A store holding one app, written by a real coordinator that then stopped cleanly.
fn real_store(c: &Cluster) -> PathBuf {
    c.cli(&["start", "sleep 600", "--name", "web", "--instances", "0"])
        .assert_ok();
    let coordinator = c.coordinator().expect("the coordinator runs");
    coordinator.signal(Signal::SIGTERM);
    let status = coordinator
        .wait_exit(EXIT_DEADLINE)
        .expect("the coordinator stops on SIGTERM");
    assert!(status.success(), "{status}");
    let path = coordinator.data_dir.join("state.redb");
    assert!(
        fs::metadata(&path).is_ok_and(|m| m.len() > 4096),
        "{}",
        path.display()
    );
    path
}

/// A copy of the store in a data dir of its own, damaged by `damage`.
fn damaged(c: &Cluster, store: &Path, name: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let dir = c.root().join(format!("damaged-{name}"));
    fs::create_dir_all(&dir).expect("create a data dir");
    let path = dir.join("state.redb");
    fs::copy(store, &path).expect("copy the store");
    damage(&path);
    dir
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read the store");
    change(&mut bytes);
    fs::write(path, bytes).expect("write the store");
}

/// Issue 9, item 8: with everything after the header of `state.redb` zeroed, redb panicked and
/// the coordinator exited 101. Every way the file can be unusable exits 64 naming it.
#[test]
fn issue9_corrupt_store_exits_64_naming_the_file() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let store = real_store(&c);
    type Damage = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "zeroed-body",
            Box::new(|p| rewrite(p, |b| b[512..].fill(0))),
            "is damaged",
        ),
        (
            "zero-length",
            Box::new(|p| rewrite(p, |b| b.clear())),
            "is empty (0 bytes)",
        ),
        (
            "garbage",
            Box::new(|p| rewrite(p, |b| b.iter_mut().for_each(|x| *x = 0x5a))),
            "is not a pmcluster state file",
        ),
        (
            "truncated",
            Box::new(|p| rewrite(p, |b| b.truncate(b.len() / 2))),
            "is damaged",
        ),
        (
            "truncated-header",
            Box::new(|p| rewrite(p, |b| b.truncate(300))),
            "is truncated",
        ),
        (
            "bad-record",
            Box::new(|p| {
                // A sound file whose app record is not JSON.
                let db = redb::Database::create(p).expect("open the copy");
                let tx = db.begin_write().expect("a write transaction");
                {
                    let def: redb::TableDefinition<&str, &[u8]> =
                        redb::TableDefinition::new("apps");
                    let mut apps = tx.open_table(def).expect("the apps table");
                    apps.insert("web", b"{not json".as_slice()).expect("insert");
                }
                tx.commit().expect("commit");
            }),
            "holds a damaged record \"web\" in table apps",
        ),
    ];
    for (name, damage, says) in cases {
        let dir = damaged(&c, &store, name, damage);
        let (status, stderr) = run_coordinator(&c, &dir, None);
        assert_refused(status, &stderr, &dir.join("state.redb"), &[says, WHAT_NEXT]);
    }

    // A data dir that cannot be created.
    let file = c.root().join("a-file");
    fs::write(&file, b"").expect("write a file");
    let below_a_file = file.join("data");
    let (status, stderr) = run_coordinator(&c, &below_a_file, None);
    assert_refused(
        status,
        &stderr,
        &below_a_file,
        &["cannot create data dir", "give another --data-dir"],
    );

    // The undamaged store still opens, with its app.
    let dir = damaged(&c, &store, "none", |_| {});
    let (status, stderr) = run_coordinator_serving(&c, &dir);
    assert!(status.is_none(), "the sound store was refused: {stderr}");
}

/// Starts the coordinator on `data_dir` and waits for it to serve; `None` when it did (and was
/// then stopped), else how it exited.
fn run_coordinator_serving(c: &Cluster, data_dir: &Path) -> (Option<ExitStatus>, String) {
    let out_path = data_dir.with_extension("stdout.log");
    let err_path = data_dir.with_extension("stderr.log");
    let mut started = Started(
        Command::new(&c.bins().coordinator)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("PMCLUSTER_LISTEN")
            .env_remove("PMCLUSTER_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("create the stdout log"))
            .stderr(fs::File::create(&err_path).expect("create the stderr log"))
            .spawn()
            .expect("spawn the coordinator"),
    );
    let outcome = poll_until(EXIT_DEADLINE, "the coordinator to serve or exit", || {
        if let Some(status) = started.0.try_wait().map_err(|e| e.to_string())? {
            return Ok(Some(status));
        }
        let out = fs::read_to_string(&out_path).unwrap_or_default();
        if out.contains("listening on") {
            Ok(None)
        } else {
            Err(out)
        }
    })
    .expect("the coordinator serves or exits");
    drop(started);
    (outcome, fs::read_to_string(&err_path).unwrap_or_default())
}

/// Issue 9, item 8 (and 4): a second coordinator on the same data dir failed with redb's bare
/// "Database already open". It must name the data dir and exit 64.
#[test]
fn issue9_second_coordinator_on_same_data_dir_exits_64() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let data_dir = c
        .coordinator()
        .expect("the coordinator runs")
        .data_dir
        .clone();
    let (status, stderr) = run_coordinator(&c, &data_dir, None);
    assert_refused(
        status,
        &stderr,
        &data_dir,
        &["in use by another coordinator", "another --data-dir"],
    );
    // The first one is untouched.
    c.cli(&["apps"]).assert_ok();
}

/// Issue 9, item 8: a state file the coordinator may not open. As root, permissions do not stop
/// the test's own user, so the coordinator then runs as `nobody`.
#[test]
fn issue9_unreadable_store_exits_64_naming_the_file() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let store = real_store(&c);
    let dir = damaged(&c, &store, "unreadable", |p| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).expect("chmod the store");
    });
    let root = nix::unistd::geteuid().is_root();
    let uid = if root {
        // The coordinator, not root, must be able to reach the data dir and its binary.
        for path in dir.ancestors().take_while(|p| p.starts_with(c.root())) {
            let mode = fs::metadata(path).expect("stat").permissions().mode();
            fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o711)).expect("chmod");
        }
        Some(65534)
    } else {
        fs::set_permissions(dir.join("state.redb"), fs::Permissions::from_mode(0o000))
            .expect("chmod the store");
        None
    };
    let (status, stderr) = run_coordinator(&c, &dir, uid);
    assert_refused(
        status,
        &stderr,
        &dir.join("state.redb"),
        &["permission denied", "fix its permissions"],
    );
}
