//! Issue 15: the Python client (`clients/python`), installed as a user installs it (pip, its stubs
//! generated from `proto/` by grpcio-tools at install time), runs its example against a live
//! coordinator: it lists, scales and follows events until the new count is online; given an HA
//! list whose first URLs are dead or a standby, it walks the list and follows the leader hint.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pmcluster_tests::{Cluster, FakeStandby, free_port_range, run_bounded, venv_python};

use crate::{DEADLINE, wait_online};

const PIP_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Copies the package's sources (not a build/ or egg-info an earlier build left), so that pip's
/// in-tree build writes into the test's dir and never into the checkout.
fn copy_package(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("package dir");
    for entry in fs::read_dir(from).expect("clients/python") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "build" || name.ends_with(".egg-info") || name == "__pycache__" {
            continue;
        }
        let target = to.join(&*name);
        if entry.file_type().expect("file type").is_dir() {
            copy_package(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copying a package file");
        }
    }
}

/// The package installed with pip into `dir/site` from a copy of its sources in `dir/src`;
/// returns both.
fn install(python: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    let site = dir.join("site");
    copy_package(&repo().join("clients/python"), &src);
    let src_arg = src.display().to_string();
    let site_arg = site.display().to_string();
    let pip = [
        "-m",
        "pip",
        "install",
        "-q",
        "--no-build-isolation",
        "--no-deps",
        "--target",
        &site_arg,
        &src_arg,
    ];
    let installed = run_bounded(
        Command::new(python)
            .args(pip)
            .env("PMCLUSTER_PROTO_DIR", repo().join("proto")),
        dir,
        "pip",
        &pip,
        PIP_TIMEOUT,
    )
    .expect("pip install runs");
    installed.assert_ok();
    assert!(
        site.join("pmcluster/v1/cluster_pb2_grpc.py").is_file(),
        "the install generated no stubs: {installed:?}"
    );
    (src, site)
}

#[test]
fn python_client_lists_scales_and_follows_events() {
    let Some(python) = venv_python() else { return };
    let c = Cluster::start(2).expect("coordinator and two agents start");
    c.start_app("web", 2)
        .ports(4)
        .online()
        .expect("web starts with 2 instances");

    let dir = c.root().join("python");
    let (src, site) = install(&python, &dir);

    let example = src.join("examples/scale_and_watch.py");
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(&python)
                .arg(&example)
                .args(args)
                .env("PYTHONPATH", &site)
                .env("PMCLUSTER_COORDINATOR", c.url())
                .env_remove("PMCLUSTER_TOKEN"),
            &dir,
            "example",
            args,
            DEADLINE + Duration::from_secs(10),
        )
        .expect("the example runs")
    };

    let out = run(&["web", "3", "--timeout", "30"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("scaled web from 2 to 3"),
        "the example did not report the scale: {out:?}"
    );
    assert!(
        out.stdout.contains("event instance."),
        "the example followed no instance event: {out:?}"
    );
    let after = wait_online(&c, "web", 3);
    let printed = out.stdout.split("web after:").nth(1).unwrap_or_default();
    for inst in &after {
        let line = format!("web[{}] online", inst.index);
        assert!(
            printed.contains(&line),
            "the example's last list lacks {line:?}: {out:?}"
        );
    }

    // A refused call is an error the script can name, not a traceback.
    let out = run(&["nosuchapp", "1", "--timeout", "5"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
}

/// Opens the event stream first (so that its opening meets the standby), then scales and reads
/// events until one names the app; prints each.
const EVENTS_FIRST: &str = r#"
import sys
from pmcluster import connect
app, count = sys.argv[1], int(sys.argv[2])
with connect() as c:
    events = c.events(app=app, history=0, timeout=30)
    print("stream on", c.current)
    c.scale(app, count)
    for event in events:
        print("event", event.kind, event.app)
        if event.kind.startswith("instance."):
            break
    events.close()
"#;

#[test]
fn python_client_walks_the_coordinator_list_and_follows_a_standbys_hint() {
    let Some(python) = venv_python() else { return };
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 1)
        .ports(4)
        .online()
        .expect("web starts with 1 instance");
    let standby = FakeStandby::start(Some(&c.url())).expect("the fake standby starts");
    // Nothing listens there: the client must go past it to the next URL.
    let dead = format!(
        "http://127.0.0.1:{}",
        free_port_range(1).expect("a free port")
    );
    // The leader comes last: only the standby's hint leads there before the list does.
    let list = format!("{dead},{},{}", standby.url(), c.url());

    let dir = c.root().join("python");
    let (src, site) = install(&python, &dir);
    let run = |name: &str, program: &[&str], args: &[&str]| {
        run_bounded(
            Command::new(&python)
                .args(program)
                .args(args)
                .env("PYTHONPATH", &site)
                .env("PMCLUSTER_COORDINATOR", &list)
                .env_remove("PMCLUSTER_TOKEN"),
            &dir,
            name,
            args,
            DEADLINE + Duration::from_secs(10),
        )
        .expect("the script runs")
    };

    // Unary calls: the example's first list goes to the dead URL, then the standby, then the
    // leader it names.
    let example = src
        .join("examples/scale_and_watch.py")
        .display()
        .to_string();
    let out = run("example", &[&example], &["web", "2", "--timeout", "30"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("scaled web from 1 to 2"),
        "the example did not report the scale: {out:?}"
    );
    let after_unary = standby.refused();
    assert!(after_unary >= 1, "the standby was never asked: {out:?}");
    wait_online(&c, "web", 2);

    // A stream's opening: refused by the standby, opened on the leader it names.
    let out = run("events-first", &["-c", EVENTS_FIRST], &["web", "3"]);
    out.assert_ok();
    assert!(
        out.stdout.contains(&format!("stream on {}", c.url())),
        "the stream was not opened on the leader: {out:?}"
    );
    assert!(
        out.stdout.contains("event instance."),
        "the stream carried no instance event: {out:?}"
    );
    assert!(
        standby.refused() > after_unary,
        "the stream never met the standby: {out:?}"
    );
    wait_online(&c, "web", 3);
}
