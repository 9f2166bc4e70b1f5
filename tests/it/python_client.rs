//! Issue 15: the Python client (`clients/python`), installed as README tells users to (a fresh
//! virtualenv, `pip install ./clients/python`, its stubs generated from `proto/` by grpcio-tools
//! at install time), runs its example against a live coordinator: it lists, scales and follows
//! events until the new count is online. Issue 11: given an HA list whose first URLs are dead or
//! a standby, it walks the list and follows the leader hint.

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

/// README's steps in a copy of the checkout under `dir`; returns the checkout and the
/// virtualenv's python.
fn install(python: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    // README's steps in a copy of the checkout: a fresh virtualenv, `pip install
    // ./clients/python` with its dependencies, the example run with the venv's python. Offline:
    // pip takes the build tools and dependencies from the virtualenv scripts/deps.sh made (a
    // .pth names its site-packages) instead of PyPI, so a dependency the stubs need but
    // pyproject.toml does not allow fails here rather than being fetched.
    let checkout = dir.join("checkout");
    copy_package(
        &repo().join("clients/python"),
        &checkout.join("clients/python"),
    );
    copy_package(&repo().join("proto"), &checkout.join("proto"));
    let step = |name: &str, cmd: &mut Command, args: &[&str]| {
        let out = run_bounded(cmd.current_dir(&checkout), dir, name, args, PIP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        out.assert_ok();
        out.stdout.trim().to_string()
    };
    const PURELIB: &str = "import sysconfig; print(sysconfig.get_paths()['purelib'])";
    let tools_site = step("site", Command::new(python).args(["-c", PURELIB]), &[]);
    let venv_args = ["-m", "venv", ".venv"];
    step("venv", Command::new(python).args(venv_args), &venv_args);
    let venv_python = checkout.join(".venv/bin/python");
    let venv_site = step(
        "venv-site",
        Command::new(&venv_python).args(["-c", PURELIB]),
        &[],
    );
    fs::write(
        Path::new(&venv_site).join("pmcluster-test-tools.pth"),
        format!("{tools_site}\n"),
    )
    .expect("write the .pth");
    // Python before 3.12 seeds a venv with its own old setuptools, which would shadow the one
    // the .pth adds (and builds no wheel without `wheel`); 3.12 and later seed none.
    let unseed = ["uninstall", "-y", "-q", "setuptools"];
    step(
        "unseed",
        Command::new(checkout.join(".venv/bin/pip")).args(unseed),
        &unseed,
    );
    let pip = [
        "install",
        "-q",
        "--no-index",
        "--no-build-isolation",
        "./clients/python",
    ];
    let installed = step(
        "pip",
        Command::new(checkout.join(".venv/bin/pip"))
            .args(pip)
            .env_remove("PMCLUSTER_PROTO_DIR"),
        &pip,
    );
    assert!(
        Path::new(&venv_site)
            .join("pmcluster/v1/cluster_pb2_grpc.py")
            .is_file(),
        "the install generated no stubs: {installed}"
    );
    // What pip would have had to fetch, it would have said here; and the stubs' own runtime
    // checks pass with what pyproject.toml allows.
    let check_args = ["-m", "pip", "check"];
    step(
        "pip-check",
        Command::new(&venv_python).args(check_args),
        &check_args,
    );

    (checkout, venv_python)
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
    let (checkout, venv_python) = install(&python, &dir);

    let example = checkout.join("clients/python/examples/scale_and_watch.py");
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(&venv_python)
                .arg(&example)
                .args(args)
                .current_dir(&checkout)
                .env_remove("PYTHONPATH")
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

    // With no coordinator given, the one a local `pmcluster up` runs, as the CLI finds it: its
    // pid file and listen file in PMCLUSTER_HOME (made here for the test's coordinator).
    let home = dir.join("up-home");
    fs::create_dir_all(&home).expect("mkdir up-home");
    let pid = c.coordinator().map(|d| d.pid()).expect("a coordinator");
    fs::write(home.join("coordinator.pid"), format!("{pid}\n")).expect("pid file");
    fs::write(
        home.join("coordinator.listen"),
        format!("0.0.0.0:{}\n", c.port()),
    )
    .expect("listen file");
    let script = "from pmcluster import connect\nwith connect() as c:\n    print('apps', [a.spec.name for a in c.apps()], c.current)\n";
    // The script with no coordinator given: only PMCLUSTER_HOME says where to look.
    let lookup = |name: &str| {
        run_bounded(
            Command::new(&venv_python)
                .args(["-c", script])
                .current_dir(&checkout)
                .env_remove("PYTHONPATH")
                .env_remove("PMCLUSTER_COORDINATOR")
                .env_remove("PMCLUSTER_TOKEN")
                .env("PMCLUSTER_HOME", &home),
            &dir,
            name,
            &[],
            DEADLINE,
        )
        .expect("the lookup script runs")
    };
    let out = lookup("up-lookup");
    out.assert_ok();
    let want = format!("apps ['web'] http://127.0.0.1:{}", c.port());
    assert!(out.stdout.contains(&want), "want {want:?}: {out:?}");

    // That home's coordinator gone (its pid file names no live one): the lookup refuses rather
    // than dial the default address, where another cluster may answer.
    fs::write(home.join("coordinator.pid"), "0\n").expect("pid file");
    let out = lookup("up-lookup-down");
    assert!(!out.success(), "{out:?}");
    let want = format!(
        "the coordinator of {} (http://127.0.0.1:{}) is not running",
        home.display(),
        c.port()
    );
    assert!(out.stderr.contains(&want), "want {want:?}: {out:?}");
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
    let (checkout, venv_python) = install(&python, &dir);
    let run = |name: &str, program: &[&str], args: &[&str]| {
        run_bounded(
            Command::new(&venv_python)
                .args(program)
                .args(args)
                .current_dir(&checkout)
                .env_remove("PYTHONPATH")
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
    let example = checkout
        .join("clients/python/examples/scale_and_watch.py")
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
